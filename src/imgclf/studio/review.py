"""Reviewing what the doctor found in a data folder, image by image: keep, exclude or relabel.

Decisions are written as the doctor's own fix lists beside its findings (``exclude.txt``, which ``train
--exclude`` reads, and ``moves.csv``), with every change kept so the last can be undone. Nothing is moved until
the user applies the relabels, and an applied batch of moves can be moved back.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from ..fsutil import atomic_write_json, atomic_write_text
from .workspace import Workspace, check_name

ACTIONS = ("keep", "exclude", "relabel")
DOCTOR_JSON = "doctor.json"
EXCLUDE = "exclude.txt"  # the doctor's fix lists: what training leaves out, and the suggested moves
MOVES = "moves.csv"
DECISIONS = "review.json"


class Review:
    """The findings and decisions of one data folder (``data``, relative to DIR)."""

    def __init__(self, workspace: Workspace, data: str) -> None:
        self.workspace, self.data = workspace, data
        self.root = workspace.path(data)
        self.folder = workspace.studio / "data" / data.replace("/", "__") / "doctor"

    @property
    def exclude_file(self) -> Path:
        return self.folder / EXCLUDE

    def findings(self) -> dict[str, Any] | None:
        """doctor.json of the studio's own check, else the newest `imgclf doctor` wrote beside the data (doctor/,
        doctor-2/ ...) about this very folder."""
        candidates = [self.folder / DOCTOR_JSON] + sorted(
            self.root.parent.glob(f"doctor*/{DOCTOR_JSON}"), key=lambda p: p.stat().st_mtime, reverse=True
        )
        for path in candidates:
            try:
                found = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(found, dict) and (path.parent == self.folder or found.get("root") == str(self.root)):
                return found
        return None

    def _state(self) -> dict[str, Any]:
        try:
            state = json.loads((self.folder / DECISIONS).read_text())
        except (OSError, ValueError):
            state = {}
        return {"decisions": {}, "history": [], "applied": [], **state}

    def _rel(self, path: str) -> str | None:
        return self.workspace.relative(path)

    def items(self) -> list[dict[str, Any]]:
        """Every image the doctor questioned, once, with why, its neighbours and the decision taken."""
        found, decisions = self.findings() or {}, self._state()["decisions"]
        items: dict[str, dict[str, Any]] = {}

        def item(path: str, label: str) -> dict[str, Any]:
            rel = self._rel(path) or path
            return items.setdefault(rel, {"path": rel, "label": label, "reasons": [], "neighbours": {}})

        for issue in found.get("label_issues") or []:
            entry = item(issue["path"], issue["given"])
            entry["reasons"].append(
                f"labelled {issue['given']} ({issue['given_probability']:.2f}), looks like {issue['suggested']} "
                f"({issue['suggested_probability']:.2f})"
            )
            entry["suggested"] = issue["suggested"]
            entry["neighbours"] = {
                side: [self._rel(p) for p in paths if self._rel(p)] for side, paths in issue.get("nearest", {}).items()
            }
        for group in found.get("duplicates", []):
            leak = len(set(group["splits"])) > 1
            for path, label, split in zip(group["paths"], group["labels"], group["splits"]):
                others = [self._rel(p) or p for p in group["paths"] if p != path]
                entry = item(path, label)
                entry["reasons"].append(
                    f"{group['kind']} duplicate{' across splits (a leak)' if leak else ''}, in {split}, of "
                    + ", ".join(others)
                )
                entry["neighbours"].setdefault("copies", others)
        for odd in found.get("odd_files", []):
            item(odd["path"], odd.get("label", "")).setdefault("reasons", []).append(f"{odd['kind']}: {odd['detail']}")
        for rel, entry in items.items():
            entry["decision"] = decisions.get(rel)
        return list(items.values())

    def decide(self, path: str, action: str, label: str | None = None) -> dict[str, Any]:
        """Record a decision for one image (``keep`` clears the others) and rewrite the fix lists."""
        if action not in ACTIONS:
            raise ValueError(f"`action` {action!r}: one of {', '.join(ACTIONS)}")
        file = self.workspace.path(path)
        if not file.is_relative_to(self.root) or not file.is_file():
            raise ValueError(f"{path}: not an image of {self.data}")
        rel = file.relative_to(self.workspace.root).as_posix()
        if action == "relabel":
            classes = sorted(p.name for p in self.root.iterdir() if p.is_dir())
            if label is None or check_name(label, "class") not in classes:
                raise ValueError(f"`label` {label!r}: relabel to one of {', '.join(classes)}")
        state = self._state()
        state["history"].append([rel, state["decisions"].get(rel)])
        state["decisions"][rel] = {"action": action, **({"label": label} if action == "relabel" else {})}
        self._write(state)
        return state["decisions"][rel]

    def undo(self) -> str | None:
        """Take the last decision back; the image it was about, or None when there is none."""
        state = self._state()
        if not state["history"]:
            return None
        rel, previous = state["history"].pop()
        if previous is None:
            state["decisions"].pop(rel, None)
        else:
            state["decisions"][rel] = previous
        self._write(state)
        return str(rel)

    def _write(self, state: dict[str, Any]) -> None:
        """review.json, then the fix lists from it: exclude.txt (absolute paths, as the doctor writes them) and
        moves.csv (file, given, suggested)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.folder / DECISIONS, state)
        chosen = state["decisions"].items()
        excluded = sorted(str(self.workspace.root / rel) for rel, d in chosen if d["action"] == "exclude")
        atomic_write_text(self.exclude_file, "".join(f"{path}\n" for path in excluded))
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["file", "given", "suggested"])
        for rel, d in chosen:
            if d["action"] == "relabel":
                writer.writerow([str(self.workspace.root / rel), Path(rel).parent.name, d["label"]])
        atomic_write_text(self.folder / MOVES, out.getvalue())

    def summary(self) -> dict[str, Any]:
        state = self._state()
        actions = [d["action"] for d in state["decisions"].values()]
        return {
            "excluded": actions.count("exclude"),
            "relabelled": actions.count("relabel"),
            "kept": actions.count("keep"),
            "can_undo": bool(state["history"]),
            "applied_moves": len(state["applied"]),
            "exclude_file": self.workspace.relative(self.exclude_file) if self.exclude_file.is_file() else None,
        }

    def apply_moves(self) -> list[dict[str, str]]:
        """Move each image to be relabelled into its new class folder (a number added where the name is taken);
        the moves are recorded, so :meth:`undo_moves` puts them back."""
        state = self._state()
        moves = []
        for rel, d in list(state["decisions"].items()):
            if d["action"] != "relabel":
                continue
            source = self.workspace.root / rel
            del state["decisions"][rel]
            if not source.is_file():  # moved or deleted since it was decided: nothing to move
                continue
            (self.root / d["label"]).mkdir(exist_ok=True)
            target = _free(self.root / d["label"] / source.name)
            source.rename(target)
            moved = target.relative_to(self.workspace.root).as_posix()
            moves.append({"from": rel, "to": moved})
        state["applied"].append(moves)
        state["history"] = [h for h in state["history"] if h[0] in state["decisions"]]
        self._write(state)
        return moves

    def undo_moves(self) -> list[dict[str, str]]:
        """Move the last applied batch back where each image was, its relabel decision restored."""
        state = self._state()
        if not state["applied"]:
            return []
        moves = state["applied"].pop()
        for move in reversed(moves):
            source, target = self.workspace.root / move["to"], self.workspace.root / move["from"]
            if source.is_file() and not target.exists():
                source.rename(target)
                state["decisions"][move["from"]] = {"action": "relabel", "label": Path(move["to"]).parent.name}
        self._write(state)
        return moves


def _free(path: Path) -> Path:
    """``path``, or ``stem-2.suffix``... where it is taken."""
    n = 2
    candidate = path
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        n += 1
    return candidate

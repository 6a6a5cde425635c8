"""What the doctor writes: a terminal summary, doctor.json, image grids, an HTML page, and with ``fix``
the suggested moves and the files to leave out of training (never a deletion)."""

from __future__ import annotations

import csv
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..fsutil import atomic_open, atomic_write_json, atomic_write_text, make_dir
from ..plots.figures import plot_image_grid
from ..plots.html import HtmlReport
from ..plots.tables import Table
from .checks import NEIGHBOURS, DuplicateGroup, Findings

JSON = "doctor.json"
PAGE = "doctor.html"
LABEL_GRID = "label_issues.png"
DUPLICATE_GRID = "duplicates.png"
MOVES = "moves.csv"
EXCLUDE = "exclude.txt"
GRID_ISSUES = 24  # suspected label errors shown, most likely first
GRID_GROUPS = 12  # duplicate groups shown (two images each), leaks and cross-class first
SHOWN = 10  # rows of each list in the terminal


@dataclass
class DoctorResult:
    findings: dict[str, Any]  # what doctor.json holds
    paths: dict[str, Path]  # what was written: json, page, grids, and with fix moves and exclude

    @property
    def label_issues(self) -> list[dict[str, Any]]:
        return self.findings["label_issues"] or []

    @property
    def leaks(self) -> list[dict[str, Any]]:
        return self.findings["leaks"]

    @property
    def duplicates(self) -> list[dict[str, Any]]:
        return self.findings["duplicates"]


def shown(path: str, root: str) -> str:
    """A path as pages and the terminal show it: relative to the data folder when inside it."""
    return os.path.relpath(path, root) if root and path.startswith(root + os.sep) else path


def _ordered(findings: Findings) -> list[DuplicateGroup]:
    """Duplicate groups, the harmful first: across splits (leaks), then across classes, then the rest."""
    inv = findings.inventory
    return sorted(findings.duplicates, key=lambda g: (not g.spans_splits(inv), not g.spans_classes(inv)))


def summary(findings: Findings) -> str:
    inv, found = findings.inventory, findings.to_dict()
    lines = [
        f"{inv.name}: {len(inv):,} usable images in {len(inv.classes)} classes "
        f"({', '.join(f'{n:,} {s}' for s, n in found['splits'].items())}, as training would split them)"
    ]
    counts = [row["train"] + row["val"] + row["test"] for row in found["class_summary"]]
    if counts:
        lines.append(f"class balance: {min(counts):,} to {max(counts):,} images per class")
    odd = Counter(o.kind for o in findings.odd)
    lines.append("odd files: " + (", ".join(f"{n} {kind}" for kind, n in odd.most_common()) or "none"))
    kinds = Counter(g.kind for g in findings.duplicates)
    lines.append(
        f"duplicates: {kinds['exact']} exact and "
        + (f"{kinds['near']} near group(s)" if findings.near_checked else "near ones not looked for")
        + f"; {len(findings.leaks)} across splits "
        f"(leaks), {len(findings.cross_class)} across classes"
    )
    for group in _ordered(findings)[:SHOWN]:
        g = group.to_dict(inv)
        members = zip(g["paths"], g["labels"], g["splits"])
        lines.append(f"  {group.kind}: " + "  ".join(f"{shown(p, inv.root)} [{lbl}, {s}]" for p, lbl, s in members))
    if findings.labels is not None:
        lines += label_lines(found, findings.inventory.root)
    lines += findings.notes
    return "\n".join(lines)


def label_lines(found: dict[str, Any], root: str) -> list[str]:
    """The label findings for the terminal: the model's strength, the estimate, the first suspects."""
    model, issues = found.get("label_model", {}), found["label_issues"] or []
    lines = [f"label check by {model.get('used', 'a model')}"]
    lines += [f"  {_strength_line(c)}" for c in model.get("candidates", [])]
    if model.get("mirror_note"):
        lines.append(f"  {model['mirror_note']}")
    weak = (
        ""
        if found.get("label_issues_trusted", True)
        else ("; WEAK: the model is too inaccurate for them to be believed, and --fix leaves them out")
    )
    lines.append(
        f"likely label errors: {len(issues)} flagged, {found.get('label_errors_estimated')} estimated wrong in all "
        f"(confident learning); every image is ranked in {JSON}{weak}"
    )
    for row in issues[:SHOWN]:
        lines.append(
            f"  #{row['rank']} {shown(row['path'], root)}: labelled {row['given']} ({row['given_probability']:.2f}), "
            f"looks like {row['suggested']} ({row['suggested_probability']:.2f})"
        )
    return lines


def _strength_line(c: dict[str, Any]) -> str:
    return (
        f"{c['model']}: held-out accuracy {c['accuracy']:.4f}, calibration error {c['calibration_error']:.4f}, "
        f"log loss {c['log_loss']:.4f}"
    )


def _label_grid(findings: Findings, path: Path) -> bool:
    """Each suspect (red, a row) beside its nearest training images of the given class and of the suggested one."""
    inv = findings.inventory
    suspects = findings.labels.top(GRID_ISSUES) if findings.labels is not None else []
    if not suspects or not any(s.flagged for s in suspects):
        return False
    with_neighbours = any(i.nearest for i in suspects)
    images, titles, colors = [], [], []
    blank = torch.zeros_like(torch.as_tensor(inv.images[0]))
    for issue in suspects:
        given, suggested = inv.classes[issue.given], inv.classes[issue.suggested]
        images.append(torch.as_tensor(inv.images[issue.index]))
        titles.append(f"#{issue.rank} {given}?\nlooks {suggested} {issue.suggested_probability:.2f}")
        colors.append("red" if issue.flagged else "darkorange")
        if not with_neighbours:
            continue
        for side, name in (("given", given), ("suggested", suggested)):
            found = issue.nearest.get(side, [])[:NEIGHBOURS]
            images += [torch.as_tensor(inv.images[i]) for i in found] + [blank] * (NEIGHBOURS - len(found))
            titles += [f"a {name}" for _ in found] + [""] * (NEIGHBOURS - len(found))
            colors += ["black"] * NEIGHBOURS
    title = "likely label errors: flagged (red), past confident learning's cut (orange)" + (
        f"\neach beside its {NEIGHBOURS} nearest training images of the given class, then of the suggested class"
        if with_neighbours
        else ": given label? and what the model sees"
    )
    plot_image_grid(torch.stack(images), titles, path, colors, title, 1 + 2 * NEIGHBOURS if with_neighbours else 6)
    return True


def _duplicate_grid(findings: Findings, path: Path) -> bool:
    inv = findings.inventory
    groups = _ordered(findings)[:GRID_GROUPS]
    if not groups:
        return False
    pairs = [i for g in groups for i in g.members[:2]]
    titles = [
        f"{g.kind} {'LEAK ' if g.spans_splits(inv) else ''}\n{inv.classes[int(inv.labels[i])]}, {inv.splits[i]}"
        for g in groups
        for i in g.members[:2]
    ]
    colors = ["red" if g.spans_splits(inv) or g.spans_classes(inv) else "black" for g in groups for _ in g.members[:2]]
    plot_image_grid(torch.stack([inv.images[i] for i in pairs]), titles, path, colors, "duplicates, two of each group")
    return True


def _page(findings: Findings, out: Path, grids: dict[str, bool]) -> Path:
    found = findings.to_dict()
    page = HtmlReport(f"data doctor: {findings.inventory.name}", summary(findings).splitlines()[0])
    add_section(page, found, out, grids)
    return page.write(out / PAGE)


def add_section(page: HtmlReport, found: dict[str, Any], folder: Path, grids: dict[str, bool] | None = None) -> None:
    """The doctor's findings as a section of an HTML page (its own, or a run's report)."""
    root = found.get("root", "")
    page.section("Data health")
    page.table(
        Table(
            ["class", "train", "val", "test", "common sizes", "modes", "odd files"],
            [
                [
                    r["class"],
                    r["train"],
                    r["val"],
                    r["test"],
                    ", ".join(r["sizes"]),
                    ", ".join(r["modes"]),
                    ", ".join(f"{n} {k}" for k, n in r["odd"].items()),
                ]
                for r in found["class_summary"]
            ],
        )
    )
    if found["odd_files"]:
        page.text(f"{len(found['odd_files'])} odd file(s): unusable, or unlike the rest of the data:")
        page.table(
            Table(
                ["file", "class", "kind", "detail"],
                [[o["path"], o["label"], o["kind"], o["detail"]] for o in found["odd_files"][:50]],
            )
        )
    page.text(
        f"{len(found['duplicates'])} duplicate group(s), {len(found['leaks'])} across splits (a test image also "
        f"trained on inflates accuracy), {len(found['cross_class'])} under two labels."
    )
    harmful = sorted(found["duplicates"], key=lambda g: (len(set(g["splits"])) == 1, len(set(g["labels"])) == 1))
    if harmful:
        page.table(
            Table(
                ["kind", "files", "classes", "splits"],
                [
                    [g["kind"], "; ".join(g["paths"]), ", ".join(g["labels"]), ", ".join(g["splits"])]
                    for g in harmful[:30]
                ],
            )
        )
    if grids is None or grids.get(DUPLICATE_GRID):
        page.figure(folder / DUPLICATE_GRID, "duplicates: leaks and cross-class groups (red) first")
    issues = found["label_issues"]
    if issues is not None:
        model = found.get("label_model", {})
        if model:  # doctor.json before imgclf 0.4 lacks the model's strength
            page.text(f"Label check by {model['used']}. Held-out (out-of-fold) strength of the models tried:")
            page.table(
                Table(
                    ["model", "accuracy", "balanced accuracy", "calibration error", "log loss"],
                    [
                        [
                            c["model"],
                            f"{c['accuracy']:.4f}",
                            f"{c['balanced_accuracy']:.4f}",
                            f"{c['calibration_error']:.4f}",
                            f"{c['log_loss']:.4f}",
                        ]
                        for c in model.get("candidates", [])
                    ],
                )  # fmt: skip
            )
            if model.get("mirror_note"):
                page.text(model["mirror_note"], muted=True)
        if not found.get("label_issues_trusted", True):
            page.text(
                "WEAK: the model behind these findings is wrong on more than 1 image in 10 it did not train on, "
                "so most images below are more likely its mistakes than label errors; `--fix` leaves them out."
            )
        estimated = found.get("label_errors_estimated")
        page.text(
            f"{len(issues)} likely label error(s) flagged by confident learning"
            + (f", which estimates {estimated} wrong labels in all" if estimated is not None else "")
            + f"; {JSON} ranks every image (label_ranking), most likely wrong first."
        )
        ranking = found.get("label_ranking") or [{**r, "flagged": True} for r in issues]
        disputed = [(n, r) for n, r in enumerate(ranking, start=1) if r["flagged"] or r["given"] != r["suggested"]]
        page.text("The first images of the ranking whose label the model disputes, flagged or past the cut:")
        rows = [
            [n, shown(r["path"], root), r["given"], r["suggested"], f"{r['given_probability']:.2f}", r["flagged"]]
            for n, r in disputed[:50]
        ]
        for row in rows:
            row[-1] = "yes" if row[-1] else "no: past the cut"
        page.table(Table(["rank", "file", "given", "suggested", "p(given)", "flagged"], rows))
        if grids is None or grids.get(LABEL_GRID):
            page.figure(
                folder / LABEL_GRID,
                "the ranking's first images: flagged label errors (red), then those past confident learning's cut "
                "(orange), each beside the nearest training images of its given class and of the suggested one",
            )
    for note in found["notes"]:
        page.text(note, muted=True)


def write_fix(findings: Findings, out: Path) -> tuple[Path, Path]:
    """moves.csv (each likely label error: the file, its folder now, the suggested one) and exclude.txt:
    the files that training is better without: label errors (unless the findings are weak), every copy but the first of a duplicate
    group, and a leak's copies outside its test or validation side. Nothing is moved or deleted."""
    inv, found = findings.inventory, findings.to_dict()
    # weak label findings (a model wrong on over 1 in 10 held-out images) are shown, never acted on
    acted = (found["label_issues"] or []) if found.get("label_issues_trusted", True) else []
    with atomic_open(out / MOVES, "w") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["file", "given", "suggested", "p_suggested"])
        for row in acted:
            writer.writerow([row["path"], row["given"], row["suggested"], row["suggested_probability"]])
    excluded = {row["path"] for row in acted}
    for group in findings.duplicates:
        held = [i for i in group.members if inv.splits[i] != "train"]
        keep = held if held else group.members[:1]  # a leak keeps its held-out copies: the test stays honest
        excluded |= {inv.ids[i] for i in group.members if i not in keep}
        if group.spans_classes(inv):  # one image, two labels: no copy can be trusted
            excluded |= {inv.ids[i] for i in group.members}
    atomic_write_text(out / EXCLUDE, "".join(f"{path}\n" for path in sorted(excluded)))
    return out / MOVES, out / EXCLUDE


def write_findings(findings: Findings, out: Path, fix: bool = False) -> dict[str, Path]:
    """doctor.json, the grids, the HTML page, and with ``fix`` moves.csv and exclude.txt, in ``out``."""
    make_dir(out, "out")
    atomic_write_json(out / JSON, findings.to_dict())
    grids = {
        LABEL_GRID: _label_grid(findings, out / LABEL_GRID),
        DUPLICATE_GRID: _duplicate_grid(findings, out / DUPLICATE_GRID),
    }
    written = {"json": out / JSON, "page": _page(findings, out, grids)}
    written.update({name: out / name for name, made in grids.items() if made})
    if fix:
        written["moves"], written["exclude"] = write_fix(findings, out)
    return written

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
from .checks import DuplicateGroup, Findings

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
        f"duplicates: {kinds['exact']} exact and {kinds['near']} near group(s); {len(findings.leaks)} across splits "
        f"(leaks), {len(findings.cross_class)} across classes"
    )
    for group in _ordered(findings)[:SHOWN]:
        g = group.to_dict(inv)
        members = zip(g["paths"], g["labels"], g["splits"])
        lines.append(f"  {group.kind}: " + "  ".join(f"{shown(p, inv.root)} [{lbl}, {s}]" for p, lbl, s in members))
    if findings.issues is not None:
        lines.append(f"likely label errors: {len(findings.issues)} (most likely first)")
        for row in (found["label_issues"] or [])[:SHOWN]:
            lines.append(
                f"  {shown(row['path'], inv.root)}: labelled {row['given']} ({row['given_probability']:.2f}), "
                f"looks like {row['suggested']} ({row['suggested_probability']:.2f})"
            )
    lines += findings.notes
    return "\n".join(lines)


def _label_grid(findings: Findings, path: Path) -> bool:
    inv = findings.inventory
    shown = (findings.issues or [])[:GRID_ISSUES]
    if not shown:
        return False
    titles = [f"{inv.classes[i.given]}?\nlooks {inv.classes[i.suggested]} {i.suggested_probability:.2f}" for i in shown]
    images = torch.stack([inv.images[i.index] for i in shown])
    plot_image_grid(images, titles, path, suptitle="likely label errors: given label? and what the model sees")
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
        page.text(f"{len(issues)} likely label error(s), ranked by confident learning (cleanlab):")
        page.table(
            Table(
                ["file", "given", "suggested", "p(suggested)"],
                [
                    [shown(r["path"], root), r["given"], r["suggested"], f"{r['suggested_probability']:.2f}"]
                    for r in issues[:50]
                ],
            )
        )
        if grids is None or grids.get(LABEL_GRID):
            page.figure(folder / LABEL_GRID, "likely label errors, most likely first")
    for note in found["notes"]:
        page.text(note, muted=True)


def write_fix(findings: Findings, out: Path) -> tuple[Path, Path]:
    """moves.csv (each likely label error: the file, its folder now, the suggested one) and exclude.txt:
    the files that training is better without: label errors, every copy but the first of a duplicate
    group, and a leak's copies outside its test or validation side. Nothing is moved or deleted."""
    inv, found = findings.inventory, findings.to_dict()
    with atomic_open(out / MOVES, "w") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["file", "given", "suggested", "p_suggested"])
        for row in found["label_issues"] or []:
            writer.writerow([row["path"], row["given"], row["suggested"], row["suggested_probability"]])
    excluded = {row["path"] for row in found["label_issues"] or []}
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

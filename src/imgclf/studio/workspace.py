"""The studio's folder (DIR): every path a request names is relative to it and must stay inside it, the runs
and the data folders found in it, and the studio's own files (``DIR/.imgclf-studio``).

A path is resolved (symbolic links followed) before it is checked, so neither ``..`` nor a link pointing out of
DIR reaches a file outside it; a name the studio creates (a run, a dataset, a class) is one plain folder name.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ..rundir import BEST, CONFIG, LAST, METRICS, STATUS, RunDir
from ..runs import RunInfo, run_info, state_of

STUDIO = ".imgclf-studio"  # jobs, their logs, the doctor's findings and the review's decisions
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
RUN_MARKS = (CONFIG, STATUS, BEST, LAST)
DEPTH = 2  # runs and data folders are looked for in DIR and one level down (DIR/runs/NAME, DIR/data/NAME)
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.+-]{0,63}")  # one folder name: no separator, no leading dot


class OutsideFolder(ValueError):
    """A request named a path outside the studio's folder (or one that does not exist)."""


def check_name(name: str, what: str) -> str:
    """``name`` as one plain folder name, or a one-line refusal naming ``what`` it was for."""
    name = name.strip()
    if not NAME.fullmatch(name) or name.endswith(".") or ".." in name:
        raise ValueError(
            f"{what} {name!r}: use letters, digits, spaces, '_', '-', '+' or '.' (up to 64, starting with a letter "
            "or digit)"
        )
    return name


@dataclass
class DataFolder:
    path: str  # relative to DIR
    classes: dict[str, int]  # class sub-folder: images in it

    @property
    def images(self) -> int:
        return sum(self.classes.values())


class Workspace:
    """DIR, and every path of a request checked against it."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser().resolve()
        self._known: dict[Path, tuple[tuple[int, ...], RunInfo]] = {}
        if not self.root.is_dir():
            raise FileNotFoundError(f"{root}: no such folder; name a folder of runs and images (default: .)")

    @property
    def studio(self) -> Path:
        return self.root / STUDIO

    def path(self, relative: str, must_exist: bool = True) -> Path:
        """``relative`` (to DIR) as an absolute path inside DIR, or :class:`OutsideFolder`."""
        if not relative or "\0" in relative or Path(relative).is_absolute():
            raise OutsideFolder(f"{relative!r}: name a path inside the studio's folder, relative to it")
        resolved = (self.root / relative).resolve()
        if not resolved.is_relative_to(self.root):
            raise OutsideFolder(f"{relative}: outside the studio's folder")
        if must_exist and not resolved.exists():
            raise OutsideFolder(f"{relative}: no such file or folder in the studio's folder")
        return resolved

    def relative(self, path: str | os.PathLike) -> str | None:
        """``path`` relative to DIR, or None where it lies outside (a run's data elsewhere on the machine)."""
        resolved = Path(path).expanduser().resolve()
        return resolved.relative_to(self.root).as_posix() if resolved.is_relative_to(self.root) else None

    def folders(self) -> list[Path]:
        """DIR's folders to DEPTH levels, hidden ones (and the studio's own) left out, runs not descended into."""
        found, level = [], [self.root]
        for _ in range(DEPTH):
            below = []
            for folder in level:
                try:
                    children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
                except OSError:
                    continue
                found += children
                below += [c for c in children if not is_run(c)]
            level = below
        return found

    def runs(self) -> list[RunInfo]:
        """Every run in DIR and a level down, the most recently updated first."""
        runs = [self.run_info(p) for p in self.folders() if is_run(p)]
        return sorted(runs, key=lambda r: (r.updated or "", str(r.path)), reverse=True)

    def run_info(self, path: Path) -> RunInfo:
        """A run's info, read again only when one of its files changed (8 pages following a live run would
        otherwise parse every config.yaml twice a second each); a `running` one's process is checked each time."""
        stamps = tuple(_stamp(path / name) for name in (STATUS, CONFIG, METRICS, BEST, LAST))
        cached = self._known.get(path)
        if cached is None or cached[0] != stamps:
            cached = self._known[path] = (stamps, run_info(RunDir(path, writes=False)))
        info = cached[1]
        if info.state == "running":
            status = RunDir(path, writes=False).read_status()
            info = replace(info, state=state_of(status) if status else info.state)
        return info

    def run(self, relative: str) -> RunDir:
        path = self.path(relative)
        if not is_run(path):
            raise OutsideFolder(f"{relative}: not a run directory (no {CONFIG}, {STATUS} or checkpoint)")
        return RunDir(path, writes=False)

    def data_folders(self) -> list[DataFolder]:
        """Folders of class sub-folders holding images (what `imgclf train --data FOLDER` reads)."""
        found = []
        for folder in self.folders():
            if is_run(folder):
                continue
            classes = class_counts(folder)
            if classes and any(classes.values()):
                found.append(DataFolder(folder.relative_to(self.root).as_posix(), classes))
        return found

    def data_folder(self, relative: str) -> DataFolder:
        path = self.path(relative)
        if not path.is_dir():
            raise OutsideFolder(f"{relative}: not a folder")
        return DataFolder(path.relative_to(self.root).as_posix(), class_counts(path))

    def info(self, run: RunInfo) -> dict[str, Any]:
        """A run as the API lists it: its path relative to DIR, the data relative to DIR where it lies inside."""
        data = self.relative(run.data) if Path(run.data).is_absolute() else None  # config.yaml: folders absolute
        return {**asdict(run), "path": self.relative(run.path), "data": data or run.data, "data_in_folder": data}


def _stamp(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


def is_run(folder: Path) -> bool:
    return any((folder / mark).is_file() for mark in RUN_MARKS)


def class_counts(folder: Path) -> dict[str, int]:
    """Each sub-folder's image files (by suffix: counting, not decoding), none for a folder with no sub-folders."""
    counts = {}
    try:
        subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return {}
    for sub in subfolders:
        try:
            counts[sub.name] = sum(1 for f in sub.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        except OSError:
            counts[sub.name] = 0
    return counts

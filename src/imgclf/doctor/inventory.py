"""What the doctor examines: every image of a dataset with its label, the split training would put it in,
its content hash, its header facts (files), and its decoded pixels (through the training decode cache)."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from ..config import DataConfig
from ..data.folder import decode_folder, decode_size, source_parts, task_of_parts
from ..data.prepare import load_data, resolve_source
from ..errors import DataError
from ..tasks import SINGLE_LABEL, Task


@dataclass
class FileFacts:
    """A file's size and what its header says (None where it cannot be read)."""

    path: str
    label: int
    bytes: int
    width: int | None = None
    height: int | None = None
    mode: str | None = None
    format: str | None = None


@dataclass
class Inventory:
    name: str
    kind: str  # folder | csv | builtin
    classes: list[str]
    ids: list[str]  # each usable image: its file, or "split/index" for built-in data
    labels: torch.Tensor  # int64, per usable image
    splits: list[str]  # train | val | test, as training would split
    images: torch.Tensor  # N x C x S x S uint8 (memory-mapped for large folders)
    content: list[str]  # sha1 of each file's bytes (of the pixels for built-in data)
    facts: list[FileFacts] = field(default_factory=list)  # every file, usable or not (folders and CSVs)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # unusable files and why
    hflip: bool = True
    size_note: str = ""
    root: str = ""  # the data folder (the CSV's images folder): paths are shown relative to it
    task: Task = SINGLE_LABEL  # the source's labels' (several per image: ``classes`` are the label sets found)

    def __len__(self) -> int:
        return len(self.ids)


def _facts(path: Path, label: int) -> FileFacts:
    facts = FileFacts(str(path.resolve()), label, os.stat(path).st_size)
    try:
        with Image.open(path) as img:  # the header only
            facts.width, facts.height = img.size
            facts.mode, facts.format = img.mode, img.format
    except Exception:  # noqa: BLE001  an unreadable file has no facts; decoding names the reason
        pass
    return facts


def _sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def _files(cfg: DataConfig, name: str, kind: str, size_cap: int) -> Inventory:
    parts, classes = source_parts(cfg)
    paths = [p for files, _ in parts.values() for p in files]
    labels = [y for _, ys in parts.values() for y in ys]
    task = task_of_parts(parts)
    # several labels per image: each label set is a "class" here, so duplicates and leaks are found as for classes
    if labels:
        as_classes, classes = task.as_one_class(torch.tensor(labels), classes)
        labels = as_classes.tolist()
    splits = [split for split, (files, _) in parts.items() for _ in files]
    size, size_note = decode_size(cfg, paths, size_cap)
    decoded = decode_folder(cfg, paths, size)  # the pixels training sees, from the same cache
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        facts = list(pool.map(_facts, paths, labels))
        content = list(pool.map(_sha1, [paths[i] for i in decoded.kept]))
    kept = decoded.kept
    return Inventory(
        name,
        kind,
        classes,
        [str(paths[i].resolve()) for i in kept],  # absolute: exclude.txt and moves.csv work from anywhere
        torch.tensor([labels[i] for i in kept], dtype=torch.long),
        [splits[i] for i in kept],
        decoded.images,
        content,
        facts,
        [(str(Path(p).resolve()), reason) for p, reason in decoded.skipped],
        size_note=size_note,
        root=str(
            (Path(cfg.images) if cfg.images else Path(cfg.data).parent if kind == "csv" else Path(cfg.data))
            .expanduser()
            .resolve()
        ),
        task=task,
    )


def _builtin(cfg: DataConfig, name: str) -> Inventory:
    data = load_data(cfg)
    splits = {"train": data.train, "val": data.val, "test": data.test}
    ids = [f"{split}/{i}" for split, part in splits.items() for i in range(len(part))]
    images = torch.cat([part.images for part in splits.values()])
    content = [hashlib.sha1(image.numpy().tobytes()).hexdigest() for image in images]
    return Inventory(
        name,
        "builtin",
        data.classes,
        ids,
        torch.cat([part.labels for part in splits.values()]),
        [split for split, part in splits.items() for _ in range(len(part))],
        images,
        content,
        hflip=data.hflip,
    )


def take_inventory(cfg: DataConfig, size_cap: int) -> Inventory:
    """Every image of the dataset ``cfg`` names, split as training with ``cfg`` would split it."""
    name, kind, _ = resolve_source(cfg, size_cap)
    if kind == "shards":
        raise DataError(f"{cfg.data}: packed shards; run the doctor on the folder or CSV they were packed from")
    return _builtin(cfg, name) if kind == "builtin" else _files(cfg, name, kind, size_cap)

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
from ..data.cache import decode_cached
from ..data.folder import SIZE_CAP, choose_image_size, source_parts
from ..data.prepare import load_data, resolve_source
from ..errors import DataError


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
    multi_label: bool = False  # several labels per image: ``classes`` are the label sets found (a;b, or "-")

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
    multi_label = bool(labels) and isinstance(labels[0], list)
    if multi_label:  # each label set is a "class" here: duplicates across sets and leaks are found as for classes
        sets = [";".join(c for c, on in zip(classes, row) if on) or "-" for row in labels]
        classes = sorted(set(sets))
        labels = [classes.index(s) for s in sets]
    splits = [split for split, (files, _) in parts.items() for _ in files]
    size, size_note = (
        (cfg.image_size, "") if cfg.image_size else choose_image_size(paths, size_cap, cfg.max_image_pixels)
    )
    data_dir = Path(cfg.data_dir).expanduser()
    decoded = decode_cached(
        paths,
        size,
        data_dir / "cache" if cfg.cache else None,
        Path(cfg.data).expanduser().resolve().name,
        cfg.max_image_pixels,
        cfg.storage,
        data_dir,
        cfg.resize,  # the doctor sees the pixels training sees
    )
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
        multi_label=multi_label,
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


def take_inventory(cfg: DataConfig, size_cap: int = SIZE_CAP) -> Inventory:
    """Every image of the dataset ``cfg`` names, split as training with ``cfg`` would split it."""
    name, kind, _ = resolve_source(cfg, size_cap)
    if kind == "shards":
        raise DataError(f"{cfg.data}: packed shards; run the doctor on the folder or CSV they were packed from")
    return _builtin(cfg, name) if kind == "builtin" else _files(cfg, name, kind, size_cap)

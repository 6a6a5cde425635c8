"""A user's own images: a folder of class sub-folders (optionally split into train/val/test) or a CSV.

Files are decoded once, in parallel, resized to the run's image size and kept as one uint8 tensor. Unless
`image_size` is set, that size fits the images: their own when they share one, else the median shorter
side, in both cases at most the recipe's cap (a 4,000-pixel photo trains at the cap, not at full size).
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
from collections.abc import Callable
from pathlib import Path

import torch

from ..config import DataConfig
from ..errors import DataError
from ..tasks import LABEL_SEPARATOR, Task, get_task
from .cache import DecodedImages, decode_cached
from .images import IMAGE_SUFFIXES, SIZE_SAMPLE, sample_dimensions, visible_files
from .registry import RawDataset, Split, register_source, training_images
from .shards import is_shards
from .splits import split_by_task

MIN_SIZE = 8  # smallest default image size: the conv models need a few pixels to pool
FILE_COLUMNS = ("file", "filename", "image", "image_id", "path", "id", "name")
LABEL_COLUMNS = ("label", "class", "target", "category", "y")
MULTI_LABEL_COLUMNS = ("labels", "tags")  # several labels per image, separated by LABEL_SEPARATOR; empty: none
SPLIT_NAMES = ("train", "val", "test")
Parts = dict[str, tuple[list[Path], list]]  # split -> (files, labels: class indices, or 0/1 rows for several labels)


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _files_by_class(folder: Path) -> dict[str, list[Path]]:
    """Every visible file under each class sub-folder (as predict finds them); undecodable ones are skipped
    later, with a reason."""
    return {d.name: visible_files(d) for d in _class_dirs(folder)}


def choose_image_size(paths: list[Path], cap: int, max_pixels: int) -> tuple[int, str]:
    """The default image size for these files and the reason, from the headers of a sample of them."""
    dimensions = sample_dimensions(paths, max_pixels, SIZE_SAMPLE)
    if not dimensions:
        return cap, f"image size {cap}: no image header could be read"
    n = len(dimensions)  # headers read: a sample of a large folder, without unreadable files and bombs
    if n == len(paths):
        sampled = f"all {n:,}"
    elif len(paths) > SIZE_SAMPLE:
        sampled = f"a sample of {n:,} from {len(paths):,} files"
    else:
        sampled = f"{n:,} readable of {len(paths):,} files"
    sides = sorted(min(d) for d in dimensions)
    if len(set(dimensions)) == 1:
        width, height = dimensions[0]
        own, why = min(width, height), f"the images ({sampled}) are all {width}x{height}"
    else:
        own = sides[len(sides) // 2]
        why = f"the median shorter side of the images ({sampled}) is {own} (from {sides[0]} to {sides[-1]})"
    size = min(max(own, MIN_SIZE), cap)
    limit = f", capped at {cap} by the recipe" if own > cap else f", raised to {MIN_SIZE}" if own < MIN_SIZE else ""
    return size, f"image size {size}: {why}{limit}; set `image_size` to change it"


def decode_size(cfg: DataConfig, paths: list[Path], size_cap: int) -> tuple[int, str]:
    """The size a folder's files decode at: `image_size`, else their own (at most ``size_cap``), with why."""
    return (cfg.image_size, "") if cfg.image_size else choose_image_size(paths, size_cap, cfg.max_image_pixels)


def decode_folder(cfg: DataConfig, paths: list[Path], size: int) -> DecodedImages:
    """``paths`` decoded at ``size`` as ``cfg`` says, through the decode cache in its data dir."""
    data_dir = Path(cfg.data_dir).expanduser()
    label = Path(cfg.data).expanduser().resolve().name
    return decode_cached(paths, cfg.decode_spec(size), cfg.cache_dir, label, cfg.storage, data_dir)


def _check_classes(where: Path, by_class: dict[str, list[Path]]) -> None:
    if not by_class:
        loose = [p for p in where.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
        hint = f" (found {len(loose)} loose images)" if loose else ""
        raise DataError(f"{where}: no class sub-folders{hint}; put each class's images in {where}/<class name>/")
    empty = [name for name, files in by_class.items() if not files]
    if len(by_class) - len(empty) < 2:
        raise DataError(
            f"{where}: needs at least two class sub-folders with images, found "
            f"{', '.join(by_class) or 'none'}; add a sub-folder for each class"
        )
    if empty:
        raise DataError(f"{where}: class folder(s) {', '.join(empty)} hold no files; add images or remove them")


def hold_out(cfg: DataConfig, parts: Parts) -> Parts:
    """The splits a source lacks, held out of its training files (stratified, seeded as ``load_data`` does for
    built-in data), so that each split is one contiguous run of the decoded file: a view, never a copy."""

    def take(files: list[Path], labels: list[int], index: torch.Tensor) -> tuple[list[Path], list[int]]:
        return [files[i] for i in index.tolist()], [labels[i] for i in index.tolist()]

    parts = dict(parts)
    for name, fraction, seed in (("test", cfg.test_split, cfg.seed), ("val", cfg.val_split, cfg.seed + 1)):
        if name not in parts:
            files, labels = parts["train"]
            kept, held = split_by_task(torch.tensor(labels, dtype=torch.long), fraction, seed)  # N or N x classes
            parts["train"], parts[name] = take(files, labels, kept), take(files, labels, held)
    return {name: parts[name] for name in SPLIT_NAMES}


def _decode_splits(cfg: DataConfig, parts: Parts, classes: list[str], size_cap: int) -> RawDataset:
    """Decode all splits together (so one channel count fits all) and drop unusable files."""
    parts = hold_out(cfg, parts)
    paths = [p for files, _ in parts.values() for p in files]
    size, size_note = decode_size(cfg, paths, size_cap)
    decoded = decode_folder(cfg, paths, size)
    labels = torch.tensor([y for _, ys in parts.values() for y in ys], dtype=torch.long)[decoded.kept]
    if labels.dim() == 2:  # several labels per image: 0/1 rows, as the losses take them
        labels = labels.float()
    owner = torch.tensor([i for i, (files, _) in enumerate(parts.values()) for _ in files], dtype=torch.long)
    counts = torch.bincount(owner[decoded.kept], minlength=len(parts)).tolist()
    sources = [str(paths[i]) for i in decoded.kept]
    bounds = [0, *itertools.accumulate(counts)]
    splits = {  # kept indices ascend and the parts are in order: each split is a slice (a view of a mapped file)
        name: Split(decoded.images[lo:hi], labels[lo:hi], sources[lo:hi], decoded.storage == "mmap")
        for name, lo, hi in zip(parts, bounds, bounds[1:])
    }
    if len(splits["train"]) == 0:
        raise DataError(f"{cfg.data}: none of the {len(paths)} files could be read as an image; check the folder")
    return RawDataset(
        classes=classes,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        skipped=decoded.skipped,
        from_cache=decoded.from_cache,
        size_note=size_note,
        storage_note=decoded.note,
    )


def folder_parts(cfg: DataConfig) -> tuple[Parts, list[str]]:
    """A folder's files and labels by split (train, and val/test where the folder has them), and its classes."""
    root = Path(cfg.data).expanduser()
    if (root / "train").is_dir():
        by_split = {name: _files_by_class(root / name) for name in SPLIT_NAMES if (root / name).is_dir()}
        _check_classes(root / "train", by_split["train"])
        classes = list(by_split["train"])
        for name, by_class in by_split.items():
            extra = sorted(set(by_class) - set(classes))
            if extra:
                raise DataError(
                    f"{root / name}: class(es) {', '.join(extra)} are not in {root / 'train'}; add them there or remove them"
                )
    else:
        by_split = {"train": _files_by_class(root)}
        _check_classes(root, by_split["train"])
        classes = list(by_split["train"])
    parts = {
        name: (
            [f for c in classes for f in by_class.get(c, [])],
            [i for i, c in enumerate(classes) for _ in by_class.get(c, [])],
        )
        for name, by_class in by_split.items()
    }
    return parts, classes


def _plain_folder(path: Path) -> bool:
    return path.is_dir() and not is_shards(path)


@register_source(
    "folder",
    "PATH/",
    "a folder with one sub-folder per class (or train/, val/, test/ each holding them)",
    matches=_plain_folder,
    searched=True,
)
def load_folder(cfg: DataConfig, size_cap: int) -> RawDataset:
    parts, classes = folder_parts(cfg)
    return _decode_splits(cfg, excluding(cfg, parts), classes, size_cap)


def _pick_column(header: list[str], candidates: tuple[str, ...]) -> str | None:
    lowered = {h.strip().lower(): h for h in header}
    return next((lowered[c] for c in candidates if c in lowered), None)


def _resolve_file(folder: Path, name: str) -> Path | None:
    path = folder / name
    if path.is_file():
        return path
    if not path.suffix:  # "identify the apparels" CSVs name images by id: 1 -> 1.png
        for suffix in (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif"):
            if path.with_suffix(suffix).is_file():
                return path.with_suffix(suffix)
    return None


def _class_order(labels: set[str]) -> list[str]:
    if all(label.lstrip("-").isdigit() for label in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def _read_csv(csv_path: Path) -> tuple[list[dict[str, str]], list[str]]:
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
            header = list(rows[0].keys()) if rows else []
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(
            f"{csv_path}: not a readable CSV ({exc}); save it as UTF-8 text with a header row file,label"
        ) from None
    if not rows:
        raise DataError(f"{csv_path}: no rows; it needs a header (file,label) and one row per image")
    return rows, header


def _label_reader(csv_path: Path, header: list[str], file_col: str) -> tuple[str, Callable[[dict[str, str]], object]]:
    """How a row's labels are read: the kind (one class, a `;`-list, or 0/1 columns) and a reader."""
    label_col = _pick_column(header, LABEL_COLUMNS)
    if label_col is not None:
        return "single", lambda row: (row.get(label_col) or "").strip()
    multi_col = _pick_column(header, MULTI_LABEL_COLUMNS)
    if multi_col is not None:

        def split_labels(row: dict[str, str]) -> object:
            return frozenset(t.strip() for t in (row.get(multi_col) or "").split(LABEL_SEPARATOR) if t.strip())

        return "list", split_labels
    columns = [h for h in header if h != file_col and h is not None]
    if len(columns) >= 2:
        return "columns", lambda row: tuple((row.get(c) or "").strip() for c in columns)
    raise DataError(
        f"{csv_path}: unknown columns {', '.join(header)}; name the image column 'file' and the class column "
        f"'label' (or 'labels' with several separated by '{LABEL_SEPARATOR}', or one 0/1 column per class)"
    )


def _label_rows(csv_path: Path, header: list[str], file_col: str, kind: str, values: list) -> tuple[list, list[str]]:
    """The rows' labels as class indices (one label) or 0/1 rows (several), and the classes."""
    if kind == "single":
        classes = _class_order(set(values))
        if len(classes) < 2:
            raise DataError(f"{csv_path}: every row has label {classes[0]!r}; a classifier needs at least two classes")
        index = {c: i for i, c in enumerate(classes)}
        return [index[v] for v in values], classes
    if kind == "columns":
        classes = [h for h in header if h != file_col and h is not None]
        odd = next(((i, v) for i, row in enumerate(values) for v in row if v not in ("0", "1")), None)
        if odd is not None:
            raise DataError(
                f"{csv_path}: row {odd[0] + 2} holds {odd[1]!r} in a class column; one column per class holds 0 or 1 "
                "(or name the class column 'label')"
            )
        return [[int(v) for v in row] for row in values], classes
    classes = _class_order(set().union(*values))
    if len(classes) < 2:
        raise DataError(
            f"{csv_path}: {len(classes)} distinct label(s) in the labels column; a classifier needs at least two"
        )
    index = {c: i for i, c in enumerate(classes)}
    return [[int(c in labels) for c in classes] for labels in values], classes


def csv_parts(cfg: DataConfig, duplicates: list[tuple[str, str]] | None = None) -> tuple[Parts, list[str]]:
    """A CSV's files and labels (one training split) and its classes. One label per row (a `label` column), or
    several: a `labels` column of names separated by `;` (empty: none), or one 0/1 column per class. Paths stay
    inside `images` (unless `images_outside`); a repeated row is read once (listed in ``duplicates``), one image
    with two different labels is refused."""
    csv_path = Path(cfg.data).expanduser()
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: no such CSV file; check the path")
    folder = Path(cfg.images).expanduser() if cfg.images else csv_path.parent
    if not folder.is_dir():
        raise DataError(f"`images` {folder}: no such folder; point it at the folder holding the CSV's images")
    rows, header = _read_csv(csv_path)
    file_col = _pick_column(header, FILE_COLUMNS)
    if file_col is None:
        raise DataError(
            f"{csv_path}: unknown columns {', '.join(header)}; name the image column 'file' and the class column 'label'"
        )
    kind, read_labels = _label_reader(csv_path, header, file_col)
    files, values, missing = [], [], []
    first_row: dict[Path, tuple[int, object]] = {}
    for number, row in enumerate(rows, start=2):  # the header is line 1
        name = (row.get(file_col) or "").strip()
        if name and not cfg.images_outside and not _inside(name):
            raise DataError(
                f"{csv_path}: row {number} names {name!r}, outside `images` {folder}; move the image into that "
                "folder, or pass `images_outside` (--images-outside) if you trust this CSV"
            )
        path = _resolve_file(folder, name) if name else None
        if path is None:
            missing.append(name or "<empty>")
            continue
        value = read_labels(row)
        key = path.resolve()
        if key in first_row:  # a second row for one image: it would land in two splits, or teach two answers
            earlier, earlier_value = first_row[key]
            if earlier_value != value:
                raise DataError(
                    f"{csv_path}: rows {earlier} and {number} give {name!r} different labels; keep one row per image"
                )
            if duplicates is not None:
                duplicates.append((str(path), f"row {number} repeats row {earlier} of {csv_path.name}: read once"))
            continue
        first_row[key] = (number, value)
        files.append(path)
        values.append(value)
    if missing:
        raise DataError(
            f"{csv_path}: {len(missing)} of {len(rows)} files are not in {folder} (e.g. {', '.join(missing[:3])}); "
            "fix the paths or pass `images=FOLDER`"
        )
    _check_separator(csv_path, kind, values)
    labels, classes = _label_rows(csv_path, header, file_col, kind, values)
    return {"train": (files, labels)}, classes


def _inside(name: str) -> bool:
    """Whether ``name`` (a CSV's path) stays in the images folder, read as written: ``..`` and absolute paths
    leave it (links inside the folder are the folder owner's and are followed)."""
    return not Path(name).is_absolute() and ".." not in Path(name).parts


LOOKALIKE_SEPARATORS = (",", "|", " ")  # what several labels are written with when ';' was meant


def _check_separator(csv_path: Path, kind: str, values: list) -> None:
    """Refuse labels that read as one compound class but are several joined by another separator than ';'
    (`plane,cat`): a value is taken as such where its parts are labels other rows give alone."""
    if kind == "columns":
        return
    whole = set(values) if kind == "single" else set().union(*values)  # the labels rows give
    never_several = kind == "list" and all(len(v) < 2 for v in values)  # no row uses ';' at all
    for number, value in enumerate(values, start=2):
        for label in [value] if isinstance(value, str) else sorted(value):
            for separator in LOOKALIKE_SEPARATORS:
                parts = [p.strip() for p in label.split(separator) if p.strip()]
                joined = all(p in whole for p in parts) or (never_several and separator != " ")
                if len(parts) > 1 and joined:
                    raise DataError(
                        f"{csv_path}: the labels {label!r} (row {number} or so) look like several joined by "
                        f"{separator!r}; put them in a 'labels' column separated by '{LABEL_SEPARATOR}'"
                    )


def _csv_name(path: Path) -> str:
    """A CSV's dataset name: its stem, or its folder's name for the usual train.csv and labels.csv."""
    return path.stem if path.stem not in ("train", "labels") else path.resolve().parent.name


@register_source(
    "csv",
    "FILE.csv",
    "a CSV of file,label (images in `images`, default the CSV's folder)",
    matches=lambda path: path.suffix.lower() == ".csv",
    name=_csv_name,
    searched=True,
)
def load_csv(cfg: DataConfig, size_cap: int) -> RawDataset:
    duplicates: list[tuple[str, str]] = []
    parts, classes = csv_parts(cfg, duplicates)
    raw = _decode_splits(cfg, excluding(cfg, parts), classes, size_cap)
    return dataclasses.replace(raw, skipped=duplicates + raw.skipped)


def task_of_parts(parts: Parts) -> Task:
    """The task a source's parsed labels call for: a list of 0/1 per image (several labels) or a class index."""
    first = next((ys[0] for _, ys in parts.values() if ys), 0)
    return get_task("multi_label" if isinstance(first, list) else "single_label")


def source_parts(cfg: DataConfig) -> tuple[Parts, list[str]]:
    """A folder's or CSV's files and labels in the train, val and test splits training uses, and the classes."""
    parts, classes = csv_parts(cfg) if Path(cfg.data).suffix.lower() == ".csv" else folder_parts(cfg)
    return hold_out(cfg, excluding(cfg, parts)), classes


def excluding(cfg: DataConfig, parts: Parts) -> Parts:
    """``parts`` without the files ``cfg.exclude`` lists (one a line, absolute or relative to the data folder)."""
    if not cfg.exclude:
        return parts
    listing = Path(cfg.exclude).expanduser()
    try:
        lines = [line.strip() for line in listing.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"`exclude` {listing}: cannot read it ({exc}); give a text file of paths, one a line") from None
    root = Path(cfg.data).expanduser()
    root = root.parent if root.suffix.lower() == ".csv" else root
    excluded = {str((root / line).resolve()) for line in lines if line and not line.startswith("#")}
    return {
        name: (
            [f for f in files if str(f.resolve()) not in excluded],
            [y for f, y in zip(files, labels) if str(f.resolve()) not in excluded],
        )
        for name, (files, labels) in parts.items()
    }


def count_training_files(cfg: DataConfig) -> int:
    """About how many training images a folder or CSV gives after the held-out splits, counted without
    decoding (what ``imgclf recipes --data PATH`` plans with)."""
    root = Path(cfg.data).expanduser()
    if root.suffix.lower() == ".csv":
        with open(root, newline="", encoding="utf-8-sig") as f:
            return training_images(max(sum(1 for _ in f) - 1, 0), cfg, hold_test=True)
    if (root / "train").is_dir():
        files = sum(len(v) for v in _files_by_class(root / "train").values())
        return training_images(files, cfg, hold_test=False, hold_val=not (root / "val").is_dir())
    return training_images(sum(len(v) for v in _files_by_class(root).values()), cfg, hold_test=True)

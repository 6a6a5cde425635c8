"""The doctor's findings: odd files, exact and near duplicates (within a class, across classes, across
splits), class balance and sizes, and likely label errors ranked by confident learning."""

from __future__ import annotations

import statistics
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..errors import ConfigError
from .inventory import Inventory

NEAR_DISTANCE = 4  # most differing bits of two 64-bit perceptual hashes that make a near-duplicate candidate
NEAR_PIXELS = 5.0  # ... confirmed when their pixels at the training size differ by at most 5 levels (of 255) on
# average: a re-encoded or rescaled copy differs by about 2; on Fashion-MNIST, two different shoes with close
# hashes by 20 (bench/doctor.py: hashes alone gave 1,746 near groups there for 100 planted; with this, 181)
BANDS = 5  # hashes are bucketed by 5 bands of ~13 bits: two within 4 bits share one band (pigeonhole)
BUCKET_LIMIT = 2000  # a band value shared by more images (blank, uniform ones) is compared in no pairs
TINY_FRACTION = 0.25  # shorter side under a quarter of the median shorter side (or under MIN_SIDE): tiny
MIN_SIDE = 8
HUGE_FACTOR = 4  # longer side over 4x the median longer side, and over HUGE_SIDE: huge
HUGE_SIDE = 1024
ODD_ASPECT = 3.0  # longer side over 3x the shorter: odd aspect (training centre-crops to a square)


def _missing(package: str) -> str:
    return f"needs {package}: pip install 'imgclf[doctor]'"


# ---------------------------------------------------------------- odd files


@dataclass
class OddFile:
    path: str
    label: str
    kind: str  # unreadable | tiny | huge | odd-aspect | odd-mode
    detail: str


def odd_files(inventory: Inventory) -> list[OddFile]:
    """Files training cannot use, and usable ones unlike the rest (measured against the dataset's medians)."""
    classes = inventory.classes
    found = [OddFile(path, _class_of(inventory, path), "unreadable", reason) for path, reason in inventory.skipped]
    readable = [(f, f.width, f.height) for f in inventory.facts if f.width and f.height]
    if not readable:
        return found
    short = statistics.median(min(w, h) for _, w, h in readable)
    long = statistics.median(max(w, h) for _, w, h in readable)
    usual_mode = Counter(f.mode for f, _, _ in readable).most_common(1)[0][0]
    for f, width, height in readable:
        side, longer, size, name = min(width, height), max(width, height), f"{width}x{height}", classes[f.label]
        if side < max(MIN_SIDE, TINY_FRACTION * short):
            found.append(OddFile(f.path, name, "tiny", f"{size} (median shorter side {short:g})"))
        if longer > max(HUGE_SIDE, HUGE_FACTOR * long):
            found.append(OddFile(f.path, name, "huge", f"{size} (median longer side {long:g})"))
        if longer > ODD_ASPECT * side:
            found.append(
                OddFile(
                    f.path,
                    name,
                    "odd-aspect",
                    f"{size}: {longer / side:.1f}:1; a centre crop loses its ends, `--resize pad` keeps the whole image",
                )
            )
        if f.mode != usual_mode:
            found.append(OddFile(f.path, name, "odd-mode", f"{f.mode} ({f.format}); most are {usual_mode}"))
    return found


def _class_of(inventory: Inventory, path: str) -> str:
    label = next((f.label for f in inventory.facts if f.path == path), None)
    return inventory.classes[label] if label is not None else "?"


# ---------------------------------------------------------------- duplicates


@dataclass
class DuplicateGroup:
    kind: str  # exact (same bytes) | near (perceptual hashes within NEAR_DISTANCE bits)
    members: list[int]  # indices into the inventory

    def to_dict(self, inventory: Inventory) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "paths": [inventory.ids[i] for i in self.members],
            "labels": [inventory.classes[int(inventory.labels[i])] for i in self.members],
            "splits": [inventory.splits[i] for i in self.members],
        }

    def spans_classes(self, inventory: Inventory) -> bool:
        return len({int(inventory.labels[i]) for i in self.members}) > 1

    def spans_splits(self, inventory: Inventory) -> bool:
        return len({inventory.splits[i] for i in self.members}) > 1


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]  # path halving
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        self.parent[self.find(a)] = self.find(b)

    def groups(self, members: Iterable[int]) -> list[list[int]]:
        by_root: dict[int, list[int]] = defaultdict(list)
        for i in members:
            by_root[self.find(i)].append(i)
        return [sorted(g) for g in by_root.values() if len(g) > 1]


def perceptual_hashes(images: torch.Tensor, chunk: int = 4096) -> np.ndarray:
    """Each image's 64-bit DCT perceptual hash (imagehash.phash) as a uint64."""
    try:
        import imagehash
    except ImportError:
        raise ConfigError(f"near duplicates {_missing('imagehash')}") from None
    hashes = np.empty(len(images), dtype=np.uint64)
    bar = tqdm(
        total=len(images), desc="perceptual hashes", unit="img", file=sys.stderr, disable=not sys.stderr.isatty()
    )
    for start in range(0, len(images), chunk):
        block = images[start : start + chunk]
        pixels = (block[:, 0] if block.shape[1] == 1 else block.permute(0, 2, 3, 1)).numpy()
        for i, array in enumerate(pixels):
            bits = imagehash.phash(Image.fromarray(array)).hash.flatten()
            hashes[start + i] = np.packbits(bits).view(">u8")[0]
        bar.update(len(block))
    bar.close()
    return hashes


def _popcount(x: np.ndarray) -> np.ndarray:
    return np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(1)


def _luma(images: torch.Tensor) -> torch.Tensor:
    """N x C x H x W uint8 as N x H x W float brightness (ITU-R 601 weights, as Pillow's "L")."""
    if images.shape[1] == 1:
        return images[:, 0].float()
    return torch.einsum("nchw,c->nhw", images.float(), torch.tensor([0.299, 0.587, 0.114]))


def _same_pixels(
    images: torch.Tensor, first: np.ndarray, second: np.ndarray, chunk: int = 1024
) -> list[tuple[int, int]]:
    """The candidate pairs whose images' brightness (luma) differs by at most NEAR_PIXELS levels on average;
    luma, because JPEG halves the colour resolution: a re-encoded saturated picture moves 6 levels in RGB, 1 in luma."""
    kept = []
    for start in range(0, len(first), chunk):
        a, b = first[start : start + chunk], second[start : start + chunk]
        difference = (_luma(images[a]) - _luma(images[b])).abs().flatten(1).mean(1)
        kept += [(int(i), int(j)) for i, j, d in zip(a, b, difference.tolist()) if d <= NEAR_PIXELS]
    return kept


def duplicate_groups(inventory: Inventory, hashes: np.ndarray | None) -> list[DuplicateGroup]:
    """Exact groups (same content hash), then near groups that are not already exact groups: perceptual
    hashes within NEAR_DISTANCE bits (found through bands, so no all-pairs comparison is needed) whose
    pixels agree within NEAR_PIXELS."""
    exact = _UnionFind(len(inventory))
    first: dict[str, int] = {}
    for i, digest in enumerate(inventory.content):
        if digest in first:
            exact.union(i, first[digest])
        else:
            first[digest] = i
    groups = [DuplicateGroup("exact", g) for g in exact.groups(range(len(inventory)))]
    if hashes is None:
        return groups
    near = _UnionFind(len(inventory))
    for i in range(len(inventory)):
        near.union(i, exact.find(i))  # exact copies are near too: a near group joins through them
    shifts = [round(b * 64 / BANDS) for b in range(BANDS + 1)]
    for low, high in zip(shifts, shifts[1:]):
        band = (hashes >> np.uint64(low)) & np.uint64((1 << (high - low)) - 1)
        buckets: dict[int, list[int]] = defaultdict(list)
        for i, value in enumerate(band.tolist()):
            buckets[value].append(i)
        for members in buckets.values():
            if 1 < len(members) <= BUCKET_LIMIT:
                index = np.array(members)
                distance = _popcount(hashes[index][:, None] ^ hashes[index][None, :]).reshape(len(index), len(index))
                a, b = np.nonzero(np.triu(distance <= NEAR_DISTANCE, k=1))
                for i, j in _same_pixels(inventory.images, index[a], index[b]):
                    near.union(i, j)
    exact_sets = {frozenset(g.members) for g in groups}
    groups += [DuplicateGroup("near", g) for g in near.groups(range(len(inventory))) if frozenset(g) not in exact_sets]
    return groups


# ---------------------------------------------------------------- label issues


@dataclass
class LabelIssue:
    index: int
    given: int
    suggested: int
    given_probability: float
    suggested_probability: float


def label_issues(labels: torch.Tensor, probs: torch.Tensor) -> list[LabelIssue]:
    """Likely label errors by confident learning (cleanlab's find_label_issues), most likely first."""
    try:
        from cleanlab.filter import find_label_issues
    except ImportError:
        raise ConfigError(f"label issues {_missing('cleanlab')}") from None
    probs_np = probs.double().numpy()
    probs_np = probs_np / probs_np.sum(1, keepdims=True)  # cleanlab checks that rows sum to 1 exactly
    ranked = find_label_issues(labels.numpy(), probs_np, return_indices_ranked_by="self_confidence")
    suggested = probs.argmax(1)
    return [
        LabelIssue(int(i), int(labels[i]), int(suggested[i]), float(probs[i, labels[i]]), float(probs[i, suggested[i]]))
        for i in ranked
    ]


# ---------------------------------------------------------------- the whole examination


@dataclass
class Findings:
    inventory: Inventory
    odd: list[OddFile]
    duplicates: list[DuplicateGroup]
    issues: list[LabelIssue] | None  # None: not looked for
    notes: list[str] = field(default_factory=list)  # what was left out and why

    @property
    def leaks(self) -> list[DuplicateGroup]:
        return [g for g in self.duplicates if g.spans_splits(self.inventory)]

    @property
    def cross_class(self) -> list[DuplicateGroup]:
        return [g for g in self.duplicates if g.spans_classes(self.inventory)]

    def class_summary(self) -> list[dict[str, Any]]:
        """Per class: images per split, and the sizes and modes of its files."""
        inv = self.inventory
        rows = []
        for c, name in enumerate(inv.classes):
            facts = [f for f in inv.facts if f.label == c and f.width]
            sizes = Counter(f"{f.width}x{f.height}" for f in facts)
            rows.append(
                {
                    "class": name,
                    **{
                        split: sum(1 for i, s in enumerate(inv.splits) if s == split and inv.labels[i] == c)
                        for split in ("train", "val", "test")
                    },
                    "sizes": dict(sizes.most_common(3)),
                    "modes": dict(Counter(f.mode for f in facts)),
                    "odd": dict(Counter(o.kind for o in self.odd if o.label == name)),
                }
            )
        return rows

    def to_dict(self) -> dict[str, Any]:
        inv = self.inventory
        return {
            "data": inv.name,
            "kind": inv.kind,
            "root": inv.root,  # the paths below are absolute; pages and the terminal show them relative to it
            "images": len(inv),
            "classes": inv.classes,
            "splits": dict(Counter(inv.splits)),
            "class_summary": self.class_summary(),
            "odd_files": [o.__dict__ for o in self.odd],
            "duplicates": [g.to_dict(inv) for g in self.duplicates],
            "leaks": [g.to_dict(inv) for g in self.leaks],
            "cross_class": [g.to_dict(inv) for g in self.cross_class],
            "label_issues": None
            if self.issues is None
            else [
                {
                    "path": inv.ids[i.index],
                    "given": inv.classes[i.given],
                    "suggested": inv.classes[i.suggested],
                    "given_probability": round(i.given_probability, 4),
                    "suggested_probability": round(i.suggested_probability, 4),
                    "split": inv.splits[i.index],
                }
                for i in self.issues
            ],
            "notes": self.notes,
        }


def examine(
    inventory: Inventory,
    probs: torch.Tensor | None,
    *,
    near: bool = True,
    log: Callable[[str], None] = lambda _: None,
) -> Findings:
    """Everything the doctor checks; ``probs`` (out-of-fold, N x classes) ranks the label issues."""
    notes: list[str] = []
    hashes = None
    if near:
        try:
            hashes = perceptual_hashes(inventory.images)
        except ConfigError as exc:
            notes.append(f"near duplicates not looked for: {exc}")
    log(f"hashed {len(inventory):,} images")
    duplicates = duplicate_groups(inventory, hashes)
    issues = None
    if probs is not None:
        try:
            issues = label_issues(inventory.labels, probs)
        except ConfigError as exc:
            notes.append(f"label issues not looked for: {exc}")
    return Findings(inventory, odd_files(inventory), duplicates, issues, notes)

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
from .confident import LabelCheck, check_labels
from .inventory import Inventory

NEAR_DISTANCE = 4  # most differing bits of two 64-bit perceptual hashes that make a near-duplicate candidate
NEAR_PIXELS = 12.0  # ... confirmed when their brightness at the training size differs by at most 12 levels (of
# 255) on average, and
NEAR_CORRELATION = 0.98  # ... their brightness patterns correlate at least this much (Pearson): measured by
# bench/near_duplicates.py on 300 planted copies (JPEG 90, JPEG 60, rescaled) in each of MNIST's and CIFAR-10's
# test sets, against every other candidate pair: precision 97% / 100%, recall 70% / 88%; imgclf 0.3's rule (5
# levels, no correlation) 17% / 100% and 67% / 76%: thin strokes on black differ by few levels on average
# whichever digit they draw, but do not correlate. lite0's embedding distance separated worse (AUROC 0.91 / 0.79
# against 0.998 / 0.93 for the correlation): upsampled small images' JPEG noise moves them
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


def pixel_agreement(images: torch.Tensor, first: np.ndarray, second: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pair: the mean brightness (luma) difference in levels, and the Pearson correlation of the two
    brightness patterns; luma, because JPEG halves the colour resolution: a re-encoded saturated picture moves
    6 levels in RGB, 1 in luma."""
    a, b = _luma(images[first]).flatten(1), _luma(images[second]).flatten(1)
    difference = (a - b).abs().mean(1)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    correlation = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-6)
    flat = (a.norm(dim=1) < 1e-3) & (b.norm(dim=1) < 1e-3)  # two uniform images: alike when their levels are
    return difference, torch.where(flat, torch.ones_like(correlation), correlation)


def _same_pixels(
    images: torch.Tensor, first: np.ndarray, second: np.ndarray, chunk: int = 1024
) -> list[tuple[int, int]]:
    """The candidate pairs whose brightness differs by at most NEAR_PIXELS levels on average and correlates
    at least NEAR_CORRELATION."""
    kept = []
    for start in range(0, len(first), chunk):
        a, b = first[start : start + chunk], second[start : start + chunk]
        difference, correlation = pixel_agreement(images, a, b)
        close = (difference <= NEAR_PIXELS) & (correlation >= NEAR_CORRELATION)
        kept += [(int(i), int(j)) for i, j, keep in zip(a, b, close.tolist()) if keep]
    return kept


def near_candidates(inventory: Inventory, hashes: np.ndarray) -> list[tuple[int, int]]:
    """Pairs whose perceptual hashes are within NEAR_DISTANCE bits (found through bands, so no all-pairs
    comparison is needed) and whose pixels agree (NEAR_PIXELS, NEAR_CORRELATION)."""
    pairs: set[tuple[int, int]] = set()
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
                fresh = [(int(i), int(j)) for i, j in zip(index[a], index[b]) if (int(i), int(j)) not in pairs]
                if fresh:
                    first, second = (np.array(side) for side in zip(*fresh))
                    pairs.update(_same_pixels(inventory.images, first, second))
    return sorted(pairs)


def duplicate_groups(inventory: Inventory, hashes: np.ndarray | None) -> list[DuplicateGroup]:
    """Exact groups (same content hash), then near groups that are not already exact groups: perceptual
    hashes within NEAR_DISTANCE bits (found through bands, so no all-pairs comparison is needed) whose
    pixels agree (NEAR_PIXELS, NEAR_CORRELATION)."""
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
    for i, j in near_candidates(inventory, hashes):
        near.union(i, j)
    exact_sets = {frozenset(g.members) for g in groups}
    groups += [DuplicateGroup("near", g) for g in near.groups(range(len(inventory))) if frozenset(g) not in exact_sets]
    return groups


# ---------------------------------------------------------------- label issues

NEIGHBOURS = 3  # nearest training images shown beside a suspect, of its given class and of the suggested one


@dataclass
class LabelIssue:
    index: int
    given: int
    suggested: int
    given_probability: float
    suggested_probability: float
    rank: int = 0  # its place in the full ranking, 1 = most likely wrong
    nearest: dict[str, list[int]] = field(default_factory=dict)  # "given"/"suggested": nearest training images
    flagged: bool = True  # confident learning's cut; the ranking goes on past it


@dataclass
class LabelFindings:
    """Confident learning on the doctor's out-of-fold probabilities: the flagged images, the count it
    believes wrong, every image ranked, and the strength of the model behind it all."""

    issues: list[LabelIssue]  # flagged, most likely wrong first
    check: LabelCheck
    probs: torch.Tensor
    model: dict[str, Any] = field(default_factory=dict)  # what DoctorModels.to_dict says, or the run used
    trusted: bool = True
    nearest: dict[int, dict[str, list[int]]] = field(default_factory=dict)  # the first of the ranking's neighbours

    def top(self, count: int) -> list[LabelIssue]:
        """The ranking's first ``count`` images the model would label otherwise, flagged or past confident
        learning's cut, as issues (with their neighbours)."""
        flagged = {issue.index: issue for issue in self.issues}
        suggested = self.probs.argmax(1)
        out: list[LabelIssue] = []
        for rank, i in enumerate(self.check.order.tolist(), start=1):
            given, other = int(self.check.labels[i]), int(suggested[i])
            if len(out) == count:
                break
            if i not in flagged and given == other:  # the model agrees with this label
                if rank > count * 4:  # far down the ranking the labels are agreed with
                    break
                continue
            out.append(
                flagged.get(i)
                or LabelIssue(i, given, other, float(self.probs[i, given]), float(self.probs[i, other]), rank,
                              self.nearest.get(i, {}), flagged=False)
            )  # fmt: skip
        return out

    def ranking(self, inventory: Inventory) -> list[dict[str, Any]]:
        """Every image, most likely mislabelled first."""
        labels, probs, flagged = inventory.labels, self.probs, set(self.check.flagged.tolist())
        suggested = probs.argmax(1)
        rows = []
        for i in self.check.order.tolist():
            given = int(labels[i])
            rows.append(
                {
                    "path": inventory.ids[i],
                    "given": inventory.classes[given],
                    "suggested": inventory.classes[int(suggested[i])],
                    "given_probability": round(float(probs[i, given]), 4),
                    **{m: round(float(v[i]), 4) for m, v in self.check.scores.items()},
                    "flagged": i in flagged,
                }
            )
        return rows


def nearest_of_class(
    features: torch.Tensor, labels: torch.Tensor, splits: list[str], index: int, cls: int
) -> list[int]:
    """The training images of class ``cls`` nearest to image ``index`` by cosine similarity (not itself)."""
    pool = torch.tensor([i for i, s in enumerate(splits) if s == "train" and int(labels[i]) == cls and i != index])
    if not len(pool):
        return []
    unit = torch.nn.functional.normalize(features[pool].float(), dim=1)
    query = torch.nn.functional.normalize(features[index].float(), dim=0)
    best = (unit @ query).topk(min(NEIGHBOURS, len(pool))).indices
    return pool[best].tolist()


def label_issues(
    inventory: Inventory,
    probs: torch.Tensor,
    features: torch.Tensor | None = None,
    model: dict[str, Any] | None = None,
    trusted: bool = True,
    shown: int = 24,
) -> LabelFindings:
    """Likely label errors by confident learning (:mod:`.confident`), most likely first; the first ``shown``
    of the ranking carry their nearest training images of the given and the suggested class (with ``features``)."""
    labels = inventory.labels
    check = check_labels(labels.numpy(), probs.double().numpy())
    suggested = probs.argmax(1)
    nearest = {}
    if features is not None:
        for i in check.order[:shown].tolist():
            nearest[i] = {
                side: nearest_of_class(features, labels, inventory.splits, i, int(cls))
                for side, cls in (("given", labels[i]), ("suggested", suggested[i]))
            }
    rank = {int(i): r + 1 for r, i in enumerate(check.order.tolist())}
    issues = []
    for i in check.flagged.tolist():
        given, other = int(labels[i]), int(suggested[i])
        issues.append(
            LabelIssue(i, given, other, float(probs[i, given]), float(probs[i, other]), rank[i], nearest.get(i, {}))
        )
    return LabelFindings(issues, check, probs, model or {}, trusted, nearest)


# ---------------------------------------------------------------- the whole examination


@dataclass
class Findings:
    inventory: Inventory
    odd: list[OddFile]
    duplicates: list[DuplicateGroup]
    labels: LabelFindings | None  # None: not looked for
    notes: list[str] = field(default_factory=list)  # what was left out and why
    near_checked: bool = True  # False: near duplicates not looked for (turned off, or imagehash missing)

    @property
    def issues(self) -> list[LabelIssue] | None:
        return None if self.labels is None else self.labels.issues

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
            "label_issues": None if self.issues is None else [self._issue(i) for i in self.issues],
            **self._label_summary(),
            "notes": self.notes,
        }

    def _issue(self, issue: LabelIssue) -> dict[str, Any]:
        inv = self.inventory
        return {
            "path": inv.ids[issue.index],
            "given": inv.classes[issue.given],
            "suggested": inv.classes[issue.suggested],
            "given_probability": round(issue.given_probability, 4),
            "suggested_probability": round(issue.suggested_probability, 4),
            "split": inv.splits[issue.index],
            "rank": issue.rank,
            "nearest": {side: [inv.ids[i] for i in found] for side, found in issue.nearest.items()},
        }

    def _label_summary(self) -> dict[str, Any]:
        """The strength of the model behind the label findings, confident learning's estimate of how many
        labels are wrong, and every image ranked (most likely wrong first)."""
        if self.labels is None:
            return {}
        return {
            "label_model": self.labels.model,
            "label_issues_trusted": self.labels.trusted,
            "label_errors_estimated": self.labels.check.estimated,
            "label_ranking_by": self.labels.check.ranking,
            "label_ranking": self.labels.ranking(self.inventory),
        }


def examine(
    inventory: Inventory,
    probs: torch.Tensor | None,
    *,
    near: bool = True,
    features: torch.Tensor | None = None,
    model: dict[str, Any] | None = None,
    trusted: bool = True,
    log: Callable[[str], None] = lambda _: None,
) -> Findings:
    """Everything the doctor checks; ``probs`` (out-of-fold, N x classes) ranks the label issues, ``features``
    (N x D embeddings) find each suspect's nearest training images; ``model`` and
    ``trusted`` say how strong the model behind ``probs`` is."""
    notes: list[str] = []
    hashes = None
    if near:
        try:
            hashes = perceptual_hashes(inventory.images)
        except ConfigError as exc:
            notes.append(f"near duplicates not looked for: {exc}")
        else:
            log(f"hashed {len(inventory):,} images")
    duplicates = duplicate_groups(inventory, hashes)
    labels = None if probs is None else label_issues(inventory, probs, features, model, trusted)
    return Findings(inventory, odd_files(inventory), duplicates, labels, notes, near_checked=hashes is not None)

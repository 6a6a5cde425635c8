"""Held-out splits, seeded: stratified by class (one label per image), or by label as far as the data allows
(several: iterative stratification). Each task holds out with its own (:meth:`imgclf.tasks.Task.hold_out`);
:func:`split_by_task` asks the labels' task."""

from __future__ import annotations

import torch


def split_by_task(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (kept, held out) of ``fraction`` of the images, as the labels' task holds out."""
    from ..tasks import task_of

    return task_of(labels).hold_out(labels, fraction, seed)


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (kept, held out) of class indices: ``fraction`` of each class held out, at least one where a
    class has two."""
    generator = torch.Generator().manual_seed(seed)
    kept, held = [], []
    for cls in torch.unique(labels):
        index = torch.nonzero(labels == cls).flatten()
        index = index[torch.randperm(len(index), generator=generator)]
        n_held = int(round(len(index) * fraction))
        n_held = min(max(n_held, 1 if len(index) >= 2 else 0), len(index) - 1)
        held.append(index[:n_held])
        kept.append(index[n_held:])
    return torch.cat(kept).sort().values, torch.cat(held).sort().values


def iterative_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (kept, held out) of 0/1 label rows, ``fraction`` of the images held out, each label's images
    divided in the same proportion as far as the data allows: Sechidis, Tsoumakas & Vlahavas 2011's iterative
    stratification (the rarest label's images placed first, each where that label is most wanted; ties by
    the split that wants more images, then at random). Images without a label are divided last, by count.
    Seeded: the same seed, the same split."""
    generator = torch.Generator().manual_seed(seed)
    n = len(labels)
    positive = labels.round().bool()
    shares = torch.tensor([1 - fraction, fraction], dtype=torch.float64)
    wanted_images = shares * n  # per split: images it still wants
    wanted_labels = shares.view(2, 1) * positive.sum(0).double().view(1, -1)  # per split and label
    assigned = torch.full((n,), -1, dtype=torch.long)
    order = torch.randperm(n, generator=generator)  # the tie-breaking order among equal choices
    positive = positive[order]
    left = positive.clone()
    while left.any():
        counts = left.sum(0)
        rarest = int(torch.where(counts > 0, counts, n + 1).argmin())
        for row in torch.nonzero(left[:, rarest]).flatten().tolist():
            want = wanted_labels[:, rarest]
            best = torch.nonzero(want == want.max()).flatten()
            if len(best) > 1:
                best = best[wanted_images[best] == wanted_images[best].max()]
            split = int(best[torch.randint(len(best), (1,), generator=generator)]) if len(best) > 1 else int(best[0])
            assigned[row] = split
            wanted_labels[split] -= positive[row].double()
            wanted_images[split] -= 1
            left[row] = False
    for row in torch.nonzero(assigned < 0).flatten().tolist():  # no label: where more images are wanted
        split = int(wanted_images.argmax())
        assigned[row] = split
        wanted_images[split] -= 1
    held = order[assigned == 1].sort().values
    kept = order[assigned == 0].sort().values
    if len(held) == 0 and n >= 2 and fraction > 0:  # a tiny set still holds one out
        held, kept = kept[-1:], kept[:-1]
    return kept, held


def stratified_folds(labels: torch.Tensor, folds: int, seed: int) -> torch.Tensor:
    """Each image's fold, 0..folds-1: every class dealt round-robin over the folds in a seeded order."""
    generator = torch.Generator().manual_seed(seed)
    fold = torch.empty_like(labels)
    for cls in torch.unique(labels):
        index = torch.nonzero(labels == cls).flatten()
        index = index[torch.randperm(len(index), generator=generator)]
        fold[index] = torch.arange(len(index)) % folds
    return fold


def stratified_sample(labels: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """At most ``count`` indices, every class in proportion (stratified), in a seeded order."""
    if len(labels) <= count:
        return torch.arange(len(labels))
    folds = stratified_folds(labels, max(1, round(len(labels) / count)), seed)
    return torch.nonzero(folds == 0).flatten()[:count]

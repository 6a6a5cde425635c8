"""Batches straight from a uint8 tensor on the training device, augmented in bulk.

No per-image Python, PIL or worker processes: a batch is sliced, converted to float, augmented with
one batched affine warp and normalised, all as tensor ops on the device that trains.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Protocol

import torch
import torch.nn.functional as F

from .autoaugment import POLICIES, auto_augment
from .registry import Split

# preset -> (translation as a fraction of the image side, max rotation in degrees)
AUGMENT_PRESETS = {"none": (0.0, 0.0), "light": (1 / 16, 0.0), "standard": (1 / 8, 10.0)}
AUGMENT_PRESETS.update({policy: AUGMENT_PRESETS["light"] for policy in POLICIES})  # then their own operations


def normalise(
    images: torch.Tensor, mean: list[float], std: list[float], device: torch.device | None = None
) -> torch.Tensor:
    """uint8 images N x C x H x W as a network's input: float, scaled by the per-channel mean and std."""
    images = images.to(device) if device is not None else images
    mean_t = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    return (images.float() / 255 - mean_t) / std_t


def augment_batch(
    x: torch.Tensor,
    preset: str,
    flip: torch.Tensor | None,
    generator: torch.Generator | None = None,
    share: tuple[int, int] | None = None,
    turns: str = "none",
) -> torch.Tensor:
    """Flip (where ``flip`` is true), pad-and-crop (integer translation, mirrored borders) and small
    rotation, per image; ``turns``: also vertical flips ("vertical"), or vertical flips and transposes, which
    with the mirror give all eight flips and quarter turns of a square ("all").

    ``x`` is a float batch N x C x H x W in 0..1. One ``affine_grid``/``grid_sample`` applies all three.
    ``share`` (start, total): ``x`` is rows start.. of a batch of ``total`` (one process's share of it):
    the random draws are the whole batch's, so an image is augmented alike however many processes share it.
    """
    shift_fraction, max_degrees = AUGMENT_PRESETS[preset]
    n, _, h, w = x.shape
    if preset == "none":
        return x
    device = x.device

    start, total = share or (0, n)

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(total, generator=generator)[start : start + n].to(device) * (high - low) + low

    pad = max(1, round(shift_fraction * w))
    # integer pixel shifts, expressed in affine_grid's -1..1 coordinates (align_corners=False: 2/W per pixel)
    tx = uniform(-pad, pad + 1).floor().clamp(max=pad) * (2.0 / w)
    ty = uniform(-pad, pad + 1).floor().clamp(max=pad) * (2.0 / h)
    angle = uniform(-max_degrees, max_degrees) * (math.pi / 180.0)
    mirror = torch.ones(n, device=device) if flip is None else 1.0 - 2.0 * flip.to(device, torch.float32)
    upend = 1.0 - 2.0 * (uniform(0, 1) < 0.5).float() if turns in ("vertical", "all") else torch.ones(n, device=device)
    swap = (uniform(0, 1) < 0.5).float() if turns == "all" else torch.zeros(n, device=device)
    # the linear part: the rotation times the flips (mirror x, upend y) times the transpose where drawn
    d00, d01, d10, d11 = mirror * (1 - swap), mirror * swap, upend * swap, upend * (1 - swap)
    cos, sin = angle.cos(), angle.sin()
    row0 = torch.stack([cos * d00 - sin * d10, cos * d01 - sin * d11, tx], 1)
    row1 = torch.stack([sin * d00 + cos * d10, sin * d01 + cos * d11, ty], 1)
    theta = torch.stack([row0, row1], 1).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    mode = "bilinear" if max_degrees else "nearest"  # pure shifts and flips land on pixel centres
    return F.grid_sample(x, grid, mode=mode, padding_mode="reflection", align_corners=False)


class TrainBatches(Protocol):
    """What training asks of a batch source (:class:`BatchIterator`, or packed shards' ``ShardBatches``)."""

    rows_in_step: int  # images in the current step over all processes

    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...
    def set_epoch(self, epoch: int) -> None: ...


def to_network_input(
    images: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    augment: str,
    flip: torch.Tensor | None,
    generator: torch.Generator,
    share: tuple[int, int] | None = None,
    turns: str = "none",
) -> torch.Tensor:
    """A uint8 batch on its device as the network's input: float, augmented (:func:`augment_batch`) and
    normalised by ``mean`` and ``std`` (1 x C x 1 x 1). Every source of batches ends here."""
    x = images.float().div_(255)
    if augment != "none":
        x = augment_batch(x, augment, flip, generator, share, turns)
    if augment in POLICIES:  # RandAugment / TrivialAugment: operations drawn per image, after flips and shifts
        x = auto_augment(x, augment, generator, share)
    return x.sub_(mean).div_(std)  # in place: x is this batch's own copy


class BatchIterator:
    """Iterates (normalised float images, labels) batches of a split held on ``device``.

    ``epoch`` seeds the order and the augmentation, so an epoch replays identically after a resume.
    Flips alternate: each image gets a random flip in even epochs and the opposite in odd ones, so
    every pair of epochs sees both orientations (airbench's "alternating flip", better than coin tosses).
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        device: torch.device,
        mean: list[float],
        std: list[float],
        *,
        shuffle: bool = False,
        augment: str = "none",
        hflip: bool = False,
        turns: str = "none",
        sample_weights: torch.Tensor | None = None,
        seed: int = 0,
        channels_last: bool = False,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        # a memory-mapped split stays where it is: each batch is gathered from it and then moved
        self.images = split.images if split.mapped else split.images.to(device)
        self.labels = split.labels.to(device)
        self.batch_size = batch_size
        self.device = device
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.shuffle, self.augment, self.hflip, self.turns = shuffle, augment, hflip, turns
        self.sample_weights = sample_weights
        self.seed = seed
        self.epoch = 0
        self.channels_last = channels_last
        # distributed: a step takes batch_size images per process; this process trains on its slice
        self.rank, self.world_size = rank, world_size
        self.global_batch = batch_size * world_size
        self.drop_last = drop_last and len(self.labels) > self.global_batch
        self.rows_in_step = 0  # images in the current step over all processes (the loss is their mean)
        base_flip = torch.rand(len(self.labels), generator=torch.Generator().manual_seed(seed)) < 0.5
        self.base_flip = base_flip.to(device) if hflip else None

    def __len__(self) -> int:
        n = len(self.labels)
        steps = n // self.global_batch if self.drop_last else math.ceil(n / self.global_batch)
        if self.shuffle and 0 < n % self.global_batch < self.world_size:  # a last training step too small to
            steps = n // self.global_batch  # give every process an image is left out (evaluation keeps all)
        return max(1, steps)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self, generator: torch.Generator) -> torch.Tensor:
        n = len(self.labels)
        if self.sample_weights is not None:  # balanced sampling: draw with replacement by class weight
            return torch.multinomial(self.sample_weights, n, replacement=True, generator=generator)
        if self.shuffle:
            return torch.randperm(n, generator=generator)
        return torch.arange(n)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = self._order(generator).to(self.device)
        for start in range(0, len(self) * self.global_batch, self.global_batch):
            step = order[start : start + self.global_batch]
            # contiguous slices, sizes within one of each other: the ranks' rows rejoin the step in order
            shares = step.tensor_split(self.world_size)
            index = shares[self.rank]
            first = sum(len(share) for share in shares[: self.rank])  # this rank's first row in the step
            self.rows_in_step = len(step)
            flip = None if self.base_flip is None else self.base_flip[index] ^ bool(self.epoch % 2)
            images = self.images[index.to(self.images.device)].to(self.device, non_blocking=True)
            share = (first, len(step))
            x = to_network_input(images, self.mean, self.std, self.augment, flip, generator, share, self.turns)
            yield (x.contiguous(memory_format=torch.channels_last) if self.channels_last else x), self.labels[index]

"""Batches straight from a uint8 tensor on the training device, augmented in bulk.

No per-image Python, PIL or worker processes: a batch is sliced, converted to float, augmented with
one batched affine warp and normalised, all as tensor ops on the device that trains.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from .registry import Split

# preset -> (translation as a fraction of the image side, max rotation in degrees)
AUGMENT_PRESETS = {"none": (0.0, 0.0), "light": (1 / 16, 0.0), "standard": (1 / 8, 10.0)}


def normalise(
    images: torch.Tensor, mean: list[float], std: list[float], device: torch.device | None = None
) -> torch.Tensor:
    """uint8 images N x C x H x W as a network's input: float, scaled by the per-channel mean and std."""
    images = images.to(device) if device is not None else images
    mean_t = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    return (images.float() / 255 - mean_t) / std_t


def augment_batch(
    x: torch.Tensor, preset: str, flip: torch.Tensor | None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Flip (where ``flip`` is true), pad-and-crop (integer translation, mirrored borders) and small
    rotation, per image.

    ``x`` is a float batch N x C x H x W in 0..1. One ``affine_grid``/``grid_sample`` applies all three.
    """
    shift_fraction, max_degrees = AUGMENT_PRESETS[preset]
    n, _, h, w = x.shape
    if preset == "none":
        return x
    device = x.device

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(n, generator=generator).to(device) * (high - low) + low

    pad = max(1, round(shift_fraction * w))
    # integer pixel shifts, expressed in affine_grid's -1..1 coordinates (align_corners=False: 2/W per pixel)
    tx = uniform(-pad, pad + 1).floor().clamp(max=pad) * (2.0 / w)
    ty = uniform(-pad, pad + 1).floor().clamp(max=pad) * (2.0 / h)
    angle = uniform(-max_degrees, max_degrees) * (math.pi / 180.0)
    mirror = torch.ones(n, device=device) if flip is None else 1.0 - 2.0 * flip.to(device, torch.float32)
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([torch.stack([cos * mirror, -sin, tx], 1), torch.stack([sin * mirror, cos, ty], 1)], 1).to(
        x.dtype
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    mode = "bilinear" if max_degrees else "nearest"  # pure shifts and flips land on pixel centres
    return F.grid_sample(x, grid, mode=mode, padding_mode="reflection", align_corners=False)


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
        sample_weights: torch.Tensor | None = None,
        seed: int = 0,
        channels_last: bool = False,
        drop_last: bool = False,
    ) -> None:
        self.images = split.images.to(device)
        self.labels = split.labels.to(device)
        self.batch_size = batch_size
        self.device = device
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.shuffle, self.augment, self.hflip = shuffle, augment, hflip
        self.sample_weights = sample_weights
        self.seed = seed
        self.epoch = 0
        self.channels_last = channels_last
        self.drop_last = drop_last and len(self.labels) > batch_size
        base_flip = torch.rand(len(self.labels), generator=torch.Generator().manual_seed(seed)) < 0.5
        self.base_flip = base_flip.to(device) if hflip else None

    def __len__(self) -> int:
        if self.drop_last:
            return len(self.labels) // self.batch_size
        return math.ceil(len(self.labels) / self.batch_size)

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
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = order[start : start + self.batch_size]
            x = self.images[index].float().div_(255)
            if self.augment != "none":
                flip = None if self.base_flip is None else self.base_flip[index] ^ bool(self.epoch % 2)
                x = augment_batch(x, self.augment, flip, generator)
            x = (x - self.mean) / self.std
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels[index]

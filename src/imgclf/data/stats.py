"""Per-channel mean and standard deviation of uint8 images, accumulated batch by batch (float64 sums)."""

from __future__ import annotations

import torch


class RunningStats:
    """Per-channel sums of images scaled to 0..1; ``add`` a batch at a time, then ``result``."""

    def __init__(self, channels: int = 3) -> None:
        self.total = torch.zeros(channels, dtype=torch.float64)
        self.squares = torch.zeros(channels, dtype=torch.float64)
        self.pixels = 0  # per channel

    def add(self, images: torch.Tensor) -> None:
        """A uint8 batch N x C x H x W."""
        x = images.to(torch.float64).div_(255)
        self.total += x.sum(dim=(0, 2, 3))
        self.squares += x.square_().sum(dim=(0, 2, 3))
        self.pixels += images.shape[0] * images.shape[2] * images.shape[3]

    def result(self) -> tuple[list[float], list[float]]:
        mean = self.total / max(1, self.pixels)
        std = (self.squares / max(1, self.pixels) - mean.square()).clamp_min(1e-12).sqrt()
        return mean.tolist(), std.tolist()


def channel_stats(images: torch.Tensor, chunk_pixels: int = 2**22) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images, in the 0..1 range, computed in chunks of about
    ``chunk_pixels`` values (float64: 32 MB), so that a memory-mapped dataset is read, never copied."""
    stats = RunningStats(images.shape[1])
    chunk = max(1, chunk_pixels // max(1, images[0].numel() if len(images) else 1))
    for start in range(0, len(images), chunk):
        stats.add(images[start : start + chunk])
    return stats.result()

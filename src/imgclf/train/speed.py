"""Measure how fast a model trains on this machine, so that a `budget` is planned from facts."""

from __future__ import annotations

import copy
import itertools
import time
from collections.abc import Iterable

import torch
from torch import nn


def seconds_per_image(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    min_seconds: float = 1.0,
    max_steps: int = 20,
) -> float:
    """Training seconds per image of a copy of ``model`` (forward, backward, SGD step) on real batches,
    after two warm-up steps; the model itself is not touched."""
    model = copy.deepcopy(model).train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    device = next(model.parameters()).device

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    stream = itertools.cycle(batches)
    for _ in range(2):
        step(*next(stream))
    sync()
    images, start = 0, time.perf_counter()
    for _ in range(max_steps):
        x, y = next(stream)
        step(x, y)
        images += len(y)
        if time.perf_counter() - start >= min_seconds:
            break
    sync()
    return (time.perf_counter() - start) / images

"""Measure how fast a model trains on this machine, so that a `budget` is planned from facts."""

from __future__ import annotations

import time

import torch

from .loop import Trainer, epochs_of


def seconds_per_image(trainer: Trainer, min_seconds: float = 1.0, max_steps: int = 20) -> float:
    """Training seconds per image of ``trainer``'s own step (compiled and at the run's precision where the run
    is), on real batches, after the compile warm-up and two more steps; the model and optimizer are left as
    they were."""
    device = trainer.device

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    trainer.warm_up_compiled()
    with trainer.restoring():
        trainer.train_mode()
        stream = epochs_of(trainer.train_batches)
        for _ in range(2):
            trainer.step(*next(stream))
        sync()
        images, start = 0, time.perf_counter()
        for _ in range(max_steps):
            x, y = next(stream)
            trainer.step(x, y)
            images += len(y)
            if time.perf_counter() - start >= min_seconds:
                break
        sync()
        return (time.perf_counter() - start) / images

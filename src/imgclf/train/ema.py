"""Lookahead-style weight averaging, as in the airbench recipes.

Every few steps the running average moves toward the current weights and the weights are set back to
the average. Its decay starts at 0 and grows with the cube of training progress, so early training
moves freely and the last epochs average strongly, which stands in for a long low-lr tail.
"""

from __future__ import annotations

import torch
from torch import nn

EVERY_N_STEPS = 5
DECAY_PER_STEP = 0.95
DECAY_POWER = 3.0
START_FRACTION = 0.3  # of all steps; averaging the first, fast-changing weights only slows training


class Lookahead:
    def __init__(self, model: nn.Module, total_steps: int) -> None:
        self.model, self.total_steps = model, total_steps
        self.average: dict[str, torch.Tensor] | None = None

    def _float_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.model.state_dict().items() if v.dtype.is_floating_point}

    @torch.no_grad()
    def step(self, step: int) -> None:
        """Call after optimizer step ``step`` (counted from 1 over the whole run)."""
        if step % EVERY_N_STEPS or step < START_FRACTION * self.total_steps:
            return
        state = self._float_state()
        if self.average is None:
            self.average = {k: v.detach().clone() for k, v in state.items()}
            return
        decay = DECAY_PER_STEP**EVERY_N_STEPS * (step / self.total_steps) ** DECAY_POWER
        for key, value in state.items():
            self.average[key].lerp_(value, 1 - decay)
            value.copy_(self.average[key])

    @torch.no_grad()
    def finish_epoch(self) -> None:
        """End an epoch on the averaged weights, so validation and checkpoints see the average."""
        if self.average is None:
            return
        for key, value in self._float_state().items():
            value.copy_(self.average[key])

    def state_dict(self) -> dict[str, torch.Tensor] | None:
        return self.average

    def load_state_dict(self, average: dict[str, torch.Tensor] | None) -> None:
        self.average = average

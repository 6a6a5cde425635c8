"""Device choice, seeding and the progress log, shared by training and inference.

torch and numpy are imported where they are used: the command line reads this module before it knows
whether it will train."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:
    import torch


def imgclf_version() -> str:
    """The installed package's version (from its metadata: one place, pyproject.toml)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("imgclf")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


Log = Callable[[str], None]  # where a stage reports progress: printed by the API by default, never by the stage


def quiet(_message: str) -> None:
    """A log that says nothing."""


def resolve_device(name: str = "auto") -> torch.device:
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("`device=cuda`: no CUDA GPU is visible to PyTorch; use `device=cpu` (or auto)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("`device=mps`: Apple's MPS backend is not available here; use `device=cpu` (or auto)")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)

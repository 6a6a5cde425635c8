"""TorchScript, loaded by ``torch.jit.load`` in Python or C++ (libtorch) without imgclf."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def export_torchscript(model: torch.nn.Module, example: torch.Tensor, path: Path, **_: Any) -> None:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript is deprecated upstream in favour of torch.export
        traced = torch.jit.trace(model, example, check_trace=False)
        # into a file imgclf opened, not traced.save(path): torch's C++ file writer aborts the process (SIGABRT)
        # on a full disk, where a Python file's write raises an OSError the write helper turns into one line
        with open(path, "wb") as f:
            torch.jit.save(traced, f)


class TorchScriptBackend:
    """A TorchScript file loaded for inference: uint8 batch in, probabilities out."""

    def __init__(self, path: str | os.PathLike) -> None:
        import torch

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.module = torch.jit.load(str(path), map_location="cpu").eval()

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        import torch

        with torch.inference_mode():
            return self.module(images)

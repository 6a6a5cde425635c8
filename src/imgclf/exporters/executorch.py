"""ExecuTorch programs (.pte), lowered to its XNNPACK backend and run here by its Python runtime, as PyTorch's
own runtime for phones and microcontrollers runs them. The program takes one image: its memory is planned
ahead for fixed shapes, as on a device (a batch is run image by image)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ExportError
from . import converter, one_image_at_a_time, plain_copy, quiet_converter, runtime

if TYPE_CHECKING:
    import torch


def _exchange(n: int, like: torch.Tensor) -> torch.Tensor:
    """The n x n matrix with ones on the anti-diagonal: a product with it reverses an axis, exactly."""
    import torch

    index = torch.arange(n, device=like.device)
    return (index[:, None] + index[None, :] == n - 1).to(like.dtype)


def _flip_by_matmul(x: torch.Tensor, dims: list[int]) -> torch.Tensor:
    """flip of an image's width or height (test-time augmentation's mirror) as a product with the exchange
    matrix: the same numbers, computed by XNNPACK; the runtime's own flip kernel gave wrong answers in the
    augmented graph (measured: probabilities off by 0.1)."""
    for axis in sorted({d % x.dim() for d in dims}):
        if axis == x.dim() - 1:
            x = x @ _exchange(x.shape[-1], x)
        elif axis == x.dim() - 2:
            x = _exchange(x.shape[-2], x) @ x
        else:
            raise ExportError("ExecuTorch export: a flip of the batch or channel axis; export to onnx instead")
    return x


def export_executorch(model: torch.nn.Module, example: torch.Tensor, path: Path, **_: Any) -> None:
    import torch

    exir = converter("executorch.exir", "executorch", "ExecuTorch export")
    xnnpack = converter("executorch.backends.xnnpack.partition.xnnpack_partitioner", "executorch", "ExecuTorch export")
    decompositions = torch.export.default_decompositions()
    decompositions[torch.ops.aten.flip.default] = _flip_by_matmul
    with quiet_converter(), torch.no_grad():
        program = torch.export.export(plain_copy(model), (example[:1],)).run_decompositions(decompositions)
        lowered = exir.to_edge_transform_and_lower(program, partitioner=[xnnpack.XnnpackPartitioner()])
        path.write_bytes(lowered.to_executorch().buffer)


class ExecuTorchBackend:
    """A .pte program in ExecuTorch's runtime: uint8 N x C x H x W in (one image a call), probabilities out."""

    def __init__(self, path: str | os.PathLike) -> None:
        executorch = runtime("executorch.runtime", "executorch", "the ExecuTorch backend")
        self.method = executorch.Runtime.get().load_program(str(path)).load_method("forward")

    def _one(self, image: torch.Tensor) -> torch.Tensor:
        return self.method.execute([image.cpu().contiguous()])[0]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return one_image_at_a_time(self._one, images)

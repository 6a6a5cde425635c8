"""Training on several processes with torch.distributed: everything distributed training needs, in one place.

Launched by ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``), or by ``imgclf train
--devices N``, which starts torchrun itself. The shape is torchvision's ``references/classification/utils.py``
(``init_distributed_mode``, ``save_on_master``) and nanoGPT's ``train.py`` (``master_process``, one name
for the unwrapped model):

- every process (rank) holds the data and draws the same global order of each epoch; a global batch is
  ``batch_size x world_size`` images, and rank r trains on its r-th slice of it (``BatchIterator``), so the
  randomness of a run (order, augmentation) does not depend on the number of processes;
- DistributedDataParallel averages the gradients, so N ranks with batch B step as one process with batch
  N x B (batch norm aside: each rank normalises its own slice, unless ``sync_bn`` on GPUs);
- sums (loss, correct answers) are all-reduced, so the logged figures are the global ones;
- only rank 0 writes, prints, reports and calls callbacks: :attr:`Distributed.is_main` is the one gate
  (the pipeline gives the other ranks no event sinks, a quiet log and a run directory that does not
  write); every rank resumes from the same ``last.pt``.

NCCL on GPUs (one per process), gloo on CPUs.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConfigError


@dataclass(frozen=True)
class Distributed:
    """This process's place among the training processes (a single process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """The master process: the one that writes and logs."""
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """One GPU per process: the local rank's."""
        return torch.device("cuda", self.local_rank) if device.type == "cuda" and self.enabled else device

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """The block runs on the main process first, then on the others (which find what it wrote: the
        decode cache, a download), as torchvision's references do around data preparation."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def sum(self, *values: float | int) -> list[float]:
        """Each value summed over the ranks (on the CPU: gloo and NCCL both take a CPU tensor via the group's device)."""
        if not self.enabled:
            return [float(v) for v in values]
        tensor = torch.tensor(values, dtype=torch.float64, device=self._collective_device())
        dist.all_reduce(tensor)
        return tensor.tolist()

    def sum_tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        """A tensor summed over the ranks (a copy on the CPU)."""
        if not self.enabled:
            return tensor.cpu()
        summed = tensor.to(self._collective_device(), torch.float64)
        dist.all_reduce(summed)
        return summed.cpu()

    def broadcast(self, value: object) -> object:
        """Rank 0's ``value`` on every rank (a path, a config)."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def _collective_device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")

    def wrap(self, model: nn.Module, sync_bn: bool) -> nn.Module:
        """The model as the training step calls it: DistributedDataParallel around it when distributed (the
        caller keeps the unwrapped model for checkpoints and evaluation)."""
        if not self.enabled:
            return model
        if sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        device_ids = [self.local_rank] if next(model.parameters()).is_cuda else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def shutdown(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


SINGLE = Distributed()  # one process, no group


def init_distributed(device_type: str) -> Distributed:
    """Join the process group torchrun described in the environment; a plain process stays single."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return SINGLE
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return Distributed(rank, world_size, local_rank)


def check_sync_bn(sync_bn: bool, device_type: str) -> None:
    if sync_bn and device_type != "cuda":
        raise ConfigError(
            "`sync_bn` needs GPUs: PyTorch synchronises batch norm over NCCL only; on CPUs each process "
            "normalises its own slice of the batch (leave `sync_bn` off)"
        )


def launch(devices: int, argv: Sequence[str]) -> int:
    """``imgclf train --devices N ...``: the same command under torchrun with N processes on this machine."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={devices}"]
    return subprocess.call([*command, "-m", "imgclf", *argv])

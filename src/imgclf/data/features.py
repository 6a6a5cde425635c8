"""Embeddings: what a network's classifier layer sees (the pooled features), for every image, computed once.

The search and the probe train a linear head on the shipped ``lite0``'s frozen features; ``learning-curve``
fits its curves on them; ``embed`` writes them and ``similar`` finds a picture's nearest training images by
them. Features depend only on the network, the pixels and the normalisation, so they are cached on disk
(beside the decode cache) under a hash of all three: the second search, probe or curve on a folder costs no
forward pass. Large caches are memory-mapped, as decoded images are.

This module is on the inference side: it imports no training code, and knows a network only as an
``nn.Module`` whose last linear layer is its class layer.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..fsutil import atomic_path, make_dir

FEATURE_BATCH = 64  # images per forward pass: bounded memory at 224 px on a laptop
MAP_ABOVE = 256 * 2**20  # bytes of features past which the cache is memory-mapped rather than read into memory


@dataclass
class Features:
    values: torch.Tensor  # N x D float (memory-mapped float16 for large caches: convert batches as used)
    seconds: float  # time spent computing them (0.0 when read from the cache)
    from_cache: bool

    def __len__(self) -> int:
        return len(self.values)


def feature_hook(model: nn.Module) -> tuple[list[torch.Tensor], Callable[[], None]]:
    """Capture the input of the model's class layer (its last linear layer) on each forward: (captured, remove)."""
    captured: list[torch.Tensor] = []
    layer = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]  # as models.registry.classifier_layer
    handle = layer.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0].detach()))
    return captured, handle.remove


@torch.no_grad()
def compute_features(
    model: nn.Module,
    images: torch.Tensor,
    mean: list[float],
    std: list[float],
    device: torch.device,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """N x D features of uint8 ``images`` (N x C x H x W): the classifier layer's input, in eval mode."""
    from .loader import normalise  # the loader's normalisation, so features see what training sees

    model.eval()
    captured, remove = feature_hook(model)
    out = []
    try:
        for start in range(0, len(images), FEATURE_BATCH):
            batch = normalise(torch.as_tensor(images[start : start + FEATURE_BATCH]), mean, std, device)
            model(batch.contiguous(memory_format=torch.channels_last))
            out.append(captured.pop().flatten(1).float().cpu())
            if progress is not None:
                progress(min(start + FEATURE_BATCH, len(images)))
    finally:
        remove()
    return torch.cat(out) if out else torch.zeros(0, 0)


def features_key(model: nn.Module, images: torch.Tensor, mean: list[float], std: list[float], tag: str) -> str:
    """A hash of the network's weights, the pixels and the normalisation: equal keys, equal features."""
    digest = hashlib.sha1(f"{tag}|{mean}|{std}|{tuple(images.shape)}".encode())
    for tensor in model.state_dict().values():
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()[:4096])
        digest.update(str(tuple(tensor.shape)).encode())
    step = max(1, len(images) // 4096)  # a strided sample of whole images: cheap on 60,000 images, exact on few
    digest.update(np.ascontiguousarray(torch.as_tensor(images[::step]).numpy()).tobytes())
    digest.update(np.ascontiguousarray(torch.as_tensor(images[-1:]).numpy()).tobytes())
    return digest.hexdigest()[:20]


def cached_features(
    model: nn.Module,
    images: torch.Tensor,
    mean: list[float],
    std: list[float],
    device: torch.device,
    cache_dir: str | Path | None,
    tag: str,
    progress: Callable[[int], None] | None = None,
) -> Features:
    """The features of ``images`` from ``cache_dir`` (written there the first time), or computed when None."""
    if cache_dir is None:
        t0 = time.perf_counter()
        values = compute_features(model, images, mean, std, device, progress)
        return Features(values, time.perf_counter() - t0, False)
    path = Path(cache_dir) / "features" / f"{tag}-{features_key(model, images, mean, std, tag)}.npy"
    if path.is_file():
        try:
            return Features(_read(path), 0.0, True)
        except (OSError, ValueError):  # a damaged cache file is computed again
            path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    values = compute_features(model, images, mean, std, device, progress).half().float()  # as read back
    seconds = time.perf_counter() - t0
    make_dir(path.parent)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, values.half().numpy())  # float16: half the disk; features need no more precision
    return Features(values, seconds, False)


def _read(path: Path) -> torch.Tensor:
    mapped = np.load(path, mmap_mode="r")
    if mapped.nbytes > MAP_ABOVE:
        with warnings.catch_warnings():  # a read-only view of the mapped file: torch warns, and it is never written
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(mapped)
    return torch.from_numpy(np.array(mapped, dtype=np.float32))

"""Checkpoints: plain dicts of tensors and primitives, written atomically, read with weights_only=True."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..fsutil import atomic_path

FORMAT = "imgclf-checkpoint"
VERSION = 1
INFERENCE_KEYS = ("model", "state_dict", "classes", "image_size", "channels", "mean", "std")


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, "version": VERSION, **payload}, tmp)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load without executing code from the file (weights_only=True), and check it is ours."""
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint; pass a run directory or its best.pt / last.pt")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated file, foreign pickle refused by weights_only, ...
        raise CheckpointError(
            f"{path}: not a readable imgclf checkpoint ({exc.__class__.__name__}); use the best.pt or last.pt of a run"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an imgclf checkpoint (no '{FORMAT}' marker); use the best.pt or last.pt of a run")
    if payload.get("version", 0) > VERSION:
        raise CheckpointError(f"{path}: written by a newer imgclf (format {payload['version']}); upgrade imgclf")
    missing = [k for k in INFERENCE_KEYS if k not in payload]
    if missing:
        raise CheckpointError(f"{path}: incomplete checkpoint (missing {', '.join(missing)}); retrain or use another file")
    return payload

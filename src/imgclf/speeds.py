"""This machine's measured speeds, kept: a `budget` buys work measured once, not seconds that load can steal.

The folder default's search plans with two kinds of measurement: a backbone's seconds per image of features
at a size, and a model's training seconds per image (:func:`imgclf.train.speed.seconds_per_image`). Each is
timed the first time it is needed on this machine and written to ``speeds.json`` in imgclf's folder
(``$IMGCLF_DATA``, else ``~/.cache/imgclf``), keyed by the machine
(processor, threads, torch, device) and what was measured. Every later run here reads the same numbers, so
the same data, seed and budget make the same decisions, however loaded the machine is the second time.
Delete the file to measure again (e.g. after the first run shared the machine with other work).
"""

from __future__ import annotations

import json
import platform
from collections.abc import Callable
from pathlib import Path

import torch

from .config import default_data_dir
from .fsutil import atomic_write_json

SPEEDS_FILE = "speeds.json"


def cache_root() -> Path:
    """imgclf's per-user folder (``$IMGCLF_DATA``, else ``~/.cache/imgclf``): where datasets download too."""
    return Path(default_data_dir())


def processor_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what the platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_key(device: torch.device) -> str:
    """What a measurement holds for: the processor and threads (or the GPU), torch's version."""
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        where = f"{processor_name()} x{torch.get_num_threads()} threads"
    return f"{where}, torch {torch.__version__}, {device.type}"


def _read(path: Path) -> dict[str, float]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):  # missing or damaged: measured again
        return {}
    return {k: float(v) for k, v in value.items() if isinstance(v, int | float)} if isinstance(value, dict) else {}


def measured(what: str, device: torch.device, measure: Callable[[], float]) -> float:
    """``what``'s measurement on this machine: read from ``speeds.json``, or taken by ``measure`` and kept."""
    path = cache_root() / SPEEDS_FILE
    key = f"{machine_key(device)} | {what}"
    speeds = _read(path)
    if key in speeds:
        return speeds[key]
    value = float(measure())
    speeds[key] = value
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, dict(sorted(speeds.items())))
    except Exception:  # noqa: BLE001 a cache that cannot be written (read-only home) only costs a measurement
        pass
    return value

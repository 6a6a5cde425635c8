"""``imgclf runs``: the runs in a folder with their state, read from their run directories alone.

A run's ``status.json`` says running, finished, failed or stopped; a run that says running but whose
process is gone (on this host) died: killed, or the machine went down. Runs of imgclf 0.2, which wrote no
status, are judged by their files: metrics.json (finished) or a checkpoint (stopped).
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import flatten
from .errors import DataError
from .plots.tables import Table
from .rundir import BEST, CONFIG, LAST, METRICS, RunDir


@dataclass
class RunInfo:
    path: Path
    state: str  # running, finished, failed, stopped, died
    data: str
    model: str
    epoch: int | None
    epochs: int | None
    accuracy: float | None  # the test accuracy of a finished run, else the best validation accuracy so far
    accuracy_of: str  # "test" or "val": which of the two ``accuracy`` is
    seconds: float | None  # training seconds
    updated: str
    error: str = ""
    eta_seconds: float | None = None  # a running run's estimate of the time its epochs left take


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


def state_of(status: dict[str, Any]) -> str:
    """A status.json's state, `running` checked against its process (gone: `died`)."""
    state = str(status.get("state", "unknown"))
    if state != "running":
        return state
    if status.get("host") != socket.gethostname():
        return f"running on {status.get('host')}"  # another machine's process cannot be checked from here
    pid = status.get("pid")
    return "running" if isinstance(pid, int) and alive(pid) else "died"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def run_info(run: RunDir) -> RunInfo:
    config = flatten(run.read_config())
    metrics = _read_json(run / METRICS)
    status = run.read_status()
    history = metrics.get("epochs_run")
    if status is not None:
        state, epoch, epochs = state_of(status), status.get("epoch"), status.get("epochs")
        accuracy = status.get("test_accuracy", status.get("best_val_acc"))
        updated, error, eta = status.get("updated", ""), status.get("error", ""), status.get("eta_seconds")
    else:
        state = "finished" if metrics else "stopped"
        epoch, epochs, accuracy, updated, error, eta = history, config.get("epochs"), None, "", "", None
    tested = metrics.get("test", {}).get("accuracy")
    return RunInfo(
        run.path,
        state,
        str(config.get("data", "")),
        str(config.get("model", "")),
        epoch,
        epochs,
        tested if tested is not None else accuracy,
        "test" if tested is not None else "val",
        metrics.get("train_seconds"),
        updated,
        error,
        eta if state == "running" else None,
    )


def list_runs(folder: str | os.PathLike = "runs") -> list[RunInfo]:
    """Every run directory directly in ``folder`` (or ``folder`` itself when it is one), newest first; a
    folder that does not exist is an error, not an empty list (a typo would otherwise read as "no runs")."""
    root = Path(folder)
    marks = (CONFIG, BEST, LAST)
    if any((root / mark).is_file() for mark in marks):
        candidates = [root]
    elif root.is_dir():
        candidates = [p for p in root.iterdir() if p.is_dir() and any((p / mark).is_file() for mark in marks)]
    elif root.exists():
        raise DataError(f"{folder}: not a folder of runs nor a run directory; name one (default: runs)")
    else:
        raise DataError(f"{folder}: no such folder; name a folder of runs (default: runs) or train first")
    runs = [run_info(RunDir(path)) for path in candidates]
    return sorted(runs, key=lambda r: (r.updated or "", str(r.path)), reverse=True)


def runs_table(runs: list[RunInfo]) -> Table:
    rows = []
    for r in runs:
        progress = f"{r.epoch}/{r.epochs}" if r.epoch is not None and r.epochs else "-"
        accuracy = "-" if r.accuracy is None else f"{r.accuracy:.4f} {r.accuracy_of}"
        seconds = "-" if r.seconds is None else f"{r.seconds:.1f}"
        rows.append([str(r.path), r.state, Path(r.data).name or r.data, r.model, progress, accuracy, seconds])
    return Table(["run", "state", "data", "model", "epoch", "accuracy", "train s"], rows)

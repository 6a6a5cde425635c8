"""Shipping, measured: ``imgclf benchmark RUN``: every format of the export table that runs here, beside eager PyTorch, on the run's
own test split: file size, test accuracy, the share of answers equal to PyTorch's, images per second at batch 1
and 32 on this machine, and start-up time (as Ultralytics' ``yolo benchmark`` tables its formats). Written to
``RUN/benchmark/`` as JSON, a text table and a plot; the report shows it under "Shipping".
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import ImgclfError
from .export import (
    FORMATS,
    Backend,
    export_folder,
    exported_backend,
    forward_in_batches,
    get_format,
    not_run_here,
    same_answers,
)
from .fsutil import atomic_write_json, atomic_write_text, size_on_disk
from .plots.figures import plot_benchmark
from .plots.tables import Table
from .predict import Classifier, load
from .rundir import BENCHMARK, RunDir
from .runtime import Log, quiet
from .speeds import processor_name

TIMED_SECONDS = 1.0  # each speed is timed over at least this long (and at least one batch), after a warm-up
BATCHES = (1, 32)
RESULTS, TABLE, PLOT = "benchmark.json", "benchmark.txt", "benchmark.png"


@dataclass
class FormatRow:
    format: str  # "pytorch" for eager PyTorch, else a row of the export table
    file_mb: float | None
    accuracy: float | None
    agreement: float | None  # share of test images given PyTorch's answer
    images_per_second: dict[int, float]  # by batch size (JSON keeps the keys as text)
    startup_seconds: float | None
    note: str = ""  # why a format has no figures (not installed, refused)


def timed_throughput(backend: Backend, images: torch.Tensor, batch: int) -> float:
    """Images per second of ``backend`` at ``batch``, cycling through ``images``, after one warm-up batch."""
    if len(images) < batch:  # a small test split: its images repeated, so a batch is the size it says
        images = images.repeat(-(-batch // len(images)), 1, 1, 1)[:batch]
    chunks = [images[i : i + batch] for i in range(0, max(len(images) - batch + 1, 1), batch)] or [images[:batch]]
    backend(chunks[0])  # warm-up: first-call allocations and kernel choices are start-up, not throughput
    done, started, k = 0, time.perf_counter(), 0
    while True:
        chunk = chunks[k % len(chunks)]
        backend(chunk)
        done += len(chunk)
        k += 1
        elapsed = time.perf_counter() - started
        if elapsed >= TIMED_SECONDS and k >= 2:
            return done / elapsed


def _measure(
    name: str,
    backend: Backend,
    startup: float,
    file: Path | None,
    classifier: Classifier,
    split: Any,
    reference: torch.Tensor,
) -> FormatRow:
    probs = forward_in_batches(backend, split.images)
    accuracy = float(
        classifier.task.metrics(probs, split.labels, list(classifier.classes), classifier.thresholds)["accuracy"]
    )
    agreement = same_answers(classifier, probs, reference)
    speeds = {batch: timed_throughput(backend, split.images, batch) for batch in BATCHES}
    size = size_on_disk(file) / 1e6 if file is not None else None
    return FormatRow(name, size, accuracy, agreement, speeds, startup)


def benchmark(path: str | os.PathLike, log: Log = quiet, formats: Sequence[str] | None = None) -> list[FormatRow]:
    """Benchmark the run at ``path`` on its test split (its data must be at hand); each format exported first
    where missing. A format whose runtime is not installed, or an INT8 model refused past its limit, is a row
    saying why."""
    from .evaluate import checkpoint_data

    started = time.perf_counter()
    classifier = load(path, device="cpu")
    model = classifier.inference_model()

    def eager(images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(images)

    startup = time.perf_counter() - started
    _, dataset = checkpoint_data(classifier, classifier.path or path)
    split = dataset.test
    log(f"benchmarking on {len(split):,} test images, {torch.get_num_threads()} threads")
    reference = forward_in_batches(eager, split.images)
    rows = [_measure("pytorch", eager, startup, classifier.path, classifier, split, reference)]
    for row in FORMATS if formats is None else [get_format(name) for name in formats]:
        if not row.runs_here:  # exported and its spec checked by `imgclf export`; nothing to time here
            rows.append(FormatRow(row.name, None, None, None, {}, None, not_run_here(row)))
            continue
        if row.runtime and importlib.util.find_spec(row.runtime) is None:  # before exporting what cannot run
            rows.append(
                FormatRow(
                    row.name, None, None, None, {}, None, f"needs {row.runtime}: pip install 'imgclf[{row.extra}]'"
                )
            )
            continue
        try:
            exported_backend(path, row.name, log)  # exported (and checked) where missing or stale
            started = time.perf_counter()
            backend = row.backend(export_folder(path) / row.file)
            startup = time.perf_counter() - started
        except ImgclfError as exc:  # not installed here, or refused: the table says why
            rows.append(FormatRow(row.name, None, None, None, {}, None, str(exc)))
            continue
        file = export_folder(path) / row.file
        rows.append(_measure(row.name, backend, startup, file, classifier, split, reference))
        log(f"{row.name}: {rows[-1].images_per_second[BATCHES[-1]]:,.0f} images/s at batch {BATCHES[-1]}")
    _write(RunDir(RunDir.checkpoint_path(path).parent), rows, len(split))
    return rows


def benchmark_table(rows: list[FormatRow]) -> Table:
    eager = rows[0].images_per_second
    columns = [
        "format",
        "MB",
        "test accuracy",
        "same answer",
        *(f"images/s b{b}" for b in BATCHES),
        "x PyTorch b32",
        "start s",
    ]
    body = []
    for r in rows:
        if not r.images_per_second:
            # the whole reason, not cut: a refusal names its file first
            body.append([r.format, "-", "-", "-", *("-" for _ in BATCHES), "-", r.note])
            continue
        body.append(
            [
                r.format,
                f"{r.file_mb:.1f}" if r.file_mb is not None else "-",
                f"{r.accuracy:.4f}",
                f"{r.agreement:.2%}",
                *(f"{r.images_per_second[b]:,.0f}" for b in BATCHES),
                f"{r.images_per_second[BATCHES[-1]] / eager[BATCHES[-1]]:.2f}",
                f"{r.startup_seconds:.2f}",
            ]
        )
    return Table(columns, body)


def _write(run: RunDir, rows: list[FormatRow], test_images: int) -> None:
    folder = run.output("benchmark", BENCHMARK)
    folder.mkdir(exist_ok=True)
    machine = {"threads": torch.get_num_threads(), "cpu": processor_name()}
    atomic_write_json(
        folder / RESULTS, {"test_images": test_images, "machine": machine, "rows": [asdict(r) for r in rows]}
    )
    atomic_write_text(folder / TABLE, benchmark_table(rows).to_text() + "\n")
    measured = [r for r in rows if r.images_per_second]
    plot_benchmark([r.format for r in measured], [r.images_per_second for r in measured], folder / PLOT)

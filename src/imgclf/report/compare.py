"""Runs side by side: test accuracy, macro F1, train seconds, parameters and multiply-adds per image."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..explain import inspect_model
from ..plots.figures import plot_comparison
from ..plots.tables import Table
from ..predict import load
from ..rundir import RunDir


@dataclass
class CompareResult:
    rows: list[dict[str, Any]]
    path: Path

    def table(self) -> Table:
        return Table(
            ["run", "data", "model", "test acc", "macro F1", "train s", "parameters", "multiply-adds"],
            [
                [
                    r["run"],
                    r["data"],
                    r["model"],
                    f"{r['test_accuracy']:.4f}",
                    f"{r['macro_f1']:.4f}",
                    f"{r['train_seconds']:.1f}",
                    f"{r['parameters']:,}",
                    f"{r['macs']:,}",
                ]
                for r in self.rows
            ],
        )


def _run_summary(run: RunDir, name: str) -> dict[str, Any]:
    metrics = run.read_metrics()
    classifier = load(run.path, device="cpu")
    macs = sum(layer.macs for layer in inspect_model(classifier.model, classifier.channels, classifier.image_size))
    return {
        "run": name,
        "data": metrics["data"]["name"],
        "model": classifier.model_name,
        "test_accuracy": metrics["test"]["accuracy"],
        "macro_f1": metrics["test"]["macro_f1"],
        "train_seconds": metrics["train_seconds"],
        "parameters": metrics["parameters"],
        "macs": macs,
    }


def _short_names(runs: Sequence[Path]) -> list[str]:
    """Folder names, with their parent where two runs share a name."""
    names = [r.name for r in runs]
    return [f"{r.parent.name}/{r.name}" if names.count(r.name) > 1 else r.name for r in runs]


def compare_runs(
    runs: Sequence[str | os.PathLike], out: str | os.PathLike, log: Callable[[str], None]
) -> CompareResult:
    folders = [RunDir.find(r) for r in runs]
    rows = [_run_summary(run, name) for run, name in zip(folders, _short_names([f.path for f in folders]))]
    plot_comparison(rows, out)
    result = CompareResult(rows, Path(out))
    log(result.table().to_text())
    if len({r["data"] for r in rows}) > 1:
        log("note: these runs were tested on different data; their accuracies are not comparable")
    log(f"plot: {out}")
    return result

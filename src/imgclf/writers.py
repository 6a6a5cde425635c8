"""Prediction files: CSV, JSON or the terminal's table, written as the predictions stream in (a folder of
any size), with the decision's columns the run's task gives. ``imgclf predict --out`` and a notebook's
``imgclf.predict(...).save("p.csv")`` write through here.

A file is written as ``FILE.partial`` while predicting and renamed when complete: an interrupted run leaves
what it predicted, never a file that looks complete; a write that fails is one line naming the file.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TextIO

from .errors import ConfigError, writing
from .plots.tables import table
from .runtime import Log, quiet

if TYPE_CHECKING:
    from .tasks import Prediction, Task


class Columns:
    """A prediction as a row: its file, the decision's columns (the task's), then the top k (label, prob)."""

    def __init__(self, task: Task, k: int, min_confidence: float = 0.0) -> None:
        self.task, self.k, self.min_confidence = task, k, min_confidence

    def header(self) -> list[str]:
        top = [h for i in range(1, self.k + 1) for h in (f"label_{i}", f"prob_{i}")]
        return ["file", *self.task.decision_columns(self.min_confidence), *top]

    def row(self, p: Prediction) -> list[str]:
        top = [v for label, prob in p.top_k for v in (label, f"{prob:.4f}")]
        return [p.source, *self.task.decision_cells(p, self.min_confidence), *top]


class PredictionWriter(Protocol):
    def write(self, p: Prediction) -> None: ...
    def close(self) -> None: ...


class CsvWriter:
    FLUSH_EVERY = 256  # rows: a reader of the file (tail -f) sees it grow batch by batch

    def __init__(self, out: TextIO, columns: Columns) -> None:
        self.out, self.columns, self.rows = out, columns, 0
        self.csv = csv.writer(out, lineterminator="\n")
        self.csv.writerow(columns.header())

    def write(self, p: Prediction) -> None:
        self.csv.writerow(self.columns.row(p))
        self.rows += 1
        if self.rows % self.FLUSH_EVERY == 0:
            self.out.flush()

    def close(self) -> None:
        self.out.flush()


class JsonWriter:
    """A JSON array written item by item: valid JSON once closed, one prediction per line (each item's
    ``label`` is the decision already)."""

    def __init__(self, out: TextIO, columns: Columns) -> None:
        self.out, self.separator = out, "[\n  "

    def write(self, p: Prediction) -> None:
        self.out.write(self.separator + json.dumps(p.to_dict()))
        self.separator = ",\n  "

    def close(self) -> None:
        self.out.write("[]\n" if self.separator.startswith("[") else "\n]\n")
        self.out.flush()


class TableWriter:
    """The terminal's aligned table: its column widths need every row, so rows (not images) are kept."""

    def __init__(self, out: TextIO, columns: Columns) -> None:
        self.out, self.columns = out, columns
        self.rows: list[list[str]] = []

    def write(self, p: Prediction) -> None:
        self.rows.append(self.columns.row(p))

    def close(self) -> None:
        self.out.write(table(self.columns.header(), self.rows) + "\n")


WRITERS: dict[str, Callable[[TextIO, Columns], PredictionWriter]] = {
    "csv": CsvWriter,
    "json": JsonWriter,
    "table": TableWriter,
}
FORMATS = tuple(WRITERS)


def file_format(out: str | os.PathLike | None, fmt: str | None = None) -> str:
    """The format asked for, or the one ``out``'s suffix names (none: the terminal's table)."""
    chosen = fmt or (Path(out).suffix.lstrip(".").lower() if out else "table")
    if chosen not in WRITERS:
        raise ConfigError(f"`out` {out}: give `format` csv or json, or a file ending in .csv or .json")
    return chosen


@contextlib.contextmanager
def prediction_output(out: str | os.PathLike | None, log: Log = quiet) -> Iterator[TextIO]:
    """Standard output, or ``out`` written as ``out.partial`` while predicting and renamed when complete; a
    write that fails (a read-only place, a full disk) is one line."""
    if out is None:
        yield sys.stdout
        return
    partial = Path(f"{out}.partial")
    with writing(out, "out"):
        f = open(partial, "w", encoding="utf-8", newline="")  # noqa: SIM115  closed by the with below
    try:
        with writing(partial, "out"), f:  # closed inside the helper: a full disk fails the last flush, too
            yield f
    except BaseException:
        if partial.is_file() and partial.stat().st_size:
            log(f"warning: the predictions made so far are in {partial}")
        else:
            partial.unlink(missing_ok=True)
        raise
    with writing(out, "out"):
        os.replace(partial, out)


def write_predictions(
    predictions: Iterable[Prediction],
    columns: Columns,
    out: str | os.PathLike | None = None,
    fmt: str | None = None,
    log: Log = quiet,
) -> int:
    """Write ``predictions`` (a list, or a stream consumed as it yields) to ``out`` (standard output: None) as
    ``fmt`` (default: by ``out``'s suffix); the number written."""
    chosen = file_format(out, fmt)
    written = 0
    with prediction_output(out, log) as stream:
        writer = WRITERS[chosen](stream, columns)
        for prediction in predictions:
            writer.write(prediction)
            written += 1
        writer.close()
    return written

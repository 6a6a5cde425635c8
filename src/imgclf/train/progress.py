"""Progress output: a bar on a terminal, plain lines otherwise (logs, CI, notebooks' captured output)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def batches_with_bar(batches: Iterable[T], total: int, description: str, enabled: bool) -> Iterator[T]:
    if enabled and sys.stderr.isatty():
        yield from tqdm(batches, total=total, desc=description, leave=False, unit="batch", dynamic_ncols=True)
    else:
        yield from batches


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass


@contextlib.contextmanager
def progress_bar(total: int, description: str, unit: str = "it", enabled: bool = True) -> Iterator[Any]:
    """A bar to ``update()`` on a terminal (tqdm), nothing elsewhere."""
    if not (enabled and sys.stderr.isatty()):
        yield _NoBar()
        return
    with tqdm(total=total, desc=description, leave=False, unit=unit, dynamic_ncols=True) as bar:
        yield bar


def format_epoch(row: dict, epochs: int) -> str:
    return (
        f"epoch {row['epoch']:>3}/{epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}  "
        f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}  lr {row['lr']:.2e}  {row['seconds']:.1f}s"
    )

"""Progress output: a bar on a terminal, plain lines otherwise (logs, CI, notebooks' captured output)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def batches_with_bar(batches: Iterable[T], total: int, description: str, enabled: bool) -> Iterator[T]:
    if enabled and sys.stderr.isatty():
        yield from tqdm(batches, total=total, desc=description, leave=False, unit="batch", dynamic_ncols=True)
    else:
        yield from batches


def format_epoch(row: dict, epochs: int) -> str:
    return (
        f"epoch {row['epoch']:>3}/{epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}  "
        f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}  lr {row['lr']:.2e}  {row['seconds']:.1f}s"
    )

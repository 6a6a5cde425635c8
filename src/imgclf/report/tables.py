"""Plain-text tables for the terminal."""

from __future__ import annotations

from typing import Any


def per_class_table(metrics: dict[str, Any]) -> str:
    names = list(metrics["per_class"])
    width = max(8, *(len(n) for n in names))
    lines = [f"{'class':<{width}}  precision  recall     f1  support"]
    for name, row in metrics["per_class"].items():
        lines.append(f"{name:<{width}}  {row['precision']:9.4f}  {row['recall']:6.4f}  {row['f1']:.4f}  {row['support']:7d}")
    lines.append(f"{'accuracy':<{width}}  {'':9}  {'':6}  {metrics['accuracy']:.4f}  {metrics['samples']:7d}")
    lines.append(f"{'macro f1':<{width}}  {'':9}  {'':6}  {metrics['macro_f1']:.4f}")
    return "\n".join(lines)


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """Left-aligned columns, padded to the widest cell."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)

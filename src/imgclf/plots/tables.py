"""Tables as data: an analysis builds one :class:`Table`, and the terminal and the HTML report render it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class Table:
    headers: Sequence[str] | None  # None: a list of (name, text) lines
    rows: Sequence[Sequence[Any]]
    title: str = ""

    def to_text(self) -> str:
        """Left-aligned columns padded to the widest cell, under the title if there is one."""
        cells = ([[str(h) for h in self.headers]] if self.headers else []) + [
            [str(c) for c in row] for row in self.rows
        ]
        if not cells:
            return self.title
        widths = [max(len(row[i]) for row in cells if i < len(row)) for i in range(max(map(len, cells)))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
        return "\n".join(([self.title] if self.title else []) + lines)


def table(headers: list[str], rows: Sequence[Sequence[Any]]) -> str:
    """A table's text at once, for listings that no report shows."""
    return Table(headers, rows).to_text()

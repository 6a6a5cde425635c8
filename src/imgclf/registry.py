"""The one lookup table behind the dataset and model registries.

Names are looked up as they were registered, without regard to case (``"MyPhotos"`` is found as
``myphotos`` and ``MyPhotos``), keep their spelling for display, and a name registered twice warns and
keeps the later entry, as in a notebook cell run again.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind  # "dataset", "model": names the entries in warnings
        self._entries: dict[str, tuple[str, T]] = {}  # case-folded name -> (name as registered, entry)

    def add(self, name: str, entry: T) -> None:
        key = name.casefold()
        if key in self._entries:
            warnings.warn(
                f"{self.kind} {name!r} was registered twice; the later definition replaces the earlier one",
                stacklevel=3,
            )
        self._entries[key] = (name, entry)

    def get(self, name: str) -> T | None:
        found = self._entries.get(name.casefold())
        return found[1] if found else None

    def names(self) -> list[str]:
        """Names as registered, in registration order."""
        return [name for name, _ in self._entries.values()]

    def __iter__(self) -> Iterator[T]:
        return (entry for _, entry in self._entries.values())

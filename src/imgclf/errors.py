"""User-facing errors: each message is one line that names the problem and the fix.

A message names the settings it is about between backticks, as `val_split` or `cache=False`, and is
rendered for whoever reads it: a Python caller sees the keyword (``val_split``, ``cache=False``), the
command line sees its flag (``--val-split``, ``--no-cache``). The CLI installs its own namer with
:func:`setting_names`; everything else gets the keyword. The CLI prints these errors as
``imgclf: error: <message>`` and exits with status 2; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from collections.abc import Callable, Iterator

SettingNamer = Callable[[str, "str | None"], str]
_SETTING = re.compile(r"`([a-z][a-z0-9_]*)(?:=([^`]*))?`")


def keyword_name(setting: str, value: str | None) -> str:
    """How the Python API names a setting: its keyword, with the value when one is given."""
    return setting if value is None else f"{setting}={value}"


_namer: contextvars.ContextVar[SettingNamer] = contextvars.ContextVar("imgclf_setting_namer", default=keyword_name)


def name_settings(text: str) -> str:
    """``text`` with each `setting` or `setting=value` mark rendered by the current namer."""
    namer = _namer.get()
    return _SETTING.sub(lambda match: namer(match.group(1), match.group(2)), text)


@contextlib.contextmanager
def setting_names(namer: SettingNamer) -> Iterator[None]:
    """Render settings with ``namer`` (the CLI's flags) inside the block."""
    token = _namer.set(namer)
    try:
        yield
    finally:
        _namer.reset(token)


class ImgclfError(Exception):
    """A problem with the user's input (a path, a file, a setting), not with imgclf."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message  # with `setting` marks; str() renders them

    def __str__(self) -> str:
        return name_settings(self.message)


class ConfigError(ImgclfError):
    """A setting is unknown, of the wrong type or out of range."""


class DataError(ImgclfError):
    """A dataset, folder, CSV or image cannot be used."""


class ModelError(ImgclfError):
    """A model name, its weights or its input size is wrong."""


class CheckpointError(ImgclfError):
    """A checkpoint or run directory cannot be loaded or does not fit."""


class ExportError(ImgclfError):
    """An exported model that does not compute what the PyTorch model computes, or an exporter missing."""

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
import errno
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

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


class WriteError(ImgclfError):
    """A file or folder could not be written: a read-only place, a full disk, a file where a folder should be."""


# errno -> (the cause in words, the fix); a message names the path, the cause and the fix
_WRITE_FAILURES = {
    errno.EROFS: ("the file system is read-only", "choose a writable place"),
    errno.ENOSPC: ("the disk is full", "free some space or choose another disk"),
    errno.EDQUOT: ("the disk quota is used up", "free some space or choose another disk"),
    errno.EACCES: ("permission denied", "choose a folder you can write to"),
    errno.EPERM: ("permission denied", "choose a folder you can write to"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "choose another path"),
    errno.EEXIST: ("a file of that name is in the way", "choose another path"),
    errno.EISDIR: ("it is a folder", "give a file name"),
    errno.ENAMETOOLONG: ("the name is too long", "choose a shorter path"),
    errno.ENOENT: ("its folder does not exist", "create the folder or choose another place"),
}
# how torch.save reports a write that failed (its zip writer turns the OS error into a RuntimeError)
_TORCH_WRITE_FAILURE = re.compile(r"PytorchStreamWriter|unexpected pos|file write failed")


def write_failure(path: str | os.PathLike, exc: BaseException, setting: str | None = None) -> WriteError | None:
    """The one-line error for a failed write of ``path`` (``setting``: the setting that chose the place, named
    in the fix), or None when ``exc`` is not a failed write."""
    if isinstance(exc, OSError) and exc.errno in _WRITE_FAILURES:
        cause, fix = _WRITE_FAILURES[exc.errno]
    elif isinstance(exc, OSError) and exc.errno is not None:
        cause, fix = (exc.strerror or "an error").lower(), "choose another place"
    elif isinstance(exc, RuntimeError) and _TORCH_WRITE_FAILURE.search(str(exc)):
        cause, fix = _WRITE_FAILURES[errno.ENOSPC] if _nearly_full(path) else ("the write failed", "check the disk")
    else:
        return None
    where = f" (`{setting}`)" if setting and "choose" in fix else ""
    return WriteError(f"{os.fspath(path)}: cannot write it ({cause}); {fix}{where}")


def _nearly_full(path: str | os.PathLike, slack: int = 1 << 20) -> bool:
    folder = Path(path).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free < slack
    except OSError:
        return False


@contextlib.contextmanager
def writing(path: str | os.PathLike, setting: str | None = None) -> Iterator[None]:
    """Inside the block, a failed write of ``path`` becomes a one-line :class:`WriteError` (exit 2 on the
    command line); every writer of imgclf writes through this (mostly by :mod:`imgclf.fsutil`)."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        error = write_failure(path, exc, setting)
        if error is None:
            raise
        raise error from None

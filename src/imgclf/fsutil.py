"""Writing files safely: atomically (a crash or Ctrl-C mid-write never leaves a half-written checkpoint or
report), and with a failed write (read-only place, full disk, a file in the way) as one line that names
the path, the cause and the fix (:func:`imgclf.errors.writing`)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from .errors import writing


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _read_umask()  # read once: os.umask can only be read by setting it, which is not thread-safe


def untaken(path: str | os.PathLike) -> Path:
    """``path``, or ``path-2``, ``path-3``, ... where it is taken: a default folder never overwrites earlier results."""
    base = candidate = Path(path)
    n = 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def make_dir(path: str | os.PathLike, setting: str | None = None, exist_ok: bool = True) -> Path:
    """``path`` as a folder (with its parents); ``setting``: the setting that named it, for the fix."""
    path = Path(path)
    with writing(path, setting):
        path.mkdir(parents=True, exist_ok=exist_ok)
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, setting: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    make_dir(path.parent, setting)
    with writing(path, setting):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        tmp_path = Path(tmp)
        try:
            os.chmod(tmp_path, 0o666 & ~UMASK)  # mkstemp makes 0600 files; the result gets the usual permissions
            yield tmp_path
            os.replace(tmp_path, path)
        finally:
            tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, setting: str | None = None) -> Iterator[Path]:
    """Yield a path of the same name in a hidden folder beside ``path``, for a writer that makes a file or a
    folder there (an OpenVINO IR, a CoreML .mlpackage) and may need the name's extension; moved onto ``path``
    only if the block succeeds. A folder already at ``path`` is swapped out and removed after the move."""
    path = Path(path)
    make_dir(path.parent, setting)
    with writing(path, setting):
        staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
        try:
            os.chmod(staging, 0o777 & ~UMASK)
            yield staging / path.name
            old = staging / ".replaced"
            if path.is_dir() and not path.is_symlink():
                os.replace(path, old)  # a folder cannot be replaced in one rename: the old one steps aside first
            os.replace(staging / path.name, path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def size_on_disk(path: str | os.PathLike) -> int:
    """Bytes of a file, or of every file in a folder (an OpenVINO IR, a CoreML .mlpackage)."""
    path = Path(path)
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", setting: str | None = None) -> Iterator[IO]:
    """Open a temporary file for writing that replaces ``path`` when the block ends without error."""
    with atomic_path(path, setting) as tmp, open(tmp, mode, encoding=None if "b" in mode else "utf-8") as f:
        yield f


def atomic_write_text(path: str | os.PathLike, text: str, setting: str | None = None) -> None:
    with atomic_open(path, setting=setting) as f:
        f.write(text)


def json_text(value: object) -> str:
    """How imgclf writes a JSON file: indented, ending in a newline."""
    return json.dumps(value, indent=2) + "\n"


def atomic_write_json(path: str | os.PathLike, value: object, setting: str | None = None) -> None:
    atomic_write_text(path, json_text(value), setting)


def overwrite_in_place(path: str | os.PathLike, text: str) -> bool:
    """Rewrite an existing small file in the blocks it already holds, where an atomic write (a new file)
    finds no room on a full disk: not atomic, so only for a last word such as a run's failure; whether done."""
    data = text.encode("utf-8")
    try:
        if len(data) > os.stat(path).st_blocks * 512:  # more than the file's blocks hold: it would end cut short
            return False
        with open(path, "r+b") as f:
            f.write(data)
            f.truncate(len(data))
    except OSError:
        return False
    return True


def append_line(path: str | os.PathLike, line: str) -> None:
    """One line added to a log file (a complete line or none: one write call of a line under 4 KB)."""
    with writing(path), open(path, "a", encoding="utf-8") as f:
        f.write(line.rstrip("\n") + "\n")

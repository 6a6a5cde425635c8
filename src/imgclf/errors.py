"""User-facing errors: each message is one line that names the problem and the fix.

The CLI prints these as ``imgclf: error: <message>`` and exits with status 2; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations


class ImgclfError(Exception):
    """A problem with the user's input (a path, a file, a setting), not with imgclf."""


class ConfigError(ImgclfError):
    """A setting is unknown or out of range."""


class DataError(ImgclfError):
    """A dataset, folder, CSV or image cannot be used."""


class ModelError(ImgclfError):
    """A model name, its weights or its input size is wrong."""


class CheckpointError(ImgclfError):
    """A checkpoint or run directory cannot be loaded or does not fit."""

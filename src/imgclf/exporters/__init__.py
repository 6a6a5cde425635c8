"""The exporters of the format table (:data:`imgclf.export.FORMATS`) and the runtimes that load what they
write, one module per runtime family. Each imports its converter and runtime only when called (they are
extras: a missing one is one line naming the extra), and each gets the same things: the graph ``predict``
runs (:class:`imgclf.predict.InferenceModel`: uint8 N x C x H x W in, probabilities out), a uint8 example
batch, the path to write and, for a quantized format, the run's validation images to calibrate on.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import TYPE_CHECKING

from ..errors import CheckpointError, ExportError

if TYPE_CHECKING:
    import torch

CALIBRATION_IMAGES = 500  # validation images a quantized format's activation ranges are calibrated on, at most
CALIBRATION_BATCH = 32


def converter(module: str, extra: str, what: str) -> ModuleType:
    """``module`` imported for an export, or an ExportError saying which extra installs it."""
    try:
        with quiet_converter():  # torchao's import logs a deprecation through torch's logger
            return importlib.import_module(module)
    except ImportError:
        raise ExportError(f"{what} needs {module.split('.')[0]}: pip install 'imgclf[{extra}]'") from None


def runtime(module: str, extra: str, what: str) -> ModuleType:
    """``module`` imported to load an exported file, or a CheckpointError saying which extra installs it."""
    try:
        with quiet_converter():
            return importlib.import_module(module)
    except ImportError:
        raise CheckpointError(f"{what} needs {module.split('.')[0]}: pip install 'imgclf[{extra}]'") from None


@contextlib.contextmanager
def converters_output_silenced() -> Iterator[None]:
    """The C++ of converters and runtimes (MLIR, XNNPACK, ExecuTorch) writes notes and internal errors to the
    process's stderr, and litert-torch its progress bars to stdout, around imgclf's own lines; what failed
    reaches the user as imgclf's one line instead. For exporting only: a server's other threads write to the
    same descriptors."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in saved:
            os.dup2(devnull, fd)
        # and through Python's streams, where pybind11 and rich print
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for fd, copy_of_it in saved.items():
            os.dup2(copy_of_it, fd)
            os.close(copy_of_it)
        os.close(devnull)


@contextlib.contextmanager
def quiet_converter() -> Iterator[None]:
    """Converters print progress notes, upstream deprecations and advice to warnings and the root logger."""
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)


def plain_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` in PyTorch's default memory layout, for converters that read the weights' layout as
    the graph's (imgclf trains in channels-last; ExecuTorch's and LiteRT's passes expect NCHW weights). The
    copy leaves the caller's model as it was."""
    import torch

    return copy.deepcopy(model).eval().to(memory_format=torch.contiguous_format)


def one_image_at_a_time(run_one: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """A batch through a runtime whose model takes one image (its shapes fixed at export, as on a phone)."""
    import torch

    return torch.cat([run_one(images[i : i + 1]) for i in range(len(images))])

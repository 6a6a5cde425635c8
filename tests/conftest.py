"""Shared fixtures: small generated image datasets and the optional real data in ../shared/data."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _share_the_cores() -> None:
    """Under pytest-xdist, each test process (and what it starts) gets its share of the cores: two processes with
    every core's threads each would only take turns."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if "PYTEST_XDIST_WORKER" not in os.environ or workers < 2:
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    os.environ["OMP_NUM_THREADS"] = str(threads)  # read by PyTorch when it starts, here and in subprocesses
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


_share_the_cores()
# the folder default's search trains several candidates for minutes: the tests of the search turn it on
os.environ["IMGCLF_SEARCH"] = "off"
# and `flips=auto` measures the flips with a probe (seconds a folder): the tests of the flips measure them
os.environ["IMGCLF_MEASURE_FLIPS"] = "off"

SHARED_DATA = Path(os.environ.get("IMGCLF_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
CLASSES = ("horizontal", "vertical", "checker")


def synthetic_image(cls: int, rng: np.random.Generator, size: int = 16) -> np.ndarray:
    """Noise over a pattern that is the class: horizontal stripes, vertical stripes or a checkerboard.

    The phase and colour vary per image, so the class is a texture, as in real photos, not a fixed pixel.
    """
    y, x = np.mgrid[0:size, 0:size]
    phase = rng.integers(0, 4)
    pattern = [(y + phase) // 2 % 2, (x + phase) // 2 % 2, ((x + phase) // 2 + (y + phase) // 2) % 2][cls]
    colour = rng.integers(150, 256, 3)
    image = pattern[..., None] * colour + rng.integers(0, 70, (size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def write_class_folder(root: Path, per_class: int = 24, seed: int = 0, size: int = 16, classes=CLASSES) -> Path:
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(synthetic_image(c, rng, size)).save(root / name / f"{i:03d}.png")
    return root


@pytest.fixture
def class_folder(tmp_path: Path) -> Path:
    return write_class_folder(tmp_path / "stripes")


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "MNIST" / "raw").is_dir():
        pytest.skip(f"real data not present at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch) -> Path:
    """Run in an empty working directory, so runs/ lands there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """One small run shared by the tests that only read a run directory."""
    import imgclf

    root = tmp_path_factory.mktemp("trained")
    data = write_class_folder(root / "stripes", per_class=30)
    result = imgclf.train(data=str(data), image_size=16, out=str(root / "run"), verbose=False)  # the folder recipe
    return result.run_dir


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


MULTI_LABELS = ("stripes", "dots", "frame")  # each drawn in its own place; an image holds any of them, or none


def write_multilabel_csv(root: Path, n: int = 96, seed: int = 0, size: int = 16, layout: str = "labels") -> Path:
    """Images with any of three marks (horizontal stripes in the top half, dots bottom left, a frame), listed in
    ``root/labels.csv``: a `labels` column of names separated by ';', or (``layout="columns"``) a 0/1 column
    per label."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        image = rng.integers(0, 60, (size, size, 3))
        present = [name for name in MULTI_LABELS if rng.random() < 0.45]
        colour = rng.integers(160, 256, 3)
        half = size // 2
        if "stripes" in present:
            image[: half - 1 : 2, 2:-2] = colour
        if "dots" in present:
            image[half + 1 : -2 : 3, 1 : half - 1 : 3] = colour
        if "frame" in present:
            image[[0, -1], :] = colour
            image[:, [0, -1]] = colour
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / f"{i:03d}.png")
        rows.append((f"{i:03d}.png", present))
    with open(root / "labels.csv", "w", encoding="utf-8") as f:
        if layout == "labels":
            f.write("file,labels\n" + "".join(f"{file},{';'.join(present)}\n" for file, present in rows))
        else:
            f.write("file," + ",".join(MULTI_LABELS) + "\n")
            f.write("".join(f"{file}," + ",".join(str(int(m in p)) for m in MULTI_LABELS) + "\n" for file, p in rows))
    return root / "labels.csv"


@pytest.fixture(scope="session")
def multilabel_run(tmp_path_factory) -> Path:
    """One small multi-label run shared by the tests that read a run directory, one task after the other."""
    import imgclf

    root = tmp_path_factory.mktemp("multilabel")
    data = write_multilabel_csv(root / "marks", n=120)
    result = imgclf.train(data=str(data), image_size=16, epochs=6, out=str(root / "run"), verbose=False)
    return result.run_dir


RUN_OF_TASK = {"single_label": "trained_run", "multi_label": "multilabel_run"}  # a new task adds its run here


def _task_names() -> list[str]:
    from imgclf.tasks import task_names

    return task_names()


@pytest.fixture(params=_task_names())
def task_run(request) -> Path:
    """The shared run of each registered task: tests taking it loop over the task registry."""
    return request.getfixturevalue(RUN_OF_TASK[request.param])


# converters that take 3-30 s a model (measured: tflite 3-15, executorch 8-27, coreml 3-5 and only its spec
# checked here, openvino 2-5): CI runs them on the default model, `python -m pytest` on every model
DEFAULT_MODEL_ONLY_IN_CI = {"tflite", "executorch", "coreml", "openvino"}
SLOW_CONVERTERS = {"tflite", "tflite-int8", "executorch"}
slow = pytest.mark.slow


def formats_for_the_shared_runs(quantized: bool | None = None, slow_too: frozenset[str] = frozenset()) -> list:
    """The formats that run here on the shared runs' 16 px cnn, the slow converters (and ``slow_too``) marked
    slow; not ExecuTorch, whose XNNPACK backend cannot plan that model's shapes (a one-line refusal, tested in
    test_export), nor CoreML off macOS."""
    from imgclf.export import FORMATS

    return [
        pytest.param(
            f.name, marks=[*format_installed(f.name), *([slow] if f.name in SLOW_CONVERTERS | slow_too else [])]
        )
        for f in FORMATS
        if f.runs_here and f.name != "executorch" and quantized in (None, f.quantized)
    ]


def format_installed(fmt: str) -> list:
    """A skip where the format's extra is not installed (CI leaves out [tflite]: see pyproject's test extra)."""
    import importlib.util

    from imgclf.export import get_format

    row = get_format(fmt)
    missing = bool(row.runtime) and importlib.util.find_spec(row.runtime) is None
    return [pytest.mark.skipif(missing, reason=f"{row.runtime} is not installed: pip install 'imgclf[{row.extra}]'")]


# a runtime's second INT8 format adds nothing to a test of what every format shares (CI keeps onnx-int8)
SAME_RUNTIME_AS_ANOTHER = frozenset({"openvino-int8"})

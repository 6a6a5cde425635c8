"""No input can kill the process: every kind of bad image in the generated corpus is used correctly or
skipped/refused with one line, through folder training, predict on a file, predict on a folder and
evaluate, run as real `imgclf` processes (a native decoder's crash would show as a signal)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bad_images import BLUE, HIDDEN, RED, UNUSABLE, USABLE, write_corpus
from conftest import write_class_folder
from imgclf.config import DecodeSpec
from imgclf.data import decode_images

IMGCLF = [str(Path(sys.executable).parent / "imgclf")]
GOOD_PER_CLASS = 12


def run_cli(*argv, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([*IMGCLF, *map(str, argv)], capture_output=True, text=True, timeout=600, cwd=cwd, env=env)


def assert_no_crash(done: subprocess.CompletedProcess) -> None:
    assert done.returncode >= 0, f"killed by signal {-done.returncode}: {done.stderr[-500:]}"
    assert "Traceback" not in done.stderr, done.stderr


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory) -> tuple[Path, Path]:
    """A folder of good images with the whole corpus in one class folder, trained on from the command line."""
    root = tmp_path_factory.mktemp("bad")
    data = write_class_folder(root / "data", per_class=GOOD_PER_CLASS)
    write_corpus(data / "checker")
    done = run_cli("train", "--data", data, "--epochs", "2", "--out", root / "run", "--data-dir", root / "cache")
    assert_no_crash(done)
    assert done.returncode == 0, done.stderr
    return data, root / "run"


def test_the_decoder_uses_or_skips_every_kind(tmp_path):
    folder = write_corpus(tmp_path / "corpus")
    paths = sorted(p for p in folder.iterdir() if p.name != HIDDEN)
    images, kept, skipped, channels = decode_images(paths, DecodeSpec(16))
    reasons = {Path(p).name: reason for p, reason in skipped}
    assert set(reasons) == set(UNUSABLE) and channels == 3
    assert reasons["bomb.png"].startswith("claims 60000x60000 = 3,600,000,000 pixels, over the limit of 89,478,485")
    assert reasons["bomb.jpg"].startswith("claims 65000x65000")
    assert reasons["bomb.gif"].startswith("claims more than")
    assert reasons["empty.png"] == "empty file"
    assert reasons["truncated.jpg"].startswith("damaged image: image file is truncated")
    assert not any("Error" in reason for reason in reasons.values()), reasons  # words, not exception classes
    decoded = {paths[i].name: images[k] for k, i in enumerate(kept)}
    assert set(decoded) == set(USABLE)
    red, blue = torch.tensor(RED).view(3, 1), torch.tensor(BLUE).view(3, 1)

    def near(pixels: torch.Tensor, colour: torch.Tensor) -> bool:
        return bool(((pixels.int() - colour).abs() < 40).all())

    rotated = decoded["exif_rotated.jpg"]  # landscape, left half red; EXIF turns it upright: top half red
    assert near(rotated[:, 0, :], red) and near(rotated[:, -1, :], blue)
    assert near(decoded["animated.gif"].flatten(1), red)  # the first frame
    assert decoded["transparent.png"].min() == 255 and decoded["white16.png"].min() == 255


def test_a_folder_holding_the_corpus_trains_to_the_end_and_lists_what_it_skipped(corpus_run):
    data, run = corpus_run
    listed = {
        Path(line.split("\t")[0]).name: line.split("\t")[1] for line in (run / "skipped.txt").read_text().splitlines()
    }
    assert set(listed) == set(UNUSABLE)  # exactly the unusable kinds; the hidden file was never read
    assert "over the limit" in listed["bomb.png"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["data"]["skipped"] == len(UNUSABLE)
    used = metrics["data"]["train"] + metrics["data"]["val"] + metrics["data"]["test"]
    assert used == 3 * GOOD_PER_CLASS + len(USABLE)
    assert metrics["data"]["image_size"] == 16  # the bomb's claimed size did not sway the images' median


def test_predict_on_each_file_answers_or_refuses_in_one_line(corpus_run):
    data, run = corpus_run
    folder = data / "checker"
    # one process for the whole corpus, calling the command line's main() per file: a crash ends it with a signal
    script = (
        "import json, sys; from imgclf.cli import main\n"
        "codes = {name: main(['predict', sys.argv[1], sys.argv[2] + '/' + name]) for name in sys.argv[3:]}\n"
        "print('CODES ' + json.dumps(codes))\n"
    )
    names = sorted([*UNUSABLE, *USABLE])
    done = subprocess.run(
        [sys.executable, "-c", script, str(run), str(folder), *names],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert_no_crash(done)
    codes = json.loads(done.stdout.split("CODES ", 1)[1])
    assert {n for n, c in codes.items() if c == 2} == set(UNUSABLE)
    assert {n for n, c in codes.items() if c == 0} == set(USABLE)
    errors = done.stderr.strip().splitlines()
    assert len(errors) == len(UNUSABLE) and all(line.startswith("imgclf: error: ") for line in errors)
    # and the bomb through the installed console script, as a user runs it
    bomb = run_cli("predict", run, folder / "bomb.png")
    assert_no_crash(bomb)
    assert bomb.returncode == 2 and bomb.stdout == ""
    (line,) = bomb.stderr.strip().splitlines()
    assert line.startswith(f"imgclf: error: {folder / 'bomb.png'}: refused, it claims 60000x60000")
    assert "--max-image-pixels" in line


def test_predict_on_a_folder_predicts_the_rest_and_names_the_unusable(corpus_run):
    data, run = corpus_run
    done = run_cli("predict", run, data / "checker", "--format", "csv")
    assert_no_crash(done)
    assert done.returncode == 0
    predicted = {Path(row["file"]).name for row in csv.DictReader(io.StringIO(done.stdout))}
    assert predicted == {f"{i:03d}.png" for i in range(GOOD_PER_CLASS)} | set(USABLE)
    warnings = done.stderr.strip().splitlines()
    assert sorted(Path(w.split("skipped ", 1)[1].split(": ", 1)[0]).name for w in warnings) == sorted(UNUSABLE)
    assert all(w.startswith("imgclf: warning: skipped ") for w in warnings) and HIDDEN not in done.stderr


def test_evaluate_on_a_folder_holding_the_corpus(corpus_run):
    data, run = corpus_run
    done = run_cli("evaluate", run)
    assert_no_crash(done)
    assert done.returncode == 0, done.stderr
    assert f"warning: skipped {len(UNUSABLE)} unusable file(s)" in done.stderr  # warnings: standard error
    assert ".cpp" not in done.stderr and "__w/" not in done.stderr  # a decoder's reason, not its build path
    evaluated = json.loads((run / "evaluation.json").read_text())["test"]
    saved = json.loads((run / "metrics.json").read_text())["test"]
    assert evaluated["accuracy"] == saved["accuracy"] and evaluated["confusion_matrix"] == saved["confusion_matrix"]


def test_a_higher_pixel_limit_lets_a_genuine_large_image_through(tmp_path, corpus_run):
    from PIL import Image

    _, run = corpus_run
    Image.new("RGB", (300, 200), RED).save(tmp_path / "large.png")
    refused = run_cli("predict", run, tmp_path / "large.png", "--max-image-pixels", "50000")
    assert refused.returncode == 2 and "claims 300x200 = 60,000 pixels, over the limit of 50,000" in refused.stderr
    assert run_cli("predict", run, tmp_path / "large.png", "--max-image-pixels", "60000").returncode == 0


def test_a_truncated_jpeg_that_libjpeg_turbo_decodes_is_named_without_its_build_path():
    """torchvision's decoder (small JPEGs) says where in its C++ source it failed: the user sees why, not where."""
    import io

    import numpy as np
    from PIL import Image

    from imgclf.data.images import decode_bytes

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    reason = decode_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2], DecodeSpec(32))
    assert isinstance(reason, str) and "truncated" in reason
    assert ".cpp" not in reason and "/" not in reason, reason

"""The run directory contract: checkpoints of every format version load, runs from imgclf 0.1 work with
every command, inference never imports training, and a run that cannot be resumed says what to do."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import imgclf
from imgclf import rundir
from imgclf.cli import main
from imgclf.errors import CheckpointError
from imgclf.rundir import VERSION, read_checkpoint

V1_RUN = (
    Path(__file__).parent / "fixtures" / "run-v1"
)  # written by imgclf 0.1 (commit e39e71e): digits, cnn [16, 16, 32]


@pytest.fixture
def v1_run(tmp_path: Path) -> Path:
    return Path(shutil.copytree(V1_RUN, tmp_path / "run-v1"))


def modules_loaded_by(statements: str, prefixes: tuple[str, ...]) -> list[str]:
    """The modules starting with ``prefixes`` that running ``statements`` in a fresh interpreter imports."""
    probe = f"import sys\n{statements}\nprint(sorted(m for m in sys.modules if m.startswith({prefixes!r})))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return ast.literal_eval(done.stdout)  # a printed list of strings


def test_importing_inference_loads_no_training_code():
    # the package's inference API, loaded: no trainer, no dataset downloaders, no shard code
    heavy = ("imgclf.train", "imgclf.recipes", "captum", "imgclf.data.builtin", "imgclf.data.shards", "webdataset")
    assert modules_loaded_by("import imgclf.predict, imgclf\nimgclf.load", heavy) == []
    assert modules_loaded_by("import imgclf", ("torch",)) == []  # importing the package alone loads no torch
    # the functions that share a submodule's name stay functions after their submodules load
    import imgclf.train.pipeline  # noqa: F401

    assert callable(imgclf.train) and callable(imgclf.predict) and callable(imgclf.errors) and callable(imgclf.report)


def test_the_command_line_starts_without_the_stages_it_does_not_run():
    heavy = ("torchmetrics", "captum", "fastapi", "onnx", "imgclf.train", "imgclf.evaluate", "imgclf.report.page")
    assert modules_loaded_by("import imgclf.cli", heavy) == []


def test_a_v1_checkpoint_is_upgraded_when_read():
    raw = torch.load(V1_RUN / "best.pt", weights_only=True)
    assert raw["version"] == 1 and "tta" not in raw  # the fixture really is in the old format
    checkpoint = read_checkpoint(V1_RUN)
    assert checkpoint.spec.tta is True and checkpoint.spec.model_args == {"widths": [16, 16, 32]}  # from its config
    assert checkpoint.spec.classes == [str(i) for i in range(10)] and checkpoint.training is None
    last = read_checkpoint(V1_RUN / "last.pt")
    assert last.training is not None and last.training["best_epoch"] == 16 and last.epoch == 16


def test_a_checkpoint_from_a_newer_imgclf_is_refused(tmp_path):
    raw = torch.load(V1_RUN / "best.pt", weights_only=True)
    torch.save({**raw, "version": VERSION + 1}, tmp_path / "future.pt")
    with pytest.raises(
        CheckpointError, match=f"future.pt: written by a newer imgclf \\(format {VERSION + 1}\\); upgrade imgclf"
    ):
        read_checkpoint(tmp_path / "future.pt")


def test_new_checkpoints_are_written_in_the_current_version(trained_run):
    raw = torch.load(trained_run / rundir.BEST, weights_only=True)
    assert raw["version"] == VERSION and raw["format"] == rundir.FORMAT and raw["tta"] is True


def _digit_image(run: Path, path: Path) -> Path:
    kept = torch.load(run / rundir.TEST_PREDICTIONS, weights_only=True)["example_images"][0]
    Image.fromarray(kept[0].numpy()).save(path)
    return path


def test_every_command_reads_a_run_from_imgclf_0_1(v1_run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    image = _digit_image(v1_run, tmp_path / "digit.png")
    saved = json.loads((v1_run / rundir.METRICS).read_text())["test"]
    for command in (
        ["predict", v1_run, image, "--format", "json"],
        ["evaluate", v1_run],
        ["inspect", v1_run, "--image", image],
        ["explain", v1_run, image],
        ["errors", v1_run],
        ["compare", v1_run, v1_run, "--out", tmp_path / "c.png"],
        ["report", v1_run],
    ):
        assert main([str(a) for a in command]) == 0, command
    capsys.readouterr()
    # evaluate reproduces the old run's own test metrics: same split, same test-time augmentation, same numbers
    evaluated = json.loads((v1_run / rundir.EVALUATION).read_text())["test"]
    assert evaluated["accuracy"] == saved["accuracy"] and evaluated["confusion_matrix"] == saved["confusion_matrix"]
    assert (v1_run / rundir.REPORT).is_file() and (v1_run / rundir.ERRORS / "errors.json").is_file()
    # its training state resumes: one more epoch than it ran, from its optimizer, schedule and lookahead
    assert main(["train", "--resume", str(v1_run), "--epochs", "17", "--quiet"]) == 0
    assert len((v1_run / rundir.HISTORY).read_text().splitlines()) == 1 + 17
    assert torch.load(v1_run / rundir.LAST, weights_only=True)["version"] == VERSION
    # and its config trains a new run
    assert main(["train", "--config", str(v1_run / rundir.CONFIG), "--epochs", "1", "--out", "again", "--quiet"]) == 0
    assert (tmp_path / "again" / rundir.BEST).is_file()


def test_resume_of_a_run_that_never_finished_an_epoch_starts_it_again_in_its_folder(class_folder, tmp_path, capsys):
    def stop(epoch, row):
        raise KeyboardInterrupt

    run = tmp_path / "k1"
    with pytest.raises(KeyboardInterrupt):  # a run killed during its first epoch keeps its config, no checkpoint
        imgclf.train(data=str(class_folder), image_size=16, epochs=2, out=str(run), callbacks=[stop], verbose=False)
    (run / rundir.LAST).unlink()
    (run / rundir.BEST).unlink()
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert capsys.readouterr().out.strip().endswith(f"run saved in {run}")
    assert (run / rundir.BEST).is_file() and not (tmp_path / "runs").exists()  # the same folder, no other
    assert main(["train", "--resume", str(tmp_path / "nowhere")]) == 2
    assert "nowhere: no such run directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"not a run directory \(no last.pt\)"):
        imgclf.train(resume=tmp_path / "empty")


def test_run_directory_names_live_in_one_module():
    """No module but rundir spells a run file's name: the contract has one owner."""
    source = Path(imgclf.__file__).parent
    names = [
        "config.yaml",
        "history.csv",
        "metrics.json",
        "best.pt",
        "last.pt",
        "test_predictions.pt",
        "skipped.txt",
        "evaluation.json",
        "report.html",
        "curves.png",
        "confusion_matrix.png",
        "status.json",
        "events.jsonl",
    ]
    offenders = [
        f"{path.name}: {name}"
        for path in source.rglob("*.py")
        if path.name != "rundir.py"
        for name in names
        if f'"{name}"' in path.read_text() or f"'{name}'" in path.read_text()
    ]
    assert offenders == []

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
from imgclf.rundir import METRICS_VERSION, VERSION, RunDir, RunMetrics, read_checkpoint

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


# ---------------------------------------------------------------- metrics.json, typed and versioned


def test_metrics_are_typed_versioned_and_read_as_the_old_dict_too(trained_run, v1_run, tmp_path):
    metrics = RunDir(trained_run).read_metrics()
    assert isinstance(metrics, RunMetrics) and metrics.version == METRICS_VERSION and metrics.task == "single_label"
    assert metrics["test"]["accuracy"] == metrics.accuracy == metrics.test["accuracy"]  # as imgclf 0.5's dict
    assert (
        metrics["data"]["name"] == metrics.data.name and "best_epoch" in metrics and len(metrics) == len(list(metrics))
    )
    assert RunMetrics.from_json(json.loads(json.dumps(metrics.to_json()))) == metrics
    old = RunDir(v1_run).read_metrics()  # imgclf 0.1's: no version, no task, no calibration, no search
    assert (old.version, old.task, old.calibration, old.search) == (METRICS_VERSION, "single_label", None, None)
    assert old.headline().startswith("test accuracy 0.")


def test_a_multi_label_runs_old_metrics_upgrade_to_its_task():
    payload = json.loads((V1_RUN / rundir.METRICS).read_text())
    payload["test"] = {**payload["test"], "task": "multi_label"}  # imgclf 0.5 wrote the task inside the test metrics
    upgraded = RunMetrics.from_json(payload)
    assert upgraded.task == "multi_label" and "task" not in upgraded.test


def test_metrics_from_a_newer_imgclf_or_damaged_are_one_line(trained_run, tmp_path):
    raw = json.loads((trained_run / rundir.METRICS).read_text())
    for name, payload, message in (
        ("newer", {**raw, "version": METRICS_VERSION + 1}, "written by a newer imgclf"),
        ("damaged", {k: v for k, v in raw.items() if k != "data"}, "damaged metrics"),
    ):
        folder = tmp_path / name
        shutil.copytree(trained_run, folder)
        (folder / rundir.METRICS).write_text(json.dumps(payload))
        with pytest.raises(CheckpointError, match=message):
            RunDir(folder).read_metrics()


# ---------------------------------------------------------------- what later commands may write


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()
    }


def test_every_later_command_writes_only_what_the_run_directory_declares(trained_run, tmp_path, monkeypatch):
    monkeypatch.setattr("imgclf.shipping.TIMED_SECONDS", 0.05)  # what benchmark writes, not how fast
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    image = tmp_path / "query.png"
    Image.fromarray(RunDir(run).read_predictions().example_images[0].permute(1, 2, 0).numpy()).save(image)
    negatives = tmp_path / "negatives"
    negatives.mkdir()
    for i in range(12):  # unrelated pictures: flat colours
        Image.new("RGB", (16, 16), (20 * i, 255 - 20 * i, 90)).save(negatives / f"{i}.png")
    data = Path(rundir.RunDir(run).read_config()["data"]["data"])
    commands = {
        "evaluate": ["evaluate", run],
        "evaluate --negatives": ["evaluate", run, "--negatives", negatives],
        "errors": ["errors", run],
        "explain": ["explain", run, image],
        "inspect": ["inspect", run, "--image", image],
        "similar": ["similar", run, image],
        "report": ["report", run],
        "doctor --run": ["doctor", data, "--run", run, "--out", tmp_path / "doctor", "--no-near"],
        "export": ["export", run, "--format", "torchscript"],
        "benchmark": ["benchmark", run, "--formats", "torchscript"],  # exported just above: timed, not exported
    }
    assert set(commands) == set(rundir.WRITTEN_AFTER_TRAINING)  # a command that writes into a run is declared
    for command, argv in commands.items():
        before = _files(run)
        assert main([str(a) for a in argv]) == 0, command
        after = _files(run)
        changed = {p for p, stat in after.items() if before.get(p) != stat}
        declared = rundir.WRITTEN_AFTER_TRAINING[command]
        undeclared = {p for p in changed if p not in declared and p.split("/")[0] not in declared}
        assert not undeclared and changed, (command, undeclared)
    assert set(before) >= {rundir.BEST, rundir.METRICS, rundir.CONFIG}


def test_what_changes_how_a_run_predicts_is_reported_where_it_loads(trained_run, tmp_path):
    from fastapi.testclient import TestClient

    from imgclf.serve.app import create_app

    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    assert "evaluate --negatives" not in repr(imgclf.load(run, device="cpu"))
    unknown = {"chosen": "familiarity", "k": 1, "real_distances": [0.1, 0.2, 0.3]}
    RunDir(run).write_unknown(unknown, torch.zeros(4, 8).numpy())  # as `evaluate --negatives` chooses familiarity
    classifier = imgclf.load(run, device="cpu")
    assert "`unknown` by familiarity (evaluate --negatives)" in repr(classifier)
    with TestClient(create_app(classifier)) as client:
        info = client.get("/model").json()
    assert info["unknown_score"] == "familiarity" and "evaluate --negatives" in info["changed_after_training"]


def test_an_unknown_json_of_another_shape_is_left_out_of_the_report_and_of_prediction(trained_run, tmp_path):
    import numpy as np

    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("report.html", "errors", "explain", "inspect"))
    (run / rundir.UNKNOWN).write_text(json.dumps({"auroc": {"probability": 0.9}, "curves": {}}))  # an older shape
    np.save(run / rundir.UNKNOWN_REFERENCE, np.zeros((4, 8), dtype=np.float16))
    assert RunDir(run).read_unknown() is None
    assert main(["report", str(run)]) == 0 and (run / "report.html").is_file()
    image = next((trained_run.parent / "stripes").rglob("*.png"))
    assert main(["predict", str(run), str(image), "--min-confidence", "0.5"]) == 0

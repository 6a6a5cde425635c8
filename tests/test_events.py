"""Training events: status.json and events.jsonl in the run directory, `imgclf runs`, callbacks, MLflow."""

from __future__ import annotations

import json
import os
import sys

import pytest

import imgclf
from imgclf.cli import main
from imgclf.runs import list_runs
from imgclf.train.events import Event, Events, RunStarted, Sink

FAST = {"image_size": 16, "epochs": 3, "batch_size": 16}


def _events(run) -> list[dict]:
    return [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]


def test_a_run_writes_its_status_and_every_event(class_folder, in_tmp):
    seen = []
    result = imgclf.train(data=str(class_folder), callbacks=[lambda e, row: seen.append(e)], verbose=False, **FAST)
    status = json.loads((result.run_dir / "status.json").read_text())
    assert status["state"] == "finished" and status["epoch"] == status["epochs"] == 3
    assert status["test_accuracy"] == pytest.approx(result.accuracy) and status["eta_seconds"] == 0
    assert status["pid"] == os.getpid() and status["best_epoch"] == result.metrics["best_epoch"]
    events = _events(result.run_dir)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "finish" and kinds.count("epoch") == 3
    assert kinds.count("checkpoint") == 3 + kinds.count("best")  # last.pt every epoch, best.pt when it improved
    epochs = [e for e in events if e["event"] == "epoch"]
    assert [e["row"] for e in epochs] == result.history  # the rows history.csv holds
    assert epochs[-1]["eta_seconds"] == 0 and epochs[0]["eta_seconds"] > 0
    assert seen == [1, 2, 3]  # the user's callback is a sink like the others


def test_runs_lists_each_runs_state(class_folder, in_tmp, capsys):
    finished = imgclf.train(data=str(class_folder), out="runs/finished", verbose=False, **FAST)

    def stop(epoch, row):
        if epoch == 2:
            raise KeyboardInterrupt

    def fail(epoch, row):
        raise RuntimeError("a bug in a callback")

    with pytest.raises(KeyboardInterrupt):
        imgclf.train(data=str(class_folder), out="runs/stopped", callbacks=[stop], verbose=False, **FAST)
    with pytest.raises(RuntimeError):
        imgclf.train(data=str(class_folder), out="runs/failed", callbacks=[fail], verbose=False, **FAST)
    states = {r.path.name: r for r in list_runs("runs")}
    assert {name: r.state for name, r in states.items()} == {
        "finished": "finished",
        "stopped": "stopped",
        "failed": "failed",
    }
    assert states["failed"].error == "RuntimeError: a bug in a callback" and states["stopped"].epoch == 2
    assert states["finished"].accuracy == pytest.approx(finished.accuracy)
    assert json.loads((in_tmp / "runs/stopped/status.json").read_text())["error"] == "interrupted"
    assert main(["runs", "runs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["run", "state", "data"]
    assert any(line.split()[:2] == ["runs/failed", "failed"] for line in lines)
    # the stopped run resumes, and is then finished
    imgclf.train(resume="runs/stopped", verbose=False)
    assert {r.path.name: r.state for r in list_runs("runs")}["stopped"] == "finished"


def test_events_go_to_every_sink_in_order():
    got: list[tuple[str, str]] = []

    class Recorder(Sink):
        def __init__(self, name: str) -> None:
            self.name = name

        def on_start(self, event: RunStarted) -> None:
            got.append((self.name, event.run))

    events = Events([Recorder("a"), Recorder("b")])
    events.emit(RunStarted("r", "d", "m", 3, 1, {}))
    events.emit(Event())  # a kind no sink handles is passed by
    assert got == [("a", "r"), ("b", "r")]
    assert "config" not in RunStarted("r", "d", "m", 3, 1, {"data": {}}).to_json()  # events.jsonl keeps it small


def test_mlflow_receives_the_runs_params_metrics_and_artifacts(class_folder, in_tmp, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # what the sink sets: restored after the test
    result = imgclf.train(data=str(class_folder), track="mlflow", verbose=False, **FAST)
    assert (in_tmp / "mlruns").is_dir()
    client = mlflow.tracking.MlflowClient(tracking_uri=(in_tmp / "mlruns").as_uri())
    (experiment,) = [e for e in client.search_experiments() if e.name == f"imgclf {class_folder.name}"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == result.run_dir.name
    assert run.data.params["optim.batch_size"] == "16" and run.data.params["model.model"] == "cnn"
    val_acc = client.get_metric_history(run.info.run_id, "val_acc")
    assert sorted(m.step for m in val_acc) == [1, 2, 3]
    assert [m.value for m in sorted(val_acc, key=lambda m: m.step)] == [r["val_acc"] for r in result.history]
    assert run.data.metrics["test_accuracy"] == pytest.approx(result.accuracy)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"best.pt", "config.yaml", "metrics.json", "plots"} <= artifacts
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert "plots/confusion_matrix.png" in plots


def test_mlflow_logs_to_a_file_store_the_user_names(class_folder, in_tmp, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "unset below; restored after the test")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")  # MLflow 3 refuses a file store without it
    for store in (in_tmp / "store", (in_tmp / "by-uri").as_uri()):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", str(store))
        result = imgclf.train(data=str(class_folder), track="mlflow", verbose=False, **FAST)
        client = mlflow.tracking.MlflowClient(tracking_uri=str(store))
        (experiment,) = [e for e in client.search_experiments() if e.name == f"imgclf {class_folder.name}"]
        (run,) = client.search_runs([experiment.experiment_id], filter_string=f"run_name = '{result.run_dir.name}'")
        assert run.info.status == "FINISHED"


def test_tracking_without_mlflow_installed_is_one_line_before_any_folder(class_folder, in_tmp, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed: importing it raises ImportError
    with pytest.raises(imgclf.ImgclfError, match=r"track=mlflow needs MLflow: pip install 'imgclf\[mlflow\]'"):
        imgclf.train(data=str(class_folder), track="mlflow", out="run", verbose=False, **FAST)
    assert not (in_tmp / "run").exists()


@pytest.mark.parametrize(("monitor", "best"), [("val_loss", 1), ("val_balanced_acc", 2)])
def test_a_resumed_runs_status_names_the_best_epoch_as_the_trainer_picks_it(tmp_path, monitor, best):
    from imgclf.rundir import RunDir
    from imgclf.train.events import StatusSink

    history = [  # epoch 1 has the lowest loss, epoch 2 the highest balanced accuracy (an imbalanced run's monitor)
        {"epoch": 1, "val_loss": 0.50, "val_acc": 0.90, "val_balanced_acc": 0.60},
        {"epoch": 2, "val_loss": 0.70, "val_acc": 0.85, "val_balanced_acc": 0.75},
    ]
    run = RunDir(tmp_path)
    StatusSink(run)(RunStarted(str(tmp_path), "d", "cnn", 5, 3, {}, history, monitor))
    status = run.read_status()
    assert status is not None and status["best_epoch"] == best and status["epoch"] == 2


def test_a_finished_run_is_not_resumed_and_keeps_every_file(trained_run, tmp_path, capsys):
    """`train --resume` on a finished run says what to do instead and touches nothing (it used to retrain and
    rewrite config.yaml, the metrics and the plots)."""
    import shutil

    run = shutil.copytree(trained_run, tmp_path / "run")
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()}
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "finished" in err and "nothing to resume" in err and f"--init {run}" in err
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()} == before


def test_training_piped_into_head_finishes_its_run(class_folder, tmp_path):
    """A reader that leaves early (`imgclf train | head -2`) costs the messages, not the run."""
    import subprocess

    imgclf_cli = [sys.executable, "-m", "imgclf", "train", "--data", str(class_folder), "--out", str(tmp_path / "r")]
    flags = ["--image-size", "16", "--epochs", "3", "--batch-size", "16", "--search", "off"]
    trainer = subprocess.Popen([*imgclf_cli, *flags], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert trainer.stdout is not None
    trainer.stdout.readline()
    trainer.stdout.close()  # as head does after its lines
    assert trainer.wait(timeout=300) == 0
    assert json.loads((tmp_path / "r" / "status.json").read_text())["state"] == "finished"

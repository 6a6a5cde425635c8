"""Distributed training on CPU processes (gloo), launched by torchrun: two processes with batch B each step
exactly as one process with batch 2B, only the first process writes, and a run killed mid-way resumes
under torchrun to the uninterrupted result."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import write_class_folder
from imgclf import rundir
from imgclf.cli import main
from imgclf.rundir import read_checkpoint

IMGCLF = str(Path(sys.executable).parent / "imgclf")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "imgclf"]
# cnn2 has no batch norm: with it, each process would normalise its own half of the batch (sync_bn needs GPUs)
EPOCHS = 40  # a tenth of a second each: enough of them that a kill after the first lands mid-run
SETTINGS = [
    "--model",
    "cnn2",
    "--image-size",
    "16",
    "--epochs",
    str(EPOCHS),
    "--no-cache",
    "--seed",
    "0",
    "--device",
    "cpu",
]
WEIGHT_TOLERANCE = 1e-5  # the same sums in another order: float rounding only


def run(argv: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """One process with batch 16, and two with batch 8 each (through `--devices 2`), on the same data."""
    root = tmp_path_factory.mktemp("ddp")
    write_class_folder(root / "data", per_class=30)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    commands = [  # side by side: each process spends most of its time importing PyTorch (--no-cache: no shared file)
        [IMGCLF, "train", "--data", "data", *SETTINGS, "--batch-size", "16", "--out", "one", "--quiet"],
        [IMGCLF, "train", "--devices", "2", "--data", "data", *SETTINGS, "--batch-size", "8", "--out", "two"],
    ]
    processes = [
        subprocess.Popen(c, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for c in commands
    ]
    for process in processes:
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-3000:]
    return root


def without_times(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if "seconds" not in k} for row in history]


def assert_same_history(got: list[dict], expected: list[dict]) -> None:
    """The same epochs to float rounding: sums over two processes add in another order (0.56815 vs 0.568149)."""
    assert [{k: pytest.approx(v, abs=1e-5) for k, v in row.items()} for row in without_times(expected)] == (
        without_times(got)
    )


def assert_same_metrics(got: dict, expected: dict) -> None:
    assert got["confusion_matrix"] == expected["confusion_matrix"] and got["per_class"] == expected["per_class"]
    assert got["accuracy"] == expected["accuracy"]
    assert got["loss"] == pytest.approx(expected["loss"], rel=1e-5)  # weights equal to float rounding


def test_two_processes_with_batch_b_train_as_one_with_batch_2b(runs):
    one, two = read_checkpoint(runs / "one" / rundir.LAST), read_checkpoint(runs / "two" / rundir.LAST)
    assert one.config["optim"]["lr"] == two.config["optim"]["lr"]  # the lr follows the global batch: 16 = 2 x 8
    worst = max((one.state_dict[k].float() - two.state_dict[k].float()).abs().max().item() for k in one.state_dict)
    assert worst <= WEIGHT_TOLERANCE
    assert_same_history(two.training["history"], one.training["history"])
    one_test, two_test = (json.loads((runs / name / rundir.METRICS).read_text())["test"] for name in ("one", "two"))
    assert_same_metrics(two_test, one_test)


def test_only_the_first_process_writes(runs):
    assert sorted(p.name for p in runs.iterdir()) == ["data", "one", "two"]  # no second run directory, no runs/
    listing = sorted(str(p.relative_to(runs / "two")) for p in (runs / "two").rglob("*"))
    assert listing == sorted(str(p.relative_to(runs / "one")) for p in (runs / "one").rglob("*"))
    assert len(list(csv.DictReader(open(runs / "two" / rundir.HISTORY)))) == EPOCHS


def descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (children, theirs, ...), from /proc."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "(comm)": state, ppid, ...
            parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def test_a_distributed_run_killed_mid_way_resumes_under_torchrun(runs):
    cut = runs / "cut"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    argv = [*TORCHRUN, "train", "--data", "data", *SETTINGS, "--batch-size", "8", "--out", str(cut), "--quiet"]
    process = subprocess.Popen(
        argv, cwd=runs, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 240
    while not (cut / rundir.LAST).exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    # torchrun and both workers at once: the workers run in sessions of their own (torch's elastic agent starts
    # them with start_new_session), so killing torchrun's group alone would leave them training to the end
    for pid in [process.pid, *descendants(process.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait()
    history = read_checkpoint(cut / rundir.LAST).training["history"]
    assert 1 <= len(history) < EPOCHS, "the kill came too late to test a resume"
    run([*TORCHRUN, "train", "--resume", str(cut), "--quiet"], runs)
    resumed = json.loads((cut / rundir.METRICS).read_text())["test"]
    assert_same_metrics(resumed, json.loads((runs / "two" / rundir.METRICS).read_text())["test"])
    assert_same_history(
        read_checkpoint(cut / rundir.LAST).training["history"],
        read_checkpoint(runs / "two" / rundir.LAST).training["history"],
    )
    assert json.loads((cut / rundir.STATUS).read_text())["state"] == "finished"


def test_sync_bn_on_cpu_processes_is_a_one_line_error(tmp_path, capsys):
    write_class_folder(tmp_path / "data", per_class=6)
    code = main(["train", "--data", str(tmp_path / "data"), "--devices", "2", "--sync-bn", "--device", "cpu"])
    assert code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("imgclf: error: --sync-bn needs GPUs: PyTorch synchronises batch norm over NCCL only")


def test_two_processes_stream_packed_shards_each_reading_its_own(tmp_path):
    write_class_folder(tmp_path / "data", per_class=30)
    run([IMGCLF, "pack", "data", "--out", "shards", "--image-size", "16", "--shard-size", "10"], tmp_path)
    settings = ["--model", "cnn2", "--epochs", "12", "--batch-size", "8", "--device", "cpu", "--data-dir", "cache"]
    done = run([*TORCHRUN, "train", "--data", "shards", *settings, "--out", "run"], tmp_path)
    assert "streamed from 7 shard(s)" in done.stdout  # 65 training images, 10 a shard
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0.9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "data", "run", "shards"]  # one run directory

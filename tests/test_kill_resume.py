"""Training killed with SIGKILL at a random moment: every checkpoint left on disk loads, ``--resume``
finishes the run (starting it again in its folder when no epoch had finished), the finished run's test
metrics equal those of the same run never interrupted (same seed, CPU), and until it is resumed, `imgclf
runs` calls the killed run died, not running."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from imgclf import rundir
from imgclf.runs import run_info

IMGCLF = str(Path(sys.executable).parent / "imgclf")
SETTINGS = ["--image-size", "16", "--epochs", "4", "--seed", "3", "--no-cache", "--device", "cpu"]


def imgclf(*argv: object, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([IMGCLF, *map(str, argv)], capture_output=True, text=True, timeout=timeout, env=env)


@dataclass
class Reference:
    data: Path
    metrics: dict  # the uninterrupted run's test metrics
    startup: float  # seconds before the run directory holds its config (imports, data): training starts
    seconds: float  # the whole run


def start_training(data: Path, run: Path) -> tuple[subprocess.Popen, float]:
    process = subprocess.Popen(
        [IMGCLF, "train", "--data", str(data), *SETTINGS, "--out", str(run), "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    started = time.monotonic()
    while not (run / rundir.CONFIG).exists() and process.poll() is None:
        time.sleep(0.02)
    return process, time.monotonic() - started


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Reference:
    from conftest import write_class_folder

    root = tmp_path_factory.mktemp("kill")
    data = write_class_folder(root / "data", per_class=24)
    started = time.monotonic()
    process, startup = start_training(data, root / "reference")
    assert process.wait(timeout=600) == 0
    seconds = time.monotonic() - started
    return Reference(data, json.loads((root / "reference" / rundir.METRICS).read_text())["test"], startup, seconds)


def kill_and_resume(reference: Reference, run: Path, during_training: bool, rng: random.Random) -> str:
    """Train into ``run`` and SIGKILL it at a random moment (of the start-up, or of the training), then
    resume; how the trial went."""
    if during_training:
        process, _ = start_training(reference.data, run)
        time.sleep(rng.uniform(0, reference.seconds - reference.startup))
    else:
        process = subprocess.Popen(
            [IMGCLF, "train", "--data", str(reference.data), *SETTINGS, "--out", str(run), "--quiet"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.3, reference.startup))
    process.send_signal(signal.SIGKILL)
    exit_code = process.wait()
    status = rundir.RunDir(run).read_status()
    # killed after the run wrote "finished" (while the process was shutting down): the run is complete
    finished_before_kill = exit_code == 0 or (status is not None and status["state"] == "finished")
    if status is not None and not finished_before_kill:  # killed outright: it could not say so, `runs` sees it
        assert status["state"] == "running" and run_info(rundir.RunDir(run)).state == "died"
    for name in (rundir.BEST, rundir.LAST):  # whatever the kill left must load: writes are atomic
        if (run / name).exists():
            rundir.read_checkpoint(run / name)
    if finished_before_kill:
        return "finished"
    resumed = imgclf("train", "--resume", run)
    if resumed.returncode == 2 and "no such run directory" in resumed.stderr:
        assert not (run / rundir.CONFIG).exists()  # killed before the run wrote anything: a fresh start is all there is
        return "restart"
    assert resumed.returncode == 0, resumed.stderr
    # a run killed before its first epoch ended starts again in its own folder; a later one continues
    outcome = "resumed" if "starting it again there" not in resumed.stdout else "restarted"
    return outcome if (run / rundir.METRICS).is_file() else "no metrics"


def trials(reference: Reference, tmp_path: Path, count: int, seed: int) -> list[str]:
    """``count`` kills, one in five during the start-up and the rest during training, at random moments; two
    trials at a time (each is two processes that mostly import PyTorch: one core each)."""

    def trial(number: int) -> str:
        run = tmp_path / f"trial{number}"
        rng = random.Random(seed * 1000 + number)  # each trial its own draws, whatever the threads' order
        outcome = kill_and_resume(reference, run, during_training=number % 5 != 0, rng=rng)
        if outcome in ("resumed", "restarted"):
            assert json.loads((run / rundir.METRICS).read_text())["test"] == reference.metrics, (number, outcome)
        return outcome

    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(trial, range(count)))
    assert "no metrics" not in outcomes
    print("kill trials:", {o: outcomes.count(o) for o in sorted(set(outcomes))})
    return outcomes


def test_two_kills_at_random_moments_resume_to_the_uninterrupted_result(uninterrupted, tmp_path):
    trials(uninterrupted, tmp_path, count=2, seed=11)


@pytest.mark.slow
def test_four_more_kills_at_random_moments_resume_to_the_uninterrupted_result(uninterrupted, tmp_path):
    trials(uninterrupted, tmp_path, count=4, seed=12)


def test_sigterm_stops_the_run_cleanly_and_resumably(uninterrupted, tmp_path):
    """`kill PID` (a scheduler, a container stop) ends training as Ctrl-C does: exit 143, the run `stopped`
    with its last finished epoch, resumable."""
    run = tmp_path / "run"
    process, _ = start_training(uninterrupted.data, run)
    while process.poll() is None and not (run / rundir.LAST).exists():  # after an epoch: something to keep
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    exit_code = process.wait(timeout=120)
    status = rundir.RunDir(run).read_status()
    assert status is not None
    if exit_code == 0:  # the signal came as the last epoch ended: nothing left to stop
        assert status["state"] == "finished"
        return
    assert exit_code == 128 + signal.SIGTERM and status["state"] == "stopped"
    assert run_info(rundir.RunDir(run)).state == "stopped"
    rundir.RunDir(run).resume_checkpoint()  # resumable (the kill trials above resume such runs to the end)

"""Every failure is one line (exit 2) naming the path, the cause and the fix, and nothing written before is lost.

The file systems here are real: a read-only mount and a tmpfs filled up while training, mounted by the
test when it runs as root (as CI does); elsewhere those tests skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import imgclf
from conftest import write_class_folder
from imgclf.cli import main
from imgclf.errors import WriteError, write_failure
from imgclf.rundir import read_checkpoint

FAST = {"image_size": 16, "epochs": 3, "batch_size": 16}


@contextlib.contextmanager
def mounted(path: Path, options: str) -> Iterator[Path]:
    """A tmpfs at ``path`` with mount ``options`` (e.g. size=1m), unmounted afterwards."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a test file system needs root")
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True)


def fill(disk: Path) -> None:
    """Leave ``disk`` with not one byte free."""
    with open(disk / "filler", "wb", buffering=0) as f:
        for chunk in (65536, 1):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * chunk)


def one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("imgclf: error: ") and "\n" not in err and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def test_the_message_names_the_path_the_cause_and_the_fix(tmp_path):
    error = write_failure(tmp_path / "x.pt", OSError(30, "Read-only file system"), "out")
    assert isinstance(error, WriteError)
    assert (
        str(error)
        == f"{tmp_path / 'x.pt'}: cannot write it (the file system is read-only); choose a writable place (out)"
    )
    full = write_failure(tmp_path / "x.pt", OSError(28, "No space left on device"))
    assert "(the disk is full); free some space or choose another disk" in str(full)
    assert write_failure(tmp_path / "x.pt", ValueError("not a write")) is None
    assert write_failure(tmp_path / "x.pt", RuntimeError("a bug")) is None


def test_a_folder_output_replaces_the_old_one_whole_or_not_at_all(tmp_path):
    from imgclf.fsutil import atomic_output

    target = tmp_path / "model_openvino"  # exports that are folders: an OpenVINO IR, a CoreML .mlpackage
    for version in ("old", "new"):
        with atomic_output(target) as staging:
            assert staging.name == target.name and not staging.exists()  # the name, extension kept, not yet made
            staging.mkdir()
            (staging / "model.xml").write_text(version)
    assert (target / "model.xml").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == [target.name]
    with pytest.raises(RuntimeError), atomic_output(target) as staging:  # a converter failing half-way
        staging.mkdir()
        (staging / "model.xml").write_text("half")
        raise RuntimeError("conversion failed")
    assert (target / "model.xml").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_out_naming_a_file_or_a_read_only_place_is_one_line(class_folder, in_tmp, capsys):
    (in_tmp / "a_file").write_text("x")
    assert main(["train", "--data", str(class_folder), "--out", "a_file", "--epochs", "1"]) == 2
    one_line_error(capsys, "--out a_file: is a file, not a folder; choose another --out")
    with mounted(in_tmp / "ro", "ro,size=1m") as ro:
        assert main(["train", "--data", str(class_folder), "--out", str(ro / "run"), "--epochs", "1"]) == 2
        one_line_error(capsys, str(ro / "run"), "read-only", "choose a writable place (--out)")


def test_a_read_only_data_dir_trains_from_memory_and_says_so(class_folder, in_tmp, capsys):
    with mounted(in_tmp / "cache_ro", "ro,size=1m") as ro:
        flags = ["--data-dir", str(ro), "--out", "run", "--search", "off"]
        assert main(["train", "--data", str(class_folder), *flags, "--epochs", "1", "--image-size", "16"]) == 0
    err = capsys.readouterr().err
    assert f"warning: the cache in {ro}/cache" in err and "cannot be written (Read-only file system)" in err, err
    assert "set --data-dir to a folder you can write" in err


def test_a_full_disk_mid_run_fails_in_one_line_keeps_the_last_epoch_and_resumes(class_folder, in_tmp, capsys):
    with mounted(in_tmp / "small", "size=16m") as disk:
        out = disk / "run"

        def fill_the_disk(epoch: int, row: dict) -> None:  # after epoch 1's checkpoints: the disk is then full
            if epoch == 1:
                free = shutil.disk_usage(disk).free
                with open(disk / "filler", "wb") as f:
                    f.write(b"\0" * (free - 64 * 1024))

        with pytest.raises(WriteError, match="the disk is full"):
            imgclf.train(data=str(class_folder), out=str(out), callbacks=[fill_the_disk], verbose=False, **FAST)
        status = json.loads((out / "status.json").read_text())
        assert status["state"] == "failed" and "disk is full" in status["error"] and status["epoch"] == 1
        assert read_checkpoint(out / "last.pt").epoch == 1  # the epoch before the failure, intact
        assert not list(out.glob(".*.tmp"))  # no half-written file left
        (disk / "filler").unlink()
        resumed = imgclf.train(resume=str(out), verbose=False)
        assert len(resumed.history) == 3 and json.loads((out / "status.json").read_text())["state"] == "finished"
    # the same failure on the command line: one line, exit 2
    with mounted(in_tmp / "tiny", "size=256k") as disk:
        assert main(["train", "--data", str(class_folder), "--out", str(disk / "run"), "--epochs", "2"]) == 2
        one_line_error(capsys, "(the disk is full); free some space or choose another disk")


def test_an_mlflow_store_in_a_read_only_place_is_one_line(class_folder, in_tmp, capsys, monkeypatch):
    pytest.importorskip("mlflow")
    with mounted(in_tmp / "ro", "ro,size=1m") as ro:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", str(ro / "mlruns"))
        assert main(["train", "--data", str(class_folder), "--track", "mlflow", "--epochs", "1", "--out", "r"]) == 2
        one_line_error(capsys, str(ro / "mlruns"), "read-only")
        assert json.loads((in_tmp / "r" / "status.json").read_text())["state"] == "failed"


def test_a_disk_with_not_one_byte_left_still_marks_the_run_failed_and_says_why(class_folder, in_tmp):
    with mounted(in_tmp / "full", "size=16m") as disk:
        out = disk / "run"

        def fill_the_disk(epoch: int, row: dict) -> None:
            if epoch == 1:
                fill(disk)

        with pytest.raises(WriteError, match="the disk is full"):
            imgclf.train(data=str(class_folder), out=str(out), callbacks=[fill_the_disk], verbose=False, **FAST)
        status = json.loads((out / "status.json").read_text())
        assert status["state"] == "failed" and "disk is full" in status["error"]


def test_export_and_predict_on_a_full_disk_fail_in_one_line_and_leave_nothing_half_written(trained_run, tmp_path):
    image = next(Path(trained_run / "../stripes/checker").resolve().glob("*.png"))
    with mounted(tmp_path / "full", "size=16m") as disk:
        run = disk / "run"
        shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("export", "errors", "explain", "inspect"))
        fill(disk)
        commands = [  # in a process of their own: torch's C++ writer once aborted the process (SIGABRT)
            ["export", str(run), "--format", "torchscript"],
            ["predict", str(run), str(image), "--out", str(disk / "predictions.csv")],
        ]
        for command in commands:
            done = subprocess.run([sys.executable, "-m", "imgclf", *command], capture_output=True, text=True)
            err = done.stderr.strip()
            assert done.returncode == 2 and "\n" not in err and "the disk is full" in err, (command, err)
        assert not list(disk.rglob("*.tmp")) and not list(disk.rglob("*.partial"))


def test_every_command_writing_into_a_read_only_place_says_so_in_one_line(trained_run, tmp_path, capsys):
    data = json.loads((trained_run / "metrics.json").read_text())["data"]
    image = next(Path(trained_run / "../stripes/checker").resolve().glob("*.png"))
    with mounted(tmp_path / "ro", "size=16m") as place:
        run = place / "run"
        shutil.copytree(trained_run, run)
        for folder in ("errors", "inspect", "explain", "export"):  # what earlier tests may have written
            shutil.rmtree(run / folder, ignore_errors=True)
        (run / "report.html").unlink(missing_ok=True)
        remount(place, "ro")
        commands = [
            ["evaluate", str(run)],
            ["explain", str(run), str(image)],
            ["errors", str(run)],
            ["inspect", str(run)],
            ["report", str(run)],
            ["export", str(run), "--format", "torchscript"],
            ["compare", str(run), "--out", str(place / "comparison.png")],
            ["predict", str(run), str(image), "--out", str(place / "predictions.csv")],
            ["doctor", str(image.parent.parent), "--out", str(place / "doctor"), "--no-labels", "--no-near"],
            ["pack", str(image.parent.parent), "--out", str(place / "shards"), "--data-dir", str(place / "cache")],
        ]
        for command in commands:
            assert main(command) == 2, command
            one_line_error(capsys, str(place), "read-only")
    assert data["name"] == "stripes"


def test_resumes_count_every_epochs_images_and_seconds(in_tmp):
    folder = write_class_folder(in_tmp / "photos", per_class=20)

    def stop(epoch: int, row: dict) -> None:
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        imgclf.train(data=str(folder), out="run", callbacks=[stop], verbose=False, **{**FAST, "epochs": 4})
    resumed = imgclf.train(resume="run", verbose=False)
    rows = resumed.history
    assert len(rows) == 4
    images = sum(r["train_images"] for r in rows)
    seconds = sum(r["train_seconds"] for r in rows)
    assert resumed.metrics["images_per_second"] == pytest.approx(images / seconds, rel=0.01)
    assert resumed.metrics["train_seconds"] == pytest.approx(seconds, abs=0.01)
    # a finished run has nothing to resume: refused in one line, its figures kept as they were
    with pytest.raises(imgclf.ImgclfError, match="finished .*nothing to resume"):
        imgclf.train(resume="run", verbose=False)
    kept = json.loads((in_tmp / "run" / "metrics.json").read_text())
    assert kept["images_per_second"] == pytest.approx(resumed.metrics["images_per_second"])

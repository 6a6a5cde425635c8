"""First contact: the command line starts light, every flag says what it does and its default, the flags come
from the config's fields, and what a package of imgclf carries."""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from imgclf.cli import build_parser
from imgclf.config import SETTINGS

ROOT = Path(__file__).resolve().parents[1]


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["predict", "--help"], ["runs", "--help"]])
def test_help_loads_no_torch(argv):
    """`python -X importtime` lists every module imported: torch and numpy are not among them."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "imgclf", *argv], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "usage: imgclf" in done.stdout
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert "imgclf.cli" in imported
    assert not {"torch", "numpy", "torchvision", "matplotlib", "PIL"} & imported


def test_every_option_of_every_command_has_help_with_its_default():
    for name, command in _subcommands(build_parser()).items():
        text = command.format_help()
        for action in command._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            assert action.help, (name, action.option_strings)
            # the formatter appends "(default: ...)" unless the default is suppressed: then the help says it
            assert "default" in action.help or action.default is not argparse.SUPPRESS, (name, action.option_strings)
        if len(command._actions) > 1:
            assert "(default:" in text, name


def test_train_flags_are_the_config_fields_and_lr_find_takes_only_what_it_uses():
    commands = _subcommands(build_parser())
    train = {a.dest for a in commands["train"]._actions if a.option_strings}
    settings_with_flags = {name for name, spec in SETTINGS.items() if spec.meta.get("flag") != ""}
    assert settings_with_flags <= train
    assert train - settings_with_flags == {"help", "config", "resume", "devices", "quiet"}
    lr_find = {a.dest for a in commands["lr-find"]._actions if a.option_strings}
    unused = {"epochs", "schedule", "warmup_epochs", "patience", "budget", "target_accuracy", "tta", "ema", "report"}
    assert not unused & lr_find and {"lr", "batch_size", "optimizer", "model", "data", "class_weights"} <= lr_find
    # flags keep their spelling: a bool that defaults on is turned off by --no-NAME
    assert "--no-cache" in commands["train"].format_help() and "--ema, --no-ema" in commands["train"].format_help()


def test_help_text_names_each_settings_default(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--val-split VAL_SPLIT share of the training images held out for validation (default: 0.1)" in text
    assert "--lr LR peak learning rate (default: the recipe)" in text


@pytest.mark.slow
def test_the_sdist_carries_what_its_tests_need(tmp_path):
    pytest.importorskip("build")
    done = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (sdist,) = tmp_path.glob("imgclf-*.tar.gz")
    names = {name.split("/", 1)[1] for name in tarfile.open(sdist).getnames() if "/" in name}
    assert {"LICENSE", "tests/conftest.py", "tests/bad_images.py", "bench/RESULTS.md"} <= names
    assert any(n.startswith("tests/fixtures/run-v1/") for n in names)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["lr-find", "--data", "NOWHERE", "--steps", "0"], "--steps 0: a sweep needs at least 10 steps"),
        (["lr-find", "--data", "NOWHERE", "--start-lr", "1", "--end-lr", "0.001"], "--start-lr 1 and --end-lr 0.001"),
        (["doctor", "NOWHERE", "--folds", "1"], "--folds 1: cross-validation needs at least 2 folds"),
        (["doctor", "NOWHERE", "--epochs", "0"], "--epochs 0"),
        (["train", "--data", "NOWHERE", "--devices", "0"], "--devices 0: train on 1 or more processes"),
        (["runs", "NOWHERE"], "NOWHERE: no such folder"),
        (["serve", "RUN", "--port", "99999"], "--port 99999: a TCP port is 1 to 65535"),
        (["predict", "RUN", "RUN", "--batch-size", "0"], "--batch-size 0 must be positive"),
    ],
)
def test_a_flag_value_that_cannot_work_is_one_line_before_any_work(argv, says, trained_run, capsys):
    """Out-of-range values are refused by name (exit 2), not a traceback after the data has loaded nor
    silently used (a port over 65535, a sweep that falls instead of rising)."""
    from imgclf.cli import main

    argv = [str(trained_run) if arg == "RUN" else arg for arg in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1, err

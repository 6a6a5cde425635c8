"""The speed machinery: decode cache, whitening, lookahead, test-time augmentation, recipes and budgets."""

from __future__ import annotations

import dataclasses
import os
import time

import pytest
import torch
from torch import nn

import imgclf
from conftest import write_class_folder
from imgclf.config import DataConfig, TrainConfig
from imgclf.data import BatchIterator, Split, load_data
from imgclf.models import create_model
from imgclf.models.cnn import WhiteningConv
from imgclf.predict import tta_logits
from imgclf.recipes import RECIPES, DataFacts, Variant, choose_variant, resolve
from imgclf.train import Trainer, seconds_per_image
from imgclf.train.ema import Lookahead
from imgclf.train.optim import build_optimizer

# ---------------------------------------------------------------- decode cache


def test_folder_is_decoded_once_and_a_changed_folder_decodes_again(tmp_path):
    folder = write_class_folder(tmp_path / "photos", per_class=12)
    cfg = DataConfig(data=str(folder), image_size=16, data_dir=str(tmp_path / "data"))
    first = load_data(cfg)
    second = load_data(cfg)
    assert not first.from_cache and second.from_cache
    assert torch.equal(first.train.images, second.train.images) and torch.equal(first.test.labels, second.test.labels)
    assert len(list((tmp_path / "data" / "cache").glob("photos-16px-*.u8"))) == 1
    # another image size is another cache entry
    assert not load_data(dataclasses.replace(cfg, image_size=8)).from_cache
    # replacing a file (new size and mtime) invalidates the entry, and the stale file is removed
    changed = folder / "checker" / "000.png"
    changed.write_bytes((folder / "vertical" / "000.png").read_bytes())
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
    third = load_data(cfg)
    assert not third.from_cache
    assert len(list((tmp_path / "data" / "cache").glob("photos-16px-*.u8"))) == 1
    assert load_data(cfg).from_cache
    # --no-cache decodes and writes nothing
    assert not load_data(dataclasses.replace(cfg, cache=False, data_dir=str(tmp_path / "none"))).from_cache
    assert not (tmp_path / "none").exists()


def test_damaged_cache_file_is_a_miss_not_an_error(tmp_path):
    folder = write_class_folder(tmp_path / "photos", per_class=8)
    cfg = DataConfig(data=str(folder), image_size=16, data_dir=str(tmp_path / "data"))
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


def _trainer(settings: TrainConfig, model: nn.Module, n: int = 64) -> Trainer:
    """A trainer of ``model`` on ``n`` random 1x8x8 images of 3 classes, with the folder recipe's run config."""
    cfg, _ = resolve(settings, "folder", "cpu", DataFacts(n, 8))
    split = Split(torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8), torch.arange(n) % 3)
    batches = BatchIterator(split, cfg.optim.batch_size, torch.device("cpu"), [0.5], [0.25], shuffle=True)
    return Trainer(model, cfg, batches)


def test_throughput_probe_times_the_trainers_step_and_leaves_the_model_untouched():
    model = create_model("cnn", 1, 3, 8, widths=[8, 8, 8])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = _trainer(TrainConfig(batch_size=16), model)
    assert 0 < seconds_per_image(trainer, min_seconds=0.05) < 1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert trainer.steps == 0 and not trainer.optimizer.state  # the optimizer's momentum is undone too
    assert trainer.scheduler.last_epoch == 0


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


def _resolved(recipe: str, n_train: int, device: str = "cpu", **settings):
    cfg, _ = resolve(TrainConfig(**settings), recipe, device, DataFacts(n_train))
    return cfg


def test_recipes_per_dataset_and_device():
    cfg, variant = resolve(TrainConfig(data="mnist"), "mnist", "cpu", DataFacts(54_000))
    assert variant == "default" and cfg.model.model == "cnn" and cfg.schedule.epochs == 1
    assert cfg.optim.batch_size == 256 and cfg.model.model_args == {"widths": [16, 32, 64]}
    assert cfg.optim.ema and cfg.eval.tta and cfg.optim.lr == pytest.approx(1.5 / 4)
    gpu = _resolved("cifar10", 45_000, "cuda", data="cifar10")
    assert gpu.optim.batch_size == 1024 and gpu.model.model_args == {"widths": [64, 256, 256]}
    assert gpu.optim.lr == pytest.approx(1.5) and gpu.run.compile
    # a flag wins over the recipe; a batch size given alone scales the recipe's lr linearly
    mine = _resolved("mnist", 54_000, data="mnist", batch_size=64, epochs=3)
    assert mine.schedule.epochs == 3 and mine.optim.lr == pytest.approx(1.5 * 64 / 1024)
    # tutorial models train with plain SGD, no lookahead or TTA
    plain = _resolved("mnist", 54_000, data="mnist", model="lenet5")
    assert plain.optim.lr == pytest.approx(0.1) and not plain.optim.ema and not plain.eval.tta
    assert plain.model.model_args == {}
    # every built-in dataset has a CPU and a GPU recipe with a default
    for name, recipe in RECIPES.items():
        for variants in (recipe.cpu, recipe.gpu):
            assert any(v.name == "default" for v in variants), name


def test_epochs_given_scale_the_warm_up_and_never_the_batch_or_lr():
    """One rule for what follows from an override: the warm-up keeps its share of the run; batch and lr stay."""
    default = _resolved("folder", 432)  # a 600-photo folder's training split
    one = _resolved("folder", 432, epochs=1)
    assert (one.optim.batch_size, one.optim.lr) == (default.optim.batch_size, default.optim.lr) == (32, 1.5 * 32 / 1024)
    assert one.sources["epochs"] == "you" and one.sources["batch_size"].startswith("rule: 432 training images")
    assert one.schedule.warmup_epochs == pytest.approx(default.schedule.warmup_epochs / default.schedule.epochs)
    # digits: 40 epochs with 8 of warm-up; 6 epochs warm up for 1.2, so the lr still reaches its peak
    digits = _resolved("digits", 1295, data="digits", epochs=6)
    assert digits.schedule.warmup_epochs == pytest.approx(1.2) and digits.sources["warmup_epochs"].startswith("rule:")
    # what you set is never changed by a rule
    mine = _resolved("digits", 1295, data="digits", epochs=6, warmup_epochs=3.0, batch_size=512, lr=0.3)
    assert (mine.schedule.warmup_epochs, mine.optim.batch_size, mine.optim.lr) == (3.0, 512, 0.3)
    assert {mine.sources[k] for k in ("warmup_epochs", "batch_size", "lr", "epochs")} == {"you"}


def test_the_resolved_config_is_concrete_and_records_where_each_value_came_from(trained_run):
    import yaml

    from imgclf.config import SETTINGS, RunConfig

    saved = yaml.safe_load((trained_run / "config.yaml").read_text())
    cfg = RunConfig.from_dict(saved)
    values = cfg.values()
    assert set(values) == set(SETTINGS) and set(cfg.sources) == set(SETTINGS)
    recipe_filled = [s.name for s in SETTINGS.values() if s.recipe]
    assert recipe_filled and all(values[name] is not None for name in recipe_filled)
    assert values["image_size"] == 16  # the folder's size, never null
    assert {source.split(" ")[0].rstrip(":") for source in cfg.sources.values()} <= {
        "you",
        "default",
        "recipe",
        "rule",
        "data",
    }
    # passing config.yaml back reproduces the run's settings, each now given by that file
    again = TrainConfig.load(trained_run / "config.yaml")
    assert {name: getattr(again, name) for name in SETTINGS} == values
    assert again.origin("lr") == f"config {trained_run / 'config.yaml'}"


def test_settings_are_checked_when_given():
    from imgclf.errors import ConfigError

    with pytest.raises(ConfigError, match="epochs must be a whole number, got 'ten'"):
        TrainConfig(epochs="ten")
    with pytest.raises(ConfigError, match="optimizer 'lamb' is not one of sgd, adam, adamw"):
        TrainConfig(optimizer="lamb")
    with pytest.raises(ConfigError, match="val_split 1.5 must be between 0 and 1"):
        TrainConfig(val_split=1.5)
    with pytest.raises(ConfigError, match="unknown setting\\(s\\) epoch;"):
        TrainConfig(epoch=3)
    assert TrainConfig(lr=1).lr == 1.0 and isinstance(TrainConfig(lr=1).lr, float)


def test_budget_and_target_accuracy_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = write_class_folder(tmp_path / "stripes", per_class=30)
    unbounded = imgclf.train(data=str(folder), image_size=16, verbose=False, epochs=None)
    budgeted = imgclf.train(data=str(folder), image_size=16, verbose=False, budget=0.5)
    assert 1 <= budgeted.config.schedule.epochs < unbounded.config.schedule.epochs
    assert budgeted.config.sources["epochs"] == "rule: what the budget of 0.5 s allows"
    assert budgeted.metrics["train_seconds"] < unbounded.metrics["train_seconds"]
    early = imgclf.train(data=str(folder), image_size=16, verbose=False, target_accuracy=0.9)
    assert early.metrics["stopped_early"] and early.metrics["epochs_run"] < early.config.schedule.epochs
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
    optim, schedule = config["optim"], config["schedule"]
    assert main(["recipes", "--data", config["data"]["data"]]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines()]
    row = next(r for r in rows if r[:3] == ["folder", "cpu", "default"])
    epochs, widths, batch, lr = row[3], " ".join(row[4:7]), row[7], row[8]
    assert (int(epochs), int(batch)) == (schedule["epochs"], optim["batch_size"]) == (60, 16)
    assert float(lr) == pytest.approx(optim["lr"], rel=1e-3) and widths == str(config["model"]["model_args"]["widths"])
    assert not any(r[:1] == ["mnist"] for r in rows)  # only the data asked about
    # and where each value comes from, as the first lines of train say it
    sources = {r[0]: " ".join(r[2:]) for r in rows if r and r[0] in ("epochs", "batch_size", "lr", "optimizer")}
    for name in ("batch_size", "epochs"):  # the folder's count is estimated before the stratified split: +-1
        assert sources[name].split(" images")[-1] == config["sources"][name].split(" images")[-1], name
        assert sources[name].startswith("rule: ") and config["sources"][name].startswith("rule: ")
    assert sources["optimizer"] == "recipe folder/default"


def test_recipes_for_builtin_data_use_their_training_set_size():
    from imgclf.api import recipe_train_images
    from imgclf.recipes import describe_recipes

    sizes = recipe_train_images()
    assert sizes["mnist"] == 54_000 and sizes["digits"] == round(1797 * 0.8 * 0.9) and sizes["folder"] is None
    digits_cpu = next(r for r in describe_recipes(sizes) if r[:3] == ["digits", "cpu", "default"])
    n_train = len(load_data(DataConfig(data="digits")).train)
    real = _resolved("digits", n_train, data="digits")
    assert digits_cpu[3:8] == [
        f"{real.schedule.epochs:g}",
        str(real.model.model_args["widths"]),
        str(real.optim.batch_size),
        f"{real.optim.lr:.4g}",
        f"{real.schedule.warmup_epochs:.3g}",
    ]
    assert real.optim.batch_size == 128  # the small-data rule halved the CPU batch of 256


def test_the_lr_sweep_rides_on_the_trainer_and_leaves_it_as_it_was():
    """lr-find's sweep is a schedule on training's own trainer: the head/backbone groups keep their ratio, a
    backbone that starts frozen stays so during the sweep, and weights and optimizer are restored after."""
    from imgclf.models import get_model_spec, head_of

    model = create_model("cnn", 1, 3, 8, widths=[8, 8, 8])
    cfg, _ = resolve(
        TrainConfig(batch_size=16, backbone_lr_scale=0.1, freeze_epochs=1), "folder", "cpu", DataFacts(64, 8)
    )
    split = Split(torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8), torch.arange(64) % 3)
    batches = BatchIterator(split, 16, torch.device("cpu"), [0.5], [0.25], shuffle=True)
    head = head_of(model, get_model_spec("cnn"))
    sweep = [1e-4 * 10**step for step in range(4)]
    trainer = Trainer(model, cfg, batches, head=head, lr_lambda=lambda step: sweep[step] / cfg.optim.lr)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    head_ids = {id(p) for p in getattr(model, head).parameters()}
    seen: list[tuple[float, float, bool]] = []

    def record(step: int, loss: float) -> bool:
        groups = trainer.optimizer.param_groups
        head_lr = next(g["lr"] for g in groups if id(g["params"][0]) in head_ids and g["weight_decay"])
        body = next(g for g in groups if id(g["params"][0]) not in head_ids and g["weight_decay"])
        seen.append((head_lr, body["lr"], body["params"][0].requires_grad))
        return True

    trainer.sweep(3, record)
    # the lr each step trained with: the sweep's, the backbone a tenth of it (and frozen: only the head learns)
    assert [h for h, _, _ in seen] == pytest.approx(sweep[1:4])
    assert all(b == pytest.approx(0.1 * h) and not trainable for h, b, trainable in seen)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert trainer.steps == 0 and all(p.requires_grad for p in trainer.trainable)

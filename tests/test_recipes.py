"""The recipes and their rules: variants chosen by budget and target, every value with where it came from, and what `imgclf recipes` shows."""

from __future__ import annotations

import pytest

import imgclf
from conftest import write_class_folder
from imgclf.config import DataConfig, TrainConfig
from imgclf.data import load_data
from imgclf.recipes import RECIPES, DataFacts, Variant, choose_variant, resolve

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
    # with no --model, a folder's train searches first: said before the cnn's sources, with today's budget
    search_note = out.index("train first tries the shipped lite0, lite1, lite2")
    assert search_note < out.index("where each value comes from") and "default 1200 s on a CPU" in out
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


def test_every_rule_leaves_its_source_in_the_one_resolve():
    from imgclf.recipes import probe_recipe, quick_settings, search_budget
    from imgclf.tasks import MULTI_LABEL

    # a search's budget is recorded (after the variant's choice, which it does not drive), with why
    budget = search_budget(TrainConfig(), "cpu")
    cfg, variant = resolve(TrainConfig(), "folder", "cpu", DataFacts(5000, 32, search_budget=budget))
    assert (
        cfg.schedule.budget == 1200 and cfg.sources["budget"].startswith("rule: the search's") and variant == "default"
    )
    assert search_budget(TrainConfig(budget=90), "cpu") == (90, "you")
    # several labels per image: the recipes' smoothing (for a softmax) is not applied, said so
    multi, _ = resolve(TrainConfig(), "folder", "cpu", DataFacts(5000, 32, task=MULTI_LABEL))
    assert multi.optim.label_smoothing == 0 and "several labels" in multi.sources["label_smoothing"]
    assert resolve(TrainConfig(label_smoothing=0.1), "folder", "cpu", DataFacts(5000, 32, task=MULTI_LABEL))[
        0
    ].optim.label_smoothing == pytest.approx(0.1)  # yours stays
    # the named recipes: the probe's optimisation and the doctor's quick models
    probe = probe_recipe(cfg, train_images=1000)
    assert probe.optim.optimizer == "adamw" and probe.sources["lr"] == "recipe probe" and probe.schedule.epochs >= 10
    quick, _ = resolve(quick_settings(epochs=5, seed=3), "folder", "cpu", DataFacts(900, 16))
    assert quick.schedule.epochs == 5 and not quick.optim.ema and quick.sources["ema"] == "recipe quick"


def test_a_config_that_sets_every_recipe_value_times_nothing(monkeypatch):
    """A run resumed or a config.yaml given back holds every value a recipe fills: its budget chooses no
    variant, so nothing is timed (a timed epoch of a large model costs seconds before training starts)."""
    full, _ = resolve(TrainConfig(), "folder", "cpu", DataFacts(5000, 32))
    given = TrainConfig.from_dict({**full.to_dict(), "schedule": {**full.to_dict()["schedule"], "budget": 60.0}})
    timed = []
    resolve(given, "folder", "cpu", DataFacts(5000, 32), lambda c: timed.append(c) or 1.0)
    assert timed == []
    resolve(TrainConfig(budget=60.0), "folder", "cpu", DataFacts(5000, 32), lambda c: timed.append(c) or 1.0)
    assert timed  # a budget with values left to fill: the variants are timed


def test_fine_tuning_pretrained_weights_is_gentle_and_keeps_batch_norm_on_small_folders():
    small = resolve(TrainConfig(data="x", model="lite0"), "folder", "cpu", DataFacts(900, 96))[0]
    assert small.model.freeze_bn and "900 training images" in small.sources["freeze_bn"]
    assert small.model.backbone_lr_scale == 0.1 and small.augment.augment == "light"
    large = resolve(TrainConfig(data="x", model="lite0"), "folder", "cpu", DataFacts(40_000, 96))[0]
    assert not large.model.freeze_bn  # enough images for the statistics to follow the data
    scratch = resolve(TrainConfig(data="x", model="cnn"), "folder", "cpu", DataFacts(900, 32))[0]
    assert not scratch.model.freeze_bn and scratch.model.backbone_lr_scale == 1.0
    yours = resolve(
        TrainConfig(data="x", model="lite0", freeze_bn=False, backbone_lr_scale=0.5),
        "folder",
        "cpu",
        DataFacts(900, 96),
    )[0]
    assert not yours.model.freeze_bn and yours.model.backbone_lr_scale == 0.5 and yours.sources["freeze_bn"] == "you"

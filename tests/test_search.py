"""Your own photos: the shipped backbone, the folder search, the embedding cache, imbalance, pad, lr-find's
suggestion, the learning curve, embed and similar."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

import imgclf
from conftest import write_class_folder
from imgclf.cli import main
from imgclf.config import TrainConfig
from imgclf.data.features import cached_features
from imgclf.data.images import fit_tensor
from imgclf.doctor.curve import PowerLaw
from imgclf.models.registry import classifier_layer
from imgclf.recipes import DataFacts, resolve
from imgclf.rundir import read_checkpoint
from imgclf.train import search as search_module
from imgclf.train.balance import class_weights, logit_offset
from imgclf.train.lr_find import valley
from imgclf.train.search import Trial, extrapolate


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Three classes of 64 px textures: enough pixels for lite0 (it downsamples 32x)."""
    return write_class_folder(tmp_path_factory.mktemp("photos") / "photos", per_class=20, size=64)


# ---------------------------------------------------------------- the shipped backbone


def test_lite0_loads_its_imagenet_weights_offline_by_name(monkeypatch):
    import socket

    def no_network(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    from imgclf.models import create_model, get_model_spec
    from imgclf.models.lite import convert

    model = create_model("lite0", 1, 4, 64)
    get_model_spec("lite0").pretrained.load(model, None)
    weights = convert()
    # grey images: the stem's RGB kernels summed, every other tensor ImageNet's, the new head at zero
    assert torch.allclose(model.conv_stem.weight, weights["conv_stem.weight"].sum(1, keepdim=True))
    assert torch.equal(model.blocks[6][0].conv_pwl.weight, weights["blocks.6.0.conv_pwl.weight"])
    assert model.classifier.weight.abs().sum() == 0


def test_lite0_is_pretrained_unless_told_otherwise():
    facts = DataFacts(500, 96)
    cfg = resolve(TrainConfig(data="x", model="lite0"), "folder", "cpu", facts)[0]
    assert cfg.model.pretrained and "ship with imgclf" in cfg.sources["pretrained"]
    assert cfg.optim.optimizer == "adamw"  # the fine-tuning recipe
    plain = resolve(TrainConfig(data="x", model="lite0", pretrained=False), "folder", "cpu", facts)[0]
    assert not plain.model.pretrained


# ---------------------------------------------------------------- the search


def test_extrapolation_follows_a_power_law_and_never_predicts_worse_with_more_epochs():
    # error 0.4 at 1 epoch, 0.2 at 4: error = 0.4 x epochs^-0.5, so 0.1 at 16
    assert math.isclose(extrapolate([(1, 0.6), (4, 0.8)], 16), 0.9, rel_tol=1e-9)
    assert extrapolate([(1, 0.7), (2, 0.6)], 8) == pytest.approx(0.6)  # a noisy drop: no further fall predicted


def _fake_search(
    monkeypatch, probe_scores: dict[int, float], cnn_score: float, backbones: dict[str, float] | None = None
):
    """The search with each candidate's held-out score given (lite0's by size, the larger backbones' at any
    size): its choice is then known. Every feature pass is charged 0.1 s."""

    def probe(self, name, size):
        score = probe_scores[size] if name == "lite0" else (backbones or {}).get(name, 0.0)
        result = search_module.ProbeResult(torch.zeros(3, 4), torch.zeros(3), 1.0, score, score, 1)
        trial = Trial(f"{name} probe", size, score, 0.1, "given", 0.01)
        self.outcome.trials.append(trial)
        self.spent["probes"] += 0.1
        return search_module.ProbeTrial(name, size, result, trial)

    def try_cnn(self):
        torch.rand(100)  # a trial draws from the generators, as a real one trains
        trial = Trial("cnn", 64, cnn_score, 0.1, "given")
        self.outcome.trials.append(trial)
        return trial

    monkeypatch.setattr(search_module.Search, "probe", probe)
    monkeypatch.setattr(search_module.Search, "feature_cost", lambda self, name, size: 0.1)
    monkeypatch.setattr(search_module.Search, "try_cnn", try_cnn)
    monkeypatch.setattr(search_module.Search, "fine_tune_epochs", lambda self, name, size: (3, 30.0))


def test_the_search_chooses_the_best_candidate_on_validation(monkeypatch, photos):
    from imgclf.data import load_data

    data = load_data(TrainConfig(data=str(photos)).data_config)
    lines: list[str] = []
    _fake_search(monkeypatch, {64: 0.70, 96: 0.80, 128: 0.78}, cnn_score=0.75)
    outcome = search_module.run_search(TrainConfig(data=str(photos)), data, torch.device("cpu"), lines.append)
    assert (outcome.chosen, outcome.image_size) == ("lite0", 96)
    assert outcome.changes == {"model": "lite0", "image_size": 96, "epochs": 3}
    # 64 px images: probed from 96 px (where ImageNet features are worth it) down to 64; 96 was an upsampling
    # that helped (+0.10), so 128 was tried; it did not help, so 160 was not. lite1 at 96 did no better.
    assert [(t.candidate, t.image_size) for t in outcome.trials] == [
        ("lite0 probe", 96),
        ("lite0 probe", 64),
        ("lite0 probe", 128),
        ("lite1 probe", 96),
        ("cnn", 64),
    ]
    assert "chose lite0 at 96 px" in "\n".join(lines) and "beat the cnn (0.7500)" in outcome.reason
    assert outcome.sure.startswith("clear") and outcome.spent["fine-tune"] == 30.0

    _fake_search(monkeypatch, {64: 0.70, 96: 0.80, 128: 0.78}, cnn_score=0.75, backbones={"lite1": 0.84, "lite2": 0.83})
    outcome = search_module.run_search(TrainConfig(data=str(photos)), data, torch.device("cpu"), lines.append)
    assert (outcome.chosen, outcome.image_size) == ("lite1", 96)  # it beat lite0; lite2 did not beat it

    _fake_search(monkeypatch, {64: 0.70, 96: 0.72, 128: 0.71}, cnn_score=0.90)
    outcome = search_module.run_search(TrainConfig(data=str(photos)), data, torch.device("cpu"), lines.append)
    assert outcome.chosen == "cnn" and outcome.changes == {}  # the cnn's recipe as it is
    budget = search_module.run_search(TrainConfig(data=str(photos), budget=100), data, torch.device("cpu"), print)
    assert 0 < budget.changes["budget"] <= 100  # what is left of your budget goes to the winner


def test_large_photos_are_probed_from_their_own_size_down(monkeypatch, tmp_path):
    """300-px photos: the probe starts at their own size and goes down while a smaller size does as well."""
    from imgclf.data import load_data

    folder = write_class_folder(tmp_path / "big", per_class=4, size=300)
    data = load_data(TrainConfig(data=str(folder)).data_config)
    _fake_search(monkeypatch, {300: 0.80, 256: 0.79, 224: 0.70, 160: 0.6}, cnn_score=0.5)
    outcome = search_module.run_search(TrainConfig(data=str(folder)), data, torch.device("cpu"), print)
    assert [t.image_size for t in outcome.trials if t.candidate == "lite0 probe"] == [300, 256, 224]
    assert (outcome.chosen, outcome.image_size) == ("lite0", 300)


def test_a_folder_train_searches_records_it_and_starts_from_the_probe(photos, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IMGCLF_DATA", str(tmp_path / "data"))
    result = imgclf.train(data=str(photos), search="auto", budget=30, out=str(tmp_path / "run"))
    out = capsys.readouterr().out
    search = json.loads((tmp_path / "run" / "search.json").read_text())
    tried = {t["candidate"] for t in search["trials"]}
    assert {"lite0 probe", "cnn"} <= tried <= {"lite0 probe", "lite1 probe", "lite2 probe", "cnn"}
    assert search["chosen"] in ("lite0", "lite1", "lite2", "cnn") and "search: chose" in out
    assert search["spent"]["probes"] > 0 and search["sure"]
    assert result.config.model.model == search["chosen"]
    assert result.metrics["search"]["chosen"] == search["chosen"]
    assert result.config.schedule.budget is not None  # config.yaml says the budget the run used
    if search["chosen"] != "cnn":  # best.pt held the probe (epoch 0) before any fine-tuning epoch
        assert result.config.sources["model"].startswith("search:")
        assert '"epoch": 0' in (tmp_path / "run" / "events.jsonl").read_text()
    report = imgclf.report(result.run_dir, log=lambda _: None).read_text()
    assert "How the model was chosen" in report and "lite0 probe" in report


def test_a_model_you_name_is_not_searched(class_folder, tmp_path, capsys):
    imgclf.train(data=str(class_folder), model="cnn2", search="auto", epochs=1, out=str(tmp_path / "r"))
    assert "search:" not in capsys.readouterr().out and not (tmp_path / "r" / "search.json").exists()


# ---------------------------------------------------------------- the embedding cache


def test_features_are_computed_once_then_read_from_the_cache(tmp_path):
    from imgclf.models import create_model

    model = create_model("cnn2", 3, 3, 28).eval()
    images = torch.randint(0, 255, (10, 3, 28, 28), dtype=torch.uint8)
    mean, std = [0.5] * 3, [0.25] * 3
    first = cached_features(model, images, mean, std, torch.device("cpu"), tmp_path, "t")
    again = cached_features(model, images, mean, std, torch.device("cpu"), tmp_path, "t")
    assert not first.from_cache and again.from_cache and again.seconds == 0.0
    assert torch.equal(first.values, again.values)  # bit for bit: the first run returns what the cache holds
    assert first.values.shape == (10, model.get_submodule(classifier_layer(model)).in_features)
    other = images.clone()
    other[3] = 0  # other pixels: another entry
    assert not cached_features(model, other, mean, std, torch.device("cpu"), tmp_path, "t").from_cache
    with torch.no_grad():
        model.get_submodule(classifier_layer(model)).weight.mul_(
            2
        )  # other weights (the head's inputs unchanged, but the key is the network's)
    assert not cached_features(model, images, mean, std, torch.device("cpu"), tmp_path, "t").from_cache
    for damaged in (tmp_path / "features").iterdir():
        damaged.write_bytes(b"not numpy")
    assert not cached_features(model, images, mean, std, torch.device("cpu"), tmp_path, "t").from_cache


# ---------------------------------------------------------------- imbalance


def test_class_weights_and_logit_adjustment_for_1_to_20():
    counts = [500, 25]
    assert class_weights(counts, "inverse").tolist() == pytest.approx([2 / 21, 40 / 21])
    sqrt = class_weights(counts, "sqrt")
    assert sqrt[1] / sqrt[0] == pytest.approx(math.sqrt(20))
    effective = class_weights(counts, "effective")
    assert 1 < effective[1] / effective[0] < 20  # between no weights and inverse frequency
    assert class_weights(counts, "none") is None
    offset = logit_offset(counts, 1.0)
    assert offset.tolist() == pytest.approx([math.log(500 / 525), math.log(25 / 525)])
    assert logit_offset(counts, 0.0) is None


def test_imbalanced_data_gets_the_measured_treatment_unless_you_chose_one():
    facts = DataFacts(525, 32, "", (500, 25))
    cfg = resolve(TrainConfig(data="x"), "folder", "cpu", facts)[0]
    assert cfg.optim.class_weights == "sqrt" and cfg.schedule.monitor == "val_balanced_acc"
    assert cfg.sources["class_weights"].startswith("rule: imbalanced classes")
    mine = resolve(TrainConfig(data="x", logit_adjustment=1.0), "folder", "cpu", facts)[0]
    assert (mine.optim.class_weights, mine.optim.logit_adjustment) == ("none", 1.0)  # yours, not combined
    balanced = resolve(TrainConfig(data="x"), "folder", "cpu", DataFacts(60, 32, "", (30, 30)))[0]
    assert balanced.optim.class_weights == "none" and balanced.schedule.monitor == "val_loss"


def test_the_best_checkpoint_follows_balanced_accuracy_when_told(tmp_path):
    root = tmp_path / "lt"
    write_class_folder(root, per_class=40, size=16)
    for image in sorted((root / "checker").iterdir())[6:]:
        image.unlink()  # 40 : 40 : 6
    result = imgclf.train(data=str(root), image_size=16, epochs=3, out=str(tmp_path / "run"), verbose=False)
    history = result.history
    assert result.config.schedule.monitor == "val_balanced_acc"
    best = max(history, key=lambda r: r["val_balanced_acc"])  # ties: the first
    assert result.metrics["best_epoch"] == best["epoch"]
    assert {"accuracy", "balanced_accuracy", "macro_f1"} <= set(result.metrics["test"])


# ---------------------------------------------------------------- whole images


def test_pad_keeps_the_whole_image_and_stretch_changes_the_aspect():
    image = torch.zeros(3, 20, 60, dtype=torch.uint8)
    image[:, :, :10] = 255  # a white band at the left end, which a centre crop cuts off
    crop, pad, stretch = (fit_tensor(image, 20, mode) for mode in ("crop", "pad", "stretch"))
    assert crop.shape == pad.shape == stretch.shape == (3, 20, 20)
    assert crop.float().mean() == 0  # the band is gone
    assert pad[:, 7:13, :3].float().mean() > 200 and pad[:, :6].float().mean() == 0  # band kept, black borders
    assert stretch[:, :, :3].float().mean() > 200 and stretch[:, :, 5:].float().mean() < 30


def test_resize_is_carried_into_predict_and_export(tmp_path):
    root = tmp_path / "wide"
    rng = np.random.default_rng(0)
    for c, name in enumerate(("left", "right")):
        (root / name).mkdir(parents=True)
        for i in range(16):
            array = rng.integers(0, 40, (16, 64, 3)).astype(np.uint8)
            (array[:, :8] if c == 0 else array[:, -8:])[:] = 255  # the class is at an end a centre crop cuts off
            Image.fromarray(array).save(root / name / f"{i}.png")
    result = imgclf.train(
        data=str(root), resize="pad", image_size=16, epochs=2, model="cnn2", out=str(tmp_path / "run"), verbose=False
    )
    spec = read_checkpoint(result.best_checkpoint).spec
    assert spec.resize == "pad"
    classifier = imgclf.classifier(result.run_dir)
    image = Image.open(next((root / "left").iterdir()))
    padded = classifier.to_uint8(image)
    assert padded[:, 6:10, :2].float().mean() > 100  # the left end is in the picture predict sees
    exported = imgclf.export(result.run_dir, format="torchscript", out=str(tmp_path / "export"), log=lambda _: None)
    meta = json.loads(exported.metadata.read_text())
    assert meta["preprocessing"]["resize_mode"] == "pad" and "pad" in meta["preprocessing"]["resize"]


# ---------------------------------------------------------------- lr-find


def test_valley_suggests_an_lr_inside_the_fall_of_a_known_curve():
    lrs = list(np.geomspace(1e-6, 10, 100))
    # flat until 1e-4, falls until 1e-1, then explodes
    losses = [
        2.3 if lr < 1e-4 else (2.3 - 0.6 * math.log10(lr / 1e-4) if lr < 0.1 else 0.5 + 20 * (lr - 0.1)) for lr in lrs
    ]
    suggestion, rule = valley(lrs, losses)
    assert 1e-4 < suggestion < 0.1 and rule.startswith("valley")
    # the small folder: a noisy start whose first steps fall fastest; the curve's fall is near 0.1
    noisy = (
        [3.0, 2.2] + [2.25 + 0.01 * ((i * 7) % 3) for i in range(68)] + [2.2 - 0.05 * i for i in range(25)] + [9.0] * 5
    )
    suggestion, _ = valley(lrs, noisy)
    assert suggestion > 1e-3


# ---------------------------------------------------------------- learning curve, embed, similar


def test_power_law_fit_recovers_a_known_law():
    images = [10, 20, 40, 80, 160]
    law = PowerLaw.fit(images, [0.5 * n**-0.3 for n in images])
    assert law.b == pytest.approx(0.5, rel=1e-6) and law.c == pytest.approx(0.3, rel=1e-6)
    assert PowerLaw.fit(images, [0.1 + 0.001 * n for n in images]).c == 0.0  # never predicts that images hurt


def test_learning_curve_writes_its_plot_and_predictions(photos, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "learning_curve").mkdir()
    (tmp_path / "learning_curve" / "learning_curve.json").write_text("an earlier curve")
    curve = imgclf.learning_curve(str(photos), fractions=[0.3, 0.6, 1.0], seeds=2, image_size=64, log=lambda _: None)
    # the default folder never overwrites an earlier curve
    assert (tmp_path / "learning_curve" / "learning_curve.json").read_text() == "an earlier curve"
    written = json.loads((tmp_path / "learning_curve-2" / "learning_curve.json").read_text())
    assert (tmp_path / "learning_curve-2" / "learning_curve.png").stat().st_size > 10_000
    assert [line["name"] for line in written["lines"]] == ["all", "checker", "horizontal", "vertical"]
    overall = curve.lines[0]
    assert len(overall.points) == 3 and all(len(s) == 2 for s in overall.points.values())
    now, (twice, low, high) = overall.now(), overall.predicted(2)
    assert low <= twice <= high and twice >= overall.predicted(1)[0] - 1e-9
    assert 0 <= now <= 1


def test_embed_and_similar_find_a_training_image_itself(trained_run, tmp_path, capsys):
    from imgclf.config import data_config
    from imgclf.data import load_data
    from imgclf.rundir import RunDir

    data = RunDir(trained_run).read_config()["data"]["data"]
    split = load_data(data_config(data=data, image_size=16)).train
    first = split.sources[0]
    assert main(["similar", str(trained_run), first, "--k", "3", "--out", str(tmp_path / "sim")]) == 0
    out = capsys.readouterr().out
    top = next(line for line in out.splitlines() if line.startswith("1 "))
    assert first in top and top.endswith("1.000")  # the nearest training image to a training image: itself
    assert len(list((tmp_path / "sim").glob("*.png"))) == 1
    assert main(["embed", first, "--run", str(trained_run), "--out", str(tmp_path / "e.npz")]) == 0
    saved = np.load(tmp_path / "e.npz")
    assert list(saved["files"]) == [first] and saved["features"].shape[0] == 1
    assert list(saved["labels"]) == [""]  # a file named alone has no class folder
    assert main(["embed", data, "--run", str(trained_run), "--out", str(tmp_path / "folder.npz")]) == 0
    folder = np.load(tmp_path / "folder.npz")
    assert len(folder["labels"]) == len(folder["files"]) and set(folder["labels"]) == {
        "checker",
        "horizontal",
        "vertical",
    }
    assert all(os.path.basename(os.path.dirname(f)) == label for f, label in zip(folder["files"], folder["labels"]))
    (tmp_path / "notes.png").write_text("not an image")
    assert main(["embed", str(tmp_path / "notes.png"), "--out", str(tmp_path / "bad.npz")]) == 2
    assert "notes.png: not a readable image" in capsys.readouterr().err and not (tmp_path / "bad.npz").exists()


def test_a_search_that_chooses_the_cnn_trains_it_as_search_off_would(monkeypatch, class_folder, tmp_path):
    _fake_search(monkeypatch, {64: 0.5, 96: 0.5, 128: 0.5}, cnn_score=0.9)
    settings = dict(data=str(class_folder), image_size=16, epochs=2, verbose=False)
    searched = imgclf.train(search="auto", out=str(tmp_path / "searched"), **settings)
    plain = imgclf.train(search="off", out=str(tmp_path / "plain"), **settings)
    assert searched.metrics["search"]["chosen"] == "cnn" and plain.metrics["search"] is None
    # same seed, same draws: the same losses (another draw of the initial weights differs in the first decimals)
    assert [r["val_loss"] for r in searched.history] == pytest.approx([r["val_loss"] for r in plain.history], abs=1e-5)


# ---------------------------------------------------------------- flips decided on the data


def _arrow(points_right: bool, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """A bright triangle pointing left or right at a random place and height, over noise."""
    image = rng.integers(0, 60, (size, size, 3))
    top, left, half = rng.integers(4, 12), rng.integers(2, 12), rng.integers(5, 8)
    for row in range(2 * half):
        width = half - abs(row - half) + 1  # widest at the middle row: a tip on one side
        cols = range(left, left + width) if points_right else range(left + half - width, left + half)
        for col in cols:
            image[top + row, col] = (230, 200, 90)
    return image.astype(np.uint8)


def _decide(folder):
    from imgclf.data import load_data
    from imgclf.features.backbone import shared_backbone
    from imgclf.features.flips import decide_flips
    from imgclf.train.build import run_config

    data = load_data(TrainConfig(data=str(folder), cache=False).data_config)
    cfg = run_config(TrainConfig(data=str(folder), model="lite0"), data, "cpu")[0]
    return decide_flips(data, shared_backbone(torch.device("cpu")), cfg, None)


def test_flips_are_kept_where_they_keep_the_class_and_dropped_where_they_do_not(tmp_path):
    # stripes keep their class mirrored or upended; transposed, horizontal stripes become vertical ones
    stripes = _decide(write_class_folder(tmp_path / "stripes", per_class=30, size=32))
    assert stripes.told_apart["transpose"] > 0.75 and stripes.flips == "horizontal"
    # arrows: the mirror turns a left arrow into a right one, which the left class does not hold
    rng = np.random.default_rng(0)
    for name, right in (("left", False), ("right", True)):
        (tmp_path / "arrows" / name).mkdir(parents=True)
        for i in range(100):
            Image.fromarray(_arrow(right, rng)).save(tmp_path / "arrows" / name / f"{i}.png")
    arrows = _decide(tmp_path / "arrows")
    assert arrows.told_apart["horizontal"] > 0.9 and arrows.flips in ("none", "vertical")
    assert "measured" in arrows.why


def test_training_records_the_flips_it_decided_and_why(photos, tmp_path, monkeypatch):
    monkeypatch.setenv("IMGCLF_MEASURE_FLIPS", "on")
    result = imgclf.train(data=str(photos), model="cnn2", epochs=1, out=str(tmp_path / "r"))
    assert result.config.augment.flips in ("none", "horizontal", "vertical", "all")
    assert result.config.sources["flips"].startswith("measured: how often a lite0 probe")
    given = imgclf.train(data=str(photos), model="cnn2", epochs=1, flips="none", out=str(tmp_path / "g"))
    assert given.config.augment.flips == "none" and not given.config.sources["flips"].startswith("measured")


def test_vertical_flips_and_quarter_turns_are_drawn_only_when_asked():
    from imgclf.data.loader import augment_batch

    x = torch.zeros(64, 1, 16, 16)
    x[:, :, :8] = 1.0  # bright on top: shifts of a pixel keep it there, upending or turning moves it

    def bright_side(batch):
        top, bottom = batch[:, 0, :8].mean((1, 2)), batch[:, 0, 8:].mean((1, 2))
        left, right = batch[:, 0, :, :8].mean((1, 2)), batch[:, 0, :, 8:].mean((1, 2))
        sides = torch.stack([top - bottom, bottom - top, left - right, right - left], 1)
        return set(sides.argmax(1).tolist())

    mirrored = torch.rand(64, generator=torch.Generator().manual_seed(1)) < 0.5
    assert bright_side(augment_batch(x, "light", mirrored, torch.Generator().manual_seed(0))) == {0}
    assert bright_side(augment_batch(x, "light", mirrored, torch.Generator().manual_seed(0), turns="vertical")) == {
        0,
        1,
    }
    assert bright_side(augment_batch(x, "light", mirrored, torch.Generator().manual_seed(0), turns="all")) == {
        0,
        1,
        2,
        3,
    }


def test_a_flip_is_judged_against_the_noise_of_its_measurement():
    from imgclf.features.flips import TOLD_APART, keeps_class

    assert keeps_class(0.51, 0.016)  # photos' mirrors: chance
    assert not keeps_class(0.97, 0.006) and not keeps_class(0.83, 0.012)  # digits', garments' mirrors
    # a few dozen images measure little: above the line but within two standard errors, the flip stays
    assert keeps_class(TOLD_APART + 0.1, 0.06) and not keeps_class(TOLD_APART + 0.1, 0.04)


def test_a_learning_curves_range_always_holds_its_own_prediction():
    from imgclf.doctor.curve import CurveLine, PowerLaw

    # three draws whose fits all predict better than the fit of their means (a noisy small folder's case)
    line = CurveLine("all", 100, fit=PowerLaw(0.5, 0.1), seed_fits=[PowerLaw(0.3, 0.3), PowerLaw(0.25, 0.2)])
    for factor in (2, 4):
        score, low, high = line.predicted(factor)
        assert low <= score <= high and 0 <= low

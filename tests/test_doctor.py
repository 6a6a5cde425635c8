"""The data doctor on a generated folder with planted faults: each kind is found, by exact lists."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import imgclf
from imgclf.cli import main
from imgclf.data.folder import source_parts

CLASSES = ("red", "green", "blue")


def photo(rng: np.random.Generator, cls: int, size: int = 32) -> Image.Image:
    """A smooth random picture (distinct perceptual hashes) tinted by its class (what a model can learn)."""
    coarse = rng.integers(0, 160, (8, 8, 3), dtype=np.uint8)
    coarse[..., cls] += 95
    return Image.fromarray(coarse).resize((size, size), Image.BICUBIC)


def planted_folder(root: Path, per_class: int = 100) -> dict[str, Any]:
    """train/ and test/ class folders, then the faults; returns where each fault is."""
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("test", per_class // 4)):
        for c, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                photo(rng, c).save(root / split / name / f"{i:03d}.png")
    train, test = root / "train", root / "test"
    planted: dict[str, Any] = {}
    shutil.copy(train / "red" / "000.png", train / "red" / "copy_000.png")  # exact, same class
    planted["exact"] = {train / "red" / "000.png", train / "red" / "copy_000.png"}
    shutil.copy(train / "green" / "001.png", train / "blue" / "also_green_001.png")  # one image, two labels
    planted["cross_class"] = {train / "green" / "001.png", train / "blue" / "also_green_001.png"}
    Image.open(train / "blue" / "002.png").save(train / "blue" / "near_002.jpg", quality=85)  # re-encoded
    planted["near"] = {train / "blue" / "002.png", train / "blue" / "near_002.jpg"}
    shutil.copy(test / "red" / "003.png", train / "red" / "leaked_003.png")  # a test image in training
    planted["leak"] = {test / "red" / "003.png", train / "red" / "leaked_003.png"}
    flipped = []
    for i in range(4):  # green pictures filed as red
        photo(rng, 1).save(train / "red" / f"flipped_{i}.png")
        flipped.append(train / "red" / f"flipped_{i}.png")
    planted["flipped"] = set(flipped)
    (train / "green" / "notes.png").write_text("not an image")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(train / "green" / "tiny.png")
    Image.fromarray(rng.integers(0, 255, (20, 120, 3), dtype=np.uint8)).save(train / "green" / "strip.png")
    Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8), "L").save(train / "blue" / "gray.png")
    planted["odd"] = {
        (str(train / "green" / "notes.png"), "unreadable"),
        (str(train / "green" / "tiny.png"), "tiny"),
        (str(train / "green" / "strip.png"), "odd-aspect"),
        (str(train / "blue" / "gray.png"), "odd-mode"),
    }
    return planted


def _sets(groups: list[dict]) -> set[frozenset[str]]:
    return {frozenset(g["paths"]) for g in groups}


def _resolved(paths) -> frozenset[str]:
    return frozenset(str(Path(p).resolve()) for p in paths)


@pytest.fixture(scope="module")
def examined(tmp_path_factory):
    root = tmp_path_factory.mktemp("doctor")
    planted = planted_folder(root / "photos")
    result = imgclf.doctor(
        str(root / "photos"),
        folds=3,
        epochs=8,
        data_dir=str(root / "cache"),
        out=str(root / "report"),
        fix=True,
        verbose=False,
    )
    return root, planted, result


def test_every_planted_duplicate_and_leak_is_found_and_nothing_else(examined):
    _, planted, result = examined
    found = result.findings
    assert _sets([g for g in found["duplicates"] if g["kind"] == "exact"]) == {
        _resolved(planted["exact"]),
        _resolved(planted["cross_class"]),
        _resolved(planted["leak"]),
    }
    assert _sets([g for g in found["duplicates"] if g["kind"] == "near"]) == {_resolved(planted["near"])}
    assert _sets(found["leaks"]) == {_resolved(planted["leak"])}
    assert _sets(found["cross_class"]) == {_resolved(planted["cross_class"])}
    (leak,) = found["leaks"]
    assert sorted(leak["splits"]) == ["test", "train"]


def test_odd_files_are_named_with_their_kind(examined):
    _, planted, result = examined
    odd = {(str(Path(o["path"])), o["kind"]) for o in result.findings["odd_files"]}
    assert odd == {(str(Path(p).resolve()), kind) for p, kind in planted["odd"]}
    green = next(r for r in result.findings["class_summary"] if r["class"] == "green")
    assert green["odd"] == {"unreadable": 1, "tiny": 1, "odd-aspect": 1}


def test_flipped_labels_lead_the_ranking_and_every_flagged_image_is_mislabelled(examined):
    _, planted, result = examined
    top = [Path(r["path"]) for r in result.findings["label_ranking"][:8]]
    flipped = {Path(p).resolve() for p in planted["flipped"]}
    # a black 4-px picture filed under "green" is not green either: the probe at 160 px may say so
    mislabelled = (
        flipped
        | {Path(p).resolve() for p in planted["cross_class"]}
        | {Path(p).resolve() for p, kind in planted["odd"] if kind == "tiny"}
    )
    assert flipped <= set(top)
    assert len(result.label_issues) >= 3 and {Path(r["path"]) for r in result.label_issues} <= mislabelled
    for row in result.label_issues:
        if Path(row["path"]) in flipped:
            assert row["given"] == "red" and row["suggested"] == "green"


def test_outputs_and_training_without_the_flagged_files(examined):
    root, planted, result = examined
    report = root / "report"
    saved = json.loads((report / "doctor.json").read_text())
    assert {"duplicates", "leaks", "label_issues", "odd_files", "class_summary"} <= set(saved)
    assert (report / "doctor.html").is_file() and (report / "label_issues.png").is_file()
    assert (report / "duplicates.png").is_file()
    excluded = set((report / "exclude.txt").read_text().split())
    leak_train = str((root / "photos" / "train" / "red" / "leaked_003.png").resolve())
    assert leak_train in excluded and str((root / "photos" / "test" / "red" / "003.png").resolve()) not in excluded
    assert _resolved(planted["cross_class"]) <= excluded
    assert _resolved(r["path"] for r in result.label_issues) <= excluded
    moves = (report / "moves.csv").read_text().splitlines()
    assert moves[0] == "file,given,suggested,p_suggested" and len(moves) == 1 + len(result.label_issues)
    cfg = imgclf.TrainConfig(data=str(root / "photos"), exclude=str(report / "exclude.txt"))
    parts, _ = source_parts(cfg)
    kept = {str(p.resolve()) for files, _ in parts.values() for p in files}
    assert not kept & excluded and len(kept) > 100
    assert all(Path(p).exists() for p in excluded)  # nothing deleted


def test_the_command_line_reports_and_names_a_missing_folder(examined, capsys):
    root, _, _ = examined
    code = main(
        ["doctor", str(root / "photos"), "--no-labels", "--data-dir", str(root / "cache"), "--out", str(root / "cli")]
    )
    out = capsys.readouterr().out
    assert code == 0 and "leaks" in out and "duplicates: 3 exact and 1 near group(s)" in out
    assert json.loads((root / "cli" / "doctor.json").read_text())["label_issues"] is None
    assert main(["doctor", str(root / "missing")]) == 2
    flags = ["--no-labels", "--no-near", "--data-dir", str(root / "cache"), "--out", str(root / "cli-2")]
    assert main(["doctor", str(root / "photos"), *flags]) == 0
    out = capsys.readouterr().out  # near duplicates not looked for are not "0 near groups"
    assert "duplicates: 3 exact and near ones not looked for" in out and "hashed" not in out


def test_a_csv_dataset_and_a_builtin_one_are_examined_too(examined, tmp_path):
    root, planted, _ = examined
    rows = ["file,label"] + [
        f"{p.relative_to(root / 'photos')},{p.parent.name}" for p in sorted((root / "photos" / "train").rglob("*.png"))
    ]
    (root / "photos" / "labels.csv").write_text("\n".join(rows) + "\n")
    found = imgclf.doctor(
        str(root / "photos" / "labels.csv"),
        labels=False,
        data_dir=str(root / "cache"),
        out=str(tmp_path / "csv"),
        verbose=False,
    ).findings
    assert {str(p.resolve()) for p in planted["exact"]} in [set(g["paths"]) for g in found["duplicates"]]
    # a CSV has no test/ folder: its held-out splits are drawn, and a duplicate pair split across them is a leak
    cfg = imgclf.TrainConfig(data=str(root / "photos" / "labels.csv"))
    split_of = {str(f.resolve()): split for split, (files, _) in source_parts(cfg)[0].items() for f in files}
    pair = sorted(str(p.resolve()) for p in planted["exact"])
    expected = [pair] if split_of[pair[0]] != split_of[pair[1]] else []
    assert found["kind"] == "csv" and [sorted(g["paths"]) for g in found["leaks"]] == expected
    assert expected  # seed 0 happens to split this pair: the check above saw a leak
    digits = imgclf.doctor("digits", labels=False, out=str(tmp_path / "digits"), verbose=False).findings
    assert digits["kind"] == "builtin" and digits["images"] == 1797 and sum(digits["splits"].values()) == 1797
    assert all(p.split("/")[0] in ("train", "val", "test") for g in digits["duplicates"] for p in g["paths"])


def test_with_a_run_the_labels_come_from_it_and_its_report_shows_the_data_health(examined, tmp_path):
    root, planted, _ = examined
    run = imgclf.train(
        data=str(root / "photos"),
        epochs=4,
        model="cnn2",
        data_dir=str(root / "cache"),
        out=str(tmp_path / "run"),
        verbose=False,
    ).run_dir
    result = imgclf.doctor(
        str(root / "photos"), run=run, data_dir=str(root / "cache"), out=str(tmp_path / "d"), verbose=False
    )
    assert (run / "doctor" / "doctor.json").is_file()
    assert _resolved(planted["leak"]) in _sets(result.leaks)
    page = imgclf.report(run, log=lambda _: None).read_text()
    assert ">Data health</h2>" in page and "leaked_003.png" in page
    card = imgclf.export(run, format="torchscript", log=lambda _: None).card  # an export's card says it too
    assert card is not None and f"{len(result.leaks)} across the splits (leaks)" in card.read_text()


def test_every_image_is_ranked_and_the_model_behind_the_ranking_is_measured(examined):
    _, planted, result = examined
    found = result.findings
    ranking = found["label_ranking"]
    assert len(ranking) == found["images"] and len({r["path"] for r in ranking}) == found["images"]
    scores = [r["self_confidence"] for r in ranking]
    assert scores == sorted(scores)  # most likely wrong first
    flipped = {str(Path(p).resolve()) for p in planted["flipped"]}
    assert {r["path"] for r in ranking[: len(flipped) + 4]} >= flipped
    assert [r["path"] for r in ranking if r["flagged"]] == [r["path"] for r in result.label_issues]
    model = found["label_model"]
    assert {c["model"].split(",")[0].split(" at ")[0] for c in model["candidates"]} >= {
        "lite0 linear probe",
        "quick cnn",
    }
    used = next(c for c in model["candidates"] if c["model"] == model["used"])
    assert used["log_loss"] == min(c["log_loss"] for c in model["candidates"]) and found["label_issues_trusted"]
    assert found["label_errors_estimated"] >= len(flipped) - 1
    assert model["mirror_keeps_class"] is True  # tinted pictures: a mirror is the same colour
    first = result.label_issues[0]
    assert first["rank"] == 1 and len(first["nearest"]["given"]) == 3 and len(first["nearest"]["suggested"]) == 3


def _blob(rng: np.random.Generator, left: bool) -> Image.Image:
    """A bright blob on the left or the right half: a mirror image belongs to the other class."""
    image = rng.integers(0, 60, (32, 32, 3), dtype=np.uint8)
    x = int(rng.integers(2, 10)) if left else int(rng.integers(18, 26))
    y = int(rng.integers(4, 24))
    image[y : y + 6, x : x + 6] = 255
    return Image.fromarray(image)


def test_weak_models_are_said_to_be_weak_and_fix_leaves_their_findings_out(tmp_path):
    rng = np.random.default_rng(3)
    for name in ("a", "b", "c"):  # the same kind of picture in every class: no model can learn the labels
        (tmp_path / "noise" / name).mkdir(parents=True)
        for i in range(30):
            photo(rng, int(rng.integers(3))).save(tmp_path / "noise" / name / f"{i:02d}.png")
    result = imgclf.doctor(
        str(tmp_path / "noise"), models=["probe"], fix=True, out=str(tmp_path / "out"), data_dir=str(tmp_path / "c"),
        verbose=False,
    )  # fmt: skip
    assert not result.findings["label_issues_trusted"]
    assert result.findings["label_model"]["candidates"][0]["accuracy"] < 0.9
    assert (tmp_path / "out" / "moves.csv").read_text().splitlines() == ["file,given,suggested,p_suggested"]
    assert not (tmp_path / "out" / "exclude.txt").read_text().strip()
    assert "WEAK" in (tmp_path / "out" / "doctor.html").read_text()


def test_whether_a_mirror_keeps_the_class_is_measured(tmp_path):
    from imgclf.config import DataConfig
    from imgclf.doctor import take_inventory
    from imgclf.doctor.models import doctor_models

    rng = np.random.default_rng(4)
    for name, left in (("left", True), ("right", False)):
        (tmp_path / "sides" / name).mkdir(parents=True)
        for i in range(40):
            _blob(rng, left).save(tmp_path / "sides" / name / f"{i:02d}.png")
    inventory = take_inventory(DataConfig(data=str(tmp_path / "sides"), data_dir=str(tmp_path / "c")), 64)
    found = doctor_models(inventory, models=("probe",), cache_dir=tmp_path / "c")
    assert found.mirror_keeps_class is False and "does not keep the class" in found.mirror_note
    assert len(found.candidates) == 4  # at 96 px and, these being small images, upsampled further to 160
    for plain, with_mirrors in zip(found.candidates[::2], found.candidates[1::2]):
        assert with_mirrors.log_loss > plain.log_loss  # at each size: trained on mirrors, it holds out worse
    assert found.strength in found.candidates[::2]  # the mirrors' probe is not used


def test_thin_strokes_that_differ_are_not_near_duplicates_but_a_reencoded_copy_is():
    import io

    import torch
    from PIL import ImageFilter

    from imgclf.doctor.checks import duplicate_groups
    from imgclf.doctor.inventory import Inventory

    strokes = []
    for x in (8, 14, 20):  # three different thin strokes on black, soft-edged as handwriting scans are
        image = np.zeros((28, 28), np.uint8)
        image[8:20, x] = 255
        strokes.append(np.array(Image.fromarray(image).filter(ImageFilter.GaussianBlur(0.8))))
    buffer = io.BytesIO()
    Image.fromarray(strokes[0]).save(buffer, "JPEG", quality=90)  # a re-encoded copy of the first
    images = torch.from_numpy(np.stack([*strokes, np.array(Image.open(buffer))])[:, None])
    ids = ["a", "b", "c", "a-copy"]
    inventory = Inventory("strokes", "folder", ["1"], ids, torch.zeros(4, dtype=torch.long), ["train"] * 4, images,
                          ["w", "x", "y", "z"])  # fmt: skip
    hashes = np.zeros(4, dtype=np.uint64)  # every pair a candidate: the pixels must decide
    assert [g.members for g in duplicate_groups(inventory, hashes)] == [[0, 3]]


@pytest.mark.parametrize("seed", range(4))
def test_confident_learning_matches_cleanlab(seed):
    cleanlab = pytest.importorskip("cleanlab.filter")
    from cleanlab.count import num_label_issues

    from imgclf.doctor.confident import check_labels

    rng = np.random.default_rng(seed)
    n, k = 400 + 300 * seed, 3 + 2 * seed
    true = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), true] += rng.uniform(1, 4)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    given = true.copy()
    noisy = rng.random(n) < 0.1
    given[noisy] = rng.integers(0, k, int(noisy.sum()))
    ours = check_labels(given, probs)
    theirs = cleanlab.find_label_issues(given, probs, return_indices_ranked_by="self_confidence", n_jobs=1)
    assert set(ours.flagged.tolist()) == set(theirs.tolist()) and len(ours.flagged) > 0
    assert ours.estimated == num_label_issues(given, probs, estimation_method="off_diagonal_calibrated")


def test_confident_learning_finds_planted_flips_without_cleanlab():
    from imgclf.doctor.confident import check_labels

    probs = np.full((60, 3), 0.05)
    labels = np.repeat(np.arange(3), 20)
    probs[np.arange(60), labels] = 0.9
    flipped = [3, 25, 47]  # a confident model says these are the next class
    for i in flipped:
        probs[i] = 0.05
        probs[i, (labels[i] + 1) % 3] = 0.9
    check = check_labels(labels, probs)
    assert sorted(check.flagged.tolist()) == flipped and check.estimated == 3
    assert set(check.order[:3].tolist()) == set(flipped)


def test_the_default_doctor_folder_never_overwrites_an_earlier_one(tmp_path):
    from imgclf.api import _doctor_folder

    (tmp_path / "photos").mkdir()
    assert _doctor_folder(str(tmp_path / "photos"), "folder") == tmp_path / "doctor"
    (tmp_path / "doctor").mkdir()
    (tmp_path / "doctor-2").mkdir()
    assert _doctor_folder(str(tmp_path / "photos"), "folder") == tmp_path / "doctor-3"

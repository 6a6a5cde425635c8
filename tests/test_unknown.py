"""`evaluate --negatives`: "none of these" measured on the user's own unrelated images, and the better score
then deciding `unknown` in predict and serve."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import imgclf
from imgclf.cli import main
from imgclf.evaluate import neighbours_k, unknown_curve
from imgclf.predict import Novelty


def unrelated_folder(root: Path, count: int = 40) -> Path:
    """Smooth colour blobs: nothing like stripes or checkerboards."""
    rng = np.random.default_rng(1)
    root.mkdir(parents=True)
    for i in range(count):
        coarse = rng.integers(0, 255, (3, 3, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize((16, 16), Image.BICUBIC).save(root / f"blob_{i:02d}.png")
    return root


def test_the_curve_keeps_the_share_of_real_images_asked_and_counts_the_unrelated_accepted():
    real = torch.linspace(0.01, 1.0, 100)  # scores of 100 real images, 0.01 .. 1.00
    correct = real > 0.2  # the low-scoring real ones are the model's mistakes
    unrelated = torch.tensor([0.05, 0.1, 0.5, 0.95])
    rows = {r["coverage"]: r for r in unknown_curve(real, correct, unrelated, (1.0, 0.5))}
    assert rows[1.0]["unrelated_accepted"] == 1.0 and rows[1.0]["accuracy"] == pytest.approx(0.8)
    half = rows[0.5]
    assert half["threshold"] == pytest.approx(0.51) and half["accuracy"] == 1.0
    assert half["unrelated_accepted"] == pytest.approx(0.25)  # only 0.95 passes


def test_familiarity_is_the_share_of_real_images_farther_from_the_training_images():
    reference = Novelty.unit(torch.eye(4))  # four training embeddings along the axes
    real = torch.tensor([0.0, 0.1, 0.2, 0.3])  # distances of real held-out images
    novelty = Novelty(reference, 1, real)
    close, far = torch.tensor([[1.0, 0.0, 0.0, 0.0]]), torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    assert novelty.familiarity(close).item() == 1.0  # as near as the nearest: every real image is as far
    assert novelty.familiarity(far).item() == 0.0  # distance 0.5: farther than every real image
    assert neighbours_k(50_000) == 50 and neighbours_k(300) == 1


def test_negatives_are_measured_written_reported_and_then_decide_unknown(trained_run, tmp_path):
    run = shutil.copytree(trained_run, tmp_path / "run")  # the shared run stays without unknown.json
    negatives = unrelated_folder(tmp_path / "blobs")
    result = imgclf.evaluate(run, negatives=negatives, verbose=False)
    assert result["unrelated_images"] == 40 and set(result["curves"]) == {"probability", "familiarity"}
    for rows in result["curves"].values():
        kept = [r["coverage"] for r in rows]
        assert kept == sorted(kept, reverse=True) and kept[0] == 1.0
        accepted = [r["unrelated_accepted"] for r in rows]
        assert accepted == sorted(accepted, reverse=True)  # keeping fewer real images never accepts more
    at = {n: min(rows, key=lambda r: abs(r["coverage"] - 0.95)) for n, rows in result["curves"].items()}
    assert at[result["chosen"]]["unrelated_accepted"] <= min(r["unrelated_accepted"] for r in at.values())
    saved = json.loads((run / "unknown.json").read_text())
    assert saved["chosen"] == result["chosen"] and (run / "plots" / "unknown.png").is_file()
    model = imgclf.classifier(run)
    assert model.unknown_score == result["chosen"]
    threshold = at[result["chosen"]]["threshold"]
    blobs = model.predict(negatives, min_confidence=threshold)
    rejected = sum(p.label == "unknown" for p in blobs) / len(blobs)
    assert rejected == pytest.approx(1 - at[result["chosen"]]["unrelated_accepted"], abs=1e-6)
    page = imgclf.report(run, log=lambda _: None).read_text()
    assert ">None of these</h2>" in page and "unrelated images accepted" in page
    # an export's model card carries the measured rule, with its threshold
    card = imgclf.export(run, format="torchscript", log=lambda _: None).card
    assert card is not None and f"score is below {threshold:.3f}" in card.read_text()
    assert f"on 40 images of none of the classes ({negatives})" in card.read_text()


def test_familiarity_decides_unknown_when_chosen_and_the_command_line_names_a_missing_folder(
    trained_run, tmp_path, capsys
):
    run = shutil.copytree(trained_run, tmp_path / "run")
    negatives = unrelated_folder(tmp_path / "blobs")
    assert main(["evaluate", str(run), "--negatives", str(negatives)]) == 0
    assert "unrelated accepted" in capsys.readouterr().out
    saved = json.loads((run / "unknown.json").read_text())
    saved["chosen"] = "familiarity"  # as if it had won: predict must then read familiarity
    (run / "unknown.json").write_text(json.dumps(saved))
    model = imgclf.classifier(run)
    assert model.unknown_score == "familiarity"
    images = sorted(negatives.iterdir())[:8]
    sources, pixels, _ = model.read_images(images)
    familiarity = model.unknown_scores(pixels, model.predict_proba(pixels))
    cut = float(familiarity.median())
    labels = [p.label for p in model.predict(images, min_confidence=cut)]
    assert [lbl == "unknown" for lbl in labels] == (familiarity < cut).tolist()
    assert main(["evaluate", str(run), "--negatives", str(tmp_path / "missing")]) == 2

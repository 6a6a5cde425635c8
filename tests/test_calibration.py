"""Calibrated confidence (temperature scaling fitted on validation) and the `unknown` answer below a minimum
confidence, in predict, the server, evaluate and export."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

import imgclf
from conftest import write_class_folder
from imgclf.cli import main
from imgclf.metrics import apply_temperature, calibration_error, coverage, fit_temperature, reliability
from imgclf.predict import UNKNOWN, load, tta_logits
from imgclf.rundir import RELIABILITY, read_checkpoint
from imgclf.serve import ServeSettings
from imgclf.serve.app import create_app


def overconfident(n: int = 20_000, classes: int = 5, true_temperature: float = 2.5, seed: int = 0):
    """Logits whose labels are drawn from softmax(logits / T): the model's softmax(logits) is overconfident by T."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=generator) * 4
    labels = torch.multinomial((logits / true_temperature).softmax(1), 1, generator=generator).flatten()
    return logits.softmax(1), labels


def test_temperature_scaling_recovers_the_temperature_and_lowers_the_calibration_error():
    probs, labels = overconfident()
    temperature = fit_temperature(probs, labels)
    assert temperature == pytest.approx(2.5, rel=0.08)
    calibrated = apply_temperature(probs, temperature)
    assert torch.equal(calibrated.argmax(1), probs.argmax(1))  # one parameter: no prediction changes
    before, after = calibration_error(probs, labels), calibration_error(calibrated, labels)
    assert before > 0.1 and after < 0.02
    bins = reliability(calibrated, labels)
    assert sum(b["count"] for b in bins) == len(labels)
    for b in bins:  # calibrated: in each well-filled bin the accuracy is near the confidence
        if b["count"] > 500:
            assert abs(b["accuracy"] - b["confidence"]) < 0.05


def test_coverage_trades_answers_for_accuracy():
    probs, labels = overconfident(true_temperature=1.0)
    rows = coverage(probs, labels, (0.0, 0.5, 0.9))
    assert rows[0]["coverage"] == 1.0 and rows[0]["accuracy"] == pytest.approx(
        (probs.argmax(1) == labels).float().mean().item()
    )
    assert rows[0]["coverage"] > rows[1]["coverage"] > rows[2]["coverage"] > 0
    assert rows[0]["accuracy"] < rows[1]["accuracy"] < rows[2]["accuracy"]
    answered = probs.max(1).values >= 0.9
    assert rows[2]["coverage"] == pytest.approx(answered.float().mean().item())


@pytest.fixture(scope="module")
def noisy_run(tmp_path_factory):
    """A run whose validation split has mistakes (a fifth of the labels are wrong) and is large enough (90
    images) that a temperature fitted on part of it holds out on the rest: calibration has work."""
    root = tmp_path_factory.mktemp("calibration")
    folder = write_class_folder(root / "data", per_class=100)
    rng = np.random.default_rng(0)
    for path in sorted(folder.rglob("*.png")):
        if rng.random() < 0.2:  # move to the next class's folder
            classes = sorted(p.name for p in folder.iterdir())
            target = folder / classes[(classes.index(path.parent.name) + 1) % len(classes)] / f"moved_{path.name}"
            path.rename(target)
    result = imgclf.train(
        data=str(folder), image_size=16, epochs=8, val_split=0.3, out=str(root / "run"), verbose=False
    )
    return result.run_dir


def test_a_run_without_validation_mistakes_keeps_temperature_one_and_says_why(trained_run):
    """The shared run's stripes are easy: its validation split has no mistake, so no temperature is fitted."""
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["calibration"]["temperature"] == 1.0 and "validation mistake" in metrics["calibration"]["note"]
    assert read_checkpoint(trained_run).spec.temperature == 1.0


def test_a_run_stores_its_temperature_and_every_path_applies_it(noisy_run, tmp_path):
    trained_run = noisy_run
    metrics = json.loads((trained_run / "metrics.json").read_text())
    calibration = metrics["calibration"]
    spec = read_checkpoint(trained_run).spec
    assert calibration["note"] is None and spec.temperature == calibration["temperature"] != 1.0
    assert calibration["test_ece_after"] < calibration["test_ece_before"]
    assert {"test_ece_before", "test_ece_after"} <= set(calibration) and (trained_run / RELIABILITY).is_file()
    assert metrics["test"]["coverage"][0]["coverage"] == 1.0
    classifier = load(trained_run, device="cpu")
    images = torch.randint(0, 256, (6, classifier.channels, 16, 16), dtype=torch.uint8)
    with torch.no_grad():  # by hand: the run's test-time augmentation (the cnn recipe's), then the temperature
        x = classifier.normalise(images)
        logits = tta_logits(classifier.model, x, spec.hflip) if spec.tta else classifier.model(x).float()
    assert spec.tta
    expected = (logits / spec.temperature).softmax(1)
    assert torch.allclose(classifier.predict_proba(images), expected, atol=1e-6)
    # the exported model carries the temperature and the views: its probabilities are predict's
    exported = imgclf.export(trained_run, format="onnx", out=tmp_path / "export", log=lambda _: None)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(exported.path))
    (onnx_probs,) = session.run(None, {session.get_inputs()[0].name: images.numpy()})
    assert np.allclose(onnx_probs, expected.numpy(), atol=1e-5)


def _photos(tmp_path, n: int = 8):
    for i in range(n):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
            tmp_path / f"{i}.png"
        )
    return tmp_path


def test_below_min_confidence_the_answer_is_unknown(trained_run, tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    folder = _photos(tmp_path / "photos")
    plain = imgclf.predict(trained_run, folder, top_k=2)
    threshold = float(np.median([p.probability for p in plain]))
    decided = imgclf.predict(trained_run, folder, top_k=2, min_confidence=threshold)
    for p, q in zip(plain, decided):
        assert q.label == (UNKNOWN if p.probability < threshold else p.label) and q.top_k == p.top_k
    assert any(q.label == UNKNOWN for q in decided) and any(q.label != UNKNOWN for q in decided)
    # the command line: a `prediction` column holds the decision
    assert (
        main(
            [
                "predict",
                str(trained_run),
                str(folder),
                "--min-confidence",
                str(threshold),
                "--out",
                str(tmp_path / "p.csv"),
            ]
        )
        == 0
    )
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert [r["prediction"] for r in rows] == [q.label for q in decided]
    capsys.readouterr()
    assert main(["predict", str(trained_run), str(folder), "--min-confidence", "1.5"]) == 2
    assert "--min-confidence 1.5 must be a probability between 0 and 1" in capsys.readouterr().err
    # the server: a request's min_confidence, else the server's own
    files = [("files", (f"{i}.png", (folder / f"{i}.png").read_bytes(), "image/png")) for i in range(8)]
    with TestClient(create_app(load(trained_run, device="cpu"), ServeSettings(min_confidence=1.0))) as client:
        answers = client.post("/predict", files=files).json()["predictions"]
        assert [a["label"] for a in answers] == [UNKNOWN] * 8
        answers = client.post(f"/predict?min_confidence={threshold}", files=files).json()["predictions"]
        assert [a["label"] for a in answers] == [q.label for q in decided]


def test_evaluate_prints_coverage_per_confidence(trained_run, capsys):
    assert main(["evaluate", str(trained_run)]) == 0
    out = capsys.readouterr().out
    assert "expected calibration error" in out and "min confidence" in out and "0.90" in out


def test_a_temperature_is_kept_only_where_it_holds_out_on_validation_images_it_was_not_fitted_on():
    """Fitted on 40 images of an already calibrated model, a temperature mostly fits noise: the held-out check
    says so for most such splits; for an overconfident model it always finds the gain."""
    from imgclf.metrics import temperature_held_out

    refused = 0
    for seed in range(20):
        before, after = temperature_held_out(*overconfident(n=2000, true_temperature=2.5, seed=seed))
        assert after < before - 0.2
        before, after = temperature_held_out(*overconfident(n=40, true_temperature=1.0, seed=seed))
        refused += after >= before
    assert refused >= 12

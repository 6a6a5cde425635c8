"""Commands over a finished run: errors, compare, report (and train --report), from the run directory alone."""

import base64
import io
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import imgclf
from conftest import CHROMIUM, CHROMIUM_FLAGS, CLASSES, synthetic_image
from imgclf.cli import main
from imgclf.config import TrainConfig
from imgclf.data import load_data
from imgclf.models import count_parameters, create_model

quiet = {"log": lambda _: None}


@pytest.fixture(scope="module")
def noisy_run(tmp_path_factory) -> Path:
    """A run on stripes where a third of the images carry a wrong label: its test set has mistakes."""
    root = tmp_path_factory.mktemp("noisy")
    rng = np.random.default_rng(3)
    for name in CLASSES:
        (root / "data" / name).mkdir(parents=True)
    for i in range(120):
        cls = i % 3
        label = (cls + 1) % 3 if rng.random() < 0.35 else cls
        Image.fromarray(synthetic_image(cls, rng)).save(root / "data" / CLASSES[label] / f"{i:03d}.png")
    return imgclf.train(data=str(root / "data"), image_size=16, epochs=8, out=str(root / "run"), verbose=False).run_dir


def _independent_test_probs(run: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The test split and the model's probabilities on it, computed apart from the run's saved predictions."""
    classifier = imgclf.load(run, device="cpu")
    cfg = TrainConfig.load(run / "config.yaml").replace(image_size=classifier.image_size)
    data = load_data(cfg.data_config)
    return classifier.predict_proba(data.test.images), data.test.labels


def test_one_image_has_one_probability_in_every_command(noisy_run, tmp_path):
    """predict, explain, errors, the report and the server agree on an image's probability: the run's
    test-time augmentation is applied everywhere (the cnn recipe's runs use it), its calibration too."""
    from fastapi.testclient import TestClient

    from imgclf.explain import explain_batch
    from imgclf.report.page import _examples
    from imgclf.serve.app import create_app

    classifier = imgclf.load(noisy_run, device="cpu")
    assert classifier.tta and "test-time augmentation" in repr(classifier)
    errors = imgclf.errors(noisy_run, out=tmp_path / "errors", log=lambda _: None)
    mistakes = errors.analysis.mistakes[:4]
    files = [m.source for m in mistakes]
    assert len(files) == 4 and all(files)
    predicted = imgclf.predict(noisy_run, files, device="cpu")
    explained = imgclf.explain(noisy_run, files, out=tmp_path / "explain", log=lambda _: None)
    with TestClient(create_app(classifier)) as client:
        uploads = [("files", (Path(f).name, Path(f).read_bytes(), "image/png")) for f in files]
        served = client.post("/predict", files=uploads).json()["predictions"]
    for i, mistake in enumerate(mistakes):
        assert predicted[i].label == mistake.predicted == served[i]["label"]
        assert predicted[i].probability == pytest.approx(mistake.confidence, abs=1e-5)
        assert explained.top_k(i)[0] == (mistake.predicted, pytest.approx(mistake.confidence, abs=1e-5))
        assert served[i]["probability"] == pytest.approx(mistake.confidence, abs=1e-5)
    # the report's grid: "most confident mistakes first", in the order of the probabilities it shows
    from imgclf.evaluate import test_predictions
    from imgclf.rundir import RunDir

    predictions = test_predictions(RunDir(noisy_run), classifier, lambda _: None)
    images, labels = _examples(predictions, classifier.classes)
    wrong = [i for i, label in enumerate(labels) if " wrong " in label]
    shown = [e.top_k[0][1] for e in explain_batch(classifier, images[wrong], "gradcam")]
    assert len(shown) >= 3 and shown == sorted(shown, reverse=True)


def test_errors_lists_exactly_the_wrong_predictions(noisy_run, tmp_path):
    probs, labels = _independent_test_probs(noisy_run)
    confidence, predicted = probs.max(1)
    wrong = torch.nonzero(predicted != labels).flatten()
    assert len(wrong) >= 3, "the fixture must produce mistakes"
    expected = wrong[confidence[wrong].argsort(descending=True)].tolist()

    classes = imgclf.load(noisy_run).classes  # sorted folder names
    result = imgclf.errors(noisy_run, top=5, out=tmp_path, **quiet)
    analysis = result.analysis
    assert [m.index for m in analysis.mistakes] == expected
    assert [m.predicted for m in analysis.mistakes] == [classes[predicted[i]] for i in expected]
    assert [m.true for m in analysis.mistakes] == [classes[labels[i]] for i in expected]
    assert analysis.mistakes[0].confidence == pytest.approx(confidence[expected[0]].item(), abs=1e-5)
    # each mistake names its file, which sits in its true class's folder
    assert all(Path(m.source).is_file() and Path(m.source).parent.name == m.true for m in analysis.mistakes)

    matrix = imgclf_metrics(noisy_run)["confusion_matrix"]
    pairs = {(classes[t], classes[p]): matrix[t][p] for t in range(3) for p in range(3) if t != p and matrix[t][p]}
    assert {(t, p): n for t, p, n in analysis.confused_pairs} == pairs
    assert [n for _, _, n in analysis.confused_pairs] == sorted(pairs.values(), reverse=True)
    recalls = [a for _, a, _ in analysis.class_accuracy]
    assert recalls == sorted(recalls)
    per_class = imgclf_metrics(noisy_run)["per_class"]
    assert {c: a for c, a, _ in analysis.class_accuracy} == pytest.approx({c: per_class[c]["recall"] for c in CLASSES})

    saved = __import__("json").loads((tmp_path / "errors.json").read_text())
    assert saved["wrong"] == len(expected) and len(saved["most_confident_mistakes"]) == min(5, len(expected))
    grid = Image.open(tmp_path / "mistakes.png")
    assert grid.width > 300


def imgclf_metrics(run: Path) -> dict:
    return __import__("json").loads((run / "metrics.json").read_text())["test"]


def test_errors_recomputes_predictions_a_run_lacks(noisy_run, tmp_path):
    copy = shutil.copytree(noisy_run, tmp_path / "old-run")
    (copy / "test_predictions.pt").unlink()  # as written by an imgclf before this file existed
    before = [m.index for m in imgclf.errors(noisy_run, out=tmp_path / "a", **quiet).analysis.mistakes]
    after = [m.index for m in imgclf.errors(copy, out=tmp_path / "b", **quiet).analysis.mistakes]
    assert after == before and (copy / "test_predictions.pt").is_file()


def test_errors_and_compare_commands(noisy_run, trained_run, tmp_path, capsys):
    assert main(["errors", str(noisy_run), "--top", "3", "--out", str(tmp_path / "e")]) == 0
    out = capsys.readouterr().out
    assert "per-class accuracy, worst first" in out and "most confused pairs" in out
    assert main(["compare", str(trained_run), str(noisy_run), "--out", str(tmp_path / "c.png")]) == 0
    out = capsys.readouterr().out
    assert "run" in out and f"{imgclf_metrics(noisy_run)['accuracy']:.4f}" in out
    assert (tmp_path / "c.png").is_file()
    assert main(["errors", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_compare_the_plain_network_with_the_cnn(trained_run, class_folder, tmp_path):
    mlp_run = imgclf.train(
        data=str(class_folder), image_size=16, model="mlp", epochs=3, out=str(tmp_path / "mlp"), verbose=False
    ).run_dir
    result = imgclf.compare([mlp_run, trained_run], out=tmp_path / "cmp.png", **quiet)
    mlp, cnn = result.rows
    assert (mlp["model"], cnn["model"]) == ("mlp", "cnn")
    assert mlp["test_accuracy"] == imgclf_metrics(mlp_run)["accuracy"]
    assert mlp["macro_f1"] == imgclf_metrics(mlp_run)["macro_f1"]
    # an mlp's multiply-adds are its weights: 768*512 + 512*512 + 512*3
    assert mlp["macs"] == 768 * 512 + 512 * 512 + 512 * 3
    assert mlp["parameters"] == count_parameters(create_model("mlp", 3, 3, 16))
    assert cnn["parameters"] == count_parameters(imgclf.load(trained_run).model)
    assert cnn["macs"] > mlp["macs"]  # weight sharing: fewer weights, more arithmetic
    assert Image.open(result.path).width > 500


def _embedded_images(page: str) -> list[Image.Image]:
    sources = re.findall(r'<img src="([^"]*)"', page)
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    return [Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1]))) for s in sources]


def test_report_is_one_self_contained_page(noisy_run, tmp_path):
    data = noisy_run.parent / "data"
    data.rename(tmp_path / "away")  # the run directory alone is enough
    try:
        path = imgclf.report(noisy_run, out=tmp_path / "report.html", **quiet)
    finally:
        (tmp_path / "away").rename(data)
    page = path.read_text()
    for heading in (
        "Summary",
        "Training",
        "Test metrics",
        "Confidence",
        "Errors",
        "Explanations",
        "Inside the model",
        "Config",
    ):
        assert f">{heading}</h2>" in page
    images = _embedded_images(page)
    # curves, samples, confusion matrix, per-class, predictions, mistakes, Grad-CAM, kernels, feature maps
    assert len(images) == 10 and all(im.width > 100 and im.height > 50 for im in images)
    assert f"{imgclf_metrics(noisy_run)['accuracy']:.4f}" in page
    assert 'href="http' not in page and 'src="http' not in page


CHECK_IMAGES = """<script>window.addEventListener("load", () => {
  const broken = [...document.images].filter(i => !i.complete || i.naturalWidth === 0).length;
  document.body.setAttribute("data-images", document.images.length + " " + broken);
});</script>"""


def test_report_renders_in_headless_chromium(noisy_run, tmp_path):
    if CHROMIUM is None:
        assert not os.environ.get("IMGCLF_REQUIRE_CHROMIUM"), "CI must install Chromium (see .ci/run)"
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium)")
    page = imgclf.report(noisy_run, out=tmp_path / "report.html", **quiet).read_text()
    probe = tmp_path / "probe.html"  # the report plus a script that counts images the browser failed to decode
    probe.write_text(page.replace("</body>", CHECK_IMAGES + "</body>"))
    flags = CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(
        [CHROMIUM, *flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    assert re.search(r'data-images="10 0"', dom), dom[:300]
    shot = tmp_path / "shot.png"
    subprocess.run(
        [CHROMIUM, *flags, "--window-size=1100,2400", f"--screenshot={shot}", (tmp_path / "report.html").as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
    # rendered figures bring colour: the curves' blue and orange, the confusion matrix's blues
    assert (np.abs(pixels.astype(int) - [31, 119, 180]).sum(1) < 30).sum() > 200
    assert len(np.unique(pixels[::7], axis=0)) > 1000


def test_train_report_flag_on_the_shipped_dataset(in_tmp, capsys):
    assert main(["train", "--data", "digits", "--epochs", "1", "--report", "--out", "digits-run"]) == 0
    assert "report: digits-run/report.html" in capsys.readouterr().out
    _every_run_command(in_tmp / "digits-run", in_tmp, capsys)


def _every_run_command(run: Path, tmp_path: Path, capsys) -> None:
    """inspect, explain, errors, compare and report on one run, through the command line."""
    image = tmp_path / "one.png"  # a test image, as the run kept it
    kept = torch.load(run / "test_predictions.pt", weights_only=True)["example_images"][0]
    Image.fromarray(kept.permute(1, 2, 0).squeeze(-1).numpy()).save(image)
    for command in (
        ["inspect", str(run), "--image", str(image)],
        ["explain", str(run), str(image), "--method", "saliency"],
        ["explain", str(run), str(image)],
        ["errors", str(run)],
        ["compare", str(run), str(run), "--out", str(tmp_path / "c.png")],
        ["report", str(run)],
    ):
        assert main(command) == 0, command
    out = capsys.readouterr().out
    assert "receptive field" in out and "gradcam on layer" in out and "per-class accuracy" in out and "report:" in out
    assert {p.name for p in (run / "explain").iterdir()} >= {"gradcam.png", "saliency.png"}
    assert len(_embedded_images((run / "report.html").read_text())) == 10


@pytest.mark.shared_data
@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["mnist"])  # a built-in dataset's paths; Fashion-MNIST's are the same code
def test_every_run_command_on_a_builtin_dataset(dataset, shared_data, tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main(
            ["train", "--data", dataset, "--data-dir", str(shared_data), "--epochs", "1", "--out", str(run), "--quiet"]
        )
        == 0
    )
    _every_run_command(run, tmp_path, capsys)


def test_errors_on_a_run_with_damaged_predictions_or_no_data(noisy_run, tmp_path, capsys):
    copy = shutil.copytree(noisy_run, tmp_path / "run")
    (copy / "test_predictions.pt").write_bytes(b"not a tensor file")  # damaged: predicted again from the data
    expected = [m.index for m in imgclf.errors(noisy_run, out=tmp_path / "a", **quiet).analysis.mistakes]
    assert [m.index for m in imgclf.errors(copy, out=tmp_path / "b", **quiet).analysis.mistakes] == expected
    (copy / "test_predictions.pt").unlink()
    data = noisy_run.parent / "data"
    data.rename(tmp_path / "away")
    try:
        assert main(["errors", str(copy)]) == 2
    finally:
        (tmp_path / "away").rename(data)
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "its data cannot be loaded" in err and "restore the data" in err
    assert main(["errors", str(copy), "--top", "-1"]) == 2
    assert "--top -1: must be 0 or more" in capsys.readouterr().err

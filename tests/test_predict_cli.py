"""predict, evaluate and the command line, including every bad input: one line on stderr, exit 2."""

import csv
import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import imgclf
from conftest import CLASSES, synthetic_image
from imgclf.cli import main


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def new_images(tmp_path_factory) -> Path:
    """Unseen images of each class, in other sizes and modes than the training data."""
    root = tmp_path_factory.mktemp("new")
    rng = np.random.default_rng(123)
    for c, name in enumerate(CLASSES):
        for i in range(3):
            image = Image.fromarray(synthetic_image(c, rng, 16)).resize((48, 48), Image.NEAREST)
            (image.convert("L") if i == 2 else image).save(root / f"{name}_{i}.{'jpg' if i == 1 else 'png'}", quality=95)
    return root


def test_load_and_predict_files_folders_and_tensors(trained_run, new_images):
    model = imgclf.load(trained_run / "best.pt")
    assert model.classes == ["checker", "horizontal", "vertical"] and model.image_size == 16
    predictions = model.predict([new_images], top_k=3)
    assert len(predictions) == 9
    for p in predictions:
        assert p.label == Path(p.source).name.split("_")[0]  # unseen images, right class
        probs = [prob for _, prob in p.top_k]
        assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1, abs=1e-5)
        assert p.top_k[0] == (p.label, p.probability)
    image = Image.open(new_images / "vertical_0.png")
    tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1)
    assert [p.label for p in model.predict([image, tensor])] == ["vertical", "vertical"]
    assert imgclf.predict(trained_run, new_images / "checker_0.png")[0].label == "checker"


def test_predict_command_formats(trained_run, new_images, capsys):
    code, out, _ = cli(capsys, "predict", trained_run / "best.pt", new_images / "checker_1.jpg", new_images, "--top-k", "2", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and len(rows) == 10 and list(rows[0]) == ["file", "label_1", "prob_1", "label_2", "prob_2"]
    assert rows[0]["label_1"] == "checker" and float(rows[0]["prob_1"]) >= float(rows[0]["prob_2"])
    code, out, _ = cli(capsys, "predict", trained_run, new_images / "horizontal_0.png", "--format", "json")
    assert code == 0 and json.loads(out)[0]["label"] == "horizontal"
    code, out, _ = cli(capsys, "predict", trained_run, new_images / "horizontal_0.png")
    assert code == 0 and out.splitlines()[0].split() == ["file", "label_1", "prob_1"] and "horizontal" in out.splitlines()[1]


def test_evaluate_reproduces_the_test_metrics(trained_run, capsys):
    code, out, _ = cli(capsys, "evaluate", trained_run)
    saved = json.loads((trained_run / "metrics.json").read_text())["test"]
    evaluated = json.loads((trained_run / "evaluation.json").read_text())["test"]
    assert code == 0 and evaluated["accuracy"] == saved["accuracy"]
    assert evaluated["confusion_matrix"] == saved["confusion_matrix"]
    assert "macro f1" in out and f"test accuracy {saved['accuracy']:.4f}" in out


def test_listing_commands(capsys):
    code, out, _ = cli(capsys, "models")
    names = [line.split()[0] for line in out.splitlines()[1:]]
    assert code == 0 and names == ["mlp", "cnn2", "lenet5", "cnn4", "resnet18", "cnn", "torchvision:NAME", "timm:NAME"]
    assert "62,006" in out  # LeNet-5 on 3x32x32
    code, out, _ = cli(capsys, "datasets")
    assert code == 0 and {"mnist", "fashion-mnist", "cifar10", "cifar100", "digits"} <= {line.split()[0] for line in out.splitlines()[1:]}


def test_train_command_with_flags(class_folder, in_tmp, capsys):
    code, out, _ = cli(capsys, "train", "--data", class_folder, "--image-size", "16", "--epochs", "2", "--model", "cnn2",
                       "--optimizer", "adam", "--lr", "0.003", "--schedule", "cosine", "--label-smoothing", "0",
                       "--out", "r", "--quiet")
    assert code == 0 and out.strip().endswith("run saved in r")
    config = (in_tmp / "r" / "config.yaml").read_text()
    assert "optimizer: adam" in config and "schedule: cosine" in config and "model: cnn2" in config


# ------------------------------------------------------------------ bad input: one line, exit 2, nothing lost

def assert_one_line_error(code, err, *fragments):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("imgclf: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_bad_data_inputs(tmp_path, in_tmp, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "single" / "cat").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "single" / "cat" / "a.png")
    (tmp_path / "bad.csv").write_text("name,kind\na.png,cat\n")
    (tmp_path / "missing.csv").write_text("file,label\nnope.png,cat\n")
    cases = [
        (["--data", tmp_path / "nowhere"], ["nowhere: no such folder or file"]),
        (["--data", tmp_path / "empty"], ["empty: no class sub-folders", "<class name>"]),
        (["--data", tmp_path / "single"], ["needs at least two class sub-folders", "cat"]),
        (["--data", tmp_path / "bad.csv"], ["bad.csv: unknown columns name, kind", "'file'", "'label'"]),
        (["--data", tmp_path / "missing.csv"], ["missing.csv: 1 of 1 files are not in", "nope.png", "--images"]),
        (["--data", "digits", "--model", "lenet5"], ["lenet5: needs images of at least 16x16", "--image-size 32"]),
        (["--data", "digits", "--model", "transformer"], ["unknown model 'transformer'"]),
        (["--data", "digits", "--val-split", "1.5"], ["--val-split 1.5 must be between 0 and 1"]),
    ]
    for argv, fragments in cases:
        assert_one_line_error(*cli(capsys, "train", *argv)[::2], *fragments)
    assert not (in_tmp / "runs").exists() or not any((in_tmp / "runs").iterdir())


def test_bad_config_files(tmp_path, capsys):
    (tmp_path / "broken.yaml").write_text("epochs: [1,\n")
    (tmp_path / "unknown.yaml").write_text("epochs: 1\nlearning_rate: 0.1\n")
    assert_one_line_error(*cli(capsys, "train", "--config", tmp_path / "broken.yaml")[::2], "broken.yaml: not valid YAML")
    assert_one_line_error(*cli(capsys, "train", "--config", tmp_path / "unknown.yaml")[::2], "unknown setting(s) learning_rate")
    assert_one_line_error(*cli(capsys, "train", "--config", tmp_path / "none.yaml")[::2], "none.yaml: no such config file")


def test_bad_checkpoints(trained_run, tmp_path, new_images, capsys):
    (tmp_path / "text.pt").write_text("not a checkpoint")
    assert_one_line_error(*cli(capsys, "predict", tmp_path / "text.pt", new_images)[::2], "text.pt: not a readable imgclf checkpoint")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    assert_one_line_error(*cli(capsys, "predict", tmp_path / "foreign.pt", new_images)[::2], "foreign.pt: not an imgclf checkpoint")
    assert_one_line_error(*cli(capsys, "evaluate", tmp_path / "nope")[::2], "nope: no such checkpoint; pass a run directory")
    # weights of another architecture under this checkpoint's model name
    payload = torch.load(trained_run / "best.pt", weights_only=True)
    payload["model"] = {"name": "cnn4", "kwargs": {}}
    torch.save(payload, tmp_path / "other_model.pt")
    assert_one_line_error(*cli(capsys, "predict", tmp_path / "other_model.pt", new_images)[::2], "weights do not fit model cnn4")
    # a checkpoint evaluated on data with another class count
    assert_one_line_error(*cli(capsys, "evaluate", trained_run, "--data", "digits")[::2],
                          "the model knows 3 classes", "digits has 10", "same classes")


def test_checkpoint_loading_executes_no_code(tmp_path, capsys):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (marker,))

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"format": "imgclf-checkpoint", "payload": Exploit()}, f, protocol=2)
    assert_one_line_error(*cli(capsys, "predict", tmp_path / "evil.pt", tmp_path)[::2], "evil.pt: not a readable imgclf checkpoint")
    assert not marker.exists()


def test_unreadable_images_to_predict(trained_run, tmp_path, capsys):
    (tmp_path / "fake.png").write_bytes(b"GIF89a truncated")
    assert_one_line_error(*cli(capsys, "predict", trained_run, tmp_path / "fake.png")[::2], "fake.png: not a readable image")
    assert_one_line_error(*cli(capsys, "predict", trained_run, tmp_path / "absent.png")[::2], "absent.png: no such file; check the path")

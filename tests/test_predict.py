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
from torch import nn

import imgclf
from conftest import CLASSES, synthetic_image
from imgclf.cli import main
from imgclf.predict import tta_logits


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
            (image.convert("L") if i == 2 else image).save(
                root / f"{name}_{i}.{'jpg' if i == 1 else 'png'}", quality=95
            )
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
    code, out, _ = cli(
        capsys,
        "predict",
        trained_run / "best.pt",
        new_images / "checker_1.jpg",
        new_images,
        "--top-k",
        "2",
        "--format",
        "csv",
    )
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and len(rows) == 10 and list(rows[0]) == ["file", "label_1", "prob_1", "label_2", "prob_2"]
    assert rows[0]["label_1"] == "checker" and float(rows[0]["prob_1"]) >= float(rows[0]["prob_2"])
    code, out, _ = cli(capsys, "predict", trained_run, new_images / "horizontal_0.png", "--format", "json")
    assert code == 0 and json.loads(out)[0]["label"] == "horizontal"
    code, out, _ = cli(capsys, "predict", trained_run, new_images / "horizontal_0.png")
    assert (
        code == 0
        and out.splitlines()[0].split() == ["file", "label_1", "prob_1"]
        and "horizontal" in out.splitlines()[1]
    )


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
    assert code == 0 and names == [
        "mlp",
        "cnn2",
        "lenet5",
        "cnn4",
        "resnet18",
        "cnn",
        "lite0",
        "lite1",
        "lite2",
        "torchvision:NAME",
        "timm:NAME",
    ]
    assert "62,006" in out  # LeNet-5 on 3x32x32
    code, out, _ = cli(capsys, "datasets")
    assert code == 0 and {"mnist", "fashion-mnist", "cifar10", "cifar100", "digits"} <= {
        line.split()[0] for line in out.splitlines()[1:]
    }


def test_train_command_with_flags(class_folder, in_tmp, capsys):
    code, out, _ = cli(
        capsys,
        "train",
        "--data",
        class_folder,
        "--image-size",
        "16",
        "--epochs",
        "2",
        "--model",
        "cnn2",
        "--optimizer",
        "adam",
        "--lr",
        "0.003",
        "--schedule",
        "cosine",
        "--label-smoothing",
        "0",
        "--out",
        "r",
        "--quiet",
    )
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
    assert_one_line_error(
        *cli(capsys, "train", "--config", tmp_path / "broken.yaml")[::2], "broken.yaml: not valid YAML"
    )
    assert_one_line_error(
        *cli(capsys, "train", "--config", tmp_path / "unknown.yaml")[::2], "unknown setting(s) learning_rate"
    )
    assert_one_line_error(
        *cli(capsys, "train", "--config", tmp_path / "none.yaml")[::2], "none.yaml: no such config file"
    )


def test_bad_checkpoints(trained_run, tmp_path, new_images, capsys):
    (tmp_path / "text.pt").write_text("not a checkpoint")
    assert_one_line_error(
        *cli(capsys, "predict", tmp_path / "text.pt", new_images)[::2], "text.pt: not a readable imgclf checkpoint"
    )
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    assert_one_line_error(
        *cli(capsys, "predict", tmp_path / "foreign.pt", new_images)[::2], "foreign.pt: not an imgclf checkpoint"
    )
    assert_one_line_error(
        *cli(capsys, "evaluate", tmp_path / "nope")[::2], "nope: no such checkpoint; pass a run directory"
    )
    # weights of another architecture under this checkpoint's model name
    payload = torch.load(trained_run / "best.pt", weights_only=True)
    payload["model"] = {"name": "cnn4", "kwargs": {}}
    torch.save(payload, tmp_path / "other_model.pt")
    assert_one_line_error(
        *cli(capsys, "predict", tmp_path / "other_model.pt", new_images)[::2], "weights do not fit model cnn4"
    )
    # a checkpoint evaluated on data with another class count
    assert_one_line_error(
        *cli(capsys, "evaluate", trained_run, "--data", "digits")[::2],
        "the model knows 3 classes",
        "digits has 10",
        "same classes",
    )


def test_checkpoint_loading_executes_no_code(tmp_path, capsys):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (marker,))

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"format": "imgclf-checkpoint", "payload": Exploit()}, f, protocol=2)
    assert_one_line_error(
        *cli(capsys, "predict", tmp_path / "evil.pt", tmp_path)[::2], "evil.pt: not a readable imgclf checkpoint"
    )
    assert not marker.exists()


def test_unreadable_images_to_predict(trained_run, tmp_path, capsys):
    (tmp_path / "fake.png").write_bytes(b"GIF89a truncated")
    assert_one_line_error(
        *cli(capsys, "predict", trained_run, tmp_path / "fake.png")[::2], "fake.png: not a readable image"
    )
    assert_one_line_error(
        *cli(capsys, "predict", trained_run, tmp_path / "absent.png")[::2], "absent.png: no such file; check the path"
    )


def test_config_values_of_the_wrong_type_name_the_key_and_the_file(tmp_path, capsys):
    for text, fragment in (
        ("epochs: ten\n", "epochs must be a whole number, got 'ten'"),
        ("batch_size: 1.5\n", "batch_size must be a whole number, got 1.5"),
        ("tta: maybe\n", "tta must be true or false, got 'maybe'"),
        ("model_args: [16, 32]\n", "model_args must be a mapping, got [16, 32]"),
        ("lr: fast\n", "lr must be a number, got 'fast'"),
    ):
        (tmp_path / "bad.yaml").write_text(text)
        assert_one_line_error(
            *cli(capsys, "train", "--config", tmp_path / "bad.yaml")[::2], f"{tmp_path / 'bad.yaml'}: {fragment}"
        )
    with pytest.raises(imgclf.ImgclfError, match="^epochs must be a whole number, got 'ten'$"):
        imgclf.train(epochs="ten", verbose=False)


def test_errors_name_the_keyword_in_python_and_the_flag_on_the_command_line(capsys):
    with pytest.raises(imgclf.ImgclfError, match=r"^val_split 1.5 must be between 0 and 1"):
        imgclf.train(data="digits", val_split=1.5, verbose=False)
    assert_one_line_error(*cli(capsys, "train", "--val-split", "1.5")[::2], "--val-split 1.5 must be between 0 and 1")
    with pytest.raises(imgclf.ImgclfError, match=r"no CUDA GPU is visible to PyTorch; use device=cpu"):
        imgclf.train(device="cuda", verbose=False) if not torch.cuda.is_available() else pytest.skip("a GPU is present")
    assert_one_line_error(
        *cli(capsys, "train", "--device", "cuda")[::2], "--device cuda: no CUDA GPU", "use --device cpu"
    )


def test_predict_reads_a_folder_as_training_does(trained_run, tmp_path, capsys):
    """Hidden files and folders are skipped by both; other files that are not images are named by both."""
    import shutil

    from imgclf.data.images import find_images

    for name in ("a.png", ".hidden.png", ".thumbs/b.png", "sub/c.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), (200, 10, 10)).save(tmp_path / name)
    (tmp_path / "readme.txt").write_text("notes")
    assert [p.relative_to(tmp_path).as_posix() for p in find_images([tmp_path])] == ["a.png", "readme.txt", "sub/c.png"]
    predictions = imgclf.predict(trained_run, tmp_path)
    assert [Path(p.source).name for p in predictions] == ["a.png", "c.png"]
    assert [Path(p).name for p, _ in predictions.skipped] == ["readme.txt"]
    classes = tmp_path / "classes"  # the same files as a training folder: one class each
    for cls in ("x", "y"):
        shutil.copytree(tmp_path, classes / cls, ignore=shutil.ignore_patterns("classes"))
    from imgclf.data.folder import load_folder

    raw = load_folder(imgclf.TrainConfig(data=str(classes), cache=False).data_config, size_cap=64)
    files = sorted(
        Path(s).relative_to(classes / "x").as_posix()
        for split in (raw.train, raw.val, raw.test)
        for s in split.sources or []
        if s.startswith(str(classes / "x"))
    )
    assert files == ["a.png", "sub/c.png"] and sorted(Path(p).name for p, _ in raw.skipped) == [
        "readme.txt",
        "readme.txt",
    ]


def test_the_inference_module_is_what_predicts(trained_run, new_images):
    model = imgclf.load(trained_run, device="cpu")
    _, pixels, _ = model.read_images([new_images])
    module = model.inference_model()
    assert isinstance(module, torch.nn.Module) and pixels.dtype == torch.uint8
    with torch.inference_mode():
        probs = module(pixels)
    assert torch.equal(probs, model.predict_proba(pixels))  # predict runs this module, nothing else
    assert torch.allclose(probs.sum(1), torch.ones(len(pixels)))
    x = (pixels.float() / 255 - torch.tensor(model.spec.mean).view(1, -1, 1, 1)) / torch.tensor(model.spec.std).view(
        1, -1, 1, 1
    )
    assert model.tta  # the cnn recipe's run predicts with its test-time augmentation, everywhere
    by_hand = (tta_logits(model.model, x, model.spec.hflip) / model.spec.temperature).softmax(1)  # and calibration
    assert torch.allclose(probs, by_hand, atol=1e-6)  # the normalisation is inside it
    # one graph, TTA views included, for any batch size: what an exporter exports
    batch = torch.export.Dim("batch", min=1)
    exported = torch.export.export(model.inference_model(tta=True), (pixels[:2],), dynamic_shapes=({0: batch},))
    with torch.inference_mode():
        assert torch.allclose(exported.module()(pixels), model.predict_proba(pixels, tta=True), atol=1e-5)


# ---------------------------------------------------------------- folders of any size


@pytest.fixture(scope="module")
def big_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(5)
    for i in range(600):
        folder = root / CLASSES[i % 3]
        folder.mkdir(exist_ok=True)
        Image.fromarray(synthetic_image(i % 3, rng)).save(folder / f"{i:04d}.png")
    (root / "checker" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    return root


def test_a_folder_is_predicted_batch_by_batch_not_decoded_whole(trained_run, big_folder, monkeypatch):
    import imgclf.data.images as images

    decoded = []
    real_decode = images.decode_file
    monkeypatch.setattr(images, "decode_file", lambda *a, **k: decoded.append(a[0]) or real_decode(*a, **k))
    stream = imgclf.load(trained_run).stream([big_folder], batch_size=50)
    assert stream.total == 601 and not decoded  # listed up front, nothing decoded before it is asked for
    predictions = iter(stream)
    next(predictions)
    assert len(decoded) <= 4 * 50  # the first batch and a few decoded ahead, not 601 files
    rest = list(predictions)
    assert len(rest) == 599
    assert stream.skipped == [(str(big_folder / "checker" / "broken.png"), stream.skipped[0][1])]


def test_predict_writes_csv_and_json_files_as_it_goes_and_lists_the_unreadable_last(
    trained_run, big_folder, tmp_path, capsys
):
    code, out, err = cli(capsys, "predict", trained_run, big_folder, "--out", tmp_path / "p.csv", "--top-k", "2")
    assert code == 0 and out == ""
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert len(rows) == 600 and set(rows[0]) == {"file", "label_1", "prob_1", "label_2", "prob_2"}
    assert not (tmp_path / "p.csv.partial").exists()
    assert err.splitlines()[-2:] == [
        f"wrote 600 predictions to {tmp_path / 'p.csv'}",
        f"imgclf: warning: skipped {big_folder / 'checker' / 'broken.png'}: not an image file in a format imgclf reads",
    ]
    code, out, err = cli(capsys, "predict", trained_run, big_folder, "--out", tmp_path / "p.json")
    predictions = json.loads((tmp_path / "p.json").read_text())
    assert [p["source"] for p in predictions] == [r["file"] for r in rows]
    assert [p["label"] for p in predictions] == [r["label_1"] for r in rows]


def test_an_interrupted_prediction_leaves_a_partial_file_not_a_complete_looking_one(
    trained_run, big_folder, tmp_path, capsys, monkeypatch
):
    from imgclf import writers

    original = writers.CsvWriter.write
    calls = []

    def write_then_stop(self, prediction):
        original(self, prediction)
        calls.append(1)
        if len(calls) == 300:
            raise KeyboardInterrupt

    monkeypatch.setattr(writers.CsvWriter, "write", write_then_stop)
    code, _, err = cli(capsys, "predict", trained_run, big_folder, "--out", tmp_path / "p.csv")
    assert code == 130
    assert not (tmp_path / "p.csv").exists()
    assert len((tmp_path / "p.csv.partial").read_text().splitlines()) == 301  # header and the 300 made
    assert f"the predictions made so far are in {tmp_path / 'p.csv.partial'}" in err


def test_an_out_file_that_cannot_be_written_is_one_line(trained_run, big_folder, tmp_path, capsys):
    code, out, err = cli(capsys, "predict", trained_run, big_folder, "--out", tmp_path / "no" / "such" / "p.csv")
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        f"imgclf: error: {tmp_path / 'no' / 'such' / 'p.csv'}: cannot write it (its folder does not exist); "
        "create the folder or choose another place (--out)"
    ]


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


def test_predictions_save_as_the_command_writes_them(trained_run, big_folder, tmp_path, capsys):
    """A notebook's predictions save to the same CSV and JSON as `predict --out` writes."""
    predictions = imgclf.predict(trained_run, big_folder, top_k=2)
    predictions.save(tmp_path / "notebook.csv")
    predictions.save(tmp_path / "notebook.json")
    code, _, _ = cli(capsys, "predict", trained_run, big_folder, "--top-k", "2", "--out", tmp_path / "command.csv")
    assert code == 0
    assert (tmp_path / "notebook.csv").read_text() == (tmp_path / "command.csv").read_text()
    rows = json.loads((tmp_path / "notebook.json").read_text())
    assert [r["label"] for r in rows] == [p.label for p in predictions] and len(rows[0]["top_k"]) == 2

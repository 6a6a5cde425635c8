"""Export: every registered model leaves imgclf as ONNX and TorchScript and computes what PyTorch computes;
the ONNX file runs with no PyTorch at all from its JSON; a mismatch fails and leaves nothing behind."""

from __future__ import annotations

import dataclasses
import importlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import imgclf
from conftest import (
    DEFAULT_MODEL_ONLY_IN_CI,
    SAME_RUNTIME_AS_ANOTHER,
    format_installed,
    formats_for_the_shared_runs,
    slow,
)
from imgclf.cli import main
from imgclf.errors import CheckpointError, ExportError
from imgclf.export import FORMATS, export_classifier, get_format
from imgclf.models import create_model, list_models
from imgclf.predict import Classifier, load
from imgclf.rundir import InferenceSpec

CLASSES = ["ant", "bee", "cat", "dog", "eel"]


def random_classifier(name: str, channels: int = 3, size: int = 32) -> Classifier:
    torch.manual_seed(0)
    network = create_model(name, channels, len(CLASSES), size)
    spec = InferenceSpec(name, {}, CLASSES, size, channels, [0.5] * channels, [0.25] * channels)
    return Classifier(spec, network, torch.device("cpu"))


LITE0S_KIN = {"lite1", "lite2"}  # lite0's architecture, wider and deeper (18-20 s an ONNX export): CI exports lite0


def every_model_and_format() -> list:
    return [
        pytest.param(
            spec.name,
            f.name,
            marks=[
                *format_installed(f.name),
                *(
                    [slow]
                    if (f.name in DEFAULT_MODEL_ONLY_IN_CI and spec.name != "cnn") or spec.name in LITE0S_KIN
                    else []
                ),
            ],
        )
        for f in FORMATS
        if not f.quantized  # they need a run's data: tested on a run below
        for spec in list_models()
    ]


# the format table and the model registry: a new format or model is tested here
@pytest.mark.parametrize(("name", "fmt"), every_model_and_format())
def test_every_registered_model_exports_and_matches_pytorch(name, fmt, tmp_path):
    classifier = random_classifier(name)
    row = get_format(fmt)
    result = export_classifier(classifier, fmt, tmp_path)
    assert result.path.name == row.file and result.path.exists()
    meta = json.loads(result.metadata.read_text())
    assert meta["classes"] == CLASSES and meta["format"] == fmt
    assert meta["input"]["shape"] == [row.batch or "batch", 3, 32, 32]
    if not row.runs_here:  # CoreML on Linux: converted and its spec read back, not run; the summary says so
        assert result.max_difference is None and "not run against PyTorch here" in result.summary()
        with pytest.raises(CheckpointError, match="run on Apple's systems only"):
            row.backend(result.path)
        return
    assert result.max_difference <= row.tolerance
    # checked again here, independently of the exporter's own check, at a batch size it never saw
    images = torch.randint(0, 256, (7, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    exported = row.backend(result.path)(images)
    assert (exported - classifier.predict_proba(images)).abs().max() <= row.tolerance
    assert meta["input"]["dtype"] == "uint8" and meta["max_difference"] == result.max_difference


def test_an_export_that_computes_something_else_fails_and_leaves_nothing(tmp_path, monkeypatch):
    classifier = random_classifier("cnn2")
    row = get_format("torchscript")

    def drifted(model, example, path, **converting):  # an exporter bug: the weights move a little on the way out
        last_bias = list(model.network.parameters())[-1]
        with torch.no_grad():
            last_bias[0] += 0.5  # one class only: a shift of every logit would not change a probability
        row.exporter(model, example, path, **converting)
        with torch.no_grad():
            last_bias[0] -= 0.5

    drifting = tuple(dataclasses.replace(f, exporter=drifted) if f is row else f for f in FORMATS)
    monkeypatch.setattr(importlib.import_module("imgclf.export"), "FORMATS", drifting)  # the module, not the API
    with pytest.raises(ExportError, match=r"differ from PyTorch's by up to .* over the limit of 1e-04"):
        export_classifier(classifier, "torchscript", tmp_path)
    assert list(tmp_path.iterdir()) == []


def assert_model_card(card: Path, run: Path) -> None:
    """The card beside an export says what the run measured, and what it did not, from the run itself."""
    metrics = json.loads((run / "metrics.json").read_text())
    text = card.read_text()
    for heading in ("Input and output", "Test metrics", "Calibration", "Data health", "Images of none of the classes"):
        assert f"## {heading}" in text, heading
    assert all(f"`{name}`" in text for name in metrics["data"]["classes"])
    assert f"{metrics['data']['test']:,} images never used for training" in text
    assert "95% interval" in text and "Wilson" in text
    assert (
        "Not checked: `imgclf doctor" in text and "Not measured: the model gives every image one of its classes" in text
    )
    assert "none: trained from scratch" in text  # the shared run is a cnn: no pretrained weights, no licence to carry
    assert "| `model.onnx` | onnx |" in text


def test_a_cards_interval_is_wilsons_and_a_pretrained_run_names_its_weights_licence():
    from imgclf.modelcard import weights_licence, wilson_interval

    low, high = wilson_interval(1.0, 18)  # 18 of 18 right: not "1.000 +- 0"
    assert high == 1.0 and low == pytest.approx(0.8241, abs=1e-4)
    low, high = wilson_interval(0.9, 100)
    assert (low, high) == (pytest.approx(0.8256, abs=1e-4), pytest.approx(0.9448, abs=1e-4))
    assert "Apache-2.0" in weights_licence("lite0", {"pretrained": True})
    assert "BSD-3-Clause" in weights_licence("resnet18", {"pretrained": True})
    assert "your weights file" in weights_licence("resnet18", {"pretrained": True, "weights": "w.pt"})


@pytest.mark.parametrize("fmt", formats_for_the_shared_runs(quantized=True))
def test_a_quantized_export_is_calibrated_judged_on_the_test_split_and_refused_past_its_limit(
    fmt, trained_run, tmp_path, capsys, monkeypatch
):
    row = get_format(fmt)
    assert main(["export", str(trained_run), "--format", fmt, "--out", str(tmp_path / "q")]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert f"on the {metrics['data']['test']:,} test images: the same answer for" in out
    meta = json.loads((tmp_path / "q" / row.file).with_name(row.file + ".json").read_text())
    quantized = meta["quantization"]
    data = metrics["data"]  # calibrated on the validation split and training images, never on the test split
    assert quantized["images"] == data["test"] and quantized["calibration_images"] == min(
        data["val"] + data["train"], 500
    )
    assert (
        quantized["agreement"] >= 0.9 and quantized["accuracy_pytorch"] - quantized["accuracy"] <= row.max_accuracy_drop
    )
    assert quantized["accuracy_pytorch"] == pytest.approx(metrics["test"]["accuracy"], abs=1e-6)  # the run's own figure
    assert "same answer on" in (tmp_path / "q" / "model_card.md").read_text()
    if fmt != "onnx-int8":
        return  # the refusal below is the table's rule, the same for every quantized format: tested once
    # a model it could not keep within the limit: refused, nothing written; --force writes it with a warning
    strict = tuple(dataclasses.replace(f, max_accuracy_drop=-1.0) if f is row else f for f in FORMATS)
    monkeypatch.setattr(importlib.import_module("imgclf.export"), "FORMATS", strict)
    assert main(["export", str(trained_run), "--format", fmt, "--out", str(tmp_path / "strict")]) == 2
    err = capsys.readouterr().err
    assert "points of test accuracy" in err and "nothing was written (--force writes it anyway)" in err
    assert not (tmp_path / "strict" / row.file).exists()
    # --force writes it, saying so (the judgement alone: another export would check nothing new)
    from imgclf.export import QuantizedCheck, _judge

    said: list[str] = []
    _judge(QuantizedCheck(100, 0.9, 0.5, 0.6, 0.5, 0.6, 10), row, tmp_path / "m", True, said.append)
    assert said and "loses 10.0 points" in said[0] and "written because of `force`" in said[0]


def test_export_command_checks_the_runs_test_images_and_predict_can_run_onnx(trained_run, tmp_path, capsys):
    assert main(["export", str(trained_run), "--format", "onnx", "--out", str(tmp_path / "x")]) == 0
    out = capsys.readouterr().out
    assert "largest probability difference" in out and "onnx vs PyTorch on" in out
    tested = int(out.split("PyTorch on ")[1].split(" test")[0])
    assert tested > 0  # the run's kept test images, not only random ones
    assert (tmp_path / "x" / "model.onnx").is_file() and (tmp_path / "x" / "model.onnx.json").is_file()
    assert_model_card(tmp_path / "x" / "model_card.md", trained_run)

    images = sorted((trained_run.parent / "stripes").rglob("*.png"))[:12]
    torch_preds = imgclf.predict(trained_run, images, top_k=3)
    onnx_preds = imgclf.predict(trained_run, images, top_k=3, backend="onnx")  # exports into RUN/export first
    assert (trained_run / "export" / "model.onnx").is_file()
    assert [p.label for p in onnx_preds] == [p.label for p in torch_preds]
    assert (
        max(abs(a.probability - b.probability) for a, b in zip(onnx_preds, torch_preds)) <= get_format("onnx").tolerance
    )


@pytest.mark.parametrize("fmt", formats_for_the_shared_runs(slow_too=SAME_RUNTIME_AS_ANOTHER))
def test_a_damaged_exported_model_is_refused_in_one_line(trained_run, tmp_path, capsys, fmt):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("export"))
    image = str(next((trained_run.parent / "stripes").rglob("*.png")))
    assert main(["predict", str(run), image, "--backend", fmt]) == 0  # exports, then predicts
    model_file = run / "export" / get_format(fmt).file
    damaged = max(model_file.rglob("*"), key=lambda f: f.stat().st_size) if model_file.is_dir() else model_file
    damaged.write_bytes(damaged.read_bytes()[:200])  # cut short; its .json still says it is current
    capsys.readouterr()
    assert main(["predict", str(run), image, "--backend", fmt]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(model_file) in err and "export it again" in err, err


STANDALONE = textwrap.dedent(
    """
    import sys
    sys.modules["torch"] = None  # prove it: no PyTorch, no imgclf
    import json
    import numpy as np
    import onnxruntime as ort
    from PIL import Image

    model_file, image_file = sys.argv[1:]
    meta = json.load(open(model_file + ".json"))
    _, channels, size, _ = meta["input"]["shape"]
    image = Image.open(image_file).convert("RGB" if channels == 3 else "L")
    scale = size / min(image.size)  # shorter side to size, then the centre square
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
    left, top = (image.width - size) // 2, (image.height - size) // 2
    pixels = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)
    batch = pixels.reshape(size, size, channels).transpose(2, 0, 1)[None]
    session = ort.InferenceSession(model_file, providers=["CPUExecutionProvider"])
    probs = session.run(None, {"images": batch})[0][0]
    print(json.dumps({"label": meta["classes"][int(probs.argmax())], "probability": float(probs.max())}))
    """
)


def test_a_converter_that_fails_is_one_line_and_writes_nothing(trained_run, tmp_path, capsys, monkeypatch):
    import os

    def failing(model, example, path, **converting):  # as converters fail: a partial file, C++ notes, an error
        path.write_bytes(b"half a model")
        os.write(2, b"[converter.cpp:1] Internal Error: lowering failed\n")
        raise RuntimeError("Lowering not found: aten.adaptive_max_pool2d.default\n  at line 3")

    row = get_format("torchscript")
    failing_table = tuple(dataclasses.replace(f, exporter=failing) if f is row else f for f in FORMATS)
    monkeypatch.setattr(importlib.import_module("imgclf.export"), "FORMATS", failing_table)
    assert main(["export", str(trained_run), "--format", "torchscript", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "torchscript could not convert cnn (RuntimeError: Lowering not found" in err, err
    assert "export to onnx instead" in err and not any((tmp_path / "x").rglob("*.pt*"))


@slow  # ExecuTorch's conversion of the augmented 16 px cnn takes ~40 s
def test_a_format_that_cannot_run_a_model_is_one_line_and_writes_nothing(trained_run, tmp_path, capsys):
    pytest.importorskip("executorch", reason="needs imgclf[executorch]")
    # ExecuTorch converts the shared run's 16 px cnn, and its XNNPACK backend then cannot plan its shapes
    assert main(["export", str(trained_run), "--format", "executorch", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "executorch could not run cnn" in err and "export to onnx instead" in err, err
    assert not any(p.name.endswith((".pte", ".json")) for p in (tmp_path / "x").rglob("*"))


@pytest.mark.skipif(
    sys.platform == "darwin", reason="Core ML runs there: the exported model is checked against PyTorch"
)
def test_coreml_is_exported_and_checked_here_and_says_where_it_runs(trained_run, tmp_path, capsys):
    pytest.importorskip("coremltools", reason="needs imgclf[coreml]")
    import shutil

    run = shutil.copytree(trained_run, tmp_path / "run", ignore=shutil.ignore_patterns("export", "report.html"))
    assert main(["export", str(run), "--format", "coreml"]) == 0
    assert "coreml: the converted spec checked; not run against PyTorch here" in capsys.readouterr().out
    package = run / "export" / "model.mlpackage"
    assert (package / "Manifest.json").is_file()
    assert "| `model.mlpackage` | coreml |" in (run / "export" / "model_card.md").read_text()
    image = str(next((trained_run.parent / "stripes").rglob("*.png")))
    assert main(["predict", str(run), image, "--backend", "coreml"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "run on Apple's systems only" in err and "--backend onnx" in err, err
    # a spec that differs from what was exported is refused (here: read back expecting other classes)
    from imgclf.exporters.coreml import check_spec

    with pytest.raises(ExportError, match="the classes in its metadata differ"):
        check_spec(package, 3, 16, ["other", "classes"], single=True)


def test_the_onnx_file_runs_without_pytorch_from_its_json(trained_run, tmp_path):
    result = imgclf.export(trained_run, out=tmp_path, log=lambda _: None)
    image = tmp_path / "stripe.png"  # at the model's size, so that no resize rule can differ
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(image)
    done = subprocess.run(
        [sys.executable, "-c", STANDALONE, str(result.path), str(image)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    (expected,) = load(trained_run).predict([image])
    assert answer["label"] == expected.label
    assert abs(answer["probability"] - expected.probability) <= get_format("onnx").tolerance


def write_code_running_checkpoint(path: Path, marker: Path) -> None:
    """A checkpoint that, unpickled by a plain torch.load, would run a shell command creating ``marker``."""

    class Payload:
        def __reduce__(self):
            return (__import__("os").system, (f"touch {marker}",))

    torch.save({"format": "imgclf-checkpoint", "payload": Payload()}, path)


@pytest.mark.parametrize(
    "command", [["export"], ["export", "--format", "torchscript"], ["serve", "--port", "1"], ["predict", "IMAGE"]]
)
def test_a_checkpoint_that_runs_code_is_refused_by_every_loader(command, tmp_path, capsys):
    evil, marker = tmp_path / "evil.pt", tmp_path / "pwned"
    write_code_running_checkpoint(evil, marker)
    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(image)
    argv = [command[0], str(evil), *[str(image) if a == "IMAGE" else a for a in command[1:]]]
    assert main(argv) == 2
    assert "not a readable imgclf checkpoint (UnpicklingError)" in capsys.readouterr().err
    assert not marker.exists()


def test_benchmark_tables_every_format_beside_pytorch_and_the_report_shows_it(
    trained_run, tmp_path, capsys, monkeypatch
):
    import shutil

    run = shutil.copytree(trained_run, tmp_path / "run", ignore=shutil.ignore_patterns("export", "report.html"))
    monkeypatch.setattr("imgclf.shipping.TIMED_SECONDS", 0.05)  # speeds are bench/'s business; the table is this test's
    # every format of the table by default (bench.formats runs them all); here the quick one and a format that
    # cannot run, which is a row saying why
    missing = dataclasses.replace(get_format("onnx"), runtime="no_runtime_by_this_name")
    monkeypatch.setattr(importlib.import_module("imgclf.shipping"), "FORMATS", (missing, get_format("torchscript")))
    assert main(["benchmark", str(run)]) == 0
    out = capsys.readouterr().out
    measured = json.loads((run / "benchmark" / "benchmark.json").read_text())
    rows = {r["format"]: r for r in measured["rows"]}
    assert list(rows) == ["pytorch", "onnx", "torchscript"]
    assert (
        not rows["onnx"]["images_per_second"] and "needs no_runtime_by_this_name: pip install" in rows["onnx"]["note"]
    )
    assert not (run / "export" / "model.onnx").exists()  # nothing exported for a runtime that is not there
    accuracy = json.loads((run / "metrics.json").read_text())["test"]["accuracy"]
    assert rows["pytorch"]["accuracy"] == pytest.approx(accuracy, abs=1e-6) and rows["pytorch"]["agreement"] == 1.0
    for name in ["torchscript"]:
        row = rows[name]
        assert row["images_per_second"]["1"] > 0 and row["images_per_second"]["32"] > 0 and row["file_mb"] > 0
        if not get_format(name).quantized:
            assert row["agreement"] == 1.0 and row["accuracy"] == pytest.approx(accuracy, abs=1e-6)
        assert name in out
    assert (run / "benchmark" / "benchmark.png").stat().st_size > 5_000
    page = imgclf.report(run, log=lambda _: None).read_text()
    assert ">Shipping</h2>" in page and "torchscript" in page


def test_the_ops_rewritten_for_export_runtimes_compute_the_same_numbers():
    import torch.nn.functional as F

    from imgclf.models.cnn import GlobalMaxPool
    from imgclf.predict import _reflect_pad_1

    x = torch.randn(3, 4, 7, 5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(_reflect_pad_1(x), F.pad(x, (1, 1, 1, 1), mode="reflect"))  # the TTA's shifted views
    assert torch.equal(GlobalMaxPool()(x), F.adaptive_max_pool2d(x, 1))  # the cnn's head

"""The tasks (one label per image, several) through everything after training, and their losses, data and
decisions. Tests taking ``task_run`` run once per registered task."""

from __future__ import annotations

import csv
import json

import pytest
import torch

import imgclf
from conftest import MULTI_LABELS, SAME_RUNTIME_AS_ANOTHER, formats_for_the_shared_runs, write_multilabel_csv
from imgclf.cli import main
from imgclf.config import DataConfig
from imgclf.data import load_data
from imgclf.data.splits import iterative_split
from imgclf.errors import DataError
from imgclf.export import get_format
from imgclf.metrics import best_thresholds, multilabel_metrics
from imgclf.rundir import RunDir, SplitPredictions, read_checkpoint
from imgclf.tasks import MULTI_LABEL, SINGLE_LABEL, FocalLoss, get_task, task_names

# ---------------------------------------------------------------- every task, end to end

# what each registered task's outputs are: a new task adds its row here (and its run in conftest.py)
EXPECTED = {
    "single_label": {"activation": "softmax", "thresholds": False, "columns": ["file", "label_1"], "labels": False},
    "multi_label": {"activation": "sigmoid", "thresholds": True, "columns": ["file", "labels"], "labels": True},
}


def test_every_registered_task_has_its_expectations_here():
    assert set(EXPECTED) == set(task_names())


def test_each_task_trains_a_run_that_says_its_task(task_run):
    checkpoint = read_checkpoint(task_run)
    metrics = RunDir(task_run).read_metrics()
    assert checkpoint.spec.task == metrics.task in task_names()
    if EXPECTED[metrics.task]["thresholds"]:
        assert checkpoint.spec.thresholds is not None and len(checkpoint.spec.thresholds) == len(MULTI_LABELS)
        assert all(0 < t < 1 for t in checkpoint.spec.thresholds)
        for key in ("macro_f1", "micro_f1", "mAP", "subset_accuracy", "hamming_loss"):
            assert 0 <= metrics["test"][key] <= 1
        assert "not applied" in metrics["calibration"]["note"]
        assert metrics["test"]["mAP"] > 0.6  # the marks are easy: the model learned them (chance: about 0.45)
    else:
        assert checkpoint.spec.thresholds is None and metrics["test"]["accuracy"] > 0.5


def test_evaluate_reproduces_each_tasks_test_metrics(task_run):
    trained = RunDir(task_run).read_metrics()["test"]
    again = imgclf.evaluate(task_run, verbose=False)
    for key in ("accuracy", "macro_f1", "mAP", "hamming_loss"):
        if key in trained:
            assert again[key] == pytest.approx(trained[key], abs=1e-6)


def test_predict_decides_as_each_task_says(task_run, tmp_path, capsys):
    classifier = imgclf.load(task_run, device="cpu")
    predictions = RunDir(task_run).read_predictions()
    batch = predictions.example_images[:6]
    probs = classifier.predict_proba(batch)
    answers = classifier.predict(list(batch))
    for p, row in zip(answers, probs):
        if EXPECTED[classifier.spec.task]["labels"]:
            over = [classifier.classes[c] for c in range(len(row)) if row[c] >= classifier.thresholds[c]]
            assert sorted(name for name, _ in p.labels) == sorted(over)
            assert p.label == ";".join(name for name, _ in p.labels)
            assert ((row >= 0) & (row <= 1)).all()  # a sigmoid per class
        else:
            assert p.labels is None and p.label == classifier.classes[int(row.argmax())]
            assert float(row.sum()) == pytest.approx(1.0, abs=1e-5)


def test_predict_writes_each_tasks_decision_column(task_run, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    from PIL import Image

    for i, image in enumerate(RunDir(task_run).read_predictions().example_images[:3]):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    out = tmp_path / "p.csv"
    assert main(["predict", str(task_run), str(folder), "--out", str(out)]) == 0
    header = next(csv.reader(out.open()))
    expected = EXPECTED[read_checkpoint(task_run).spec.task]
    multi = expected["labels"]
    assert header[:2] == expected["columns"]
    json_out = tmp_path / "p.json"
    assert main(["predict", str(task_run), str(folder), "--out", str(json_out)]) == 0
    rows = json.loads(json_out.read_text())
    assert len(rows) == 3 and all(("labels" in r) == multi for r in rows)


@pytest.mark.parametrize("fmt", formats_for_the_shared_runs(slow_too=SAME_RUNTIME_AS_ANOTHER))
def test_export_keeps_each_tasks_outputs_and_says_how_to_decide(task_run, fmt, tmp_path):
    classifier = imgclf.load(task_run, device="cpu")
    exported_to = imgclf.export(task_run, format=fmt, out=str(tmp_path / fmt), log=lambda _: None)
    path = exported_to.path
    meta = json.loads(exported_to.metadata.read_text())
    expected = EXPECTED[classifier.spec.task]
    assert meta["task"] == classifier.spec.task
    assert meta["output"]["activation"] == expected["activation"]
    assert meta["thresholds"] == (classifier.thresholds if expected["thresholds"] else None)
    images = RunDir(task_run).read_predictions().example_images[:8]
    if get_format(fmt).quantized:  # judged on the test split by the same answers, as the task decides them
        quantized = meta["quantization"]  # written without --force: within the table's limit
        assert quantized["accuracy_pytorch"] - quantized["accuracy"] <= get_format(fmt).max_accuracy_drop, quantized
        assert 0.6 <= quantized["agreement"] <= 1, quantized  # a 16 px model on 24 test images: far from chance
        # and by the task's threshold-free measure where it has one: mAP for several labels per image
        assert (meta["quantization"]["mean_ap"] is not None) == (classifier.spec.task == "multi_label")
        return
    if fmt not in ("onnx", "torchscript"):  # by its runtime, as the export's own check ran it
        exported = get_format(fmt).backend(path)(images)
    elif fmt == "onnx":  # read back by ONNX Runtime, as a program without imgclf would
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        exported = torch.from_numpy(session.run(None, {"images": images.numpy()})[0])
    else:
        exported = torch.jit.load(str(path))(images)
    assert torch.allclose(exported, classifier.predict_proba(images), atol=1e-4)


def test_serve_answers_each_tasks_decision(task_run):
    from fastapi.testclient import TestClient
    from PIL import Image

    from imgclf.serve.app import create_app

    classifier = imgclf.load(task_run, device="cpu")
    image = RunDir(task_run).read_predictions().example_images[0]
    import io

    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
    with TestClient(create_app(classifier)) as client:
        info = client.get("/model").json()
        assert info["task"] == classifier.spec.task
        answer = client.post("/predict", files={"files": ("a.png", buffer.getvalue(), "image/png")}).json()
        (prediction,) = answer["predictions"]
        expected = classifier.predict([image])[0]
        assert prediction["label"] == expected.label
        if EXPECTED[classifier.spec.task]["labels"]:
            assert [p["label"] for p in prediction["labels"]] == [name for name, _ in expected.labels]
            everything = client.post(
                "/predict", params={"threshold": 0.001}, files={"files": ("a.png", buffer.getvalue(), "image/png")}
            ).json()["predictions"][0]
            assert len(everything["labels"]) == len(classifier.classes)  # a request's threshold overrides
            explained = client.post("/explain", files={"file": ("a.png", buffer.getvalue(), "image/png")}).json()
            assert explained["label"] == expected.label and explained["overlay"].startswith("data:image/png")
        else:
            assert prediction["labels"] is None


def test_the_report_shows_each_tasks_metrics(task_run):
    page = imgclf.report(task_run, log=lambda _: None).read_text()
    assert "is missing" not in page  # every figure the page names was drawn for this task
    if EXPECTED[read_checkpoint(task_run).spec.task]["thresholds"]:
        assert "subset accuracy" in page and "mAP" in page and "Hamming" in page and "not applied" in page
        assert "confusion matrix" not in page
    else:
        assert "confusion matrix" in page


# ---------------------------------------------------------------- every task's hooks, on made-up outputs


def made_up(task_name: str, n: int = 40, classes: int = 3, seed: int = 0):
    """Labels of ``task_name``'s kind and probabilities that mostly agree with them (a quarter wrong)."""
    generator = torch.Generator().manual_seed(seed)
    task = get_task(task_name)
    if task.activation == "softmax":
        labels = torch.arange(n) % classes
        logits = torch.randn(n, classes, generator=generator) + 3 * torch.nn.functional.one_hot(labels, classes)
    else:
        labels = (torch.rand(n, classes, generator=generator) < 0.4).float()
        logits = torch.randn(n, classes, generator=generator) + 3 * (2 * labels - 1)
    wrong = torch.arange(n) % 4 == 0
    logits[wrong] = -logits[wrong]
    return task, labels, task.probabilities(logits)


@pytest.mark.parametrize("name", task_names())
def test_every_task_decides_measures_and_writes_through_its_own_hooks(name, tmp_path):
    task, labels, probs = made_up(name)
    classes = ["a", "b", "c"]
    fitted = task.fit_on_validation(probs, labels, classes)
    thresholds = fitted.spec.get("thresholds", task.default_thresholds(len(classes)))
    decided = task.decide(probs, thresholds)
    assert (
        decided.shape[0] == len(labels) and task.wrong(decided, labels).any() and not task.wrong(decided, labels).all()
    )
    metrics = task.metrics(probs, labels, classes, thresholds)
    assert 0 < metrics["accuracy"] < 1 and set(metrics["per_class"]) == set(classes)
    assert task.headline(metrics).startswith(task.accuracy_name)
    table = task.per_class_table(metrics).to_text()
    assert all(c in table for c in classes) and f"{metrics['macro_f1']:.4f}" in table
    rows = dict(task.summary_rows(metrics))
    assert any(task.accuracy_name in key for key in rows)
    # answers, and the prediction files' columns: as many cells as the header names
    answers = task.answers([f"{i}.png" for i in range(len(probs))], probs, classes, 2, thresholds)
    for min_confidence in (0.0, 0.9):
        header = task.decision_columns(min_confidence)
        assert all(len(task.decision_cells(a, min_confidence)) == len(header) for a in answers)
    # the saved test predictions give back the same decisions, and the errors analysis counts the same mistakes
    predictions = SplitPredictions.from_probs(
        probs, labels, torch.zeros(len(probs), 1, 4, 4, dtype=torch.uint8), thresholds=thresholds, task=name
    )
    saved = tmp_path / "p.pt"
    predictions.save(saved)
    again = SplitPredictions.load(saved)
    assert again.task == name and torch.equal(again.wrong, task.wrong(decided, labels))
    analysis = task.analyse_errors(again, classes)
    assert len(analysis.mistakes) == int(task.wrong(decided, labels).sum()) and analysis.task == name
    assert analysis.class_accuracy_table().to_text() and json.dumps(analysis.to_dict(5))
    meta = task.export_metadata(thresholds)
    assert meta["activation"] == task.activation and set(meta) == {"activation", "decision", "thresholds"}
    # label sets and held-out splits of this task's labels
    assert len(task.label_names(labels, classes)) == len(labels)
    as_classes, names = task.as_one_class(labels, classes)
    assert as_classes.dim() == 1 and int(as_classes.max()) < len(names)
    kept, held = task.hold_out(labels, 0.25, seed=1)
    assert sorted(torch.cat([kept, held]).tolist()) == list(range(len(labels))) and 0 < len(held) < len(labels)


@pytest.mark.parametrize("name", task_names())
def test_every_task_refuses_what_it_has_no_meaning_for_in_one_line(name):
    from imgclf.errors import ConfigError

    task = get_task(name)
    for feature, why in task.unsupported.items():
        assert task.refusal(feature) == why and "\n" not in why
        with pytest.raises(ConfigError):
            task.check(feature)
    task.check("a feature no task refuses")  # no error


def test_a_new_task_is_one_registered_class():
    """A third task (grades that are ordered, say) is a class and its losses; the registry lists it, and what
    asks the registry finds it. (Removed again: the other tests loop over the registered tasks.)"""
    from imgclf.tasks import SingleLabel, register_loss, register_task
    from imgclf.tasks.base import _LOSSES, _TASKS

    @register_task
    class Graded(SingleLabel):
        name = "graded"

    @register_loss("graded", "ce")
    def graded_loss(settings):
        return torch.nn.CrossEntropyLoss(label_smoothing=settings.label_smoothing)

    try:
        assert "graded" in task_names() and get_task("graded").losses == ("ce",)
        logits, targets = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
        assert get_task("graded").criterion(0.0, None)(logits, targets).item() > 0
    finally:
        _TASKS._entries.pop("graded")
        _LOSSES._entries.pop("graded:ce")


# ---------------------------------------------------------------- multi-label data, decisions and outputs


def test_both_csv_layouts_read_the_same_labels_and_an_empty_set_is_allowed(tmp_path):
    listed = write_multilabel_csv(tmp_path / "a", n=40, layout="labels")
    columns = write_multilabel_csv(tmp_path / "b", n=40, layout="columns")
    a, b = (load_data(DataConfig(data=str(p), cache=False)) for p in (listed, columns))
    assert a.classes == sorted(MULTI_LABELS) and set(b.classes) == set(MULTI_LABELS)
    order = [b.classes.index(c) for c in a.classes]
    assert torch.equal(a.train.labels, b.train.labels[:, order]) and a.train.labels.dim() == 2
    assert (torch.cat([a.train.labels, a.val.labels, a.test.labels]).sum(1) == 0).any()  # images with no label
    assert a.task is MULTI_LABEL


def test_a_class_column_that_is_not_0_or_1_names_the_row(tmp_path):
    path = write_multilabel_csv(tmp_path / "c", n=6, layout="columns")
    text = path.read_text().splitlines()
    text[3] = text[3].rsplit(",", 1)[0] + ",yes"
    path.write_text("\n".join(text) + "\n")
    with pytest.raises(DataError, match=r"row 4 holds 'yes'.*0 or 1"):
        load_data(DataConfig(data=str(path), cache=False))


def test_iterative_split_holds_out_each_labels_share_and_is_seeded():
    generator = torch.Generator().manual_seed(0)
    labels = (torch.rand(600, 5, generator=generator) < torch.tensor([0.5, 0.2, 0.05, 0.02, 0.3])).float()
    kept, held = iterative_split(labels, 0.2, seed=3)
    assert sorted(torch.cat([kept, held]).tolist()) == list(range(600))
    share = labels[held].sum(0) / labels.sum(0)
    assert ((share - 0.2).abs() <= 0.05).all(), share  # every label, the rare ones too, near its share
    again = iterative_split(labels, 0.2, seed=3)
    other = iterative_split(labels, 0.2, seed=4)
    assert torch.equal(held, again[1]) and not torch.equal(held, other[1])


def test_thresholds_are_chosen_per_class_and_a_class_with_no_positive_keeps_the_default():
    probs = torch.tensor([[0.30, 0.9], [0.25, 0.8], [0.10, 0.7], [0.05, 0.6]])
    targets = torch.tensor([[1, 0], [1, 0], [0, 0], [0, 0]]).float()
    thresholds, how = best_thresholds(probs, targets)
    assert 0.1 < thresholds[0] <= 0.25  # between the positives' 0.25 and the negatives' 0.10
    assert thresholds[1] == 0.5 and "no positive" in how[1]
    metrics = multilabel_metrics(probs, targets, ["a", "b"], thresholds)
    assert metrics["per_class"]["a"]["f1"] == 1.0 and metrics["per_class"]["b"]["average_precision"] is None


def test_errors_list_the_missed_and_the_spurious_labels():
    from imgclf.explain import analyse_errors

    probs = torch.tensor([[0.9, 0.1, 0.8], [0.2, 0.9, 0.1], [0.9, 0.1, 0.1]])
    labels = torch.tensor([[1, 0, 0], [0, 1, 1], [1, 0, 0]]).float()
    predictions = SplitPredictions.from_probs(probs, labels, torch.zeros(3, 1, 4, 4, dtype=torch.uint8),
                                              thresholds=[0.5, 0.5, 0.5], task="multi_label")  # fmt: skip
    analysis = analyse_errors(predictions, ["a", "b", "c"])
    assert analysis.task == "multi_label" and len(analysis.mistakes) == 2
    by_index = {m.index: m for m in analysis.mistakes}
    assert by_index[0].spurious == ["c"] and by_index[0].missed == []
    assert by_index[1].missed == ["c"] and by_index[1].spurious == []
    assert ("c", "missed", 1) in analysis.confused_pairs and ("c", "spurious", 1) in analysis.confused_pairs


def test_grad_cam_explains_each_predicted_label(multilabel_run):
    from imgclf.explain import explain_batch

    classifier = imgclf.load(multilabel_run, device="cpu")
    images = RunDir(multilabel_run).read_predictions().example_images[:4]
    explanations = explain_batch(classifier, images, "gradcam")

    def over_thresholds(batch: torch.Tensor) -> list[list[tuple[str, float]]]:
        answers = classifier.top_k(["x"] * len(batch), classifier.predict_proba(batch), 1)
        return [a.labels or [] for a in answers]

    predicted = [max(1, len(labels)) for labels in over_thresholds(images)]
    assert len(explanations) == sum(predicted)
    for e in explanations:
        labels = over_thresholds(images[e.image : e.image + 1])[0]
        assert not labels or classifier.classes[e.target] in [name for name, _ in labels]


def test_a_threshold_lists_every_label_over_it_and_is_refused_for_one_label_runs(multilabel_run, trained_run, capsys):
    image = RunDir(multilabel_run).read_predictions().example_images[0]
    everything = imgclf.predict(multilabel_run, [image], threshold=0.0001)[0]
    assert len(everything.labels or []) == len(MULTI_LABELS)
    assert imgclf.predict(multilabel_run, [image], threshold=0.9999)[0].labels == []
    assert main(["predict", str(trained_run), "x.png", "--threshold", "0.3"]) == 2
    assert "threshold is for runs with several labels per image" in capsys.readouterr().err


def test_a_loss_for_the_other_task_is_one_line(tmp_path, capsys):
    data = write_multilabel_csv(tmp_path / "m", n=30)
    code = main(["train", "--data", str(data), "--loss", "ce", "--epochs", "1", "--out", str(tmp_path / "r")])
    assert code == 2 and "loss ce: not for multi-label data; use bce or focal" in capsys.readouterr().err


def test_the_doctor_checks_multilabel_data_and_says_its_label_check_is_single_label_only(tmp_path):
    data = write_multilabel_csv(tmp_path / "d", n=40)
    result = imgclf.doctor(str(data), out=str(tmp_path / "out"), verbose=False, near=False)
    assert any("single-label only" in note for note in result.findings["notes"])
    assert result.findings["label_issues"] == [] or result.findings.get("label_issues") is None


# ---------------------------------------------------------------- losses


def test_focal_with_gamma_0_is_cross_entropy_with_its_weights_and_smoothing():
    logits, targets = torch.randn(16, 4), torch.randint(0, 4, (16,))
    weight = torch.tensor([0.5, 1.0, 2.0, 0.5])
    focal = FocalLoss(0.0, weight, label_smoothing=0.1)(logits, targets)
    expected = torch.nn.functional.cross_entropy(logits, targets, weight=weight, label_smoothing=0.1)
    assert focal.item() == pytest.approx(expected.item(), rel=1e-5)


def test_focal_weighs_easy_examples_less_and_takes_soft_targets():
    logits = torch.tensor([[4.0, 0.0], [0.2, 0.0]])  # an easy and a hard example of class 0
    per_example = [FocalLoss(2.0)(logits[i : i + 1], torch.tensor([0])).item() for i in range(2)]
    plain = [torch.nn.functional.cross_entropy(logits[i : i + 1], torch.tensor([0])).item() for i in range(2)]
    assert per_example[0] / plain[0] < per_example[1] / plain[1] < 1
    hard, soft = torch.tensor([0, 1]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert FocalLoss(2.0)(logits, hard).item() == pytest.approx(FocalLoss(2.0)(logits, soft).item())
    mixed = torch.tensor([[0.7, 0.3], [0.2, 0.8]])
    expected = torch.nn.functional.cross_entropy(logits, mixed, label_smoothing=0.1)
    assert FocalLoss(0.0, label_smoothing=0.1)(logits, mixed).item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("name", task_names())
def test_every_tasks_losses_train_down_on_a_batch(name):
    task = get_task(name)
    torch.manual_seed(0)
    x = torch.randn(32, 8)
    targets = torch.randint(0, 3, (32,)) if task is SINGLE_LABEL else (torch.rand(32, 3) < 0.4).float()
    for loss in task.losses:
        layer = torch.nn.Linear(8, 3)
        criterion = task.criterion(0.0, torch.tensor([1.0, 2.0, 1.0]), None, loss, 2.0)
        optimizer = torch.optim.SGD(layer.parameters(), lr=0.5)
        first = criterion(layer(x), targets).item()
        for _ in range(50):
            optimizer.zero_grad()
            criterion(layer(x), targets).backward()
            optimizer.step()
        assert criterion(layer(x), targets).item() < first


# ---------------------------------------------------------------- mixing and per-image augmentation


def test_mixup_and_cutmix_mix_labels_by_the_share_of_each_image():
    from imgclf.train.mixing import Mixer

    x = torch.zeros(4, 1, 8, 8)
    x[0] = 1.0  # image 0 white, its partner (the batch reversed: image 3) black
    y = torch.tensor([0, 1, 2, 1])
    for mixer in (Mixer(1.0, 0.0, SINGLE_LABEL, 3), Mixer(0.0, 1.0, SINGLE_LABEL, 3)):
        mixed, soft = mixer(x, y, step=7)
        assert torch.allclose(soft.sum(1), torch.ones(4))
        white_share = mixed[0].mean().item()  # the share of image 0 left in mixed image 0
        assert soft[0, 0].item() == pytest.approx(white_share, abs=1e-6)
        again, _ = mixer(x, y, step=7)
        assert torch.equal(mixed, again)  # seeded by the step: a resumed run mixes alike
    multi = (torch.rand(4, 3) < 0.5).float()
    _, mixed_multi = Mixer(1.0, 0.0, MULTI_LABEL, 3)(x, multi, step=1)
    assert ((mixed_multi >= 0) & (mixed_multi <= 1)).all()


@pytest.mark.parametrize("policy", ["randaugment", "trivialaugment"])
def test_auto_augment_draws_per_image_and_alike_however_the_batch_is_shared(policy):
    from imgclf.data.autoaugment import auto_augment

    x = torch.rand(1, 3, 16, 16).expand(64, -1, -1, -1).contiguous()  # one image, 64 times
    out = auto_augment(x, policy, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    distinct = len({tuple(o.flatten()[:40].tolist()) for o in out})
    assert distinct > 16  # the same image comes out in many ways: operations drawn per image
    half = auto_augment(x[32:], policy, torch.Generator().manual_seed(0), share=(32, 64))
    assert torch.allclose(half, out[32:], atol=1e-6)  # a process's share augments as the whole batch does


def test_version_2_checkpoints_load_as_single_label(trained_run, tmp_path):
    payload = torch.load(trained_run / "best.pt", weights_only=True)
    payload = {k: v for k, v in payload.items() if k not in ("task", "thresholds")} | {"version": 2}
    torch.save(payload, tmp_path / "v2.pt")
    checkpoint = read_checkpoint(tmp_path / "v2.pt")
    assert checkpoint.spec.task == "single_label" and checkpoint.spec.thresholds is None
    assert imgclf.load(tmp_path / "v2.pt", device="cpu").predict_proba(
        torch.zeros(1, 3, 16, 16, dtype=torch.uint8)
    ).sum().item() == pytest.approx(1.0, abs=1e-5)

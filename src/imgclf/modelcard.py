"""The model card written beside every export (``model_card.md``, as Hugging Face's and Mitchell et al. 2019's
model cards): what the model classifies, what it takes, how well it did on how many held-out images and how
sure that figure is, its calibration, what the doctor found in its data, whether "unknown" was measured, its
intended use and limits, and the licence of the weights it started from. Everything comes from the run
directory (:mod:`imgclf.rundir`) and the exports' own JSON files; nothing is claimed that was not measured,
and what was not measured says how to measure it.
"""

from __future__ import annotations

import json
import math
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import CheckpointError
from .fsutil import atomic_write_text, size_on_disk
from .rundir import DOCTOR, RunDir, unknown_operating_points
from .runtime import imgclf_version

CARD = "model_card.md"
PER_CLASS_ROWS = 30  # a card lists every class's figures up to this many classes
FEW_TEST_IMAGES = 20  # a class tested on fewer images has per-class figures a card calls uncertain


def write_model_card(run_path: str | os.PathLike, folder: Path, metadata: dict[str, Any]) -> Path:
    """Write ``folder/model_card.md`` for the run (or checkpoint) at ``run_path``; ``metadata``: the JSON an
    exporter wrote beside its model (classes, input, preprocessing, decision). Lists every export in ``folder``."""
    checkpoint = RunDir.checkpoint_path(run_path)
    run = RunDir(checkpoint.parent)
    try:
        metrics: Any = run.read_metrics()
    except CheckpointError:  # a bare checkpoint, or a run that never finished: the card says so
        metrics = None
    config = run.read_config()
    sections = [
        _title(metadata, metrics, checkpoint),
        _input(metadata),
        _test(metrics),
        _calibration(metrics, metadata),
        _data_health(run),
        _unknown(run),
        _limits(metadata, metrics),
        _licence(metadata["model"], config.get("model", {})),
        _files(folder),
    ]
    atomic_write_text(folder / CARD, "\n".join(sections), "out")
    return folder / CARD


def _title(meta: dict[str, Any], metrics: Any, checkpoint: Path) -> str:
    data = metrics.data.name if metrics is not None else "an image"
    classes = meta["classes"]
    shown = ", ".join(f"`{c}`" for c in classes[:PER_CLASS_ROWS]) + (" ..." if len(classes) > PER_CLASS_ROWS else "")
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    return (
        f"# {data} classifier: {meta['model']}, {len(classes)} classes\n\n"
        f"Exported by imgclf {imgclf_version()} on {when} from `{checkpoint}`.\n\n"
        f"Classes ({len(classes)}): {shown}.\n"
    )


def _input(meta: dict[str, Any]) -> str:
    shape = meta["input"]["shape"]
    pre = meta["preprocessing"]
    out = meta["output"]
    tta = "on (the model averages the image and its mirror)" if meta.get("test_time_augmentation") else "off"
    return (
        "## Input and output\n\n"
        f"- input `{meta['input']['name']}`: uint8 pixels, shape {shape} ({meta['input']['channels']})\n"
        f"- before the model: {pre['resize']}\n"
        f"- normalisation: {pre['normalisation']} (mean {pre['mean']}, std {pre['std']}); test-time augmentation "
        f"{tta}; temperature {meta.get('temperature', 1.0):g}\n"
        f"- output `{out['name']}`: {out['activation']} probabilities, shape {out['shape']}; {out['decision']}\n"
    )


def _test(metrics: Any) -> str:
    if metrics is None:
        return "## Test metrics\n\nNot measured: exported from a checkpoint without its run (`imgclf evaluate` measures it).\n"
    test, data = metrics.test, metrics.data
    n = int(test.get("samples") or data.test)
    accuracy = float(test["accuracy"])
    low, high = wilson_interval(accuracy, n)
    lines = [
        "## Test metrics\n",
        f"On the run's held-out test split: {n:,} images never used for training or choosing "
        f"(train {data.train:,}, validation {data.val:,}).\n",
        f"- {metrics.headline()}",
        f"- how sure: accuracy {accuracy:.4f}, 95% interval {low:.3f} to {high:.3f} (Wilson's, for {n:,} test "
        "images: where the accuracy on many more images like these would lie, 19 times in 20)",
    ]
    per_class = test.get("per_class") or {}
    if per_class and len(per_class) <= PER_CLASS_ROWS:
        lines += ["", "| class | precision | recall | F1 | test images |", "|---|---|---|---|---|"]
        for name, row in per_class.items():
            lines.append(
                f"| {name} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} | {int(row['support'])} |"
            )
        few = [name for name, row in per_class.items() if row["support"] < FEW_TEST_IMAGES]
        if few:
            lines.append(
                f"\n{len(few)} class(es) with fewer than {FEW_TEST_IMAGES} test images ({', '.join(few[:10])}): "
                "their figures are uncertain."
            )
    return "\n".join(lines) + "\n"


def wilson_interval(share: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson's score interval of a proportion measured on ``n`` items (95% for z=1.96): unlike share +- 2
    standard errors, it stays within 0..1 and does not shrink to nothing at 100% on a small test set."""
    if n <= 0:
        return 0.0, 1.0
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _calibration(metrics: Any, meta: dict[str, Any]) -> str:
    fitted = metrics.calibration if metrics is not None else None
    if not fitted:
        return "## Calibration\n\nNot measured for this model.\n"
    before, after = fitted.get("test_ece_before"), fitted.get("test_ece_after")
    ece = f" Expected calibration error on the test split: {before:.4f} before, {after:.4f} after." if after else ""
    note = f" {fitted['note'][0].upper()}{fitted['note'][1:]}." if fitted.get("note") else ""
    temperature = meta.get("temperature", fitted.get("temperature", 1.0))
    return (
        f"## Calibration\n\nTemperature {temperature:g}, fitted on the validation split and kept inside the exported "
        f"model.{ece}{note}\n"
    )


def _data_health(run: RunDir) -> str:
    path = run / DOCTOR / "doctor.json"
    if not path.is_file():
        return (
            "## Data health\n\nNot checked: `imgclf doctor DATA --run RUN` looks for duplicates, train/test leaks, odd "
            "files and likely label errors, and this card reports them.\n"
        )
    try:
        found = json.loads(path.read_text())
        issues = found.get("label_issues")
        parts = [
            f"{len(found['odd_files'])} odd file(s)",
            f"{len(found['duplicates'])} duplicate group(s), {len(found['leaks'])} across the splits (leaks)",
            "label errors not checked" if issues is None else f"{len(issues)} likely label error(s) flagged",
        ]
    except (OSError, ValueError, KeyError, TypeError):
        return f"## Data health\n\n{path} is unreadable: run `imgclf doctor DATA --run RUN` again.\n"
    return f"## Data health\n\n`imgclf doctor` on the run's data found: {'; '.join(parts)} (see `{path}`).\n"


def _unknown(run: RunDir) -> str:
    measured = run.read_unknown_result()
    if measured is None:
        return (
            "## Images of none of the classes\n\nNot measured: the model gives every image one of its classes. "
            "`imgclf evaluate RUN --negatives FOLDER` measures, on your own unrelated images, a confidence below which "
            "to answer `unknown`.\n"
        )
    at = unknown_operating_points(measured)
    accepted = ", ".join(f"{name} accepts {row['unrelated_accepted']:.1%} of them" for name, row in at.items())
    return (
        "## Images of none of the classes\n\n"
        f"Measured with `imgclf evaluate --negatives` on {measured['unrelated_images']:,} images of none of the classes "
        f"({measured['negatives']}) against {measured['real_images']:,} test images: keeping "
        f"{measured['chosen_at_coverage']:.0%} of the real ones, {accepted}. The run answers `unknown` where its "
        f"{measured['chosen']} score is below {at[measured['chosen']]['threshold']:.3f}; the exported model gives "
        "probabilities only, so a program using it applies that rule itself (`imgclf predict` and `serve` do).\n"
    )


def _limits(meta: dict[str, Any], metrics: Any) -> str:
    data = f"the {metrics.data.name} images" if metrics is not None else "its training images"
    return (
        "## Intended use and limits\n\n"
        f"- For images like {data}: the same kind of subject, camera, framing and lighting. The test figures hold "
        "for such images only; expect lower on images taken differently, and measure on a sample of yours "
        "(`imgclf evaluate`).\n"
        f"- It answers one of its {len(meta['classes'])} classes for any image, also an image of none of them, "
        "unless an `unknown` threshold is used (above).\n"
        "- Not for decisions about people, health or safety without a study of its errors on the population it "
        "will meet; `imgclf errors RUN` lists its most confident mistakes.\n"
    )


def _licence(model: str, model_config: dict[str, Any]) -> str:
    return f"## Licence\n\n- Weights it started from: {weights_licence(model, model_config)}\n- imgclf: MIT\n"


def weights_licence(model: str, model_config: dict[str, Any]) -> str:
    """The licence of the pretrained weights a run started from, as its model's registry entry records it."""
    if model_config.get("weights"):
        return f"your weights file {model_config['weights']}: its licence is its author's"
    if model_config.get("init"):
        return f"the run {model_config['init']} (its own card says what it started from)"
    if not model_config.get("pretrained"):
        return "none: trained from scratch on your images, which are yours"
    from .models import get_model_spec

    spec = get_model_spec(model)
    licence = spec.pretrained.licence if spec.pretrained is not None else ""
    return f"{model}'s ImageNet weights, {licence or 'licence not recorded: check the weights source'}"


def _files(folder: Path) -> str:
    rows = []
    for meta_file in sorted(folder.glob("*.json")):
        try:
            meta = json.loads(meta_file.read_text())
            model_file = folder / meta["file"]
            quantized = meta.get("quantization")
            checked = (
                "spec checked; not run here (its runtime is not on this system)"
                if meta["max_difference"] is None
                else f"{float(meta['max_difference']):.1e}"
                if not quantized
                else f"same answer on {quantized['agreement']:.1%} of {quantized['images']:,} test images; test "
                f"accuracy {quantized['accuracy']:.4f} (PyTorch {quantized['accuracy_pytorch']:.4f})"
            )
            rows.append(
                f"| `{meta['file']}` | {meta['format']} | {size_on_disk(model_file) / 1e6:.1f} MB | {checked} |"
            )
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not an export's metadata (or one being replaced)
    header = (
        "| file | format | size | against PyTorch: largest probability difference, or (INT8) answers and accuracy |"
    )
    table = [header, "|---|---|---|---|", *rows]
    return "## Files\n\n" + "\n".join(table) + "\n"

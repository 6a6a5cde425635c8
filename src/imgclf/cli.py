"""The ``imgclf`` command: parses arguments, calls the Python API, turns known errors into one line.

Every user error (:class:`imgclf.errors.ImgclfError`) prints ``imgclf: error: ...`` and exits 2.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from . import api
from .config import CHOICES, DEFAULT_MAX_IMAGE_PIXELS
from .errors import ConfigError, ImgclfError, keyword_name, name_settings, setting_names
from .explain import METHODS
from .predict import PREDICT_BATCH, Prediction, check_min_confidence
from .recipes import RECIPE_COLUMNS, SMALL_DATA, describe_recipes
from .report.tables import table
from .serve.settings import ServeSettings


def _train_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a classifier and write a run directory",
        description="Train a classifier. Unset options come from the recipe for the dataset.",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last.pt")
    _training_options(p, out_help="run directory (default runs/<data>-<model>, never overwritten)")
    p = sub.add_parser(
        "lr-find",
        help="the learning-rate finder: training loss over a log-spaced lr sweep, a plot and a suggested lr",
        description="Sweep the learning rate for the model, data and optimizer that `train` with the same "
        "options would use, and suggest one (the loss's steepest descent).",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--start-lr", type=float, default=1e-6)
    p.add_argument("--end-lr", type=float, default=10.0)
    p.add_argument("--steps", type=int, default=100, help="training steps of the sweep")
    _training_options(p, out_help="the plot (default lr_find.png)")


def _training_options(p: argparse.ArgumentParser, out_help: str) -> None:
    """The options of a training run, shared by train and lr-find."""
    p.add_argument("--config", help="a config.yaml (e.g. runs/x/config.yaml) to start from; flags override it")
    g = p.add_argument_group("data")
    g.add_argument(
        "--data", help="dataset name (imgclf datasets), a folder of class sub-folders, or a CSV of file,label"
    )
    g.add_argument(
        "--data-dir", help="where built-in datasets are stored/downloaded (default $IMGCLF_DATA or ~/.cache/imgclf)"
    )
    g.add_argument("--images", help="folder of the CSV's images (default: the CSV's folder)")
    g.add_argument(
        "--image-size",
        type=int,
        help="side in pixels (default: native; for folders the images' own, at most 64 on a CPU)",
    )
    g.add_argument(
        "--max-image-pixels",
        type=int,
        help=f"refuse images claiming more pixels (default {DEFAULT_MAX_IMAGE_PIXELS:,})",
    )
    g.add_argument("--augment", choices=CHOICES["augment"])
    g.add_argument("--val-split", type=float, help="share of training data held out for validation (default 0.1)")
    g.add_argument(
        "--test-split", type=float, help="share held out for testing when the source has no test split (default 0.2)"
    )
    g = p.add_argument_group("model")
    g.add_argument("--model", help="model name (imgclf models)")
    g.add_argument(
        "--pretrained", action="store_true", help="start from ImageNet weights (resnet18, torchvision:NAME, timm:NAME)"
    )
    g.add_argument("--weights", help="start from this weights file instead of downloading")
    g.add_argument("--freeze-epochs", type=int, help="train only the new head for this many epochs first")
    g.add_argument(
        "--backbone-lr-scale", type=float, help="lr of everything but the head, as a fraction of the head's (e.g. 0.1)"
    )
    g.add_argument(
        "--init", metavar="RUN", help="start from a run's weights (its best.pt); a new head if classes differ"
    )
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--optimizer", choices=CHOICES["optimizer"])
    g.add_argument("--lr", type=float)
    g.add_argument("--momentum", type=float)
    g.add_argument("--no-nesterov", dest="nesterov", action="store_false")
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--schedule", choices=CHOICES["schedule"])
    g.add_argument("--warmup-epochs", type=float)
    g.add_argument("--label-smoothing", type=float)
    g.add_argument("--grad-clip", type=float, help="clip the gradient norm to this value")
    g.add_argument(
        "--class-weights", choices=CHOICES["class_weights"], help="auto: weight the loss by inverse class frequency"
    )
    g.add_argument("--sampler", choices=CHOICES["sampler"], help="balanced: sample classes equally often")
    g.add_argument("--patience", type=int, help="stop when validation loss has not improved for this many epochs")
    g.add_argument("--norm-lr-scale", type=float, help="lr multiplier of biases and norm shifts")
    g.add_argument("--ema", action=argparse.BooleanOptionalAction, help="lookahead weight averaging late in training")
    g.add_argument("--tta", action=argparse.BooleanOptionalAction, help="test-time augmentation for the test metrics")
    g = p.add_argument_group("speed")
    g.add_argument(
        "--budget",
        type=float,
        metavar="SECONDS",
        help="seconds of training: picks the recipe variant (and epochs) that fits, measured on this machine",
    )
    g.add_argument(
        "--target-accuracy",
        type=float,
        metavar="FRACTION",
        help="picks the quickest recipe variant that reached it in our benchmarks; stops once validation reaches it",
    )
    g.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, help="torch.compile the model (default: on CUDA)"
    )
    g.add_argument(
        "--no-cache",
        dest="cache",
        action="store_false",
        help="decode folder/CSV images again instead of using the cache",
    )
    g.add_argument(
        "--exclude",
        metavar="FILE",
        help="leave out the images this file lists, one path a line (e.g. the doctor's doctor/exclude.txt)",
    )
    g.add_argument(
        "--storage",
        choices=CHOICES["storage"],
        help="decoded folder/CSV images in memory, or memory-mapped from the cache file for folders larger than "
        "memory (default auto: memory-mapped when they would take over half the available memory)",
    )
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int)
    g.add_argument("--device", choices=CHOICES["device"])
    g.add_argument("--no-amp", dest="amp", action="store_false", help="no mixed precision on CUDA")
    g.add_argument(
        "--devices",
        type=int,
        metavar="N",
        help="train on N processes (GPUs, or CPU processes) through torchrun; --batch-size is per process",
    )
    g.add_argument("--sync-bn", action="store_true", help="distributed on GPUs: batch norm over the global batch")
    g.add_argument("--tensorboard", action="store_true", help="also write TensorBoard logs")
    g.add_argument("--report", action="store_true", help="write report.html (as imgclf report) when training ends")
    g.add_argument("--out", help=out_help)
    g.add_argument("--quiet", action="store_true", help="print only the final summary")


def _cmd_train(args: argparse.Namespace) -> int:
    devices = getattr(args, "devices", 1)
    if devices > 1 and "WORLD_SIZE" not in os.environ:  # not yet under torchrun: start it, with this command
        from .runtime import resolve_device
        from .train.distributed import check_sync_bn, launch

        check_sync_bn(getattr(args, "sync_bn", False), resolve_device(getattr(args, "device", "auto")).type)
        return launch(devices, _without_devices(args.argv))
    settings = {
        k: v
        for k, v in vars(args).items()
        if k not in ("command", "config", "resume", "quiet", "func", "devices", "argv")
    }
    quiet = getattr(args, "quiet", False)
    result = api.train(
        getattr(args, "config", None), resume=getattr(args, "resume", None), verbose=not quiet, **settings
    )
    if quiet:
        print(f"test accuracy {result.accuracy:.4f}; run saved in {result.run_dir}")
    return 0


def _cmd_lr_find(args: argparse.Namespace) -> int:
    sweep = {name: vars(args).pop(name) for name in ("start_lr", "end_lr", "steps")}
    out = vars(args).pop("out", "lr_find.png")
    settings = {k: v for k, v in vars(args).items() if k not in ("command", "config", "quiet", "devices", "argv")}
    api.lr_find(getattr(args, "config", None), out=out, **sweep, **settings)
    return 0


def _without_devices(argv: Sequence[str]) -> list[str]:
    kept, skip = [], False
    for arg in argv:
        if skip or arg.startswith("--devices="):
            skip = False
            continue
        skip = arg == "--devices"
        if not skip:
            kept.append(arg)
    return kept


def _cmd_doctor(args: argparse.Namespace) -> int:
    options = ("run", "out", "fix", "labels", "near", "folds", "epochs", "device")
    settings = {k: v for k, v in vars(args).items() if k not in ("command", "argv", "data", *options) and v is not None}
    api.doctor(args.data, **{k: getattr(args, k) for k in options}, **settings)
    return 0


def _cmd_pack(args: argparse.Namespace) -> int:
    settings = {
        k: v for k, v in vars(args).items() if k not in ("command", "argv", "data", "out", "shard_size", "jpeg_quality")
    }
    result = api.pack(
        args.data,
        args.out,
        shard_size=args.shard_size,
        jpeg_quality=args.jpeg_quality,
        **{k: v for k, v in settings.items() if v is not None},
    )
    _warn_skipped(result.skipped)
    counts = " / ".join(f"{result.counts[s]:,} {s}" for s in ("train", "val", "test"))
    print(
        f"packed {counts} images into {sum(map(len, result.shards.values()))} shards "
        f"({result.bytes / 2**20:,.1f} MB) in {result.seconds:.1f}s: {result.out}; train with --data {result.out}"
    )
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    metrics = api.evaluate(args.run, data=args.data, data_dir=args.data_dir, images=args.images, device=args.device)
    print(f"test accuracy {metrics['accuracy']:.4f}, macro F1 {metrics['macro_f1']:.4f} on {metrics['samples']} images")
    return 0


def _warn_skipped(skipped: Sequence[tuple[str, str]]) -> None:
    for path, reason in skipped:
        print(f"imgclf: warning: skipped {path}: {name_settings(reason)}", file=sys.stderr)


def _log_stderr(message: str) -> None:
    print(name_settings(message), file=sys.stderr)


def _cmd_predict(args: argparse.Namespace) -> int:
    model = api.classifier(
        args.checkpoint,
        device=args.device,
        backend=args.backend,
        max_image_pixels=args.max_image_pixels,
        log=_log_stderr,
    )
    stream = model.stream(args.images, args.top_k, args.batch_size, args.min_confidence)
    output_format = args.format or (Path(args.out).suffix.lstrip(".") if args.out else "table")
    if output_format not in PREDICT_FORMATS:
        raise ConfigError(f"`out` {args.out}: give --format csv or json, or a file ending in .csv or .json")
    k = max(1, min(args.top_k, len(model.classes)))
    with prediction_output(args.out) as out:
        writer = PREDICTION_WRITERS[output_format](out, k, args.min_confidence > 0)
        with tqdm(total=stream.total, unit="img", file=sys.stderr, disable=not sys.stderr.isatty()) as progress:
            for done, prediction in enumerate(stream, 1):
                writer.write(prediction)
                progress.update(done + len(stream.skipped) - progress.n)
        writer.close()
    if args.out:
        print(f"wrote {stream.total - len(stream.skipped)} predictions to {args.out}", file=sys.stderr)
    _warn_skipped(stream.skipped)  # after the results, so that a long list of predictions does not hide them
    return 0


@contextlib.contextmanager
def prediction_output(out: str | None) -> Iterator[TextIO]:
    """Standard output, or ``out`` written as ``out.partial`` while predicting and renamed when complete:
    an interrupted run leaves what it predicted, never a file that looks complete."""
    if out is None:
        yield sys.stdout
        return
    partial = Path(out + ".partial")
    try:
        f = open(partial, "w", encoding="utf-8", newline="")  # noqa: SIM115  closed by the with below
    except OSError as exc:
        raise ConfigError(
            f"`out` {out}: cannot write it ({exc.strerror}); give a file in an existing, writable folder"
        ) from None
    with f:
        try:
            yield f
        except BaseException:
            print(f"imgclf: the predictions made so far are in {partial}", file=sys.stderr)
            raise
    os.replace(partial, out)


def _headers(k: int, decided: bool) -> list[str]:
    """``decided``: a `prediction` column (a class, or `unknown` below --min-confidence) before the top k."""
    return ["file"] + ["prediction"] * decided + [h for i in range(1, k + 1) for h in (f"label_{i}", f"prob_{i}")]


def _row(p: Prediction, decided: bool) -> list[str]:
    return [p.source] + [p.label] * decided + [v for label, prob in p.top_k for v in (label, f"{prob:.4f}")]


class CsvWriter:
    FLUSH_EVERY = 256  # rows: a reader of the file (tail -f) sees it grow batch by batch

    def __init__(self, out: TextIO, k: int, decided: bool = False) -> None:
        self.out, self.rows, self.decided = out, 0, decided
        self.csv = csv.writer(out, lineterminator="\n")
        self.csv.writerow(_headers(k, decided))

    def write(self, p: Prediction) -> None:
        self.csv.writerow(_row(p, self.decided))
        self.rows += 1
        if self.rows % self.FLUSH_EVERY == 0:
            self.out.flush()

    def close(self) -> None:
        self.out.flush()


class JsonWriter:
    """A JSON array written item by item: valid JSON once closed, one prediction per line."""

    def __init__(self, out: TextIO, k: int, decided: bool = False) -> None:
        self.out, self.separator = out, "[\n  "  # each item's `label` is the decision already

    def write(self, p: Prediction) -> None:
        self.out.write(self.separator + json.dumps(p.to_dict()))
        self.separator = ",\n  "

    def close(self) -> None:
        self.out.write("[]\n" if self.separator.startswith("[") else "\n]\n")
        self.out.flush()


class TableWriter:
    """The terminal's aligned table: its column widths need every row, so rows (not images) are kept."""

    def __init__(self, out: TextIO, k: int, decided: bool = False) -> None:
        self.out, self.decided = out, decided
        self.rows: list[list[str]] = []
        self.headers = _headers(k, decided)

    def write(self, p: Prediction) -> None:
        self.rows.append(_row(p, self.decided))

    def close(self) -> None:
        self.out.write(table(self.headers, self.rows) + "\n")


PREDICTION_WRITERS: dict[str, Callable[[TextIO, int, bool], CsvWriter | JsonWriter | TableWriter]] = {
    "csv": CsvWriter,
    "json": JsonWriter,
    "table": TableWriter,
}
PREDICT_FORMATS = tuple(PREDICTION_WRITERS)


def _cmd_export(args: argparse.Namespace) -> int:
    api.export(args.run, format=args.format, out=args.out)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    settings = ServeSettings(
        max_upload_bytes=int(args.max_upload_mb * 1e6),
        max_images=args.max_images,
        max_image_pixels=args.max_image_pixels,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        min_confidence=args.min_confidence,
    )
    check_min_confidence(args.min_confidence)
    api.serve(args.run, host=args.host, port=args.port, settings=settings)
    return 0


def _cmd_datasets(args: argparse.Namespace) -> int:
    print(table(["dataset", "description"], [list(r) for r in api.describe_dataset_sources()]))
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    rows = [[name, "-" if params is None else f"{params:,}", desc] for name, params, desc in api.describe_models()]
    print(table(["model", "parameters (3x32x32, 10 classes)", "description"], rows))
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    api.inspect(args.run, image=args.image, out=args.out)
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    api.explain(
        args.run, args.images, method=args.method, layer=args.layer, target=args.target, top_k=args.top_k, out=args.out
    )
    return 0


def _cmd_errors(args: argparse.Namespace) -> int:
    api.errors(args.run, top=args.top, out=args.out)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    api.compare(args.runs, out=args.out)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    api.report(args.run, out=args.out)
    return 0


def _cmd_recipes(args: argparse.Namespace) -> int:
    train_images = api.recipe_train_images(args.data)
    print(table(RECIPE_COLUMNS, describe_recipes(train_images)))
    if None in train_images.values():
        print(
            f"'folder' rows: a folder or CSV of {SMALL_DATA:,}+ training images; smaller ones get smaller batches and "
            "more epochs (imgclf recipes --data PATH shows them)"
        )
    return 0


def _data_as_training_sees_it(p: argparse.ArgumentParser) -> None:
    """The settings that decide which images a split holds and at what size, as `train` takes them: the
    commands that work on a dataset before training (doctor, pack) see it as training would."""
    p.add_argument("--image-size", type=int, help="side in pixels (default: as training would choose)")
    p.add_argument("--images", help="folder of the CSV's images (default: the CSV's folder)")
    p.add_argument("--data-dir", help="where built-in datasets and the decode cache are")
    p.add_argument("--val-split", type=float, help="as training's (default 0.1)")
    p.add_argument("--test-split", type=float, help="as training's (default 0.2)")
    p.add_argument("--seed", type=int, help="as training's: the held-out splits depend on it (default 0)")
    p.add_argument("--max-image-pixels", type=int, help="as training's")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgclf", description="Train, evaluate and use image classifiers.")
    parser.add_argument("--version", action="version", version=f"imgclf {__import__('imgclf').__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _train_parser(sub)
    p = sub.add_parser("evaluate", help="re-evaluate a run (or checkpoint) on its test split")
    p.add_argument("run", help="run directory or checkpoint file")
    p.add_argument("--data", help="evaluate on other data with the same classes")
    p.add_argument("--data-dir")
    p.add_argument("--images")
    p.add_argument("--device", default="auto", choices=CHOICES["device"])
    p = sub.add_parser("predict", help="classify image files or folders with a trained model")
    p.add_argument("checkpoint", help="best.pt / last.pt, or a run directory")
    p.add_argument("images", nargs="+", help="image files and folders (their visible files, as training reads them)")
    p.add_argument("--top-k", type=int, default=1)
    p.add_argument(
        "--min-confidence",
        type=float,
        default=0.0,
        metavar="P",
        help="answer `unknown` when the (calibrated) top probability is below P; `evaluate` shows the coverage per P",
    )
    p.add_argument("--format", choices=PREDICT_FORMATS, help="default: table, or the --out file's kind (.csv, .json)")
    p.add_argument("--out", help="write the predictions to this .csv or .json file as they are made")
    p.add_argument(
        "--backend",
        choices=api.BACKENDS,
        default="torch",
        help="onnx: ONNX Runtime runs the model (exported into RUN/export first)",
    )
    p.add_argument("--batch-size", type=int, default=PREDICT_BATCH, help="images decoded and predicted together")
    p.add_argument("--device", default="auto", choices=CHOICES["device"])
    p.add_argument(
        "--max-image-pixels",
        type=int,
        default=DEFAULT_MAX_IMAGE_PIXELS,
        help="refuse images claiming more pixels (decompression bombs)",
    )
    p = sub.add_parser(
        "doctor",
        help="what is wrong with a dataset: odd files, duplicates, train/test leaks, likely label errors",
    )
    p.add_argument("data", help="a dataset name, a folder of class sub-folders, or a CSV of file,label")
    p.add_argument("--run", help="rank label errors by this run's predictions instead of quick cross-validated models")
    p.add_argument("--out", help="folder for doctor.json, the grids and doctor.html (default: doctor/ beside the data)")
    p.add_argument("--fix", action="store_true", help="also write moves.csv and exclude.txt (for train --exclude)")
    p.add_argument("--no-labels", dest="labels", action="store_false", help="skip the label-error models")
    p.add_argument("--no-near", dest="near", action="store_false", help="skip the near-duplicate hashes")
    p.add_argument("--folds", type=int, default=3, help="cross-validation folds for the label check (default 3)")
    p.add_argument("--epochs", type=int, default=4, help="epochs of each fold's quick model (default 4)")
    p.add_argument("--device", choices=CHOICES["device"], default="auto")
    _data_as_training_sees_it(p)
    p = sub.add_parser(
        "pack",
        help="write a folder or CSV as WebDataset tar shards, for streaming training of data larger than the disk cache",
    )
    p.add_argument("data", help="a folder of class sub-folders, or a CSV of file,label")
    p.add_argument("--out", required=True, help="new folder for the shards (then train with --data OUT)")
    p.add_argument("--shard-size", type=int, default=2000, metavar="N", help="images a shard (default 2000)")
    p.add_argument("--jpeg-quality", type=int, metavar="Q", help="store JPEG at this quality (default: PNG, lossless)")
    _data_as_training_sees_it(p)
    p = sub.add_parser("export", help="write the model as ONNX or TorchScript, checked against PyTorch")
    p.add_argument("run", help="run directory or checkpoint file")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    p.add_argument("--out", help="folder for the model and its JSON (default: RUN/export)")
    defaults = ServeSettings()
    p = sub.add_parser("serve", help="a web page and JSON API for the model (pip install 'imgclf[serve]')")
    p.add_argument("run", help="run directory or checkpoint file")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-upload-mb", type=float, default=defaults.max_upload_bytes / 1e6, help="per request")
    p.add_argument("--max-images", type=int, default=defaults.max_images, help="images per POST /predict")
    p.add_argument("--max-image-pixels", type=int, default=defaults.max_image_pixels, help="per image")
    p.add_argument("--max-batch", type=int, default=defaults.max_batch, help="images per forward pass (1: no batching)")
    p.add_argument(
        "--min-confidence",
        type=float,
        default=defaults.min_confidence,
        metavar="P",
        help="label `unknown` below this calibrated top probability (a request's min_confidence overrides it)",
    )
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=defaults.max_wait_ms,
        help="how long an image waits for others to batch with",
    )
    sub.add_parser("datasets", help="list the datasets")
    sub.add_parser("models", help="list the models with their parameter counts")
    p = sub.add_parser(
        "inspect",
        help="the model layer by layer: shapes, parameters, multiply-adds, receptive fields, kernels, feature maps",
    )
    p.add_argument("run", help="run directory or checkpoint file")
    p.add_argument("--image", help="an image whose feature maps to draw")
    p.add_argument("--out", help="folder for the figures and layers.json (default: RUN/inspect)")
    p = sub.add_parser(
        "explain", help="heat maps of what the model looks at (Grad-CAM or saliency), with top-k classes"
    )
    p.add_argument("run", help="run directory or checkpoint file")
    p.add_argument("images", nargs="+", help="image files and folders")
    p.add_argument("--method", choices=METHODS, default="gradcam")
    p.add_argument("--layer", help="Grad-CAM's layer (default: the last conv block); a wrong name lists the choices")
    p.add_argument("--target", help="explain this class instead of the predicted one")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--out", help="folder for the figures (default: RUN/explain)")
    p = sub.add_parser("errors", help="where the model is wrong: confident mistakes, confused pairs, worst classes")
    p.add_argument("run", help="run directory")
    p.add_argument("--top", type=int, default=25, help="how many of the most confident mistakes to list and draw")
    p.add_argument("--out", help="folder for errors.json and mistakes.png (default: RUN/errors)")
    p = sub.add_parser("compare", help="runs side by side: accuracy, macro F1, train time, parameters, multiply-adds")
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument("--out", default="comparison.png", help="bar plot file (default: ./comparison.png)")
    p = sub.add_parser("report", help="one self-contained HTML page of a run")
    p.add_argument("run", help="run directory")
    p.add_argument("--out", help="HTML file (default: RUN/report.html)")
    p = sub.add_parser(
        "recipes", help="the recipes per dataset and device as training would run them, with measured results"
    )
    p.add_argument("--data", help="only this dataset, folder or CSV (a folder's size decides batch and epochs)")
    return parser


COMMANDS = {
    "train": _cmd_train,
    "evaluate": _cmd_evaluate,
    "predict": _cmd_predict,
    "datasets": _cmd_datasets,
    "models": _cmd_models,
    "inspect": _cmd_inspect,
    "explain": _cmd_explain,
    "errors": _cmd_errors,
    "compare": _cmd_compare,
    "report": _cmd_report,
    "recipes": _cmd_recipes,
    "export": _cmd_export,
    "lr-find": _cmd_lr_find,
    "pack": _cmd_pack,
    "doctor": _cmd_doctor,
    "serve": _cmd_serve,
}


def flag_namer(parser: argparse.ArgumentParser) -> Callable[[str, str | None], str]:
    """How the command line names a setting: its flag (``val_split`` -> ``--val-split``, ``cache=False`` ->
    ``--no-cache``), from the parser's own options; a setting without a flag keeps its keyword."""
    actions: dict[str, argparse.Action] = {}
    for subparsers in (a for a in parser._actions if isinstance(a, argparse._SubParsersAction)):
        for command in subparsers.choices.values():
            for action in command._actions:
                actions.setdefault(action.dest, action)

    def name(setting: str, value: str | None) -> str:
        action = actions.get(setting)
        if action is None:
            return keyword_name(setting, value)
        if not action.option_strings:
            return setting.upper()
        flags = [f for f in action.option_strings if f.startswith("--")]
        if isinstance(action, argparse.BooleanOptionalAction) and value in ("True", "False"):
            return flags[0] if value == "True" else next(f for f in flags if f.startswith("--no-"))
        if action.nargs == 0:  # store_true / store_false: the flag alone says the value
            return flags[0]
        return flags[0] if value is None else f"{flags[0]} {value}"

    return name


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv  # `train --devices N` runs the same command again under torchrun
    if args.command is None:
        parser.print_help()
        return 2
    with setting_names(flag_namer(parser)):  # messages printed inside name settings by their flags
        try:
            return COMMANDS[args.command](args)
        except ImgclfError as exc:
            print(f"imgclf: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("imgclf: interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:  # output piped into head or less that closed early: not an error
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0


if __name__ == "__main__":
    sys.exit(main())

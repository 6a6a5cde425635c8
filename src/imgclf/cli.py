"""The ``imgclf`` command: parses arguments, calls the Python API, turns known errors into one line.

Every user error (:class:`imgclf.errors.ImgclfError`) prints ``imgclf: error: ...`` and exits 2.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from . import api
from .config import DEVICES, RECIPE, SECTIONS, PredictOptions, Setting, declared, settings_fields, value_kind
from .errors import ConfigError, ImgclfError, keyword_name, name_settings, setting_names
from .explain import METHODS
from .export import format_names
from .plots.tables import table
from .recipes import RECIPE_COLUMNS, SMALL_DATA, default_config, describe_recipes, describe_sources
from .rundir import SplitMetrics
from .runtime import imgclf_version
from .serve.settings import ServeSettings
from .studio.settings import StudioSettings

if TYPE_CHECKING:
    from .tasks import Prediction

SECTION_TITLES = {
    "data": "data",
    "model": "model",
    "optim": "optimisation",
    "schedule": "schedule and stopping",
    "augment": "augmentation",
    "eval": "evaluation",
    "run": "run",
}
assert set(SECTION_TITLES) == set(SECTIONS)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default (settings say theirs themselves: their default may be the recipe's)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.help and "(default:" in action.help:  # it says its default in words ("RUN/export"), not None
            return action.help
        if action.nargs == 0 and action.default is not argparse.SUPPRESS:
            # a switch is off until given: argparse would print the value it stores (`--no-near`: "True")
            return f"{action.help} (default: off)"
        return super()._get_help_string(action)


def _default_text(spec: Setting) -> str:
    if spec.meta.get("default_text"):
        return spec.meta["default_text"]
    if spec.recipe:
        return RECIPE
    if spec.meta.get("unit"):
        return f"{spec.default() / spec.meta['unit']:g}"
    return str(spec.default())


def add_setting(parser: argparse._ActionsContainer, spec: Setting) -> None:
    """One config field as a flag: its type, choices and help with the default, from the field's metadata.
    Settings not given stay unset (``argparse.SUPPRESS``), so the recipe fills what you leave out."""
    meta, kind = spec.meta, value_kind(spec.hint)
    flag = meta.get("flag") or "--" + spec.name.replace("_", "-")
    helptext = f"{meta['help']} (default: {_default_text(spec)})"
    options: dict[str, Any] = {"dest": spec.name, "help": helptext, "default": argparse.SUPPRESS}
    if meta.get("unit"):  # given in larger units (--max-upload-mb): stored in the field's own
        unit = meta["unit"]
        parser.add_argument(flag, type=lambda text: kind(float(text) * unit), metavar=meta.get("metavar"), **options)
        return
    if kind is bool and (spec.recipe or meta.get("negatable")):
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, **options)
    elif kind is bool:  # the flag says the other value than the default: --pretrained, --no-cache
        options["help"] = f"{meta['help']} (default: off)"
        parser.add_argument(flag, action="store_false" if spec.default() else "store_true", **options)
    else:
        parser.add_argument(flag, type=kind, choices=meta.get("choices"), metavar=meta.get("metavar"), **options)


def _settings_options(p: argparse.ArgumentParser, command: str) -> None:
    """The run's settings as flags, by section: all of them for train, those it uses for lr-find."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for spec in settings_fields():
        if spec.meta.get("flag") == "" or (command == "lr-find" and not spec.meta["lr_find"]):
            continue
        if spec.section not in groups:
            groups[spec.section] = p.add_argument_group(SECTION_TITLES[spec.section])
        add_setting(groups[spec.section], spec)


def _train_parser(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="train a classifier and write a run directory",
        description="Train a classifier. What you leave unset comes from the recipe for the dataset and device "
        "(imgclf recipes), or from a rule (the warm-up keeps its share of the run; the lr is linear in the "
        "batch); the first lines say where each value came from.",
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        help="a config.yaml (e.g. runs/x/config.yaml) to start from; flags override it (default: none)",
    )
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        default=argparse.SUPPRESS,
        help="continue an interrupted run from its last.pt (default: none)",
    )
    p.add_argument(
        "--devices",
        type=int,
        metavar="N",
        default=1,
        help="train on N processes (GPUs, or CPU processes) through torchrun; --batch-size is per process",
    )
    p.add_argument("--quiet", action="store_true", help="print only the final summary")
    _settings_options(p, "train")
    p = sub.add_parser(
        "lr-find",
        help="the learning-rate finder: training loss over a log-spaced lr sweep, a plot and a suggested lr",
        description="Sweep the learning rate for the model, data, optimizer groups and loss that `train` with the "
        "same options would use, and suggest one (fastai's valley rule, checked against the curve).",
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--config", default=argparse.SUPPRESS, help="a config.yaml to start from; flags override it (default: none)"
    )
    p.add_argument("--start-lr", type=float, default=1e-6, help="the sweep's first lr")
    p.add_argument("--end-lr", type=float, default=10.0, help="the sweep's last lr")
    p.add_argument("--steps", type=int, default=100, help="training steps of the sweep")
    p.add_argument("--out", default="lr_find.png", help="the plot")
    _settings_options(p, "lr-find")


COMMAND_OPTIONS = ("command", "config", "resume", "quiet", "devices", "argv")  # the command line's own, not settings


def _settings_given(args: argparse.Namespace, *also: str) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k not in COMMAND_OPTIONS + also}


def _cmd_train(args: argparse.Namespace) -> int:
    devices = args.devices
    if devices < 1:
        raise ConfigError(f"`devices` {devices}: train on 1 or more processes (default 1)")
    if devices > 1 and "WORLD_SIZE" not in os.environ:  # not yet under torchrun: start it, with this command
        from .runtime import resolve_device
        from .train.distributed import check_sync_bn, launch

        check_sync_bn(getattr(args, "sync_bn", False), resolve_device(getattr(args, "device", "auto")).type)
        return launch(devices, _without_devices(args.argv))
    result = api.train(
        getattr(args, "config", None),
        resume=getattr(args, "resume", None),
        verbose=not args.quiet,
        **_settings_given(args),
    )
    if args.quiet and result.main_process:
        print(f"{result.metrics.headline()}; run saved in {result.run_dir}")
    return 0


def _cmd_lr_find(args: argparse.Namespace) -> int:
    sweep = {name: getattr(args, name) for name in ("start_lr", "end_lr", "steps", "out")}
    api.lr_find(getattr(args, "config", None), **sweep, **_settings_given(args, *sweep))
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
    options = ("run", "out", "fix", "labels", "near", "models", "folds", "epochs", "device")
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
    settings = {"data": args.data, "data_dir": args.data_dir, "images": args.images, "device": args.device}
    if args.negatives:
        api.evaluate(args.run, negatives=args.negatives, **settings)
        return 0
    metrics = api.evaluate(args.run, **settings)
    assert isinstance(metrics, SplitMetrics)  # without negatives: the test split's metrics
    print(f"test {metrics.headline()} on {metrics['samples']} images")
    return 0


def _warn_skipped(skipped: Sequence[tuple[str, str]]) -> None:
    for path, reason in skipped:
        print(f"imgclf: warning: skipped {path}: {name_settings(reason)}", file=sys.stderr)


def _log_stderr(message: str) -> None:
    print(name_settings(message), file=sys.stderr)


def _cmd_predict(args: argparse.Namespace) -> int:
    from .writers import Columns, file_format, write_predictions

    options = PredictOptions(**_given(args, PredictOptions))
    file_format(options.out, options.format)  # an unknown kind of file is one line before the model loads
    model = api.classifier(
        args.checkpoint,
        device=options.device,
        backend=options.backend,
        max_image_pixels=options.max_image_pixels,
        threshold=options.threshold,
        log=_log_stderr,
    )
    stream = model.stream(args.images, options.top_k, options.batch_size, options.min_confidence)
    columns = Columns(model.task, max(1, min(options.top_k, len(model.classes))), options.min_confidence)
    from tqdm import tqdm

    with tqdm(total=stream.total, unit="img", file=sys.stderr, disable=not sys.stderr.isatty()) as progress:

        def shown() -> Iterator[Prediction]:
            for done, prediction in enumerate(stream, 1):
                yield prediction
                progress.update(done + len(stream.skipped) - progress.n)

        written = write_predictions(shown(), columns, options.out, options.format, _log_stderr)
    if options.out:
        print(f"wrote {written} predictions to {options.out}", file=sys.stderr)
    _warn_skipped(stream.skipped)  # after the results, so that a long list of predictions does not hide them
    return 0


def _given(args: argparse.Namespace, declaration: type) -> dict[str, Any]:
    """The options of ``declaration`` given on the command line (those left out keep their defaults)."""
    names = {spec.name for spec in declared(declaration)}
    return {k: v for k, v in vars(args).items() if k in names}


def _cmd_export(args: argparse.Namespace) -> int:
    api.export(args.run, format=args.format, out=args.out, force=args.force)
    return 0


def _cmd_benchmark(args: argparse.Namespace) -> int:
    api.benchmark(args.run, formats=getattr(args, "formats", None))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    api.serve(args.run, host=args.host, port=args.port, settings=ServeSettings(**_given(args, ServeSettings)))
    return 0


def _cmd_studio(args: argparse.Namespace) -> int:
    settings = StudioSettings(**_given(args, StudioSettings))
    api.studio(args.folder, host=args.host, port=args.port, settings=settings)
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


def _cmd_learning_curve(args: argparse.Namespace) -> int:
    options = ("data", "out", "fractions", "seeds", "device")
    settings = {k: v for k, v in vars(args).items() if k not in ("command", "argv", *options) and v is not None}
    api.learning_curve(args.data, **{k: getattr(args, k) for k in options if k != "data"}, **settings)
    return 0


def _cmd_embed(args: argparse.Namespace) -> int:
    api.embed(args.images, run=args.run, out=args.out, device=args.device)
    return 0


def _cmd_similar(args: argparse.Namespace) -> int:
    api.similar(args.run, args.images, k=args.k, out=args.out, device=args.device)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    api.compare(args.runs, out=args.out)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    api.report(args.run, out=args.out)
    return 0


def _cmd_runs(args: argparse.Namespace) -> int:
    from .runs import list_runs, runs_table

    runs = list_runs(args.folder)
    if not runs:  # a folder that holds none (a missing one is an error from list_runs)
        print(f"no runs in {args.folder}")
        return 0
    print(runs_table(runs).to_text())
    for run in runs:  # why a run failed, under the table: the last line of its status
        if run.error and run.state == "failed":
            print(f"{run.path}: {run.error}")
    return 0


def _cmd_recipes(args: argparse.Namespace) -> int:
    from .models.lite import LITE
    from .recipes import SEARCH_BUDGET

    train_images = api.recipe_train_images(args.data)
    print(table(RECIPE_COLUMNS, describe_recipes(train_images)))
    if "folder" in train_images:  # before the cnn's sources: with no --model this is not all train does
        print(
            f"\na folder or CSV with no --model: train first tries the shipped {', '.join(LITE)} (linear probes at the "
            "photos' sizes) and this cnn recipe on held-out images, within --budget (default "
            f"{SEARCH_BUDGET['cpu']:g} s on a CPU, {SEARCH_BUDGET['gpu']:g} on a GPU), then trains the best: a "
            "fine-tune from its probe, or this recipe; --model cnn (or --search off) trains exactly this recipe"
        )
    if args.data:  # one dataset: where each value of its default comes from, as train's first lines say
        for dataset, n_train in train_images.items():
            print(f"\n{dataset}, cpu, default: where each value comes from")
            print(table(["setting", "value", "from"], describe_sources(default_config(dataset, n_train))))
    if None in train_images.values():
        print(
            f"'folder' rows: a folder or CSV of {SMALL_DATA:,}+ training images; smaller ones get smaller batches and "
            "more epochs (imgclf recipes --data PATH shows them)"
        )
    return 0


def _data_as_training_sees_it(p: argparse.ArgumentParser) -> None:
    """The data settings, as `train` takes them: the commands that work on a dataset before training (doctor,
    pack) see its splits and sizes as training would."""
    group = p.add_argument_group("data, as training sees it")
    for spec in settings_fields():
        if spec.section == "data" and spec.name != "data":
            add_setting(group, spec)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgclf", description="Train, evaluate and use image classifiers.")
    parser.add_argument("--version", action="version", version=f"imgclf {imgclf_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, helptext: str, **kwargs: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=helptext, formatter_class=HelpFormatter, **kwargs)

    _train_parser(sub)
    p = command("evaluate", "re-evaluate a run (or checkpoint) on its test split")
    p.add_argument("run", help="run directory or checkpoint file")
    p.add_argument("--data", help="evaluate on other data with the same classes (default: the run's)")
    p.add_argument("--data-dir", help="where that data's built-in datasets and cache are (default: the run's)")
    p.add_argument("--images", help="folder of that CSV's images (default: the CSV's folder)")
    p.add_argument("--device", default="auto", choices=DEVICES, help="where to run the model")
    p.add_argument(
        "--negatives",
        metavar="DIR",
        help="a folder of images of none of the classes: measure how many `unknown` rejects per share of real "
        "images kept, for the probability and the distance to the training images; the better one becomes "
        "what --min-confidence reads for this run",
    )
    p = command("predict", "classify image files or folders with a trained model")
    p.add_argument("checkpoint", help="best.pt / last.pt, or a run directory")
    p.add_argument("images", nargs="+", help="image files and folders (their visible files, as training reads them)")
    for spec in declared(PredictOptions, "predict"):
        add_setting(p, spec)
    p = command("doctor", "what is wrong with a dataset: odd files, duplicates, train/test leaks, likely label errors")
    p.add_argument("data", help="a dataset name, a folder of class sub-folders, or a CSV of file,label")
    p.add_argument("--run", help="rank label errors by this run's predictions instead of quick cross-validated models")
    p.add_argument(
        "--out",
        help="folder for doctor.json, the grids and doctor.html (default: doctor/ beside the data, doctor-2/ "
        "... where taken)",
    )
    p.add_argument("--fix", action="store_true", help="also write moves.csv and exclude.txt (for train --exclude)")
    p.add_argument("--no-labels", dest="labels", action="store_false", help="skip the label-error models")
    p.add_argument("--no-near", dest="near", action="store_false", help="skip the near-duplicate hashes")
    p.add_argument(
        "--models",
        nargs="+",
        choices=("probe", "cnn"),
        default=["probe", "cnn"],
        help="the label check's cross-validated models: a linear probe on lite0's embeddings, the quick cnn; "
        "the one that holds out best is used",
    )
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds of the quick cnn (the probe: 5)")
    p.add_argument(
        "--epochs", type=int, help="epochs of each fold's quick cnn (default: 4 to 12, fewer for more images)"
    )
    p.add_argument("--device", choices=DEVICES, default="auto", help="where the quick models train")
    _data_as_training_sees_it(p)
    p = command(
        "pack",
        "write a folder or CSV as WebDataset tar shards, for streaming training of data larger than the disk cache",
    )
    p.add_argument("data", help="a folder of class sub-folders, or a CSV of file,label")
    p.add_argument("--out", required=True, help="new folder for the shards (then train with --data OUT)")
    p.add_argument("--shard-size", type=int, default=2000, metavar="N", help="images a shard")
    p.add_argument(
        "--jpeg-quality", type=int, metavar="Q", help="store JPEG at this quality (default None: PNG, lossless)"
    )
    _data_as_training_sees_it(p)
    p = command("export", "write the model as ONNX (fp32 or INT8) or TorchScript, checked against PyTorch")
    p.add_argument("run", help="run directory or checkpoint file")
    p.add_argument("--format", choices=format_names(), default="onnx", help="the exported model's format")
    p.add_argument("--out", help="folder for the model and its JSON (default: RUN/export)")
    p.add_argument(
        "--force", action="store_true", help="write a quantized model that loses more test accuracy than its limit"
    )
    p = command(
        "benchmark",
        "every export format that runs here beside PyTorch on the run's test split: size, accuracy, images/s",
    )
    p.add_argument("run", help="run directory (its data must be at hand: the test split is measured)")
    p.add_argument(
        "--formats",
        nargs="+",
        choices=format_names(),
        default=argparse.SUPPRESS,
        help="the export formats to time (default: every one of the table)",
    )
    p = command("serve", "a web page and JSON API for the model (pip install 'imgclf[serve]')")
    p.add_argument("run", help="run directory or checkpoint file")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    for spec in declared(ServeSettings, "serve"):
        add_setting(p, spec)
    p = command(
        "studio",
        "the runs and data of a folder in a local web page, live: train, stop, resume, compare, review the "
        "doctor's findings, try a model, make a dataset (pip install 'imgclf[serve]')",
    )
    p.add_argument("folder", nargs="?", default=".", help="the folder of runs and data folders")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (elsewhere than here: a token is needed)")
    p.add_argument("--port", type=int, default=8500, help="port to listen on")
    for spec in declared(StudioSettings, "studio"):
        add_setting(p, spec)
    command("datasets", "list the datasets")
    command("models", "list the models with their parameter counts")
    p = command("runs", "the runs in a folder: state (running, finished, failed, stopped, died), data, model, accuracy")
    p.add_argument("folder", nargs="?", default="runs", help="a folder of run directories")
    p = command(
        "inspect",
        "the model layer by layer: shapes, parameters, multiply-adds, receptive fields, kernels, feature maps",
    )
    p.add_argument("run", help="run directory or checkpoint file")
    p.add_argument("--image", help="an image whose feature maps to draw (default: none)")
    p.add_argument("--out", help="folder for the figures and layers.json (default: RUN/inspect)")
    p = command("explain", "heat maps of what the model looks at (Grad-CAM or saliency), with top-k classes")
    p.add_argument("run", help="run directory or checkpoint file")
    p.add_argument("images", nargs="+", help="image files and folders")
    p.add_argument("--method", choices=METHODS, default="gradcam", help="how the heat map is computed")
    p.add_argument("--layer", help="Grad-CAM's layer (default: the last conv block); a wrong name lists the choices")
    p.add_argument("--target", help="explain this class instead of the predicted one (default: the predicted)")
    p.add_argument("--top-k", type=int, default=3, help="classes listed per image")
    p.add_argument("--out", help="folder for the figures (default: RUN/explain)")
    p = command("errors", "where the model is wrong: confident mistakes, confused pairs, worst classes")
    p.add_argument("run", help="run directory")
    p.add_argument("--top", type=int, default=25, help="how many of the most confident mistakes to list and draw")
    p.add_argument("--out", help="folder for errors.json and mistakes.png (default: RUN/errors)")
    p = command(
        "learning-curve",
        "how many more images do I need: accuracy per class against training images, and what 2x and 4x would give",
    )
    p.add_argument("data", help="a folder of class sub-folders, or a CSV")
    p.add_argument(
        "--out", help="folder for learning_curve.png and .json (default: learning_curve, -2, -3, ... where taken)"
    )
    p.add_argument(
        "--fractions", type=float, nargs="+", help="shares of each class to train on (default: 0.1 0.2 0.3 0.5 0.7 1)"
    )
    p.add_argument("--seeds", type=int, help="draws per share (default: 3)")
    p.add_argument("--device", default="auto", choices=DEVICES, help="where to compute the features")
    _data_as_training_sees_it(p)
    p = command("embed", "write embeddings (what the class layer sees) of images to an .npz file")
    p.add_argument("images", nargs="+", help="image files and folders")
    p.add_argument("--run", help="a run's network (default: the shipped lite0's ImageNet features at 224 px)")
    p.add_argument("--out", default="embeddings.npz", help="the .npz file (files, features, model)")
    p.add_argument("--device", default="auto", choices=DEVICES, help="where to run the network")
    p = command("similar", "the training images nearest to an image by the run's embeddings, with their labels")
    p.add_argument("run", help="run directory")
    p.add_argument("images", nargs="+", help="image files and folders")
    p.add_argument("--k", type=int, default=8, help="neighbours to show")
    p.add_argument("--out", help="folder for the grids (default: RUN/similar)")
    p.add_argument("--device", default="auto", choices=DEVICES, help="where to run the network")
    p = command("compare", "runs side by side: accuracy, macro F1, train time, parameters, multiply-adds")
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument("--out", default="comparison.png", help="bar plot file")
    p = command("report", "one self-contained HTML page of a run")
    p.add_argument("run", help="run directory")
    p.add_argument("--out", help="HTML file (default: RUN/report.html)")
    p = command("recipes", "the recipes per dataset and device as training would run them, with measured results")
    p.add_argument(
        "--data", help="only this dataset, folder or CSV, with where each value comes from (default: all datasets)"
    )
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
    "benchmark": _cmd_benchmark,
    "lr-find": _cmd_lr_find,
    "pack": _cmd_pack,
    "doctor": _cmd_doctor,
    "serve": _cmd_serve,
    "studio": _cmd_studio,
    "runs": _cmd_runs,
    "learning-curve": _cmd_learning_curve,
    "embed": _cmd_embed,
    "similar": _cmd_similar,
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


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so a training run ends `stopped` (resumable), not `died`."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


@contextlib.contextmanager
def stopped_cleanly_by_sigterm() -> Iterator[None]:
    """`kill`, a scheduler or a container stop ends a command as Ctrl-C does (a run `stopped`, resumable), not
    mid-write with its status saying `running`; the caller's own handler comes back afterwards."""
    if threading.current_thread() is not threading.main_thread():  # signals are the main thread's alone
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv  # `train --devices N` runs the same command again under torchrun
    if args.command is None:
        parser.print_help()
        return 2
    with setting_names(flag_namer(parser)), stopped_cleanly_by_sigterm():  # messages name settings by their flags
        try:
            return COMMANDS[args.command](args)
        except ImgclfError as exc:
            print(f"imgclf: error: {exc}", file=sys.stderr)
            return 2
        except Terminated:
            print("imgclf: stopped by SIGTERM", file=sys.stderr)
            return 128 + signal.SIGTERM
        except KeyboardInterrupt:
            print("imgclf: interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:  # output piped into head or less that closed early: not an error
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0


if __name__ == "__main__":
    sys.exit(main())

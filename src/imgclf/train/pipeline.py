"""The training pipeline, in four steps that each do one thing:

- :func:`prepare`: the data (loaded, split, measured) and the run config resolved from your settings,
  the recipe and the rules (:func:`imgclf.recipes.resolve`);
- :func:`build`: the model on its device, initialised from the data or a run, or resumed from ``last.pt``;
- :func:`fit`: the epochs (the :class:`~imgclf.train.loop.Trainer`), checkpoints after each;
- :func:`finish`: test metrics through the same :class:`~imgclf.predict.Classifier` that ``predict`` and
  ``evaluate`` use, figures and saved test predictions.

What happens is told as events (:mod:`imgclf.train.events`) to the run's sinks. Everything written into the
run directory goes through its :class:`~imgclf.rundir.RunDir`; under distributed training only the main
process has sinks and a run directory that writes (:class:`~imgclf.train.distributed.Distributed`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import ModelConfig, RunConfig, TrainConfig
from ..data import BatchIterator, DataBundle, Split, load_data, normalise
from ..data.loader import TrainBatches
from ..data.shards import ShardBatches, shard_sample
from ..errors import ConfigError, ImgclfError, ModelError
from ..evaluate import (
    apply_temperature,
    calibration_note,
    eval_batch,
    fit_temperature,
    per_class_table,
    reliability,
    split_metrics,
)
from ..metrics import best_thresholds, calibration_error
from ..models import count_parameters, create_model, get_model_spec, head_of
from ..models.registry import classifier_layer, pretrained_stats
from ..plots.figures import (
    plot_confusion_matrix,
    plot_curves,
    plot_image_grid,
    plot_per_class,
    plot_predictions,
    plot_reliability,
)
from ..plots.tables import Table
from ..predict import Classifier
from ..recipes import DataFacts, describe_sources, device_class, image_size_cap, resolve
from ..rundir import (
    BEST,
    CONFIG,
    CONFUSION_MATRIX,
    CURVES,
    LAST,
    PER_CLASS,
    PREDICTIONS_PLOT,
    RELIABILITY,
    SAMPLES,
    Checkpoint,
    InferenceSpec,
    RunDir,
    SplitPredictions,
    read_checkpoint,
)
from ..runtime import Log, quiet, resolve_device, seed_everything
from ..tasks import label_names
from .balance import balance_for, is_imbalanced
from .distributed import SINGLE, Distributed, check_sync_bn, init_distributed
from .events import (
    CallbackSink,
    EpochCallback,
    Events,
    RunFailed,
    RunFinished,
    RunStarted,
    check_trackers,
    run_sinks,
)
from .loop import FitResult, Trainer
from .probe import ProbeResult
from .search import SearchOutcome, run_search, search_applies
from .speed import seconds_per_image

WHITENING_IMAGES = 5000  # training images that estimate the whitening layer's patch covariance


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict[str, Any]
    history: list[dict]
    config: RunConfig
    main_process: bool = True  # distributed: whether this process is the one that writes, prints and reports

    @property
    def accuracy(self) -> float:
        return self.metrics["test"]["accuracy"]

    @property
    def best_checkpoint(self) -> Path:
        return self.run_dir / BEST

    @property
    def last_checkpoint(self) -> Path:
        return self.run_dir / LAST

    def __repr__(self) -> str:
        return f"TrainResult(run_dir={str(self.run_dir)!r}, test_accuracy={self.accuracy:.4f}, best_epoch={self.metrics['best_epoch']})"


@dataclass
class Prepared:
    cfg: RunConfig  # every setting concrete
    data: DataBundle
    device: torch.device
    distributed: Distributed = field(default_factory=Distributed)
    init: Checkpoint | None = None  # the run `init` names, read once
    variant: str = "default"  # the recipe's variant
    search: SearchOutcome | None = None  # what the folder default tried, when it searched

    @property
    def probe(self) -> ProbeResult | None:
        """The probe the model's head starts from (the search chose the pretrained network)."""
        return self.search.probe if self.search is not None else None


# ---------------------------------------------------------------- prepare


def _pretrained_stats(model: ModelConfig, channels: int) -> tuple[list[float], list[float]] | None:
    return pretrained_stats(model.model, channels) if (model.pretrained or model.weights) else None


def _absolute_paths(cfg: RunConfig, kind: str) -> RunConfig:
    """Paths in the saved config are absolute, so evaluate and `config` work from any directory."""

    def absolute(path: str | None) -> str | None:
        return str(Path(path).expanduser().resolve()) if path else path

    return cfg.replace(
        data=absolute(cfg.data.data) if kind != "builtin" else cfg.data.data,
        images=absolute(cfg.data.images),
        data_dir=absolute(cfg.data.data_dir),
        weights=absolute(cfg.model.weights),
    )


def _init_checkpoint(settings: TrainConfig) -> Checkpoint | None:
    return read_checkpoint(RunDir.checkpoint_path(settings.init)) if settings.init else None


def _from_init(settings: TrainConfig, init: Checkpoint | None) -> TrainConfig:
    """Unset model and image size taken from the run ``init`` names: its weights fit only its own network."""
    if init is None:
        return settings
    if settings.is_set("model") and settings.model != init.spec.model:
        raise ConfigError(
            f"`init` {settings.init}: holds a {init.spec.model}, not a {settings.model}; leave `model` unset to use its model"
        )
    return settings.replace(
        model=init.spec.model,
        model_args=settings.model_args if settings.is_set("model_args") else dict(init.spec.model_args),
        image_size=settings.image_size or init.spec.image_size,
    )


def prepare(settings: TrainConfig, log: Log, distributed: Distributed = SINGLE) -> Prepared:
    """Load the data, resolve the run config (measuring this machine for `budget`), log both."""
    init = _init_checkpoint(settings)
    settings = _from_init(settings, init)
    device = distributed.device(resolve_device(settings.device))
    check_sync_bn(settings.sync_bn and distributed.enabled, device.type)
    with distributed.main_first():  # the first process decodes and writes the cache; the others read it
        data = load_data(settings.data_config, size_cap=image_size_cap(device.type))
    for note in (
        f"loaded {data.name}'s decoded images from the cache in {settings.data_dir}/cache (`cache=False` decodes again)"
        if data.from_cache
        else "",
        data.size_note,
        data.storage_note,
    ):
        if note:
            log(note)
    search = None
    if data.task.name != "single_label" and search_applies(settings, data.kind, 1):
        log("search: for one label per image only; several labels train the cnn's recipe (or set `model`)")
        settings = settings.replace(search="off")
    if distributed.enabled and search_applies(settings, data.kind, 1):
        log("search: not under distributed training (each process would search alone); the cnn's recipe, or `model`")
    if search_applies(settings, data.kind, distributed.world_size):
        search = run_search(settings, data, device, log)
        seed_everything(settings.seed)  # the chosen run draws as it would have without the search: the same cnn
        if search.changes:
            settings = settings.replace(_origin="search: the best on validation (search.json)", **search.changes)
        if search.image_size != data.image_size and settings.is_set("image_size"):
            data = load_data(settings.data_config, size_cap=image_size_cap(device.type))
    if data.task.name == "multi_label" and not settings.is_set("label_smoothing"):
        settings = settings.replace(
            _origin="rule: several labels per image (the recipes' smoothing is for one)", label_smoothing=0.0
        )
    recipe = data.name if data.kind == "builtin" else "folder"
    # the imbalance rule was measured with one label per image (bench/imbalance.py): only there does it apply
    counts = tuple(data.class_counts()) if data.task.name == "single_label" else None
    facts = DataFacts(len(data.train), data.image_size, data.size_note, counts)
    measure = (lambda candidate: _seconds_per_epoch(candidate, data, device)) if settings.budget else None
    cfg, variant = resolve(settings, recipe, device.type, facts, measure, distributed.world_size)
    processes = f" x {distributed.world_size} processes" if distributed.enabled else ""
    log(
        f"recipe {recipe} / {variant} ({device_class(device.type)}): {cfg.model.model}, {cfg.schedule.epochs:g} epochs, "
        f"batch {cfg.optim.batch_size}{processes}, lr {cfg.optim.lr:.4g}; where each value comes from:"
    )
    log(Table(["setting", "value", "from"], describe_sources(cfg)).to_text())
    stats = (init.spec.mean, init.spec.std) if init is not None else _pretrained_stats(cfg.model, data.channels)
    if stats:  # the normalisation the starting weights learned under
        data.mean, data.std = list(stats[0]), list(stats[1])
    if data.skipped:
        log(f"warning: skipped {len(data.skipped)} unusable file(s); listed in skipped.txt")
    log(
        f"data {data.name}: {len(data.train)} train / {len(data.val)} val / {len(data.test)} test images, "
        f"{data.channels}x{data.image_size}x{data.image_size}"
    )
    return Prepared(_absolute_paths(cfg, data.kind), data, device, distributed, init, variant, search)


# ---------------------------------------------------------------- build


def build_model(model: ModelConfig, data: Any, device: torch.device) -> torch.nn.Module:
    """The model on ``device`` in channels-last layout (faster convolutions with oneDNN and cuDNN).
    ``data`` needs ``channels``, ``num_classes`` and ``image_size``."""
    network = create_model(model.model, data.channels, data.num_classes, data.image_size, **model.model_args)
    if model.pretrained or model.weights:
        spec = get_model_spec(model.model)
        if spec.load_pretrained is None:
            raise ConfigError(
                f"model {model.model} has no pretrained weights; `pretrained` and `weights` work with resnet18, "
                "torchvision:NAME and timm:NAME"
            )
        spec.load_pretrained(network, model.weights)
    return network.to(device).to(memory_format=torch.channels_last)


def load_init(model: torch.nn.Module, init: Checkpoint, classes: list[str], log: Log) -> None:
    """Start from a run's weights: all of them when the classes are the same, else all but the head."""
    head = classifier_layer(model) + "."
    same_classes = init.spec.classes == classes
    state = {k: v for k, v in init.state_dict.items() if same_classes or not k.startswith(head)}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise ModelError(
            f"`init` {init.path}: its weights do not fit this data ({str(exc).splitlines()[-1].strip()})"
        ) from None
    if unexpected or [k for k in missing if not k.startswith(head)]:
        raise ModelError(f"`init` {init.path}: its weights do not fit model {init.spec.model} as built here")
    log(f"starting from {init.path}" + ("" if same_classes else f" with a new head for {len(classes)} classes"))


def build(prepared: Prepared, resuming: bool, log: Log = quiet) -> torch.nn.Module:
    """The model, started from ``init`` or with its data-dependent initialisation (``cnn``'s whitening
    layer), unless resuming."""
    model = build_model(prepared.cfg.model, prepared.data, prepared.device)
    if prepared.init is not None and not resuming:
        load_init(model, prepared.init, prepared.data.classes, log)
        return model
    if prepared.probe is not None and not resuming:  # LP-FT: fine-tuning starts from the probe's class layer
        layer = model.get_submodule(classifier_layer(model))
        assert isinstance(layer, torch.nn.Linear)
        with torch.no_grad():
            layer.weight.copy_(prepared.probe.weight)
            layer.bias.copy_(prepared.probe.bias)
        return model
    init_from_data = getattr(model, "init_from_data", None)
    if init_from_data is not None and not resuming:
        data = prepared.data
        sample = (
            shard_sample(data.train, WHITENING_IMAGES) if data.train.shards else data.train.images[:WHITENING_IMAGES]
        )
        init_from_data(normalise(sample, data.mean, data.std, prepared.device))
    return model


def eval_batches(split: Split, prepared: Prepared, **kwargs: Any) -> BatchIterator:
    """A split's batches, in order, normalised as the data's (for validation; and, with keywords, training's)."""
    data = prepared.data
    return BatchIterator(
        split,
        kwargs.pop("batch_size", eval_batch(split.images)),
        prepared.device,
        data.mean,
        data.std,
        hflip=data.hflip,
        seed=prepared.cfg.seed,
        channels_last=True,
        rank=prepared.distributed.rank,
        world_size=prepared.distributed.world_size,
        **kwargs,
    )


def train_batches(prepared: Prepared, sample_weights: torch.Tensor | None = None) -> TrainBatches:
    cfg = prepared.cfg
    if prepared.data.train.shards:
        if sample_weights is not None:
            raise ConfigError(
                "`sampler=balanced` draws by index, which packed shards do not have; use `class_weights=auto`"
            )
        return ShardBatches(
            prepared.data.train,
            cfg.optim.batch_size,
            prepared.device,
            prepared.data.mean,
            prepared.data.std,
            augment=cfg.augment.augment,
            hflip=prepared.data.hflip,
            seed=cfg.seed,
            channels_last=True,
            rank=prepared.distributed.rank,
            world_size=prepared.distributed.world_size,
        )
    # compiled graphs are specialised to a batch shape: drop the ragged last batch rather than recompile
    return eval_batches(
        prepared.data.train,
        prepared,
        batch_size=cfg.optim.batch_size,
        shuffle=True,
        augment=cfg.augment.augment,
        sample_weights=sample_weights,
        drop_last=cfg.run.compile,
    )


def trainer_for(prepared: Prepared, model: torch.nn.Module, **kwargs: Any) -> Trainer:
    """The trainer of ``model`` on the prepared data: its batches, head, class weights as the config says."""
    balance = balance_for(prepared.data.class_counts(), prepared.data.train.labels, prepared.cfg)
    val = kwargs.pop("val_batches") if "val_batches" in kwargs else eval_batches(prepared.data.val, prepared)
    return Trainer(
        model,
        prepared.cfg,
        train_batches(prepared, balance.sample_weights),
        val,
        task=prepared.data.task,
        class_weights=balance.class_weights,
        logit_offset=balance.logit_offset,
        num_classes=prepared.data.num_classes,
        head=head_of(model, get_model_spec(prepared.cfg.model.model)),
        distributed=prepared.distributed,
        **kwargs,
    )


def _seconds_per_epoch(candidate: RunConfig, data: DataBundle, device: torch.device) -> float:
    """This machine's training time for one epoch of ``candidate``: its own step (compiled, at its precision)
    timed on a few real batches of a fresh model (no pretrained weights are fetched to time it)."""
    prepared = Prepared(candidate.replace(pretrained=False, weights=None), data, device)
    model = build_model(prepared.cfg.model, data, device)
    return seconds_per_image(trainer_for(prepared, model, val_batches=None)) * len(data.train)


# ---------------------------------------------------------------- fit


def _log_class_balance(data: DataBundle, cfg: RunConfig, log: Log) -> None:
    counts = data.class_counts()
    shown = ", ".join(f"{name} {c}" for name, c in zip(data.classes[:20], counts[:20]))
    log(f"classes ({data.num_classes}), training images per class: {shown}{' ...' if data.num_classes > 20 else ''}")
    if min(counts) == 0:
        log(
            f"warning: class(es) {', '.join(n for n, c in zip(data.classes, counts) if c == 0)} have no training images"
        )
    elif is_imbalanced(counts) and data.task.name == "multi_label":
        log(
            f"labels of unequal frequency (largest {max(counts)}, smallest {min(counts)} images): each class's "
            "threshold is chosen on validation; `class_weights` weighs the loss by class (not measured here)"
        )
    elif is_imbalanced(counts):
        treatment = [
            f"class_weights={cfg.optim.class_weights}" if cfg.optim.class_weights != "none" else "",
            f"logit_adjustment={cfg.optim.logit_adjustment:g}" if cfg.optim.logit_adjustment else "",
            "sampler=balanced" if cfg.optim.sampler == "balanced" else "",
        ]
        chosen = ", ".join(t for t in treatment if t)
        log(
            f"imbalanced classes (largest {max(counts)}, smallest {min(counts)}): {chosen}; the best epoch is the "
            f"best {cfg.schedule.monitor}"
            if chosen
            else f"warning: imbalanced classes (largest {max(counts)}, smallest {min(counts)}) and no treatment; "
            "leave `class_weights` unset for the measured default (sqrt), or set `logit_adjustment` or `sampler=balanced`"
        )


def _plot_samples(batches: TrainBatches, data: DataBundle, path: Path) -> None:
    batches.set_epoch(0)  # epoch 0 is never trained on, so drawing it does not shift training's randomness
    x, y = next(iter(batches))
    x, y = x[:32].float().cpu(), y[:32].cpu()
    images = x * torch.tensor(data.std).view(1, -1, 1, 1) + torch.tensor(data.mean).view(1, -1, 1, 1)
    plot_image_grid(images, label_names(y, data.classes), path, suptitle="augmented training images")


def inference_spec(prepared: Prepared) -> InferenceSpec:
    cfg, data = prepared.cfg, prepared.data
    return InferenceSpec(
        cfg.model.model,
        dict(cfg.model.model_args),
        data.classes,
        data.image_size,
        data.channels,
        data.mean,
        data.std,
        data.hflip,
        cfg.eval.tta,
        resize=cfg.data.resize,
        task=data.task.name,
    )


def fit(
    prepared: Prepared,
    model: torch.nn.Module,
    run: RunDir,
    checkpoint: Checkpoint | None,
    events: Events,
    log: Log,
    verbose: bool,
) -> FitResult:
    """Train the epochs the config asks for (those left, when resuming), checkpointing after each."""
    cfg, data = prepared.cfg, prepared.data
    _log_class_balance(data, cfg, log)
    log(f"model {cfg.model.model}: {count_parameters(model):,} parameters, device {prepared.device}, run {run.path}")
    trainer = trainer_for(
        prepared,
        model,
        run=run,
        spec=inference_spec(prepared),
        events=events,
        log=log,
        verbose=verbose,
        score_start=prepared.probe is not None,
    )
    if checkpoint is None:
        _plot_samples(trainer.train_batches, data, run / SAMPLES)
    else:
        trainer.resume(checkpoint)
        log(f"resuming {run.path} after epoch {len(trainer.history)} of {cfg.schedule.epochs}")
    events.emit(
        RunStarted(
            str(run.path),
            data.name,
            cfg.model.model,
            cfg.schedule.epochs,
            len(trainer.history) + 1,
            cfg.to_dict(),
            list(trainer.history),
        )
    )
    return trainer.fit()


# ---------------------------------------------------------------- finish


def _plot_test_predictions(data: DataBundle, probs: torch.Tensor, path: Path, seed: int) -> None:
    """Up to 32 test images, half of them mistakes when there are that many."""
    wrong = torch.nonzero(probs.argmax(1) != data.test.labels).flatten()
    right = torch.nonzero(probs.argmax(1) == data.test.labels).flatten()
    generator = torch.Generator().manual_seed(seed)
    wrong = wrong[torch.randperm(len(wrong), generator=generator)][:16]
    right = right[torch.randperm(len(right), generator=generator)][: 32 - len(wrong)]
    index = torch.cat([wrong, right]).sort().values
    plot_predictions(data.test.images[index], probs[index], data.test.labels[index], data.classes, path)


def _plot_multilabel_predictions(data: DataBundle, predictions: SplitPredictions, path: Path) -> None:
    """The kept test images (the worst mistakes first, then some right), each with its predicted and true labels."""
    index = predictions.example_index[:32]
    predicted = label_names(predictions.predicted[index], data.classes)
    truth = label_names(predictions.labels[index], data.classes)
    wrong = predictions.wrong[index].tolist()
    titles = [f"{p[:24]}\n(true {t[:20]})" for p, t in zip(predicted, truth)]
    plot_image_grid(
        predictions.example_images[:32],
        titles,
        path,
        ["red" if w else "black" for w in wrong],
        "test predictions: labels over their thresholds (true labels); any label wrong in red",
    )


def calibrate(
    classifier: Classifier, data: DataBundle, run: RunDir, best: Checkpoint, log: Log
) -> tuple[Classifier, str | None]:
    """Temperature scaling: the temperature that best fits the validation split's labels, stored in best.pt
    (so predict, serve, explain and export all apply it) and in the classifier returned; with too few
    validation mistakes to fit one, the classifier as it was and the reason."""
    probs = classifier.predict_proba(data.val.images, eval_batch(data.val.images))
    note = calibration_note(probs, data.val.labels)
    if note is not None:
        log(note)
        return classifier, note
    spec = dataclasses.replace(classifier.spec, temperature=fit_temperature(probs, data.val.labels))
    run.save_checkpoint(BEST, dataclasses.replace(best, spec=spec))
    return Classifier(spec, classifier.model, classifier.device, config=classifier.config), None


MULTI_LABEL_CALIBRATION = (
    "not applied: several labels per image are decided by per-class thresholds chosen on the validation split "
    "(each label's best F1), which is what a probability is compared with; the probabilities are the sigmoid's"
)


def choose_thresholds(
    classifier: Classifier, data: DataBundle, run: RunDir, best: Checkpoint, log: Log
) -> tuple[Classifier, list[str]]:
    """Multi-label: each class's threshold, the one with the best F1 on the validation split, stored in best.pt
    (predict, serve, explain and export apply them); the classifier with them and how each was chosen."""
    probs = classifier.predict_proba(data.val.images, eval_batch(data.val.images))
    thresholds, how = best_thresholds(probs, data.val.labels)
    spec = dataclasses.replace(classifier.spec, thresholds=thresholds)
    run.save_checkpoint(BEST, dataclasses.replace(best, spec=spec))
    log(
        "per-class thresholds (best validation F1): "
        + ", ".join(f"{name} {t:g}" for name, t in zip(data.classes[:20], thresholds))
        + (" ..." if len(thresholds) > 20 else "")
    )
    return Classifier(spec, classifier.model, classifier.device, config=classifier.config), how


def _single_label_test(
    classifier: Classifier, data: DataBundle, run: RunDir, best: Checkpoint, log: Log
) -> tuple[dict[str, Any], torch.Tensor, dict[str, Any]]:
    """Calibrated test metrics and probabilities, the calibration record, its reliability figure."""
    classifier, not_calibrated = calibrate(classifier, data, run, best, log)
    test, probs = split_metrics(classifier, data.test, data.classes)
    temperature = classifier.spec.temperature
    uncalibrated = apply_temperature(probs, 1 / temperature)  # softmax(T log p): the probabilities before scaling
    ece_before = calibration_error(uncalibrated, data.test.labels)
    plot_reliability(
        reliability(uncalibrated, data.test.labels),
        reliability(probs, data.test.labels),
        (ece_before, test["calibration_error"]),
        run / RELIABILITY,
    )
    calibration = {  # temperature scaling, fitted on the validation split; ECE on the test split
        "temperature": temperature,
        "test_ece_before": ece_before,
        "test_ece_after": test["calibration_error"],
        "note": not_calibrated,  # why the temperature stayed 1, where it did
    }
    return test, probs, calibration


def _multi_label_test(
    classifier: Classifier, data: DataBundle, run: RunDir, best: Checkpoint, log: Log
) -> tuple[dict[str, Any], torch.Tensor, dict[str, Any]]:
    """Per-class thresholds from validation, then the test metrics they give."""
    classifier, how = choose_thresholds(classifier, data, run, best, log)
    test, probs = split_metrics(classifier, data.test, data.classes)
    for name, chosen in zip(data.classes, how):
        test["per_class"][name]["threshold_chosen"] = chosen
    return test, probs, {"temperature": 1.0, "note": MULTI_LABEL_CALIBRATION}


def finish(prepared: Prepared, model: torch.nn.Module, run: RunDir, result: FitResult, log: Log) -> TrainResult:
    """The best checkpoint's test metrics (as ``evaluate`` computes them), figures and saved predictions."""
    cfg, data = prepared.cfg, prepared.data
    best = read_checkpoint(run / BEST)
    model.load_state_dict(best.state_dict)
    plain = Classifier(inference_spec(prepared), model, prepared.device, config=cfg.to_dict())
    multi = data.task.name == "multi_label"
    test, probs, calibration = (_multi_label_test if multi else _single_label_test)(plain, data, run, best, log)
    metrics = {
        "test": test,
        "calibration": calibration,
        "task": data.task.name,
        "best_epoch": result.best_epoch,
        "best_val_loss": result.best_val_loss,
        "epochs_run": len(result.history),
        "stopped_early": result.stopped_early,
        "train_seconds": round(result.train_seconds, 3),
        "validation_seconds": round(result.validation_seconds, 3),
        "compile_seconds": round(result.compile_seconds, 3),
        "images_per_second": round(result.images_per_second, 1),
        "parameters": count_parameters(model),
        "device": str(prepared.device),
        "recipe_variant": prepared.variant,
        "search": prepared.search.to_dict() if prepared.search is not None else None,
        "data": {
            "name": data.name,
            "classes": data.classes,
            "image_size": data.image_size,
            "channels": data.channels,
            "train": len(data.train),
            "val": len(data.val),
            "test": len(data.test),
            "skipped": len(data.skipped),
        },
    }
    run.write_metrics(metrics)
    plot_curves(result.history, run / CURVES)
    plot_per_class(test, run / PER_CLASS)
    thresholds = [test["per_class"][c]["threshold"] for c in data.classes] if multi else None
    predictions = SplitPredictions.from_probs(
        probs, data.test.labels, data.test.images, cfg.seed, data.test.sources, thresholds
    )
    if multi:
        _plot_multilabel_predictions(data, predictions, run / PREDICTIONS_PLOT)
    else:
        plot_confusion_matrix(test["confusion_matrix"], data.classes, run / CONFUSION_MATRIX)
        _plot_test_predictions(data, probs, run / PREDICTIONS_PLOT, cfg.seed)
    run.save_predictions(predictions)
    log(per_class_table(test).to_text())
    how_good = (
        f"test subset accuracy {test['accuracy']:.4f}, macro F1 {test['macro_f1']:.4f}, mAP {test['mAP']:.4f}"
        if multi
        else f"test accuracy {test['accuracy']:.4f}, balanced accuracy {test['balanced_accuracy']:.4f}, macro F1 "
        f"{test['macro_f1']:.4f}"
    )
    log(
        f"{how_good} (best epoch {result.best_epoch}, {result.train_seconds:.1f}s, "
        f"{result.images_per_second:.0f} images/s); run saved in {run.path}"
    )
    return TrainResult(run.path, metrics, result.history, cfg)


# ---------------------------------------------------------------- the whole run


@dataclass
class Start:
    """Where a run starts: its settings, and, when resuming, its run directory and ``last.pt`` (None for a
    run stopped before its first epoch ended, which starts again in its own folder)."""

    settings: TrainConfig
    run: RunDir | None = None
    checkpoint: Checkpoint | None = None
    sources: dict[str, str] = field(default_factory=dict)  # a resumed run's record of where its values came from


def starting_config(
    config: TrainConfig | str | os.PathLike | None, resume: str | os.PathLike | None, settings: dict[str, Any]
) -> Start:
    """The settings to train with, and, when resuming, the run and its ``last.pt``."""
    if resume is not None:
        if config is not None:
            raise ConfigError("`resume` and `config` cannot be combined: a resumed run keeps its own config")
        run = RunDir(resume)
        checkpoint = run.resume_checkpoint()
        saved = checkpoint.config if checkpoint is not None else run.read_config()
        source = str(run / LAST) if checkpoint is not None else str(run / CONFIG)
        given = TrainConfig.from_dict(saved, source=source).replace(**{**settings, "out": str(run.path)})
        return Start(given, run, checkpoint, dict(saved.get("sources") or {}))
    if isinstance(config, TrainConfig):
        return Start(config.replace(**settings))
    if config is not None:
        return Start(TrainConfig.load(config).replace(**{"out": None, **settings}))  # never the saved run's folder
    return Start(TrainConfig(**settings))


def _run_directory(prepared: Prepared, run: RunDir | None) -> RunDir:
    """The run directory: made by the first process; the others get a view of it that never writes."""
    distributed = prepared.distributed
    if run is None and distributed.is_main:
        run = RunDir.create(prepared.cfg.run.out, f"{prepared.data.name}-{prepared.cfg.model.model}")
    path = distributed.broadcast(run.path if run is not None else None)
    assert isinstance(path, Path)
    return RunDir(path, writes=distributed.is_main)


def _failed(events: Events, state: str, error: str) -> None:
    """Mark the run failed or stopped; a place that cannot take even that (a full disk) keeps the first error."""
    try:
        events.emit(RunFailed(state, error))
    except ImgclfError:
        pass


def train_run(
    config: TrainConfig | str | os.PathLike | None,
    resume: str | os.PathLike | None,
    settings: dict[str, Any],
    callbacks: Iterable[EpochCallback],
    log: Log,
    verbose: bool,
) -> TrainResult:
    start = starting_config(config, resume, settings)
    distributed = init_distributed(resolve_device(start.settings.device).type)
    if not distributed.is_main:  # one process speaks, writes and calls back for all
        log, verbose, callbacks = quiet, False, ()
    try:
        seed_everything(start.settings.seed)  # the same on every process: initial weights, order, augmentation
        if start.run is not None and start.checkpoint is None:
            log(f"{start.run.path} stopped before its first epoch ended: starting it again there")
        prepared = prepare(start.settings, log, distributed)
        overridden = {name: "you" for name in settings}
        prepared.cfg = prepared.cfg.with_sources({**start.sources, **overridden})
        model = build(prepared, resuming=start.checkpoint is not None, log=log)  # a model error leaves no folder
        check_trackers(prepared.cfg.run.track)  # and neither does a tracker that is not installed
        run = _run_directory(prepared, start.run)
        prepared.cfg = prepared.cfg.replace(out=str(run.path))
        run.write_config(prepared.cfg.to_dict())
        run.write_skipped(prepared.data.skipped)
        if prepared.search is not None:
            run.write_search(prepared.search.to_dict())
        sinks = run_sinks(run, log, verbose, prepared.cfg.run.tensorboard, prepared.cfg.run.track)
        events = Events([*sinks, *map(CallbackSink, callbacks)] if distributed.is_main else [])
        try:
            result = fit(prepared, model, run, start.checkpoint, events, log, verbose)
            metrics = finish(prepared, model, run, result, log).metrics if distributed.is_main else None
        except KeyboardInterrupt:
            _failed(events, "stopped", "interrupted")
            log(f"\ninterrupted: {run.path} keeps the last finished epoch; continue it with `resume={run.path}`")
            raise
        except ImgclfError as exc:
            _failed(events, "failed", str(exc))
            raise
        except Exception as exc:
            _failed(events, "failed", f"{exc.__class__.__name__}: {exc}")
            raise
        shared = distributed.broadcast(metrics)
        assert isinstance(shared, dict)
        metrics = shared
        events.emit(RunFinished(metrics["test"]["accuracy"], result.best_epoch, result.train_seconds, metrics))
        return TrainResult(run.path, metrics, result.history, prepared.cfg, distributed.is_main)
    finally:
        distributed.shutdown()

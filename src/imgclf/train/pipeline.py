"""The training pipeline, in four steps that each do one thing:

- :func:`prepare`: the data (loaded, split, measured) and the recipe filled into the config;
- :func:`build`: the model on its device, initialised from the data or resumed from ``last.pt``;
- :func:`fit`: the epochs (the :class:`~imgclf.train.loop.Trainer`), checkpoints after each;
- :func:`finish`: test metrics through the same :class:`~imgclf.predict.Classifier` that ``predict`` and
  ``evaluate`` use, figures and saved test predictions.

Everything written into the run directory goes through its :class:`~imgclf.rundir.RunDir`, from here
and from the loop: under distributed training one place decides which process writes.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import TrainConfig
from ..data import BatchIterator, DataBundle, Split, load_data, normalise
from ..data.loader import TrainBatches
from ..data.shards import ShardBatches, shard_sample
from ..errors import ConfigError, ModelError
from ..evaluate import (
    apply_temperature,
    calibration_error,
    calibration_note,
    eval_batch,
    fit_temperature,
    per_class_table,
    reliability,
    split_metrics,
)
from ..models import count_parameters, create_model, get_model_spec, head_of
from ..models.registry import classifier_layer
from ..predict import Classifier
from ..recipes import apply_recipe, device_class, image_size_cap
from ..report.plots import (
    plot_confusion_matrix,
    plot_curves,
    plot_image_grid,
    plot_per_class,
    plot_predictions,
    plot_reliability,
)
from ..rundir import (
    BEST,
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
from .distributed import Distributed, check_sync_bn, init_distributed
from .loop import EpochCallback, FitResult, Trainer
from .speed import seconds_per_image

IMBALANCE_RATIO = 3.0
WHITENING_IMAGES = 5000  # training images that estimate the whitening layer's patch covariance


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict[str, Any]
    history: list[dict]
    config: TrainConfig

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
    cfg: TrainConfig  # every setting concrete
    data: DataBundle
    device: torch.device
    distributed: Distributed = field(default_factory=Distributed)
    init: Checkpoint | None = None  # the run `init` names, read once


# ---------------------------------------------------------------- prepare


def _pretrained_stats(cfg: TrainConfig, channels: int) -> tuple[list[float], list[float]] | None:
    stats = get_model_spec(cfg.model_name).pretrained_stats if (cfg.pretrained or cfg.weights) else None
    if stats is None or channels == 3:
        return stats
    return [sum(stats[0]) / 3] * channels, [sum(stats[1]) / 3] * channels


def _absolute_paths(cfg: TrainConfig, kind: str) -> TrainConfig:
    """Paths in the saved config are absolute, so evaluate and `config` work from any directory."""

    def absolute(path: str | None) -> str | None:
        return str(Path(path).expanduser().resolve()) if path else path

    return cfg.replace(
        data=absolute(cfg.data) if kind != "builtin" else cfg.data,
        images=absolute(cfg.images),
        data_dir=absolute(cfg.data_dir),
        weights=absolute(cfg.weights),
    )


def _load_data(cfg: TrainConfig, device: torch.device, distributed: Distributed) -> DataBundle:
    """The data, loaded by the first process first (it decodes and writes the cache), then by the others."""
    if not distributed.is_main:
        distributed.barrier()
    data = load_data(cfg, size_cap=image_size_cap(device.type))
    if distributed.is_main:
        distributed.barrier()
    return data


def _init_checkpoint(cfg: TrainConfig) -> Checkpoint | None:
    return read_checkpoint(RunDir.checkpoint_path(cfg.init)) if cfg.init else None


def _from_init(cfg: TrainConfig, init: Checkpoint | None) -> TrainConfig:
    """Unset model and image size taken from the run ``init`` names: its weights fit only its own network."""
    if init is None:
        return cfg
    if cfg.model is not None and cfg.model_name != init.spec.model:
        raise ConfigError(
            f"`init` {cfg.init}: holds a {init.spec.model}, not a {cfg.model_name}; leave `model` unset to use its model"
        )
    return cfg.replace(
        model=init.spec.model,
        model_args=cfg.model_args if cfg.model_args is not None else dict(init.spec.model_args),
        image_size=cfg.image_size or init.spec.image_size,
    )


def prepare(cfg: TrainConfig, log: Log, distributed: Distributed | None = None) -> Prepared:
    """Load the data, fill the recipe into the config (measuring this machine for `budget`), log both."""
    distributed = distributed or Distributed()
    init = _init_checkpoint(cfg)
    cfg = _from_init(cfg, init)
    device = distributed.device(resolve_device(cfg.device))
    check_sync_bn(bool(cfg.sync_bn) and distributed.enabled, device.type)
    data = _load_data(cfg, device, distributed)
    if data.from_cache:
        log(f"loaded {data.name}'s decoded images from the cache in {cfg.data_dir}/cache (`cache=False` decodes again)")
    if data.size_note:
        log(data.size_note)
    if data.storage_note:
        log(data.storage_note)
    recipe = data.name if data.kind == "builtin" else "folder"
    measure = (lambda candidate: _seconds_per_epoch(candidate, data, device)) if cfg.budget else None
    cfg, variant = apply_recipe(cfg, recipe, device.type, len(data.train), measure, distributed.world_size)
    processes = f" x {distributed.world_size} processes" if distributed.enabled else ""
    log(
        f"recipe: {recipe} / {variant} ({device_class(device.type)}): {cfg.model} {cfg.model_args or ''}, "
        f"{cfg.epochs:g} epochs, batch {cfg.batch_size}{processes}, lr {cfg.lr:.4g}"
    )
    stats = (init.spec.mean, init.spec.std) if init is not None else _pretrained_stats(cfg, data.channels)
    if stats:  # the normalisation the starting weights learned under
        data.mean, data.std = list(stats[0]), list(stats[1])
    if data.skipped:
        log(f"warning: skipped {len(data.skipped)} unusable file(s); listed in skipped.txt")
    log(
        f"data {data.name}: {len(data.train)} train / {len(data.val)} val / {len(data.test)} test images, "
        f"{data.channels}x{data.image_size}x{data.image_size}"
    )
    return Prepared(_absolute_paths(cfg, data.kind), data, device, distributed, init)


# ---------------------------------------------------------------- build


def build_model(cfg: TrainConfig, data: Any, device: torch.device) -> torch.nn.Module:
    """The model on ``device`` in channels-last layout (faster convolutions with oneDNN and cuDNN).
    ``data`` needs ``channels``, ``num_classes`` and ``image_size``."""
    model = create_model(cfg.model_name, data.channels, data.num_classes, data.image_size, **(cfg.model_args or {}))
    if cfg.pretrained or cfg.weights:
        spec = get_model_spec(cfg.model_name)
        if spec.load_pretrained is None:
            raise ConfigError(
                f"model {cfg.model} has no pretrained weights; `pretrained` and `weights` work with resnet18, "
                "torchvision:NAME and timm:NAME"
            )
        spec.load_pretrained(model, cfg.weights)
    return model.to(device).to(memory_format=torch.channels_last)


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
    model = build_model(prepared.cfg, prepared.data, prepared.device)
    if prepared.init is not None and not resuming:
        load_init(model, prepared.init, prepared.data.classes, log)
        return model
    init_from_data = getattr(model, "init_from_data", None)
    if init_from_data is not None and not resuming:
        data = prepared.data
        sample = (
            shard_sample(data.train, WHITENING_IMAGES) if data.train.shards else data.train.images[:WHITENING_IMAGES]
        )
        init_from_data(normalise(sample, data.mean, data.std, prepared.device))
    return model


def _batches(split: Split, prepared: Prepared, **kwargs: Any) -> BatchIterator:
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


def _train_batches(prepared: Prepared, sample_weights: torch.Tensor | None = None) -> TrainBatches:
    cfg = prepared.cfg
    if prepared.data.train.shards:
        if sample_weights is not None:
            raise ConfigError(
                "`sampler=balanced` draws by index, which packed shards do not have; use `class_weights=auto`"
            )
        assert cfg.batch_size and cfg.augment, "filled in by the recipe"
        return ShardBatches(
            prepared.data.train,
            cfg.batch_size,
            prepared.device,
            prepared.data.mean,
            prepared.data.std,
            augment=cfg.augment,
            hflip=prepared.data.hflip,
            seed=cfg.seed,
            channels_last=True,
            rank=prepared.distributed.rank,
            world_size=prepared.distributed.world_size,
        )
    # compiled graphs are specialised to a batch shape: drop the ragged last batch rather than recompile
    return _batches(
        prepared.data.train,
        prepared,
        batch_size=cfg.batch_size,
        shuffle=True,
        augment=cfg.augment,
        sample_weights=sample_weights,
        drop_last=bool(cfg.compile),
    )


def _seconds_per_epoch(cfg: TrainConfig, data: DataBundle, device: torch.device) -> float:
    """This machine's training time for one epoch of ``cfg``, measured on a few real batches."""
    candidate = Prepared(cfg, data, device)
    model = build_model(cfg.replace(pretrained=False, weights=None), data, device)
    return seconds_per_image(model, _train_batches(candidate)) * len(data.train)


# ---------------------------------------------------------------- fit


def _class_balance(data: DataBundle, cfg: TrainConfig, log: Log) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Report class counts; return (loss class weights, per-sample sampling weights) as the config asks."""
    counts = torch.tensor(data.class_counts(), dtype=torch.float64)
    shown = ", ".join(f"{name} {int(c)}" for name, c in zip(data.classes[:20], counts[:20]))
    log(f"classes ({data.num_classes}), training images per class: {shown}{' ...' if data.num_classes > 20 else ''}")
    if counts.min() == 0:
        log(
            f"warning: class(es) {', '.join(n for n, c in zip(data.classes, counts) if c == 0)} have no training images"
        )
    elif counts.max() > IMBALANCE_RATIO * counts.min() and cfg.class_weights == "none" and cfg.sampler == "shuffle":
        log(
            f"warning: imbalanced classes (largest {int(counts.max())}, smallest {int(counts.min())}); "
            "consider `class_weights=auto` or `sampler=balanced`"
        )
    inverse = 1.0 / counts.clamp_min(1)
    class_weights = (inverse / inverse.mean()).float() if cfg.class_weights == "auto" else None
    sample_weights = inverse[data.train.labels].float() if cfg.sampler == "balanced" else None
    return class_weights, sample_weights


def _plot_samples(batches: TrainBatches, data: DataBundle, path: Path) -> None:
    batches.set_epoch(0)  # epoch 0 is never trained on, so drawing it does not shift training's randomness
    x, y = next(iter(batches))
    x, y = x[:32].float().cpu(), y[:32].cpu()
    images = x * torch.tensor(data.std).view(1, -1, 1, 1) + torch.tensor(data.mean).view(1, -1, 1, 1)
    plot_image_grid(images, [data.classes[i] for i in y.tolist()], path, suptitle="augmented training images")


def inference_spec(prepared: Prepared) -> InferenceSpec:
    cfg, data = prepared.cfg, prepared.data
    return InferenceSpec(
        cfg.model_name,
        dict(cfg.model_args or {}),
        data.classes,
        data.image_size,
        data.channels,
        data.mean,
        data.std,
        data.hflip,
        bool(cfg.tta),
    )


def fit(
    prepared: Prepared,
    model: torch.nn.Module,
    run: RunDir,
    checkpoint: Checkpoint | None,
    callbacks: Iterable[EpochCallback],
    log: Log,
    verbose: bool,
) -> FitResult:
    """Train the epochs the config asks for (those left, when resuming), checkpointing after each."""
    cfg, data = prepared.cfg, prepared.data
    class_weights, sample_weights = _class_balance(data, cfg, log)
    log(f"model {cfg.model}: {count_parameters(model):,} parameters, device {prepared.device}, run {run.path}")
    train_batches = _train_batches(prepared, sample_weights)
    if checkpoint is None and prepared.distributed.is_main:
        _plot_samples(train_batches, data, run / SAMPLES)
    trainer = Trainer(
        model,
        train_batches,
        _batches(data.val, prepared),
        cfg,
        run,
        inference_spec(prepared),
        class_weights=class_weights,
        head=head_of(model, get_model_spec(cfg.model_name)),
        callbacks=callbacks,
        log=log,
        verbose=verbose,
        distributed=prepared.distributed,
    )
    if checkpoint is not None:
        trainer.resume(checkpoint)
        log(f"resuming {run.path} after epoch {len(trainer.history)} of {cfg.epochs}")
    try:
        return trainer.fit()
    except KeyboardInterrupt:
        log(f"\ninterrupted: {run.path} keeps the last finished epoch; continue it with `resume={run.path}`")
        raise


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


def calibrate(
    classifier: Classifier, data: DataBundle, run: RunDir, best: Checkpoint, log: Log
) -> tuple[Classifier, str | None]:
    """Temperature scaling: the temperature that best fits the validation split's labels, stored in best.pt
    (so predict, serve, explain and export all apply it) and in the classifier returned; with too few
    validation mistakes to fit one, the classifier as it was and the reason."""
    tta = classifier.spec.tta
    probs = classifier.predict_proba(data.val.images, eval_batch(data.val.images), tta=tta)
    note = calibration_note(probs, data.val.labels)
    if note is not None:
        log(note)
        return classifier, note
    spec = dataclasses.replace(classifier.spec, temperature=fit_temperature(probs, data.val.labels))
    run.save_checkpoint(BEST, dataclasses.replace(best, spec=spec))
    return Classifier(spec, classifier.model, classifier.device, config=classifier.config), None


def finish(prepared: Prepared, model: torch.nn.Module, run: RunDir, result: FitResult, log: Log) -> TrainResult:
    """The best checkpoint's test metrics (as ``evaluate`` computes them), figures and saved predictions."""
    cfg, data = prepared.cfg, prepared.data
    best = read_checkpoint(run / BEST)
    model.load_state_dict(best.state_dict)
    plain = Classifier(inference_spec(prepared), model, prepared.device, config=cfg.to_dict())
    classifier, not_calibrated = calibrate(plain, data, run, best, log)
    test, probs = split_metrics(classifier, data.test, data.classes, tta=bool(cfg.tta))
    temperature = classifier.spec.temperature
    uncalibrated = apply_temperature(probs, 1 / temperature)  # softmax(T log p): the probabilities before scaling
    ece_before = calibration_error(uncalibrated, data.test.labels)
    plot_reliability(
        reliability(uncalibrated, data.test.labels),
        reliability(probs, data.test.labels),
        (ece_before, test["calibration_error"]),
        run / RELIABILITY,
    )
    metrics = {
        "test": test,
        "calibration": {  # temperature scaling, fitted on the validation split; ECE on the test split
            "temperature": temperature,
            "test_ece_before": ece_before,
            "test_ece_after": test["calibration_error"],
            "note": not_calibrated,  # why the temperature stayed 1, where it did
        },
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
    plot_confusion_matrix(test["confusion_matrix"], data.classes, run / CONFUSION_MATRIX)
    plot_per_class(test, run / PER_CLASS)
    _plot_test_predictions(data, probs, run / PREDICTIONS_PLOT, cfg.seed)
    run.save_predictions(
        SplitPredictions.from_probs(probs, data.test.labels, data.test.images, cfg.seed, data.test.sources)
    )
    log(per_class_table(test).to_text())
    log(
        f"test accuracy {test['accuracy']:.4f} (best epoch {result.best_epoch}, {result.train_seconds:.1f}s, "
        f"{result.images_per_second:.0f} images/s); run saved in {run.path}"
    )
    return TrainResult(run.path, metrics, result.history, cfg)


# ---------------------------------------------------------------- the whole run


def starting_config(
    config: TrainConfig | str | os.PathLike | None, resume: str | os.PathLike | None, settings: dict[str, Any]
) -> tuple[TrainConfig, RunDir | None, Checkpoint | None]:
    """The config to train with, and, when resuming, the run and its ``last.pt``."""
    if resume is not None:
        if config is not None:
            raise ConfigError("`resume` and `config` cannot be combined: a resumed run keeps its own config")
        run = RunDir(resume)
        checkpoint = run.resume_checkpoint()
        return TrainConfig.from_dict(checkpoint.config, source=str(run / LAST)).replace(**settings), run, checkpoint
    if isinstance(config, TrainConfig):
        return config.replace(**settings), None, None
    if config is not None:
        return TrainConfig.load(config).replace(**{"out": None, **settings}), None, None  # never the saved run's folder
    return TrainConfig().replace(**settings), None, None


def _run_directory(prepared: Prepared, run: RunDir | None) -> RunDir:
    """The run directory: made by the first process; the others get a view of it that never writes."""
    distributed = prepared.distributed
    if run is None and distributed.is_main:
        run = RunDir.create(prepared.cfg.out, f"{prepared.data.name}-{prepared.cfg.model}")
    path = distributed.broadcast(run.path if run is not None else None)
    assert isinstance(path, Path)
    return RunDir(path, writes=distributed.is_main)


def train_run(
    config: TrainConfig | str | os.PathLike | None,
    resume: str | os.PathLike | None,
    settings: dict[str, Any],
    callbacks: Iterable[EpochCallback],
    log: Log,
    verbose: bool,
) -> TrainResult:
    cfg, run, checkpoint = starting_config(config, resume, settings)
    distributed = init_distributed(resolve_device(cfg.device).type)
    if not distributed.is_main:  # one process speaks for all
        log, verbose = quiet, False
    try:
        seed_everything(cfg.seed)  # the same on every process: the same initial weights, order and augmentation
        prepared = prepare(cfg, log, distributed)
        model = build(
            prepared, resuming=checkpoint is not None
        )  # before the run directory: a model error leaves nothing
        run = _run_directory(prepared, run)
        prepared.cfg = prepared.cfg.replace(out=str(run.path))
        run.write_config(prepared.cfg.to_dict())
        run.write_skipped(prepared.data.skipped)
        result = fit(prepared, model, run, checkpoint, callbacks, log, verbose)
        if distributed.is_main:
            finished = finish(prepared, model, run, result, log)
        metrics = distributed.broadcast(finished.metrics if distributed.is_main else None)
        assert isinstance(metrics, dict)
        return TrainResult(run.path, metrics, result.history, prepared.cfg)
    finally:
        distributed.shutdown()

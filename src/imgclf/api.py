"""The Python API: ``train``, ``evaluate``, ``predict``, ``load``, and over finished runs ``inspect``, ``explain``,
``errors``, ``compare`` and ``report`` (from :mod:`imgclf.runs`). The CLI is a thin layer over these.

``train`` runs the stages in one direction: config -> data -> model -> train -> evaluate -> report,
and leaves everything in a run directory (see README, "The run directory").
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import TrainConfig
from .data import BatchIterator, DataBundle, Split, load_data, normalise
from .errors import CheckpointError, ConfigError
from .evaluate import SplitPredictions, compute_metrics, predict_batches
from .fsutil import atomic_write_json, atomic_write_text
from .models import count_parameters, create_model, get_model_spec, head_of
from .predict import ImageInput, Prediction, load
from .recipes import apply_recipe, device_class
from .report import per_class_table, plot_confusion_matrix, plot_curves, plot_image_grid, plot_per_class, plot_predictions
from .runtime import resolve_device, seed_everything
from .runs import (
    PREDICTIONS_FILE, CompareResult, ErrorsResult, ExplainResult, InspectResult, checkpoint_data, compare, errors, explain,
    inspect, report,
)
from .train import Trainer, read_checkpoint, seconds_per_image

__all__ = [  # the runs API is re-exported here: one module for the command line to call
    "CompareResult", "ErrorsResult", "ExplainResult", "InspectResult", "TrainResult", "compare", "describe_dataset_sources",
    "describe_models", "errors", "evaluate", "explain", "inspect", "predict", "report", "train",
]

EVAL_BATCH = 1024
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
        return self.run_dir / "best.pt"

    @property
    def last_checkpoint(self) -> Path:
        return self.run_dir / "last.pt"

    def __repr__(self) -> str:
        return f"TrainResult(run_dir={str(self.run_dir)!r}, test_accuracy={self.accuracy:.4f}, best_epoch={self.metrics['best_epoch']})"


def _new_run_dir(cfg: TrainConfig, data_name: str) -> Path:
    """``--out`` if it is new or empty, else ``runs/<data>-<model>[-N]``: a run never overwrites another."""
    if cfg.out:
        out = Path(cfg.out)
        if out.exists() and any(out.iterdir()):
            raise ConfigError(f"--out {out}: already holds a run; choose another --out, or continue it with --resume {out}")
        out.mkdir(parents=True, exist_ok=True)
        return out
    base = Path("runs") / f"{data_name}-{cfg.model}".replace(" ", "_")
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    candidate.mkdir(parents=True)
    return candidate


def _class_balance(data: DataBundle, cfg: TrainConfig, log: Callable[[str], None]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Report class counts; return (loss class weights, per-sample sampling weights) as the config asks."""
    counts = torch.tensor(data.class_counts(), dtype=torch.float64)
    shown = ", ".join(f"{name} {int(c)}" for name, c in zip(data.classes[:20], counts[:20]))
    log(f"classes ({data.num_classes}), training images per class: {shown}{' ...' if data.num_classes > 20 else ''}")
    if counts.min() == 0:
        log(f"warning: class(es) {', '.join(n for n, c in zip(data.classes, counts) if c == 0)} have no training images")
    elif counts.max() > IMBALANCE_RATIO * counts.min() and cfg.class_weights == "none" and cfg.sampler == "shuffle":
        log(f"warning: imbalanced classes (largest {int(counts.max())}, smallest {int(counts.min())}); "
            "consider --class-weights auto or --sampler balanced")
    inverse = 1.0 / counts.clamp_min(1)
    class_weights = (inverse / inverse.mean()).float() if cfg.class_weights == "auto" else None
    sample_weights = inverse[data.train.labels].float() if cfg.sampler == "balanced" else None
    return class_weights, sample_weights


def _build_model(cfg: TrainConfig, data: DataBundle, device: torch.device) -> torch.nn.Module:
    """The model on ``device`` in channels-last layout (faster convolutions with oneDNN and cuDNN)."""
    model = create_model(cfg.model, data.channels, data.num_classes, data.image_size, **(cfg.model_args or {}))
    if cfg.pretrained or cfg.weights:
        spec = get_model_spec(cfg.model)
        if spec.load_pretrained is None:
            raise ConfigError(f"model {cfg.model} has no pretrained weights; --pretrained/--weights work with resnet18")
        spec.load_pretrained(model, cfg.weights)
    return model.to(device, memory_format=torch.channels_last)


def _init_from_data(model: torch.nn.Module, data: DataBundle, device: torch.device) -> None:
    """Data-dependent initialisation for models that have one (``cnn``'s whitening layer)."""
    init = getattr(model, "init_from_data", None)
    if init is None:
        return
    init(normalise(data.train.images[:WHITENING_IMAGES], data.mean, data.std, device))


def _pretrained_stats(cfg: TrainConfig, channels: int) -> tuple[list[float], list[float]] | None:
    stats = get_model_spec(cfg.model).pretrained_stats if (cfg.pretrained or cfg.weights) else None
    if stats is None or channels == 3:
        return stats
    return [sum(stats[0]) / 3] * channels, [sum(stats[1]) / 3] * channels


def _checkpoint_meta(cfg: TrainConfig, data: DataBundle) -> dict[str, Any]:
    """What inference needs besides the weights (stored in best.pt and last.pt)."""
    return {
        "model": {"name": cfg.model, "kwargs": dict(cfg.model_args or {})},
        "classes": data.classes, "image_size": data.image_size, "channels": data.channels,
        "mean": data.mean, "std": data.std, "hflip": data.hflip, "config": cfg.to_dict(),
    }


def _batches(split: Split, data: DataBundle, cfg: TrainConfig, device: torch.device, **kwargs: Any) -> BatchIterator:
    return BatchIterator(split, kwargs.pop("batch_size", EVAL_BATCH), device, data.mean, data.std, hflip=data.hflip,
                         seed=cfg.seed, channels_last=True, **kwargs)


def _train_batches(data: DataBundle, cfg: TrainConfig, device: torch.device,
                   sample_weights: torch.Tensor | None = None) -> BatchIterator:
    # compiled graphs are specialised to a batch shape: drop the ragged last batch rather than recompile
    return _batches(data.train, data, cfg, device, batch_size=cfg.batch_size, shuffle=True, augment=cfg.augment,
                    sample_weights=sample_weights, drop_last=bool(cfg.compile))


def _plot_samples(batches: BatchIterator, data: DataBundle, path: Path) -> None:
    batches.set_epoch(0)  # epoch 0 is never trained on, so drawing it does not shift training's randomness
    x, y = next(iter(batches))
    x, y = x[:32].float().cpu(), y[:32].cpu()
    images = x * torch.tensor(data.std).view(1, -1, 1, 1) + torch.tensor(data.mean).view(1, -1, 1, 1)
    plot_image_grid(images, [data.classes[i] for i in y.tolist()], path, suptitle="augmented training images")


def _plot_test_predictions(data: DataBundle, probs: torch.Tensor, path: Path, seed: int) -> None:
    """Up to 32 test images, half of them mistakes when there are that many."""
    wrong = torch.nonzero(probs.argmax(1) != data.test.labels).flatten()
    right = torch.nonzero(probs.argmax(1) == data.test.labels).flatten()
    generator = torch.Generator().manual_seed(seed)
    wrong = wrong[torch.randperm(len(wrong), generator=generator)][:16]
    right = right[torch.randperm(len(right), generator=generator)][: 32 - len(wrong)]
    index = torch.cat([wrong, right]).sort().values
    plot_predictions(data.test.images[index], probs[index], data.test.labels[index], data.classes, path)


def _write_reports(run_dir: Path, history: list[dict], metrics: dict[str, Any], data: DataBundle, probs: torch.Tensor, seed: int) -> None:
    plots = run_dir / "plots"
    plot_curves(history, plots / "curves.png")
    plot_confusion_matrix(metrics["confusion_matrix"], data.classes, plots / "confusion_matrix.png")
    plot_per_class(metrics, plots / "per_class.png")
    _plot_test_predictions(data, probs, plots / "predictions.png", seed)
    SplitPredictions.from_probs(probs, data.test.labels, data.test.images, seed, data.test.sources).save(run_dir / PREDICTIONS_FILE)


def _absolute_paths(cfg: TrainConfig, kind: str) -> TrainConfig:
    """Paths in the saved config are absolute, so evaluate/--config work from any directory."""
    def absolute(path: str | None) -> str | None:
        return str(Path(path).expanduser().resolve()) if path else path

    return cfg.replace(data=absolute(cfg.data) if kind != "builtin" else cfg.data,
                       images=absolute(cfg.images), data_dir=absolute(cfg.data_dir), weights=absolute(cfg.weights))


def _seconds_per_epoch(cfg: TrainConfig, data: DataBundle, device: torch.device) -> float:
    """This machine's training time for one epoch of ``cfg``, measured on a few real batches."""
    model = _build_model(cfg.replace(pretrained=False, weights=None), data, device)
    return seconds_per_image(model, _train_batches(data, cfg, device)) * len(data.train)


def _prepare(cfg: TrainConfig, log: Callable[[str], None]) -> tuple[TrainConfig, DataBundle, torch.device]:
    device = resolve_device(cfg.device)
    data = load_data(cfg)
    if data.from_cache:
        log(f"loaded {data.name}'s decoded images from the cache in {cfg.data_dir}/cache (--no-cache decodes again)")
    recipe = data.name if data.kind == "builtin" else "folder"
    measure = (lambda candidate: _seconds_per_epoch(candidate, data, device)) if cfg.budget else None
    cfg, variant = apply_recipe(cfg, recipe, device.type, len(data.train), measure)
    log(f"recipe: {recipe} / {variant} ({device_class(device.type)}): {cfg.model} {cfg.model_args or ''}, "
        f"{cfg.epochs:g} epochs, batch {cfg.batch_size}, lr {cfg.lr:.4g}")
    stats = _pretrained_stats(cfg, data.channels)
    if stats:
        data.mean, data.std = stats
    if data.skipped:
        log(f"warning: skipped {len(data.skipped)} unreadable file(s); listed in skipped.txt")
    log(f"data {data.name}: {len(data.train)} train / {len(data.val)} val / {len(data.test)} test images, "
        f"{data.channels}x{data.image_size}x{data.image_size}")
    return cfg, data, device


def train(
    config: TrainConfig | str | os.PathLike | None = None,
    *,
    resume: str | os.PathLike | None = None,
    callbacks: Iterable[Callable[[int, dict], None]] = (),
    verbose: bool = True,
    **settings: Any,
) -> TrainResult:
    """Train a classifier and write its run directory.

    ``config`` is a :class:`TrainConfig`, a YAML file or a run directory; ``settings`` override its
    fields (``imgclf.train(data="mnist", model="cnn", epochs=2)``). ``resume`` continues an interrupted
    run from its ``last.pt``. ``callbacks`` are called as ``fn(epoch, history_row)`` after each epoch.
    """
    log = print if verbose else (lambda _msg: None)
    checkpoint = None
    if resume is not None:
        run_dir = Path(resume)
        checkpoint = read_checkpoint(run_dir / "last.pt")
        if "optimizer" not in checkpoint:
            raise CheckpointError(f"{run_dir / 'last.pt'}: holds no training state; it cannot be resumed")
        cfg = TrainConfig.from_dict(checkpoint["config"], source=str(run_dir / "last.pt")).replace(**settings)
    elif isinstance(config, TrainConfig):
        cfg = config.replace(**settings)
    elif config is not None:
        cfg = TrainConfig.load(config).replace(out=None, **settings)
    else:
        cfg = TrainConfig().replace(**settings)

    seed_everything(cfg.seed)
    cfg, data, device = _prepare(cfg, log)
    cfg = _absolute_paths(cfg, data.kind)
    model = _build_model(cfg, data, device)  # before the run directory: a model error leaves nothing behind
    if checkpoint is None:
        _init_from_data(model, data, device)
    if resume is None:
        run_dir = _new_run_dir(cfg, data.name)
    cfg = cfg.replace(out=str(run_dir))
    cfg.save(run_dir / "config.yaml")
    if data.skipped:
        atomic_write_text(run_dir / "skipped.txt", "".join(f"{path}\t{reason}\n" for path, reason in data.skipped))
    class_weights, sample_weights = _class_balance(data, cfg, log)
    log(f"model {cfg.model}: {count_parameters(model):,} parameters, device {device}, run {run_dir}")
    train_batches = _train_batches(data, cfg, device, sample_weights)
    val_batches = _batches(data.val, data, cfg, device)
    if checkpoint is None:
        _plot_samples(train_batches, data, run_dir / "plots" / "samples.png")
    trainer = Trainer(model, train_batches, val_batches, cfg, run_dir, _checkpoint_meta(cfg, data),
                      class_weights=class_weights, head=head_of(model, get_model_spec(cfg.model)), callbacks=callbacks,
                      log=log, verbose=verbose)
    if checkpoint is not None:
        trainer.resume(checkpoint)
        log(f"resuming {run_dir} after epoch {len(trainer.history)} of {cfg.epochs}")
    try:
        fit = trainer.fit()
    except KeyboardInterrupt:
        log(f"\ninterrupted: {run_dir} keeps the last finished epoch; continue with: imgclf train --resume {run_dir}")
        raise

    best = read_checkpoint(run_dir / "best.pt")
    model.load_state_dict(best["state_dict"])
    test_batches = _batches(data.test, data, cfg, device)
    probs, labels = predict_batches(model, test_batches, tta=bool(cfg.tta), hflip=data.hflip)
    test = compute_metrics(probs, labels, data.classes)
    if cfg.tta:
        plain, _ = predict_batches(model, test_batches)
        test["accuracy_without_tta"] = (plain.argmax(1) == labels).float().mean().item()
    metrics = {
        "test": test,
        "best_epoch": fit.best_epoch,
        "best_val_loss": fit.best_val_loss,
        "epochs_run": len(fit.history),
        "stopped_early": fit.stopped_early,
        "train_seconds": round(fit.train_seconds, 3),
        "validation_seconds": round(fit.validation_seconds, 3),
        "compile_seconds": round(fit.compile_seconds, 3),
        "images_per_second": round(fit.images_per_second, 1),
        "parameters": count_parameters(model),
        "device": str(device),
        "data": {"name": data.name, "classes": data.classes, "image_size": data.image_size, "channels": data.channels,
                 "train": len(data.train), "val": len(data.val), "test": len(data.test), "skipped": len(data.skipped)},
    }
    atomic_write_json(run_dir / "metrics.json", metrics)
    _write_reports(run_dir, fit.history, test, data, probs, cfg.seed)
    log(per_class_table(test))
    log(f"test accuracy {test['accuracy']:.4f} (best epoch {fit.best_epoch}, {fit.train_seconds:.1f}s, "
        f"{fit.images_per_second:.0f} images/s); run saved in {run_dir}")
    if cfg.report:
        report(run_dir, log=log)
    return TrainResult(run_dir, metrics, fit.history, cfg)


def evaluate(
    path: str | os.PathLike, *, data: str | None = None, data_dir: str | None = None, images: str | None = None,
    device: str = "auto", verbose: bool = True,
) -> dict[str, Any]:
    """Re-evaluate a run directory or checkpoint on its test split (or on another dataset with the same classes).

    For a run directory the metrics are also written to ``evaluation.json`` in it.
    """
    log = print if verbose else (lambda _msg: None)
    classifier = load(path, device=device)
    overrides = {k: v for k, v in {"data": data, "data_dir": data_dir, "images": images}.items() if v is not None}
    cfg, dataset = checkpoint_data(classifier, classifier.path, **overrides)
    probs = classifier.predict_proba(dataset.test.images, EVAL_BATCH, tta=bool(cfg.tta))
    metrics = compute_metrics(probs, dataset.test.labels, dataset.classes)
    log(per_class_table(metrics))
    if Path(path).is_dir():
        atomic_write_json(Path(path) / "evaluation.json", {"test": metrics, "data": cfg.data, "checkpoint": str(Path(path) / "best.pt")})
    return metrics


def predict(checkpoint: str | os.PathLike, images: ImageInput | Sequence[ImageInput], *, top_k: int = 1, device: str = "auto") -> list[Prediction]:
    """Predict image files, folders, PIL images or tensors with a run directory or checkpoint."""
    return load(checkpoint, device=device).predict(images, top_k=top_k)


def describe_dataset_sources() -> list[tuple[str, str]]:
    from .data import list_datasets

    rows = [(spec.name, spec.description) for spec in list_datasets()]
    rows += [("PATH/", "a folder with one sub-folder per class (or train/, val/, test/ each holding them)"),
             ("FILE.csv", "a CSV of file,label (images in --images, default the CSV's folder)")]
    return rows


def describe_models(in_channels: int = 3, image_size: int = 32, num_classes: int = 10) -> list[tuple[str, int | None, str]]:
    """(name, parameters for a 3x32x32 10-class input, description); model families have no single count."""
    from .models import list_model_families, list_models

    rows: list[tuple[str, int | None, str]] = [
        (spec.name, count_parameters(create_model(spec.name, in_channels, num_classes, image_size)), spec.description)
        for spec in list_models()]
    return rows + [(f"{prefix}:NAME", None, description) for prefix, description in list_model_families()]

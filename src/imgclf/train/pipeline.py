"""The training run, from settings to a finished run directory, in the order nanoGPT's ``train.py`` reads:

1. the settings to start from (yours, a config file, or a run to resume) and the processes (distributed);
2. :func:`prepare`: the data, the folder default's search where it applies (:mod:`.search`), and the run
   config resolved once (:func:`~imgclf.train.build.resolved`);
3. the model (:func:`~imgclf.train.build.build`), then the run directory and its sinks;
4. :func:`fit`: the epochs of the one :class:`~imgclf.train.loop.Trainer`, checkpoints after each;
5. :func:`~imgclf.train.finish.finish`: test metrics, figures, saved predictions, metrics.json.

What happens is told as events (:mod:`.events`) to the run's sinks. Under distributed training only the
main process has sinks and a run directory that writes (:class:`~imgclf.train.distributed.Distributed`).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import TrainConfig, mirrors
from ..data import DataBundle
from ..data.loader import TrainBatches
from ..data.registry import get_source
from ..errors import ConfigError, ImgclfError
from ..features.backbone import BACKBONE, shared_backbone
from ..models import count_parameters
from ..plots.figures import plot_image_grid
from ..recipes import is_imbalanced
from ..rundir import CONFIG, LAST, SAMPLES, Checkpoint, RunDir, RunMetrics
from ..runtime import Log, quiet, resolve_device, seed_everything
from ..tasks import label_names
from .build import Prepared, build, from_init, inference_spec, load, resolved, run_config, trainer_for
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
from .finish import TrainResult, finish
from .loop import FitResult
from .search import run_search

__all__ = ["Start", "TrainResult", "fit", "prepare", "starting_config", "train_run"]


# ---------------------------------------------------------------- where a run starts


@dataclass
class Start:
    """Where a run starts: its settings, and, when resuming, its run directory and ``last.pt`` (None for a
    run stopped before its first epoch ended, which starts again in its own folder)."""

    settings: TrainConfig
    run: RunDir | None = None
    checkpoint: Checkpoint | None = None


def starting_config(
    config: TrainConfig | str | os.PathLike | None, resume: str | os.PathLike | None, settings: dict[str, Any]
) -> Start:
    """The settings to train with, and, when resuming, the run and its ``last.pt``: a resumed run's values
    keep where they came from, yours override them."""
    if resume is not None:
        if config is not None:
            raise ConfigError("`resume` and `config` cannot be combined: a resumed run keeps its own config")
        run = RunDir(resume)
        checkpoint = run.resume_checkpoint()
        saved = checkpoint.config if checkpoint is not None else run.read_config()
        source = str(run / LAST) if checkpoint is not None else str(run / CONFIG)
        given = TrainConfig.from_dict(saved, source=source, keep_sources=True)
        return Start(given.replace(**settings).replace(_origin="resume", out=str(run.path)), run, checkpoint)
    if isinstance(config, TrainConfig):
        return Start(config.replace(**settings))
    if config is not None:
        return Start(TrainConfig.load(config).replace(**{"out": None, **settings}))  # never the saved run's folder
    return Start(TrainConfig(**settings))


# ---------------------------------------------------------------- prepare


def search_applies(settings: TrainConfig, data: DataBundle, log: Log, distributed: Distributed) -> bool:
    """Whether ``train`` searches: a source the search takes (a folder, a CSV), no model and no run to start
    from, one label per image, one process."""
    searched = data.kind != "builtin" and get_source(data.kind).searched
    if not (settings.search == "auto" and searched and not settings.is_set("model") and not settings.init):
        return False
    refused = data.task.refusal("search") or (
        "search: not under distributed training (each process would search alone); the cnn's recipe, or `model`"
        if distributed.enabled
        else None
    )
    if refused:
        log(refused)
    return refused is None


def flips_for(
    settings: TrainConfig, data: DataBundle, device: torch.device, log: Log
) -> tuple[TrainConfig, DataBundle]:
    """``flips=auto`` decided: a built-in dataset's own rule; a folder's or CSV's measured on its images by a
    probe (:mod:`imgclf.features.flips`), when augmentation is on and its images are in memory; the data's
    mirror rule then follows the decision (test-time augmentation mirrors only where it keeps the class)."""
    if settings.flips == "auto":
        rule = "horizontal" if data.hflip else "none"
        unmeasured = os.environ.get("IMGCLF_MEASURE_FLIPS", "on") == "off"  # a test suite's switch, as $IMGCLF_SEARCH
        if data.kind == "builtin" or data.train.shards or settings.augment == "none" or unmeasured:
            why = "data: the dataset's own rule" if data.kind == "builtin" else "rule: the source's (not measured)"
            settings = settings.replace(_origin=why, flips=rule)
        else:
            from ..features.flips import decide_flips

            cfg = run_config(settings.replace(model=BACKBONE, budget=None), data, device.type)[0]
            t0 = time.perf_counter()
            decision = decide_flips(data, shared_backbone(device), cfg, cfg.data.cache_dir)
            settings = settings.replace(_origin=decision.why, flips=decision.flips)
            log(f"flips: {decision.flips} ({decision.why}; {time.perf_counter() - t0:.0f} s)")
    return settings, dataclasses.replace(data, hflip=mirrors(settings.flips))


def prepare(settings: TrainConfig, log: Log, distributed: Distributed = SINGLE, new_run: bool = False) -> Prepared:
    """The data, the search where it applies, and the run config resolved once (measuring this machine for
    `budget`), logged with where each value came from. ``new_run``: the config names the run's new folder."""
    settings, init = from_init(settings)
    device = distributed.device(resolve_device(settings.device))
    check_sync_bn(settings.sync_bn and distributed.enabled, device.type)
    data = load(settings, device, log, distributed)
    with distributed.main_first():  # the first process measures and caches the features; the others read them
        settings, data = flips_for(settings, data, device, log)
    search = None
    if search_applies(settings, data, log, distributed):
        search = run_search(settings, data, device, log)
        seed_everything(settings.seed)  # the chosen run draws as it would have without the search: the same cnn
        settings = settings.replace(_origin="search: the best on validation (search.json)", **search.changes)
        if search.image_size != data.image_size and settings.is_set("image_size"):
            data = load(settings, device, quiet, distributed)
    return resolved(
        settings,
        data,
        device,
        log,
        distributed=distributed,
        init=init,
        search=search.to_dict() if search is not None else None,
        probe=search.probe if search is not None else None,
        new_run=new_run,
    )


# ---------------------------------------------------------------- fit


def _log_class_balance(prepared: Prepared, log: Log) -> None:
    data = prepared.data
    counts = data.class_counts()
    shown = ", ".join(f"{name} {c}" for name, c in zip(data.classes[:20], counts[:20]))
    log(f"classes ({data.num_classes}), training images per class: {shown}{' ...' if data.num_classes > 20 else ''}")
    if min(counts) == 0:
        log(
            f"warning: class(es) {', '.join(n for n, c in zip(data.classes, counts) if c == 0)} have no training images"
        )
    elif is_imbalanced(counts):
        log(data.task.imbalance_note(counts, prepared.cfg))


def _plot_samples(batches: TrainBatches, data: DataBundle, path: Path) -> None:
    batches.set_epoch(0)  # epoch 0 is never trained on, so drawing it does not shift training's randomness
    x, y = next(iter(batches))
    x, y = x[:32].float().cpu(), y[:32].cpu()
    images = x * torch.tensor(data.std).view(1, -1, 1, 1) + torch.tensor(data.mean).view(1, -1, 1, 1)
    plot_image_grid(images, label_names(y, data.classes), path, suptitle="augmented training images")


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
    _log_class_balance(prepared, log)
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
            cfg.schedule.monitor,
        )
    )
    return trainer.fit()


# ---------------------------------------------------------------- the whole run


def _run_directory(prepared: Prepared, run: RunDir | None) -> RunDir:
    """The run directory: made by the first process where the config says; the others get a view of it that
    never writes (their config may name the next free folder: the main process's path is the one used)."""
    distributed = prepared.distributed
    if run is None and distributed.is_main:
        out = prepared.cfg.run.out
        assert out is not None  # resolved: yours, or a new folder's
        run = RunDir.create(out)
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
        if start.run is None and start.settings.out:
            RunDir.check_new(start.settings.out)  # before any work: `out` must be new or empty
        prepared = prepare(start.settings, log, distributed, new_run=start.run is None)
        model = build(prepared, resuming=start.checkpoint is not None, log=log)  # a model error leaves no folder
        check_trackers(prepared.cfg.run.track)  # and neither does a tracker that is not installed
        run = _run_directory(prepared, start.run)
        run.write_config(prepared.cfg.to_dict())
        run.write_skipped(prepared.data.skipped)
        if prepared.search is not None:
            run.write_search(prepared.search)
        sinks = run_sinks(run, log, verbose, prepared.cfg.run.tensorboard, prepared.cfg.run.track)
        events = Events([*sinks, *map(CallbackSink, callbacks)] if distributed.is_main else [])
        try:
            result = fit(prepared, model, run, start.checkpoint, events, log, verbose)
            finished = finish(prepared, model, run, result, log) if distributed.is_main else None
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
        metrics = distributed.broadcast(finished.metrics if finished is not None else None)
        assert isinstance(metrics, RunMetrics)
        events.emit(RunFinished(metrics.accuracy, result.best_epoch, result.train_seconds, metrics.to_json()))
        return TrainResult(run.path, metrics, result.history, prepared.cfg, distributed.is_main)
    finally:
        distributed.shutdown()

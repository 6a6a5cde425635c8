"""The build layer: frozen prepared data and config in, a model, its batches and its trainer out.

Everything that trains a network calls here: the training pipeline, the folder default's search (its cnn
trials and the budget's timing), the doctor's quick models, the learning-rate finder. Nothing here runs a
search, writes a run directory or knows what comes after the epochs.

- :func:`load` and :func:`resolved`: the data, and the run config resolved for it by
  :func:`imgclf.recipes.resolve` (the one place settings become a run config), frozen together in a
  :class:`Prepared` with the normalisation the model starts from;
- :func:`build`: the model on its device, initialised from a run, from the search's probe, or from the data;
- :func:`train_batches`, :func:`eval_batches`, :func:`trainer_for`: the batches and the one Trainer;
- :func:`seconds_per_epoch`: this machine's time for an epoch of a candidate config (for `budget`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..config import ModelConfig, RunConfig, TrainConfig, mirrors
from ..data import BatchIterator, DataBundle, Split, load_data, normalise
from ..data.loader import TrainBatches
from ..data.shards import ShardBatches, shard_sample
from ..errors import ConfigError, ModelError
from ..models import create_model, get_model_spec, head_of
from ..models.registry import classifier_layer, pretrained_stats
from ..plots.tables import Table
from ..recipes import DataFacts, describe_sources, device_class, image_size_cap, resolve, search_budget
from ..rundir import Checkpoint, InferenceSpec, RunDir, read_checkpoint
from ..runtime import Log, quiet
from ..speeds import measured
from .balance import balance_for
from .distributed import SINGLE, Distributed
from .loop import Trainer
from .speed import seconds_per_image

if TYPE_CHECKING:
    from ..features.probe import ProbeResult

WHITENING_IMAGES = 5000  # training images that estimate the whitening layer's patch covariance


@dataclass(frozen=True)
class Prepared:
    """A run's data and resolved config, fixed before the first model is built."""

    cfg: RunConfig  # every setting concrete, with where each came from
    data: DataBundle  # normalised as the model starts: its pretrained weights' (or its run's) mean and std
    device: torch.device
    distributed: Distributed = SINGLE
    init: Checkpoint | None = None  # the run `init` names, read once
    variant: str = "default"  # the recipe's variant
    search: dict[str, Any] | None = None  # what the folder default tried, where it searched (search.json)
    probe: ProbeResult | None = None  # the probe the model's head starts from (the search chose the backbone)


# ---------------------------------------------------------------- data and config


def from_init(settings: TrainConfig) -> tuple[TrainConfig, Checkpoint | None]:
    """The run ``init`` names (read once) and the settings with its model and size where unset: its weights fit
    only its own network."""
    if not settings.init:
        return settings, None
    init = read_checkpoint(RunDir.checkpoint_path(settings.init))
    if settings.is_set("model") and settings.model != init.spec.model:
        raise ConfigError(
            f"`init` {settings.init}: holds a {init.spec.model}, not a {settings.model}; leave `model` unset to use its model"
        )
    settings = settings.replace(
        _origin=f"init: {init.path}",
        model=init.spec.model,
        model_args=settings.model_args if settings.is_set("model_args") else dict(init.spec.model_args),
        image_size=settings.image_size or init.spec.image_size,
    )
    return settings, init


def load(
    settings: TrainConfig, device: torch.device, log: Log = quiet, distributed: Distributed = SINGLE
) -> DataBundle:
    """The data the settings name, at the size they (or the folder's own images, capped for the device) say."""
    with distributed.main_first():  # the first process decodes and writes the cache; the others read it
        data = load_data(settings.data_config, size_cap=image_size_cap(device.type))
    notes = (
        f"loaded {data.name}'s decoded images from the cache in {settings.data_dir}/cache (`cache=False` decodes again)"
        if data.from_cache
        else "",
        data.size_note,
        data.storage_note,
    )
    for note in notes:
        if note:
            log(note)
    return data


def facts_of(data: DataBundle, **extra: Any) -> DataFacts:
    """What the recipes' rules know of ``data``."""
    counts = tuple(data.class_counts())
    return DataFacts(len(data.train), data.image_size, data.size_note, counts, data.task, **extra)


def recipe_of(data: DataBundle) -> str:
    """The recipe ``data`` trains with: a built-in dataset's own, else the folder's."""
    return data.name if data.kind == "builtin" else "folder"


def run_config(
    settings: TrainConfig,
    data: DataBundle,
    device_type: str,
    measure: Callable[[RunConfig], float] | None = None,
    processes: int = 1,
    **facts: Any,
) -> tuple[RunConfig, str]:
    """``settings`` resolved for ``data`` with its recipe: the run config and the variant
    (:func:`imgclf.recipes.resolve`, the one place settings become a run config; ``facts``: DataFacts' other
    fields)."""
    settings = settings.with_absolute_paths(builtin=data.kind == "builtin")
    return resolve(settings, recipe_of(data), device_type, facts_of(data, **facts), measure, processes)


def resolved(
    settings: TrainConfig,
    data: DataBundle,
    device: torch.device,
    log: Log = quiet,
    *,
    distributed: Distributed = SINGLE,
    init: Checkpoint | None = None,
    search: dict[str, Any] | None = None,
    probe: ProbeResult | None = None,
    new_run: bool = False,
) -> Prepared:
    """The run config resolved once (measuring this machine for `budget`), logged with where each value came
    from, and the data normalised as the model starts (a run's or its pretrained weights' statistics).
    ``new_run``: the config names the folder the run will be written to."""
    measure = (lambda candidate: seconds_per_epoch(candidate, data, device)) if settings.budget else None
    budget = search_budget(settings, device.type) if search is not None else None
    run_name = data.name if new_run else None
    cfg, variant = run_config(
        settings, data, device.type, measure, distributed.world_size, search_budget=budget, run_name=run_name
    )
    processes = f" x {distributed.world_size} processes" if distributed.enabled else ""
    log(
        f"recipe {recipe_of(data)} / {variant} ({device_class(device.type)}): {cfg.model.model}, {cfg.schedule.epochs:g} epochs, "
        f"batch {cfg.optim.batch_size}{processes}, lr {cfg.optim.lr:.4g}; where each value comes from:"
    )
    log(Table(["setting", "value", "from"], describe_sources(cfg)).to_text())
    if cfg.augment.flips != "auto":  # decided: the mirror is also what test-time augmentation may use
        data = dataclasses.replace(data, hflip=mirrors(cfg.augment.flips))
    stats = (init.spec.mean, init.spec.std) if init is not None else _pretrained_stats(cfg.model, data.channels)
    if stats:  # the normalisation the starting weights learned under
        data = dataclasses.replace(data, mean=list(stats[0]), std=list(stats[1]))
    if data.skipped:
        log(f"warning: skipped {len(data.skipped)} unusable file(s); listed in skipped.txt")
    log(
        f"data {data.name}: {len(data.train)} train / {len(data.val)} val / {len(data.test)} test images, "
        f"{data.channels}x{data.image_size}x{data.image_size}"
    )
    return Prepared(cfg, data, device, distributed, init, variant, search, probe)


def _pretrained_stats(model: ModelConfig, channels: int) -> tuple[list[float], list[float]] | None:
    return pretrained_stats(model.model, channels) if (model.pretrained or model.weights) else None


# ---------------------------------------------------------------- the model


def build_model(model: ModelConfig, data: Any, device: torch.device) -> torch.nn.Module:
    """The model on ``device`` in channels-last layout (faster convolutions with oneDNN and cuDNN).
    ``data`` needs ``channels``, ``num_classes`` and ``image_size``."""
    network = create_model(model.model, data.channels, data.num_classes, data.image_size, **model.model_args)
    if model.pretrained or model.weights:
        pretrained = get_model_spec(model.model).pretrained
        if pretrained is None:
            raise ConfigError(
                f"model {model.model} has no pretrained weights; `pretrained` and `weights` work with resnet18, "
                "lite0, torchvision:NAME and timm:NAME"
            )
        pretrained.load(network, model.weights)
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
    """The model, started from ``init``, from the search's probe (its class layer: LP-FT), or with its
    data-dependent initialisation (``cnn``'s whitening layer), unless resuming."""
    model = build_model(prepared.cfg.model, prepared.data, prepared.device)
    if resuming:
        return model
    if prepared.init is not None:
        load_init(model, prepared.init, prepared.data.classes, log)
        return model
    if prepared.probe is not None:
        layer = model.get_submodule(classifier_layer(model))
        assert isinstance(layer, torch.nn.Linear)
        with torch.no_grad():
            layer.weight.copy_(prepared.probe.weight)
            layer.bias.copy_(prepared.probe.bias)
        return model
    init_from_data = getattr(model, "init_from_data", None)
    if init_from_data is not None:
        data = prepared.data
        sample = (
            shard_sample(data.train, WHITENING_IMAGES) if data.train.shards else data.train.images[:WHITENING_IMAGES]
        )
        init_from_data(normalise(sample, data.mean, data.std, prepared.device))
    return model


# ---------------------------------------------------------------- batches and the trainer


def eval_batches(split: Split, prepared: Prepared, **kwargs: Any) -> BatchIterator:
    """A split's batches, in order, normalised as the data's (for validation; and, with keywords, training's)."""
    from ..evaluate import eval_batch

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


def turns(flips: str) -> str:
    """The flips beyond the mirror that training draws: vertical ones, or all (with quarter turns)."""
    return flips if flips in ("vertical", "all") else "none"


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
            turns=turns(cfg.augment.flips),
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
        turns=turns(cfg.augment.flips),
        sample_weights=sample_weights,
        drop_last=cfg.run.compile,
    )


def trainer_for(prepared: Prepared, model: torch.nn.Module, **kwargs: Any) -> Trainer:
    """The trainer of ``model`` on the prepared data: its batches, head, class weights as the config says
    (``val_batches=None``: no validation, as a trial or a fold that is scored afterwards)."""
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


def seconds_per_epoch(candidate: RunConfig, data: DataBundle, device: torch.device) -> float:
    """This machine's training time for one epoch of ``candidate``: its own step (compiled, at its precision)
    timed once on a few real batches of a fresh model (no pretrained weights are fetched to time it), and kept
    (:mod:`imgclf.speeds`): later runs here plan with the same number."""
    prepared = Prepared(candidate.replace(pretrained=False, weights=None), data, device)
    model, optim, run = candidate.model, candidate.optim, candidate.run
    what = (
        f"training {model.model} {sorted(model.model_args.items())} {data.channels}x{data.image_size}px "
        f"batch {optim.batch_size} {optim.optimizer} augment {candidate.augment.augment} "
        f"compile {run.compile} amp {run.amp} freeze_bn {model.freeze_bn}"
    )

    def measure() -> float:
        network = build_model(prepared.cfg.model, data, device)
        return seconds_per_image(trainer_for(prepared, network, val_batches=None))

    return measured(what, device, measure) * len(data.train)


def inference_spec(prepared: Prepared) -> InferenceSpec:
    """What inference needs of the run besides the weights (best.pt's spec before anything is fitted)."""
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

"""The trainer: the one training step, and the epochs around it.

:meth:`Trainer.step` is the only place imgclf trains a network: forward under the run's precision, the
task's loss, backward, clipping, the optimizer and its scaler, the schedule and the weight averaging.
Training runs it epoch by epoch (:meth:`Trainer.fit`, checkpoints after each); the learning-rate finder
runs it under its own per-step schedule (:meth:`Trainer.sweep`); the budget probe times it
(:func:`imgclf.train.speed.seconds_per_image`); the data doctor's quick models train with it.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import RunConfig
from ..rundir import BEST, LAST, Checkpoint, InferenceSpec, RunDir
from ..runtime import Log, quiet
from ..tasks import SINGLE_LABEL, Task
from .distributed import SINGLE, Distributed
from .ema import Lookahead
from .events import NO_EVENTS, BestImproved, CheckpointSaved, EpochEnded, Events, eta, monitored
from .mixing import Mixer
from .optim import build_optimizer, lr_factor
from .progress import batches_with_bar


@dataclass
class FitResult:
    history: list[dict]
    best_epoch: int
    best_val_loss: float
    train_seconds: float  # every epoch's optimisation, resumed ones included
    images_per_second: float  # the images those seconds trained on, over them
    stopped_early: bool
    validation_seconds: float = 0.0
    compile_seconds: float = 0.0


def autocast_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """bf16 where the GPU has it, else fp16; None (full precision) on CPU/MPS, where it measured slower here."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def epochs_of(batches: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Training batches, epoch after epoch, without end (a sweep or a probe takes as many steps as it needs)."""
    for epoch in itertools.count(1):
        batches.set_epoch(epoch)
        yield from batches


class Trainer:
    """``model`` trained on ``train_batches`` as ``cfg`` says; ``val_batches`` (optional) scores each epoch.

    The run directory receives the checkpoints (``RunDir(path, writes=False)`` keeps none); ``events``
    receives what happens. ``lr_lambda`` replaces the config's schedule with another multiplier of the lr
    per step (the learning-rate finder's sweep)."""

    def __init__(
        self,
        model: nn.Module,
        cfg: RunConfig,
        train_batches: Any,
        val_batches: Any = None,
        *,
        run: RunDir | None = None,
        spec: InferenceSpec | None = None,
        task: Task = SINGLE_LABEL,
        class_weights: torch.Tensor | None = None,
        logit_offset: torch.Tensor | None = None,
        head: str = "classifier",
        num_classes: int | None = None,
        score_start: bool = False,
        events: Events = NO_EVENTS,
        distributed: Distributed = SINGLE,
        lr_lambda: Callable[[int], float] | None = None,
        log: Log = quiet,
        verbose: bool = False,
    ) -> None:
        self.model, self.cfg, self.train_batches, self.val_batches = model, cfg, train_batches, val_batches
        self.run, self.spec, self.task, self.events = run, spec, task, events
        self.distributed, self.head, self.log, self.verbose = distributed, head, log, verbose
        self.device = next(model.parameters()).device
        self.amp_dtype = autocast_dtype(self.device, cfg.run.amp)
        if self.device.type == "cuda":  # batch shapes are fixed: let cuDNN pick its fastest kernels
            torch.backends.cudnn.benchmark = True
        optim, schedule = cfg.optim, cfg.schedule
        weight = class_weights.to(self.device) if class_weights is not None else None
        offset = logit_offset.to(self.device) if logit_offset is not None else None
        self.criterion = task.criterion(optim.label_smoothing, weight, offset, optim.loss, optim.focal_gamma)
        self.num_classes = num_classes
        augment = cfg.augment
        self.mixer = Mixer(augment.mixup, augment.cutmix, task, num_classes or 0, cfg.seed)
        if self.mixer.enabled and not num_classes:
            raise ValueError("mixup and CutMix need the trainer's num_classes")
        # the model starts trained (a probe's head): it is scored and kept as best.pt before epoch 1, so the
        # epochs after it replace it only when they beat it on validation
        self.score_start = score_start
        self.optimizer = build_optimizer(
            model,
            optim.optimizer,
            optim.lr,
            optim.weight_decay,
            optim.momentum,
            optim.nesterov,
            optim.norm_lr_scale,
            head=getattr(model, head, None),
            backbone_lr_scale=cfg.model.backbone_lr_scale,
        )
        self.trainable = [p for group in self.optimizer.param_groups for p in group["params"]]
        steps = len(train_batches)
        self.total_steps = schedule.epochs * steps
        warmup = round(schedule.warmup_epochs * steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda or lr_factor(schedule.schedule, self.total_steps, warmup)
        )
        self.lookahead = Lookahead(model, self.total_steps) if optim.ema and lr_lambda is None else None
        # what the step calls: DDP around the model when distributed, compiled on request; both share the
        # model's parameters, and checkpoints keep saving the plain module (self.model)
        wrapped = distributed.wrap(model, cfg.run.sync_bn)
        self.forward = torch.compile(wrapped) if cfg.run.compile else wrapped
        self.compile_seconds = 0.0
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.steps = 0  # optimizer steps taken, over the whole run
        self.history: list[dict] = []
        self.best_val_loss, self.best_epoch, self.bad_epochs = math.inf, 0, 0
        self.best_score = -math.inf  # the monitored value, larger is better (minus the loss for val_loss)
        self.start_row: dict | None = None  # epoch 0's row, where the model starts trained (score_start)
        self.val_images = 0

    # ------------------------------------------------------------------ the step

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on a batch; the loss and logits, detached, on the device (no host sync).
        With mixup or CutMix on, the batch is mixed here (``y`` becomes soft targets)."""
        if self.mixer.enabled:
            x, y = self.mixer(x, y, self.steps)
        with self._autocast():
            logits = self.forward(x)
            loss = self.criterion(logits, y)
        # DDP averages the ranks' gradients; weighting each rank's mean by its share of the step makes
        # that average the mean over the whole step, as one process with the whole batch computes it
        if self.distributed.enabled:
            loss_to_scale = loss * (len(y) * self.distributed.world_size / self.train_batches.rows_in_step)
        else:
            loss_to_scale = loss
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss_to_scale).backward()
        if self.cfg.optim.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.steps += 1
        if self.lookahead is not None:
            self.lookahead.step(self.steps)
        return loss.detach(), logits.detach()

    def set_backbone_frozen(self, frozen: bool) -> None:
        """Freeze or thaw what the optimizer trains outside the head (never what the model froze itself)."""
        head = getattr(self.model, self.head, None)
        head_params = {id(p) for p in head.parameters()} if head is not None else set()
        for p in self.trainable:
            if id(p) not in head_params:
                p.requires_grad_(not frozen)

    def freeze_for_epoch(self, epoch: int) -> None:
        self.set_backbone_frozen(epoch <= self.cfg.model.freeze_epochs)

    @contextlib.contextmanager
    def restoring(self) -> Iterator[None]:
        """Whatever the block trains is undone: weights, batch-norm statistics, optimizer, schedule, scaler."""
        state = copy.deepcopy(
            (
                self.model.state_dict(),
                self.optimizer.state_dict(),
                self.scheduler.state_dict(),
                self.scaler.state_dict(),
                self.steps,
            )
        )
        try:
            yield
        finally:
            model, optimizer, scheduler, scaler, self.steps = state
            self.model.load_state_dict(model)
            self.optimizer.load_state_dict(optimizer)
            self.scheduler.load_state_dict(scheduler)
            self.scaler.load_state_dict(scaler)
            self.model.zero_grad(set_to_none=True)

    def warm_up_compiled(self) -> None:
        """Compile the training and evaluation graphs before the clock starts; the warm-up's effect on the
        weights is undone, and its time is reported as compile time."""
        if not self.cfg.run.compile:
            return
        t0 = time.perf_counter()
        with self.restoring():
            self.train_mode()
            self.step(*next(iter(self.train_batches)))
            if self.val_batches is not None:
                self.model.eval()
                with torch.no_grad(), self._autocast():
                    for x, _ in self.val_batches:
                        self.forward(x)
                        break
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.compile_seconds = time.perf_counter() - t0

    def sweep(self, steps: int, on_step: Callable[[int, float], bool]) -> None:
        """Train up to ``steps`` steps over the epochs' batches, calling ``on_step(step, loss)`` after each
        (it returns False to stop): the learning-rate finder's loop. The weights are restored afterwards."""
        with self.restoring():
            self.train_mode()
            self.freeze_for_epoch(1)  # as training's first epoch: only the head when the backbone starts frozen
            for step, (x, y) in zip(range(steps), epochs_of(self.train_batches)):
                loss, _ = self.step(x, y)
                if not on_step(step, loss.item()):
                    break
            self.set_backbone_frozen(False)

    # ------------------------------------------------------------------ state

    def training_state(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "history": self.history,
            "best_val_loss": self.best_val_loss,
            "best_epoch": self.best_epoch,
            "best_score": self.best_score,
            "bad_epochs": self.bad_epochs,
            "lookahead": self.lookahead.state_dict() if self.lookahead else None,
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def resume(self, checkpoint: Checkpoint) -> None:
        """Continue from a ``last.pt``: weights, optimizer, schedule, RNG and history as they were."""
        state = checkpoint.training or {}
        self.model.load_state_dict(checkpoint.state_dict)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.history = list(state["history"])
        self.steps = len(self.history) * len(self.train_batches)
        self.best_val_loss, self.best_epoch = state["best_val_loss"], state["best_epoch"]
        self.best_score = state.get("best_score", -state["best_val_loss"])  # runs before monitor: the loss
        self.bad_epochs = state["bad_epochs"]
        if self.lookahead is not None:
            self.lookahead.load_state_dict(state.get("lookahead"))
        torch.set_rng_state(state["rng_cpu"])
        if state["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])

    # ------------------------------------------------------------------ epochs

    def train_mode(self) -> None:
        """The model in training mode; with ``freeze_bn``, its batch norms keep normalising by the pretrained
        statistics: small, augmented batches of a small folder would replace ImageNet's with noisy ones, and
        the probe the head starts from was fit on features normalised by ImageNet's."""
        self.model.train()
        if self.cfg.model.freeze_bn:
            for module in self.model.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.eval()

    def _train_epoch(self, epoch: int) -> tuple[float, float, int]:
        self.train_mode()
        self.train_batches.set_epoch(epoch)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        bar = batches_with_bar(self.train_batches, len(self.train_batches), f"epoch {epoch}", self.verbose)
        for x, y in bar:
            loss, logits = self.step(x, y)
            loss_sum += loss.float() * len(y)  # accumulated on the device: no host sync per step
            correct += self.task.correct(logits, y)
            seen += len(y)
        if self.lookahead is not None:
            self.lookahead.finish_epoch()
        loss_total, correct_total, seen_total = self.distributed.sum(loss_sum.item(), correct.item(), seen)
        return loss_total / seen_total, correct_total / seen_total, int(seen_total)

    @torch.no_grad()
    def validate(self) -> tuple[float, float, float]:
        """Validation loss, accuracy and balanced accuracy (the mean of the classes' recalls)."""
        if self.val_batches is None:
            return math.nan, math.nan, math.nan
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        # per class (right, images); made up front when the classes are known, so every process joins the sum
        hits = torch.zeros(2, self.num_classes, device=self.device, dtype=torch.long) if self.num_classes else None
        seen = 0
        for x, y in self.val_batches:
            if not len(y):  # a process's empty share of the last batch
                continue
            with self._autocast():  # the plain model: DDP's forward would be a collective call per batch
                logits = (self.model if self.distributed.enabled else self.forward)(x)
            loss_sum += self.task.summed_loss(logits, y)
            correct += self.task.correct(logits, y)
            batch_hits = self.task.class_hits(logits, y, self.num_classes or logits.shape[1])
            hits = batch_hits if hits is None else hits + batch_hits
            seen += len(y)
        loss_total, correct_total, seen_total = self.distributed.sum(loss_sum.item(), correct.item(), seen)
        self.val_images = int(seen_total)
        balanced = math.nan
        if hits is not None:
            right, total = self.distributed.sum_tensor(hits).double()
            balanced = (right[total > 0] / total[total > 0]).mean().item() if (total > 0).any() else math.nan
        return loss_total / seen_total, correct_total / seen_total, balanced

    def monitored(self, row: dict) -> float:
        """The row's value of what picks the best epoch, larger is better."""
        return monitored(row, self.cfg.schedule.monitor)

    def _score_start(self) -> None:
        """Epoch 0: the model as it starts (a trained probe), validated and kept as best.pt."""
        val_loss, val_acc, balanced = self.validate()
        row = {
            "epoch": 0,
            "val_loss": round(val_loss, 6),
            "val_acc": round(val_acc, 6),
            "val_balanced_acc": round(balanced, 6),
        }
        self.best_score, self.best_val_loss, self.best_epoch = self.monitored(row), val_loss, 0
        self.start_row = row
        self._save(BEST, 0, row, with_state=False)
        self.events.emit(BestImproved(0, row["val_loss"], row["val_acc"]))

    def _save(self, name: str, epoch: int, row: dict, with_state: bool) -> None:
        if self.run is None or self.spec is None:
            return
        checkpoint = Checkpoint(
            self.spec,
            self.model.state_dict(),
            self.cfg.to_dict(),
            epoch,
            row["val_loss"],
            row["val_acc"],
            self.training_state() if with_state else None,
        )
        self.run.save_checkpoint(name, checkpoint)
        self.events.emit(CheckpointSaved(name, epoch))

    def fit(self) -> FitResult:
        """The epochs the config asks for (those left, when resumed), checkpointing after each."""
        schedule = self.cfg.schedule
        stopped_early = False
        self.warm_up_compiled()
        if self.score_start and not self.history:
            self._score_start()
        for epoch in range(len(self.history) + 1, schedule.epochs + 1):
            self.freeze_for_epoch(epoch)
            t0 = time.perf_counter()
            train_loss, train_acc, seen = self._train_epoch(epoch)
            t1 = time.perf_counter()
            val_loss, val_acc, balanced = self.validate()
            row = {
                "epoch": epoch,
                "train_loss": round(train_loss, 6),
                "train_acc": round(train_acc, 6),
                "val_loss": round(val_loss, 6),
                "val_acc": round(val_acc, 6),
                "val_balanced_acc": round(balanced, 6),
                "lr": self.optimizer.param_groups[0]["lr"],
                "seconds": round(time.perf_counter() - t0, 3),
                "train_seconds": round(t1 - t0, 3),
                "train_images": seen,
            }
            self.history.append(row)
            score = self.monitored(row)
            if score > self.best_score:
                self.best_score, self.best_val_loss, self.best_epoch, self.bad_epochs = score, val_loss, epoch, 0
                self._save(BEST, epoch, row, with_state=False)
                self.events.emit(BestImproved(epoch, row["val_loss"], row["val_acc"]))
            else:
                self.bad_epochs += 1
            self._save(LAST, epoch, row, with_state=True)
            left = schedule.epochs - epoch
            pace = eta([r["seconds"] for r in self.history], left)
            self.events.emit(EpochEnded(epoch, schedule.epochs, row, self.best_epoch, self.best_val_loss, pace))
            if schedule.target_accuracy is not None and val_acc >= schedule.target_accuracy:
                self.log(f"target reached: validation accuracy {val_acc:.4f} >= {schedule.target_accuracy}")
                stopped_early = True
                break
            if epoch == 1 and self.fell_below_start(row):
                stopped_early = True
                break
            if schedule.patience is not None and self.bad_epochs >= schedule.patience:
                self.log(f"early stop: {schedule.monitor} has not improved for {schedule.patience} epochs")
                stopped_early = True
                break
        return self.result(stopped_early)

    def fell_below_start(self, row: dict) -> bool:
        """Whether the first epoch from a trained start (a probe) fell below it by more than the validation
        split's noise (two standard errors): then more epochs would start from worse features than the probe's,
        so the run stops and best.pt keeps the probe. A dip within noise goes on: the warm-up's first epoch
        moves the features before the lower rates refine them."""
        if self.start_row is None:
            return False
        start, score = self.monitored(self.start_row), self.monitored(row)
        if self.cfg.schedule.monitor == "val_loss":
            noise = 0.1 * abs(start)  # a loss has no binomial noise: a tenth of it
        else:
            noise = 2 * math.sqrt(max(start * (1 - start), 1e-4) / max(1, self.val_images))
        if score >= start - noise:
            return False
        self.log(
            f"the fine-tune's first epoch ({score:.4f}) fell more than noise ({noise:.3f}) below the probe it "
            f"started from ({start:.4f}): stopping here; best.pt keeps the probe"
        )
        return True

    def result(self, stopped_early: bool = False) -> FitResult:
        """The run's figures from its history: every epoch counted alike, those of earlier sessions too."""
        train_seconds = sum(r.get("train_seconds", 0.0) for r in self.history)
        # rows of imgclf 0.2's runs lack the images: an epoch of theirs took its steps in whole batches
        per_epoch = len(self.train_batches) * self.cfg.optim.batch_size * self.distributed.world_size
        images = sum(r.get("train_images") or per_epoch for r in self.history)
        return FitResult(
            history=self.history,
            best_epoch=self.best_epoch,
            best_val_loss=self.best_val_loss,
            train_seconds=train_seconds,  # optimisation only, as the tutorials time it
            validation_seconds=sum(r["seconds"] for r in self.history) - train_seconds,
            images_per_second=images / train_seconds if train_seconds else 0.0,
            stopped_early=stopped_early,
            compile_seconds=self.compile_seconds,
        )

"""The training loop: optimisation, mixed precision, checkpoints, resume and early stopping.

The loop sees a model, two batch iterators and a config; it writes ``history.csv``, ``best.pt`` and
``last.pt`` in the run directory after every epoch, so an interrupted run loses at most one epoch.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import TrainConfig
from ..rundir import BEST, LAST, TENSORBOARD, Checkpoint, InferenceSpec, RunDir
from .distributed import SINGLE, Distributed
from .ema import Lookahead
from .optim import build_optimizer, build_scheduler
from .progress import batches_with_bar, format_epoch

EpochCallback = Callable[[int, dict], None]


@dataclass
class FitResult:
    history: list[dict]
    best_epoch: int
    best_val_loss: float
    train_seconds: float
    images_per_second: float
    stopped_early: bool
    validation_seconds: float = 0.0
    compile_seconds: float = 0.0


def autocast_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """bf16 where the GPU has it, else fp16; None (full precision) on CPU/MPS, where it measured slower here."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        train_batches: Any,
        val_batches: Any,
        cfg: TrainConfig,
        run: RunDir,
        spec: InferenceSpec,
        *,
        class_weights: torch.Tensor | None = None,
        head: str = "classifier",
        callbacks: Iterable[EpochCallback] = (),
        log: Callable[[str], None] = print,
        verbose: bool = True,
        distributed: Distributed = SINGLE,
    ) -> None:
        self.model, self.train_batches, self.val_batches = model, train_batches, val_batches
        self.distributed = distributed
        self.cfg, self.run, self.spec = cfg, run, spec
        self.head, self.callbacks, self.log, self.verbose = head, list(callbacks), log, verbose
        self.device = next(model.parameters()).device
        self.amp_dtype = autocast_dtype(self.device, cfg.amp)
        if self.device.type == "cuda":  # batch shapes are fixed: let cuDNN pick its fastest kernels
            torch.backends.cudnn.benchmark = True
        assert cfg.epochs and cfg.optimizer and cfg.lr and cfg.weight_decay is not None and cfg.schedule, (
            "the recipe fills these"
        )
        self.epochs = cfg.epochs
        weight = class_weights.to(self.device) if class_weights is not None else None
        self.criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing or 0.0)
        self.optimizer = build_optimizer(
            model,
            cfg.optimizer,
            cfg.lr,
            cfg.weight_decay,
            cfg.momentum,
            cfg.nesterov,
            cfg.norm_lr_scale or 1.0,
            head=getattr(model, head, None),
            backbone_lr_scale=cfg.backbone_lr_scale,
        )
        self.trainable = [p for group in self.optimizer.param_groups for p in group["params"]]
        steps = len(train_batches)
        self.total_steps = cfg.epochs * steps
        self.scheduler = build_scheduler(
            self.optimizer, cfg.schedule, self.total_steps, round((cfg.warmup_epochs or 0) * steps)
        )
        self.lookahead = Lookahead(model, self.total_steps) if cfg.ema else None
        # what the step calls: DDP around the model when distributed, compiled on request; both share the
        # model's parameters, and checkpoints keep saving the plain module (self.model)
        wrapped = distributed.wrap(model, bool(cfg.sync_bn))
        self.forward = torch.compile(wrapped) if cfg.compile else wrapped
        self.compile_seconds = 0.0
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.history: list[dict] = []
        self.best_val_loss, self.best_epoch, self.bad_epochs = math.inf, 0, 0
        self.tensorboard = self._open_tensorboard() if cfg.tensorboard and distributed.is_main else None

    # ------------------------------------------------------------------ state

    def training_state(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "history": self.history,
            "best_val_loss": self.best_val_loss,
            "best_epoch": self.best_epoch,
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
        self.best_val_loss, self.best_epoch = state["best_val_loss"], state["best_epoch"]
        self.bad_epochs = state["bad_epochs"]
        if self.lookahead is not None:
            self.lookahead.load_state_dict(state.get("lookahead"))
        torch.set_rng_state(state["rng_cpu"])
        if state["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])

    def _open_tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.log(
                "warning: `tensorboard` needs the tensorboard package (pip install tensorboard); logging to history.csv only"
            )
            return None
        return SummaryWriter(str(self.run / TENSORBOARD))

    # ------------------------------------------------------------------ epochs

    def _set_backbone_frozen(self, frozen: bool) -> None:
        """Freeze or thaw what the optimizer trains outside the head (never what the model froze itself)."""
        head = getattr(self.model, self.head)
        head_params = {id(p) for p in head.parameters()}
        for p in self.trainable:
            if id(p) not in head_params:
                p.requires_grad_(not frozen)

    def warm_up_compiled(self) -> None:
        """Compile the training and evaluation graphs before the clock starts, then undo the warm-up's
        effect on the weights and batch-norm statistics; the time is reported as compile time."""
        if not self.cfg.compile:
            return
        t0 = time.perf_counter()
        state = copy.deepcopy(self.model.state_dict())
        x, y = next(iter(self.train_batches))
        self.model.train()
        with self._autocast():
            self.criterion(self.forward(x), y).backward()
        self.model.zero_grad(set_to_none=True)
        self.model.eval()
        with torch.no_grad(), self._autocast():
            for x, _ in self.val_batches:
                self.forward(x)
                break
        self.model.load_state_dict(state)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.compile_seconds = time.perf_counter() - t0

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _train_epoch(self, epoch: int) -> tuple[float, float, int]:
        self.model.train()
        self.train_batches.set_epoch(epoch)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        step = (epoch - 1) * len(self.train_batches)
        bar = batches_with_bar(self.train_batches, len(self.train_batches), f"epoch {epoch}", self.verbose)
        for x, y in bar:
            with self._autocast():
                logits = self.forward(x)
                loss = self.criterion(logits, y)
            # DDP averages the ranks' gradients; weighting each rank's mean by its share of the step makes
            # that average the mean over the whole step, as one process with the whole batch computes it
            share = len(y) * self.distributed.world_size / self.train_batches.rows_in_step
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss * share if self.distributed.enabled else loss).backward()
            if self.cfg.grad_clip:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            step += 1
            if self.lookahead is not None:
                self.lookahead.step(step)
            # accumulate on the device: no host sync per step
            loss_sum += loss.detach().float() * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
        if self.lookahead is not None:
            self.lookahead.finish_epoch()
        loss_total, correct_total, seen_total = self.distributed.sum(loss_sum.item(), correct.item(), seen)
        return loss_total / seen_total, correct_total / seen_total, int(seen_total)

    @torch.no_grad()
    def validate(self) -> tuple[float, float]:
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        for x, y in self.val_batches:
            if not len(y):  # a process's empty share of the last batch
                continue
            with self._autocast():  # the plain model: DDP's forward would be a collective call per batch
                logits = (self.model if self.distributed.enabled else self.forward)(x)
            loss_sum += nn.functional.cross_entropy(logits.float(), y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
        if self.lookahead is not None:
            self.lookahead.finish_epoch()
        loss_total, correct_total, seen_total = self.distributed.sum(loss_sum.item(), correct.item(), seen)
        return loss_total / seen_total, correct_total / seen_total

    def _save(self, name: str, epoch: int, row: dict, with_state: bool) -> None:
        self.run.save_checkpoint(
            name,
            Checkpoint(
                self.spec,
                self.model.state_dict(),
                self.cfg.to_dict(),
                epoch,
                row["val_loss"],
                row["val_acc"],
                self.training_state() if with_state else None,
            ),
        )

    def fit(self) -> FitResult:
        cfg = self.cfg
        start_epoch = len(self.history) + 1
        stopped_early = False
        train_time, train_images = 0.0, 0
        self.train_time = sum(r.get("train_seconds", 0.0) for r in self.history)
        self.warm_up_compiled()
        for epoch in range(start_epoch, self.epochs + 1):
            self._set_backbone_frozen(epoch <= cfg.freeze_epochs)
            t0 = time.perf_counter()
            train_loss, train_acc, seen = self._train_epoch(epoch)
            t1 = time.perf_counter()
            val_loss, val_acc = self.validate()
            seconds = time.perf_counter() - t0
            train_time += t1 - t0
            self.train_time += t1 - t0
            train_images += seen
            row = {
                "epoch": epoch,
                "train_loss": round(train_loss, 6),
                "train_acc": round(train_acc, 6),
                "val_loss": round(val_loss, 6),
                "val_acc": round(val_acc, 6),
                "lr": self.optimizer.param_groups[0]["lr"],
                "seconds": round(seconds, 3),
                "train_seconds": round(t1 - t0, 3),
            }
            self.history.append(row)
            improved = val_loss < self.best_val_loss
            if improved:
                self.best_val_loss, self.best_epoch, self.bad_epochs = val_loss, epoch, 0
                self._save(BEST, epoch, row, with_state=False)
            else:
                self.bad_epochs += 1
            self._save(LAST, epoch, row, with_state=True)
            self.run.write_history(self.history)
            self._log_epoch(row, improved)
            for callback in self.callbacks:
                callback(epoch, row)
            if cfg.target_accuracy is not None and val_acc >= cfg.target_accuracy:
                self.log(f"target reached: validation accuracy {val_acc:.4f} >= {cfg.target_accuracy}")
                stopped_early = True
                break
            if cfg.patience is not None and self.bad_epochs >= cfg.patience:
                self.log(f"early stop: validation loss has not improved for {cfg.patience} epochs")
                stopped_early = True
                break
        if self.tensorboard is not None:
            self.tensorboard.close()
        return FitResult(
            history=self.history,
            best_epoch=self.best_epoch,
            best_val_loss=self.best_val_loss,
            # optimisation only, as the tutorials time it; validation is its own figure
            train_seconds=self.train_time,
            validation_seconds=sum(r["seconds"] for r in self.history) - self.train_time,
            images_per_second=train_images / train_time if train_time else 0.0,
            stopped_early=stopped_early,
            compile_seconds=self.compile_seconds,
        )

    def _log_epoch(self, row: dict, improved: bool) -> None:
        if self.verbose:
            self.log(format_epoch(row, self.epochs) + ("  *best" if improved else ""))
        if self.tensorboard is not None:
            for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
                self.tensorboard.add_scalar(key.replace("_", "/", 1), row[key], row["epoch"])
            self.tensorboard.flush()

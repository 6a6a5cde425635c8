"""The doctor's models: out-of-fold probabilities strong enough to accuse a label, and how strong they are.

Confident learning is only as good as the probabilities it is given: quick scratch networks at 32-65%
held-out accuracy flag their own mistakes as the data's. So the doctor's first candidate is a linear probe
on the shipped backbone's (lite0, ImageNet) cached embeddings, cross-validated: every image is predicted by
a probe that never saw it; it is probed at the size the training search starts from and, for small images,
at one larger upsampling (:func:`doctor_sizes`), each with its seconds logged. Whether a mirror image keeps its class is measured, not assumed: a second probe
also trains on the mirrors, labelled as their images, and predicts each image averaged with its mirror; flips
are used (by it, and by the quick cnn) only where it holds out better (lower log loss) than the probe without
them. Scoring a probe on mirrors it never saw would not do: Fashion-MNIST's shoes all face left, so their
mirrors are unfamiliar (7 points lower) though still shoes; a mirrored 2 labelled 2 instead confuses the
probe. The folder recipe's quick cnn (out-of-fold, with the measured
flip rule) is the second candidate, their average the third; the one with the lowest held-out log loss (a
proper score: accuracy and calibration together) is used. Its held-out accuracy and calibration error are
printed and written; below ``TRUSTED_ACCURACY`` the label findings are called weak and ``--fix`` leaves
them out.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import TrainConfig
from ..data.images import fit_tensor
from ..data.splits import stratified_folds
from ..features.backbone import BACKBONE, largest_probe_size, probe_ladder, shared_backbone
from ..features.probe import fit_probe
from ..recipes import DataFacts, probe_recipe, quick_epochs, resolve
from ..runtime import Log, quiet, resolve_device, seed_everything
from ..train.quick import FOLDS, out_of_fold_probs
from .inventory import Inventory

PROBE_FOLDS = 5  # probes take seconds: 5 folds train each on 80% of the images (the paper's cross-validation)
TRUSTED_ACCURACY = 0.90  # below this held-out accuracy a model's mistakes outnumber the label errors of a
# typical curated set (3.3% on average over ten benchmark test sets, Northcutt et al. 2021) several times over:
# most images it flags would be its own mistakes
UPSAMPLE_FURTHER = 1.6  # small images: the doctor's second probe size, at least this much past the first
CHUNK = 4096  # images resized to the probe's size at a time: bounded memory on large folders
MODELS = ("probe", "cnn")


@dataclass
class Strength:
    """How far a model's out-of-fold probabilities can be believed."""

    model: str
    accuracy: float
    balanced_accuracy: float
    calibration_error: float  # expected calibration error, 15 bins
    log_loss: float
    trusted: bool = False

    def line(self) -> str:
        verdict = "strong enough to suggest label errors" if self.trusted else "WEAK"
        return (
            f"{self.model}: held-out accuracy {self.accuracy:.4f} (balanced {self.balanced_accuracy:.4f}), "
            f"calibration error {self.calibration_error:.4f}, log loss {self.log_loss:.4f}: {verdict}"
        )


def calibrated(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Out-of-fold probabilities temperature-scaled on themselves: one parameter, so the predicted classes
    stay; smoothed labels and weight decay leave the probes and quick cnns underconfident (calibration errors
    of 0.14-0.19 on MNIST), and confident learning's thresholds and the log loss that picks a model read them."""
    from ..metrics import apply_temperature, fit_temperature

    return apply_temperature(probs, fit_temperature(probs, labels))


def strength(model: str, probs: torch.Tensor, labels: torch.Tensor) -> Strength:
    from ..metrics import calibration_error  # torchmetrics: imported when measured

    predicted = probs.argmax(1)
    recalls = [(predicted[labels == c] == c).float().mean().item() for c in labels.unique().tolist()]
    accuracy = (predicted == labels).float().mean().item()
    loss = torch.nn.functional.nll_loss(probs.clamp_min(1e-12).log(), labels).item()
    return Strength(
        model,
        accuracy,
        float(np.mean(recalls)),
        calibration_error(probs, labels),
        loss,
        accuracy >= TRUSTED_ACCURACY,
    )


@dataclass
class DoctorModels:
    probs: torch.Tensor  # N x classes, each row from a model that did not train on that image
    strength: Strength  # of the candidate used
    candidates: list[Strength]
    features: torch.Tensor | None = None  # N x D lite0 embeddings (near duplicates, neighbours on the page)
    mirror_keeps_class: bool | None = None  # measured; None where not measured
    mirror_note: str = ""
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "used": self.strength.model,
            "trusted": self.strength.trusted,
            "trusted_above_accuracy": TRUSTED_ACCURACY,
            "candidates": [asdict(c) for c in self.candidates],
            "mirror_keeps_class": self.mirror_keeps_class,
            "mirror_note": self.mirror_note,
        }


def doctor_sizes(side: int) -> list[int]:
    """The probe sizes the doctor tries for images of ``side`` px: the largest the search would start from
    (the images' own, or where ImageNet features are worth it), and, for small images, one upsampling further
    (CIFAR's 32-px photos: the lite0 probe gained about 10 points at 160 px over 96, RESULTS.md 2026-11-29)."""
    below, above = probe_ladder(side)
    further = [s for s in above if s >= UPSAMPLE_FURTHER * below[0]]
    return [below[0], *further[:1]]


def embeddings(
    inventory: Inventory,
    device: torch.device,
    cache_dir: str | Path | None,
    mirrored: bool = False,
    size: int | None = None,
) -> tuple[torch.Tensor, int]:
    """The backbone's features of every image (or of its mirror) at ``size`` (else the largest probe size up
    to the images' own), from the embedding cache."""
    size = size or largest_probe_size(inventory.images.shape[-1])
    backbone = shared_backbone(device)
    parts = []
    for start in range(0, len(inventory), CHUNK):
        # the images are squares already (fitted as training fits them): any fitting only scales them
        chunk = fit_tensor(torch.as_tensor(inventory.images[start : start + CHUNK]), size, "stretch")
        chunk = chunk.flip(-1) if mirrored else chunk
        tag = f"{inventory.name}-doctor-{BACKBONE}-{size}px{'-mirror' if mirrored else ''}-{start}"
        parts.append(backbone.features(chunk, cache_dir, tag).values.float())
    return torch.cat(parts), size


def _probe_oof(
    features: torch.Tensor,
    labels: torch.Tensor,
    classes: int,
    settings: TrainConfig,
    device: torch.device,
    mirrored: torch.Tensor | None = None,
    train_on_mirrors: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Out-of-fold probe probabilities of the images (and of their mirrors, when given)."""
    folds = stratified_folds(labels, min(PROBE_FOLDS, int(torch.bincount(labels).max())), settings.seed)
    probs = torch.zeros(len(labels), classes)
    mirror_probs = torch.zeros(len(labels), classes) if mirrored is not None else None
    for k in fold_ids(folds):
        held = folds == k
        train_x, train_y = features[~held], labels[~held]
        if train_on_mirrors and mirrored is not None:
            train_x, train_y = torch.cat([train_x, mirrored[~held]]), torch.cat([train_y, train_y])
        counts = torch.bincount(train_y, minlength=classes).tolist()
        facts = DataFacts(len(train_y), None, "", tuple(counts))
        cfg = resolve(settings, "folder", device.type, facts)[0]
        cfg = probe_recipe(cfg.replace(seed=settings.seed + int(k)), len(train_y))
        result = fit_probe((train_x, train_y), (features[held], labels[held]), classes, cfg)
        logits = result.logits(features[held])
        if train_on_mirrors and mirrored is not None:  # the image and its mirror weigh alike
            logits = 0.5 * (logits + result.logits(mirrored[held]))
        probs[held] = logits.softmax(1)
        if mirror_probs is not None and mirrored is not None:
            mirror_probs[held] = result.logits(mirrored[held]).softmax(1)
    return probs, mirror_probs


def fold_ids(folds: torch.Tensor) -> list[int]:
    return sorted(int(k) for k in folds.unique())


def doctor_models(
    inventory: Inventory,
    *,
    models: Sequence[str] = MODELS,
    seed: int = 0,
    epochs: int | None = None,
    folds: int = FOLDS,
    device: str = "auto",
    cache_dir: str | Path | None = None,
    log: Log = quiet,
) -> DoctorModels:
    """Out-of-fold probabilities for every image of ``inventory`` from the best of ``models`` (see above)."""
    torch_device = resolve_device(device)
    seed_everything(seed)
    labels, classes = inventory.labels, len(inventory.classes)
    # no class weights: confident learning wants the probabilities of the data as it is
    settings = TrainConfig(model=BACKBONE, seed=seed, compile=False, ema=False, tta=False, class_weights="none")
    candidates: list[tuple[Strength, torch.Tensor]] = []
    features, keeps, note = None, None if inventory.kind != "builtin" else inventory.hflip, ""
    if "probe" in models:
        probes: list[tuple[Strength, Strength, torch.Tensor, torch.Tensor]] = []
        for size in doctor_sizes(inventory.images.shape[-1]):
            t0 = time.perf_counter()
            at_size, _ = embeddings(inventory, torch_device, cache_dir, size=size)
            mirrored, _ = embeddings(inventory, torch_device, cache_dir, mirrored=True, size=size)
            probs, mirror_probs = _probe_oof(at_size, labels, classes, settings, torch_device, mirrored)
            assert mirror_probs is not None
            name = f"{BACKBONE} linear probe at {size} px, {PROBE_FOLDS}-fold"
            probs = calibrated(probs, labels)
            plain = strength(name, probs, labels)
            both, _ = _probe_oof(at_size, labels, classes, settings, torch_device, mirrored, train_on_mirrors=True)
            both = calibrated(both, labels)
            with_mirrors = strength(name + ", with mirrors", both, labels)
            candidates += [(plain, probs), (with_mirrors, both)]
            probes.append((plain, with_mirrors, at_size, mirror_probs))
            log(
                f"lite0 embeddings of {len(inventory):,} images and their mirrors at {size} px, probed "
                f"{PROBE_FOLDS}-fold with and without mirrors: {time.perf_counter() - t0:.0f} s"
            )
        # the mirror's verdict and the embeddings the page's neighbours use: the size that held out best
        plain, with_mirrors, features, mirror_probs = min(probes, key=lambda p: min(p[0].log_loss, p[1].log_loss))
        measured = with_mirrors.log_loss < plain.log_loss
        keeps = measured if keeps is None else keeps
        unseen = (mirror_probs.argmax(1) == labels).float().mean().item()
        note = (
            f"mirror images: a probe that also trains on the mirrors (as images of the same class) holds out at log "
            f"loss {with_mirrors.log_loss:.4f} against {plain.log_loss:.4f} without: "
            + ("mirroring keeps the class" if measured else "mirroring does not keep the class (no flips used)")
            + f" (mirrors never trained on: accuracy {unseen:.4f} against {plain.accuracy:.4f})"
        )
        log(note)
    if "cnn" in models:
        cnn = out_of_fold_probs(
            inventory.images,
            labels,
            classes,
            hflip=bool(keeps) if keeps is not None else inventory.hflip,
            folds=folds,
            epochs=epochs,
            seed=seed,
            device=device,
            log=log,
        )
        cnn = calibrated(cnn, labels)
        fold_epochs = epochs or quick_epochs(len(labels) - len(labels) // folds)
        candidates.append((strength(f"quick cnn, {folds}-fold x {fold_epochs} epochs", cnn, labels), cnn))
        if len(candidates) > 1:
            best_probe = min(candidates[:-1], key=lambda c: c[0].log_loss)
            mixed = calibrated(0.5 * (best_probe[1] + cnn), labels)
            candidates.append((strength("the best probe and the cnn, averaged", mixed, labels), mixed))
    if not candidates:
        raise ValueError(f"no doctor model among {models}: use {' or '.join(MODELS)}")
    for candidate, _ in candidates:
        log(f"  {candidate.line()}")
    chosen, probs = min(candidates, key=lambda c: c[0].log_loss if math.isfinite(c[0].log_loss) else math.inf)
    return DoctorModels(probs, chosen, [c for c, _ in candidates], features, keeps, note)

"""The finish layer: after the epochs, the best checkpoint measured on the test split as ``evaluate`` measures
it, through the same :class:`~imgclf.predict.Classifier` ``predict`` uses, with what the run's task fits on
the validation split first (a temperature, per-class thresholds: stored in best.pt); then the figures, the
saved test predictions and the typed metrics.json (:class:`~imgclf.rundir.RunMetrics`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import RunConfig
from ..evaluate import eval_batch, split_metrics
from ..models import count_parameters
from ..plots.figures import plot_curves, plot_per_class
from ..predict import Classifier
from ..rundir import BEST, CURVES, LAST, PER_CLASS, DataSummary, RunDir, RunMetrics, SplitPredictions, read_checkpoint
from ..runtime import Log
from ..tasks import Tested
from .build import Prepared, inference_spec
from .loop import FitResult


@dataclass
class TrainResult:
    run_dir: Path
    metrics: RunMetrics  # metrics.json, typed (``metrics["test"]["accuracy"]`` reads it as a mapping too)
    history: list[dict]
    config: RunConfig
    main_process: bool = True  # distributed: whether this process is the one that writes, prints and reports

    @property
    def accuracy(self) -> float:
        return self.metrics.accuracy

    @property
    def best_checkpoint(self) -> Path:
        return self.run_dir / BEST

    @property
    def last_checkpoint(self) -> Path:
        return self.run_dir / LAST

    def __repr__(self) -> str:
        return f"TrainResult(run_dir={str(self.run_dir)!r}, test_accuracy={self.accuracy:.4f}, best_epoch={self.metrics.best_epoch})"


def finish(prepared: Prepared, model: torch.nn.Module, run: RunDir, result: FitResult, log: Log) -> TrainResult:
    """The best checkpoint's test metrics (as ``evaluate`` computes them), figures and saved predictions."""
    cfg, data, task = prepared.cfg, prepared.data, prepared.data.task
    best = read_checkpoint(run / BEST)
    model.load_state_dict(best.state_dict)
    plain = Classifier(inference_spec(prepared), model, prepared.device, config=cfg.to_dict())
    fitted = task.fit_on_validation(
        plain.predict_proba(data.val.images, eval_batch(data.val.images)), data.val.labels, data.classes
    )
    for line in fitted.lines:
        log(line)
    spec = dataclasses.replace(plain.spec, **fitted.spec)
    if fitted.spec:  # predict, serve, explain and export apply what was fitted: best.pt holds it
        run.save_checkpoint(BEST, dataclasses.replace(best, spec=spec))
    classifier = Classifier(spec, model, prepared.device, config=cfg.to_dict())
    test, probs = split_metrics(classifier, data.test, data.classes)
    for name, chosen in fitted.per_class.items():
        test["per_class"][name].update(chosen)
    predictions = SplitPredictions.from_probs(
        probs, data.test.labels, data.test.images, cfg.seed, data.test.sources, classifier.thresholds, task.name
    )
    searched = run.read_search() or {}
    plot_curves(
        result.history, run / CURVES, searched.get("probe_val") if cfg.model.model == searched.get("chosen") else None
    )
    plot_per_class(test, run / PER_CLASS, task.accuracy_name)
    task.test_figures(Tested(run.path, data.test, test, probs, predictions, fitted, data.classes, cfg.seed))
    metrics = RunMetrics(
        task=task.name,
        test=test,
        data=DataSummary(
            data.name,
            data.classes,
            data.image_size,
            data.channels,
            len(data.train),
            len(data.val),
            len(data.test),
            len(data.skipped),
        ),
        best_epoch=result.best_epoch,
        best_val_loss=result.best_val_loss,
        epochs_run=len(result.history),
        stopped_early=result.stopped_early,
        train_seconds=round(result.train_seconds, 3),
        images_per_second=round(result.images_per_second, 1),
        parameters=count_parameters(model),
        device=str(prepared.device),
        validation_seconds=round(result.validation_seconds, 3),
        compile_seconds=round(result.compile_seconds, 3),
        calibration=fitted.record,
        recipe_variant=prepared.variant,
        search=prepared.search,
    )
    run.write_metrics(metrics)
    run.save_predictions(predictions)
    log(task.per_class_table(test).to_text())
    log(
        f"{metrics.headline()} (best epoch {result.best_epoch}, {result.train_seconds:.1f}s, "
        f"{result.images_per_second:.0f} images/s); run saved in {run.path}"
    )
    return TrainResult(run.path, metrics, result.history, cfg)

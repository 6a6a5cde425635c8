"""imgclf: train, evaluate, explain and deploy convolutional image classifiers.

    >>> import imgclf
    >>> result = imgclf.train(data="mnist", model="cnn", epochs=2)
    >>> result.metrics["test"]["accuracy"], result.run_dir
    >>> imgclf.load(result.run_dir).predict(["digit.png"])
    >>> imgclf.explain(result.run_dir, ["digit.png"]); imgclf.errors(result.run_dir); imgclf.report(result.run_dir)

Importing imgclf loads no torch; ``imgclf.load`` loads inference only (no trainer, no dataset downloaders);
the trainer, the explanations and the report load when first used, so a server or an exporter never
carries the training code.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

# Ten API functions share their name with a submodule (imgclf.train, imgclf.predict, ...). Python binds a
# submodule onto its package when it is first imported, which would replace the function; this keeps
# the function, while `from imgclf.train import ...` still finds the module in sys.modules.
_FUNCTIONS_NAMED_LIKE_MODULES = {
    "train",
    "evaluate",
    "predict",
    "explain",
    "errors",
    "report",
    "export",
    "serve",
    "doctor",
    "studio",
}


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        if name in _FUNCTIONS_NAMED_LIKE_MODULES and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

from .config import RunConfig, TrainConfig  # noqa: E402
from .errors import ImgclfError  # noqa: E402
from .lazy import lazy_exports  # noqa: E402
from .runtime import imgclf_version  # noqa: E402

__version__ = imgclf_version()

_LAZY = {  # name -> module that defines it, imported on first use
    **dict.fromkeys(
        [
            "train",
            "evaluate",
            "predict",
            "inspect",
            "explain",
            "errors",
            "compare",
            "report",
            "export",
            "benchmark",
            "serve",
            "studio",
            "classifier",
            "lr_find",
            "pack",
            "doctor",
            "learning_curve",
            "embed",
            "similar",
        ],
        ".api",
    ),
    **dict.fromkeys(["Classifier", "Prediction", "Predictions", "load"], ".predict"),
    **dict.fromkeys(["create_model", "register_model"], ".models"),
    "register_dataset": ".data",
    "register_task": ".tasks",
    "list_runs": ".runs",
    **dict.fromkeys(["DoctorResult"], ".doctor.output"),
    **dict.fromkeys(["ExportResult"], ".export"),
    **dict.fromkeys(["ServeSettings"], ".serve"),
    **dict.fromkeys(["CompareResult"], ".report.compare"),
    **dict.fromkeys(["ErrorsResult", "ExplainResult", "InspectResult"], ".explain"),
    "TrainResult": ".train.pipeline",
}

if TYPE_CHECKING:
    from .api import (
        benchmark,
        classifier,
        compare,
        doctor,
        embed,
        errors,
        evaluate,
        explain,
        export,
        inspect,
        learning_curve,
        lr_find,
        pack,
        predict,
        report,
        serve,
        similar,
        train,
    )
    from .data import register_dataset
    from .doctor.output import DoctorResult
    from .explain import ErrorsResult, ExplainResult, InspectResult
    from .export import ExportResult
    from .models import create_model, register_model
    from .predict import Classifier, Prediction, Predictions, load
    from .report.compare import CompareResult
    from .runs import list_runs
    from .serve import ServeSettings
    from .tasks import register_task
    from .train.pipeline import TrainResult


__getattr__ = lazy_exports(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "Classifier",
    "CompareResult",
    "DoctorResult",
    "ErrorsResult",
    "ExplainResult",
    "ExportResult",
    "ImgclfError",
    "RunConfig",
    "InspectResult",
    "Prediction",
    "Predictions",
    "ServeSettings",
    "TrainConfig",
    "TrainResult",
    "benchmark",
    "classifier",
    "compare",
    "create_model",
    "doctor",
    "embed",
    "errors",
    "evaluate",
    "explain",
    "export",
    "inspect",
    "learning_curve",
    "load",
    "list_runs",
    "lr_find",
    "pack",
    "predict",
    "register_dataset",
    "register_model",
    "register_task",
    "report",
    "serve",
    "similar",
    "studio",
    "train",
]

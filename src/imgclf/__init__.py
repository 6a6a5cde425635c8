"""imgclf: train, evaluate, explain and deploy convolutional image classifiers.

    >>> import imgclf
    >>> result = imgclf.train(data="mnist", model="cnn", epochs=2)
    >>> result.metrics["test"]["accuracy"], result.run_dir
    >>> imgclf.load(result.run_dir / "best.pt").predict(["digit.png"])
    >>> imgclf.explain(result.run_dir, ["digit.png"]); imgclf.errors(result.run_dir); imgclf.report(result.run_dir)
"""

from .api import (
    CompareResult, ErrorsResult, ExplainResult, InspectResult, TrainResult, compare, errors, evaluate, explain, inspect, predict,
    report, train,
)
from .config import TrainConfig
from .data import register_dataset
from .errors import ImgclfError
from .models import create_model, register_model
from .predict import Classifier, Prediction, load

__version__ = "0.1.0"

__all__ = [
    "Classifier", "CompareResult", "ErrorsResult", "ExplainResult", "ImgclfError", "InspectResult", "Prediction", "TrainConfig",
    "TrainResult", "compare", "create_model", "errors", "evaluate", "explain", "inspect", "load", "predict", "register_dataset",
    "register_model", "report", "train",
]

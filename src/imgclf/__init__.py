"""imgclf: train, evaluate, explain and deploy convolutional image classifiers.

    >>> import imgclf
    >>> result = imgclf.train(data="mnist", model="cnn", epochs=2)
    >>> result.metrics["test"]["accuracy"], result.run_dir
    >>> imgclf.load(result.run_dir / "best.pt").predict(["digit.png"])
"""

from .api import InspectResult, TrainResult, evaluate, inspect, predict, train
from .config import TrainConfig
from .data import register_dataset
from .errors import ImgclfError
from .models import create_model, register_model
from .predict import Classifier, Prediction, load

__version__ = "0.1.0"

__all__ = [
    "Classifier", "ImgclfError", "InspectResult", "Prediction", "TrainConfig", "TrainResult", "create_model", "evaluate", "inspect", "load",
    "predict", "register_dataset", "register_model", "train",
]

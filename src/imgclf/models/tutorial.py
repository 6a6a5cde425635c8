"""The networks of the classic PyTorch tutorials, kept faithful so they can be compared with ``cnn``."""

from __future__ import annotations

from torch import nn

from .registry import register_model


def _flat_size(channels: int, size: int) -> int:
    return channels * size * size


@register_model("mlp", "plain fully connected network (784-512-512-10 in the MNIST tutorials), the baseline")
def mlp(in_channels: int, num_classes: int, image_size: int, hidden: int = 512) -> nn.Module:
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(_flat_size(in_channels, image_size), hidden),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Dropout(0.2),
    )
    model.add_module("classifier", nn.Linear(hidden, num_classes))
    return model


class _Tutorial(nn.Module):
    def __init__(self, features: nn.Sequential, classifier: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.flatten = nn.Flatten()
        self.classifier = classifier

    def forward(self, x):
        return self.classifier(self.flatten(self.features(x)))


@register_model("cnn2", "2 conv (5x5, 16/32 filters) + 1 fully connected layer: the MNIST CNN tutorial")
def cnn2(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    features = nn.Sequential(
        nn.Conv2d(in_channels, 16, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )
    return _Tutorial(features, nn.Linear(_flat_size(32, image_size // 4), num_classes))


@register_model("lenet5", "LeNet-5 (6/16 filters, 120-84 FC): the PyTorch CIFAR-10 tutorial network")
def lenet5(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    features = nn.Sequential(
        nn.Conv2d(in_channels, 6, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )
    side = ((image_size - 4) // 2 - 4) // 2
    if side < 1:
        raise ValueError(f"needs images of at least 16x16, got {image_size}x{image_size}; pass `image_size=32`")
    classifier = nn.Sequential(
        nn.Linear(_flat_size(16, side), 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes)
    )
    return _Tutorial(features, classifier)


@register_model("cnn4", "4 conv (32-32-64-64) with max-pooling and dropout 0.25, 512 FC: the CIFAR-10 CNN tutorial")
def cnn4(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    features = nn.Sequential(
        nn.Conv2d(in_channels, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Dropout(0.25),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Dropout(0.25),
    )
    if image_size < 4:
        raise ValueError(f"needs images of at least 4x4, got {image_size}x{image_size}")
    classifier = nn.Sequential(
        nn.Linear(_flat_size(64, image_size // 4), 512), nn.ReLU(), nn.Dropout(0.5), nn.Linear(512, num_classes)
    )
    return _Tutorial(features, classifier)

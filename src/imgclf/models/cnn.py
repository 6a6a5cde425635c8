"""``cnn``: imgclf's default, a small residual CNN with batch norm sized for fast training.

The shape follows the fast CIFAR-10 training line of work (ResNet-9 / airbench): a stem convolution,
then stages of conv -> max-pool -> batch norm -> activation with a residual pair of convolutions,
and a global max-pool before one linear layer. Pooling comes before the costly convolutions so most
multiply-adds run at reduced resolution; stages stop pooling once the map is 1x1, so 8x8 digits and
64x64 photos use the same network.
"""

from __future__ import annotations

from torch import nn

from .registry import register_model


def conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.GELU())


class Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(channels, channels), conv_bn(channels, channels))

    def forward(self, x):
        return x + self.body(x)


class ResidualCNN(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, image_size: int, widths: tuple[int, ...] = (32, 64, 128)):
        super().__init__()
        self.stem = conv_bn(in_channels, widths[0])
        stages, size, previous = [], image_size, widths[0]
        for width in widths:
            pool = nn.MaxPool2d(2) if size >= 2 else nn.Identity()
            size = max(size // 2, 1)
            stages.append(nn.Sequential(pool, conv_bn(previous, width), Residual(width)))
            previous = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(previous, num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.stages(self.stem(x))))


@register_model("cnn", "imgclf's default: residual CNN with batch norm (ResNet-9 style), fast and accurate")
def cnn(in_channels: int, num_classes: int, image_size: int, widths: list[int] | tuple[int, ...] = (32, 64, 128)) -> nn.Module:
    return ResidualCNN(in_channels, num_classes, image_size, tuple(widths))

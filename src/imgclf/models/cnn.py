"""``cnn``: imgclf's default, a small fast-training CNN in the shape of the CIFAR-10 speed records.

The layout follows the airbench line of work (Keller Jordan's CIFAR-10 speedruns, after David Page's
ResNet-9): a frozen 2x2 "whitening" convolution initialised from the training images' patch
covariance, then groups of conv -> max-pool -> batch norm -> GELU -> conv -> batch norm -> GELU, a
global max-pool and one linear layer whose logits are scaled down. Each trick is cheap and helps at a
few epochs:

- whitening makes the first layer's input decorrelated, so the first real conv learns fast;
- pooling right after the first conv of a group puts most multiply-adds at the reduced resolution;
- batch norm scales are frozen at 1 (only shifts learn), and convs start as identity (dirac) where
  their shapes allow, an implicit residual path without residual blocks;
- the logits are scaled by 1/9, which with label smoothing keeps early steps stable at a high lr.

Groups stop pooling once the map is 1x1, so 8x8 digits, 28x28 MNIST and 64x64 photos use one network.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_model


class GlobalMaxPool(nn.AdaptiveMaxPool2d):
    """AdaptiveMaxPool2d(1) computed as a max over the height and width: the same numbers, and an operator every
    export runtime has (TFLite's converter and ExecuTorch's kernels have no adaptive max pooling)."""

    def __init__(self) -> None:
        super().__init__(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(-2).amax(-1, keepdim=True).unsqueeze(-1)  # one axis: ExecuTorch fails on a two-axis amax


class FrozenScaleBatchNorm(nn.BatchNorm2d):
    def __init__(self, channels: int) -> None:
        super().__init__(channels, eps=1e-12, momentum=0.4)
        self.weight.requires_grad_(False)


class IdentityInitConv(nn.Conv2d):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(c_in, c_out, 3, padding=1, bias=False)
        with torch.no_grad():
            nn.init.dirac_(self.weight[: min(c_in, c_out)])


class ConvGroup(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, pool: bool) -> None:
        super().__init__(
            IdentityInitConv(c_in, c_out),
            nn.MaxPool2d(2) if pool else nn.Identity(),
            FrozenScaleBatchNorm(c_out),
            nn.GELU(),
            IdentityInitConv(c_out, c_out),
            FrozenScaleBatchNorm(c_out),
            nn.GELU(),
        )


class WhiteningConv(nn.Conv2d):
    """A 2x2 conv whose filters are the +/- eigenvectors of the training patches' covariance, scaled
    by 1/sqrt(eigenvalue): its outputs are decorrelated, unit-variance patch features. Frozen weights."""

    def __init__(self, in_channels: int, kernel_size: int = 2) -> None:
        super().__init__(in_channels, 2 * in_channels * kernel_size**2, kernel_size, bias=True)
        self.weight.requires_grad_(False)
        assert self.bias is not None  # bias=True above
        nn.init.zeros_(self.bias)

    @torch.no_grad()
    def init_from_images(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """``images``: normalised training images N x C x H x W (a few thousand are plenty)."""
        c, (kh, kw) = self.in_channels, self.kernel_size
        patches = images.float().unfold(2, kh, 1).unfold(3, kw, 1)  # N, C, H', W', kh, kw
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * kh * kw)
        covariance = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        filters = (eigenvectors.T / (eigenvalues.clamp_min(0) + eps).sqrt().unsqueeze(1)).reshape(-1, c, kh, kw)
        self.weight.copy_(torch.cat([filters, -filters]).to(self.weight))


class FastCNN(nn.Module):
    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: int,
        widths: tuple[int, ...] = (64, 256, 256),
        whiten: bool = True,
        logit_scale: float = 1 / 9,
    ) -> None:
        super().__init__()
        # the module tree (stem.0 = the whitening conv) is the checkpoints' key layout: keep it
        whitening = WhiteningConv(in_channels) if whiten and image_size >= 4 else None
        self.stem: nn.Module = nn.Sequential(whitening, nn.GELU()) if whitening else nn.Identity()
        previous = whitening.out_channels if whitening else in_channels
        size = image_size - 1 if whitening else image_size
        groups = []
        for width in widths:
            groups.append(ConvGroup(previous, width, pool=size >= 2))
            previous, size = width, max(size // 2, 1)
        self.groups = nn.Sequential(*groups)
        self.pool = nn.Sequential(GlobalMaxPool(), nn.Flatten())
        self.classifier = nn.Linear(previous, num_classes, bias=False)
        self.logit_scale = logit_scale

    def init_from_data(self, images: torch.Tensor) -> None:
        """Data-dependent initialisation (the whitening filters), called once before training."""
        whitening = self.stem[0] if isinstance(self.stem, nn.Sequential) else None
        if isinstance(whitening, WhiteningConv):
            whitening.init_from_images(images)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.groups(self.stem(x)))) * self.logit_scale


@register_model("cnn", "imgclf's default: fast CNN of the CIFAR-10 speed records (whitening stem, conv groups)")
def cnn(
    in_channels: int,
    num_classes: int,
    image_size: int,
    widths: list[int] | tuple[int, ...] = (64, 256, 256),
    whiten: bool = True,
) -> nn.Module:
    return FastCNN(in_channels, num_classes, image_size, tuple(widths), whiten)

"""RandAugment and TrivialAugment, per image, in bulk on the training device.

torchvision's v2 ``RandAugment`` draws one operation and one magnitude for a whole batch tensor; kornia's
policies pick their sub-policy per batch too. Here each image draws its own operations (and, for
TrivialAugment, its own magnitude); each operation then runs once over the images that drew it, as tensor
ops: no per-image Python, PIL or worker processes, as the rest of :mod:`imgclf.data.loader`.

The operations and magnitude ranges are torchvision's (``_augmentation_space`` of ``RandAugment`` and
``TrivialAugmentWide``, after Cubuk et al. 2020 and Müller & Hutter 2021): 31 magnitude bins; RandAugment
applies 2 operations at bin 9, TrivialAugment one operation at a bin drawn uniformly.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

BINS = 31  # magnitude bins, as torchvision's num_magnitude_bins
POLICIES = {"randaugment": (2, 9), "trivialaugment": (1, None)}  # name -> (operations per image, fixed bin or drawn)


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Warp each image by its own 2 x 3 matrix (affine_grid's -1..1 coordinates); outside is black, as torchvision fills."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _matrix(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor, e: torch.Tensor, f: torch.Tensor):
    return torch.stack([torch.stack([a, b, c], 1), torch.stack([d, e, f], 1)], 1)


def _grey(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    weights = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's ImageEnhance: ``other + factor x (x - other)``, clamped to the pixel range."""
    return (other + factor.view(-1, 1, 1, 1) * (x - other)).clamp(0, 1)


def _shear_x(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    one, zero = torch.ones_like(m), torch.zeros_like(m)
    return _affine(x, _matrix(one, m, zero, zero, one, zero))


def _shear_y(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    one, zero = torch.ones_like(m), torch.zeros_like(m)
    return _affine(x, _matrix(one, zero, zero, m, one, zero))


def _translate_x(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:  # m: a fraction of the width
    one, zero = torch.ones_like(m), torch.zeros_like(m)
    return _affine(x, _matrix(one, zero, 2 * m, zero, one, zero))


def _translate_y(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    one, zero = torch.ones_like(m), torch.zeros_like(m)
    return _affine(x, _matrix(one, zero, zero, zero, one, 2 * m))


def _rotate(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:  # m in degrees
    cos, sin, zero = (m * math.pi / 180).cos(), (m * math.pi / 180).sin(), torch.zeros_like(m)
    return _affine(x, _matrix(cos, -sin, zero, sin, cos, zero))


def _brightness(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return _blend(x, torch.zeros_like(x), 1 + m)


def _color(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return _blend(x, _grey(x).expand_as(x), 1 + m)


def _contrast(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return _blend(x, _grey(x).mean((1, 2, 3), keepdim=True).expand_as(x), 1 + m)


def _sharpness(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """PIL's smoothing kernel, borders kept as they are (as PIL and torchvision do)."""
    kernel = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]], device=x.device, dtype=x.dtype) / 13
    channels = x.shape[1]
    smooth = F.conv2d(x, kernel.expand(channels, 1, 3, 3), groups=channels)
    blurred = x.clone()
    blurred[..., 1:-1, 1:-1] = smooth
    return _blend(x, blurred, 1 + m)


def _posterize(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:  # m: bits kept
    step = (2 ** (8 - m.round())).view(-1, 1, 1, 1)
    return ((x * 255).round() / step).floor() * step / 255


def _solarize(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:  # m: the threshold, 0..1
    return torch.where(x >= m.view(-1, 1, 1, 1), 1 - x, x)


def _autocontrast(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    low = x.amin((2, 3), keepdim=True)
    high = x.amax((2, 3), keepdim=True)
    flat = high <= low  # a flat channel stays as it is
    return torch.where(flat, x, (x - low) / (high - low).clamp_min(1e-6))


def _equalize(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Histogram equalisation per image and channel through a 256-entry lookup table (as PIL's)."""
    n, c, h, w = x.shape
    levels = (x * 255).round().long().clamp(0, 255).view(n * c, h * w)
    histogram = torch.zeros(n * c, 256, device=x.device).scatter_add_(
        1, levels, torch.ones_like(levels, dtype=torch.float)
    )
    cdf = histogram.cumsum(1)
    lowest = cdf.gather(1, (histogram > 0).float().argmax(1, keepdim=True))  # count of the darkest level present
    table = ((cdf - lowest) / (h * w - lowest).clamp_min(1) * 255).round().clamp(0, 255)
    return (table.gather(1, levels) / 255).view(n, c, h, w).to(x.dtype)


def _identity(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return x


# name -> (operation, magnitude at bin b of BINS for RandAugment, for TrivialAugment, whether the sign is drawn);
# a magnitude is a function of the bin's fraction t = b / (BINS - 1) and of the image width w
Magnitude = Callable[[torch.Tensor, int], torch.Tensor]  # (bin fraction, image width) -> magnitude
OPERATIONS: dict[str, tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], Magnitude, Magnitude, bool]] = {
    "identity": (_identity, lambda t, w: t * 0, lambda t, w: t * 0, False),
    "shear_x": (_shear_x, lambda t, w: 0.3 * t, lambda t, w: 0.99 * t, True),
    "shear_y": (_shear_y, lambda t, w: 0.3 * t, lambda t, w: 0.99 * t, True),
    "translate_x": (_translate_x, lambda t, w: 150 / 331 * t, lambda t, w: 32 / w * t, True),  # RA: of the side;
    "translate_y": (_translate_y, lambda t, w: 150 / 331 * t, lambda t, w: 32 / w * t, True),  # TA: 32 pixels
    "rotate": (_rotate, lambda t, w: 30 * t, lambda t, w: 135 * t, True),
    "brightness": (_brightness, lambda t, w: 0.9 * t, lambda t, w: 0.99 * t, True),
    "color": (_color, lambda t, w: 0.9 * t, lambda t, w: 0.99 * t, True),
    "contrast": (_contrast, lambda t, w: 0.9 * t, lambda t, w: 0.99 * t, True),
    "sharpness": (_sharpness, lambda t, w: 0.9 * t, lambda t, w: 0.99 * t, True),
    "posterize": (_posterize, lambda t, w: 8 - 4 * t, lambda t, w: 8 - 6 * t, False),
    "solarize": (_solarize, lambda t, w: 1 - t, lambda t, w: 1 - t, False),
    "autocontrast": (_autocontrast, lambda t, w: t * 0, lambda t, w: t * 0, False),
    "equalize": (_equalize, lambda t, w: t * 0, lambda t, w: t * 0, False),
}


def auto_augment(
    x: torch.Tensor, policy: str, generator: torch.Generator, share: tuple[int, int] | None = None
) -> torch.Tensor:
    """``x`` (float N x C x H x W in 0..1) with ``policy``'s operations, drawn per image. ``share`` (start,
    total): ``x`` is rows start.. of a batch of ``total``; the draws are the whole batch's (as
    :func:`imgclf.data.loader.augment_batch`), so an image is augmented alike however many processes share it."""
    count, fixed_bin = POLICIES[policy]
    n = len(x)
    start, total = share or (0, n)
    names = list(OPERATIONS)
    for _ in range(count):
        drawn = torch.randint(len(names), (total,), generator=generator)[start : start + n]
        bins = (
            torch.full((total,), fixed_bin)
            if fixed_bin is not None
            else torch.randint(BINS, (total,), generator=generator)
        )[start : start + n]
        signs = torch.where(torch.rand(total, generator=generator) < 0.5, -1.0, 1.0)[start : start + n]
        fraction = bins.float() / (BINS - 1)
        x = x.clone()
        for k, name in enumerate(names):
            rows = torch.nonzero(drawn == k).flatten()
            if not len(rows) or name == "identity":
                continue
            operation, ra_magnitude, ta_magnitude, signed = OPERATIONS[name]
            magnitude = (ra_magnitude if fixed_bin is not None else ta_magnitude)(fraction[rows], x.shape[-1])
            if signed:
                magnitude = magnitude * signs[rows]
            index = rows.to(x.device)
            x[index] = operation(x[index], magnitude.to(x.device, x.dtype))
    return x

"""The pretrained backbone behind the folder default, the doctor and the learning curve: which one, its facts
(read off its model spec, :class:`~imgclf.models.registry.PretrainedCfg`), the sizes it is probed at, and its
features of images, computed once and cached (:func:`imgclf.data.features.cached_features`)."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..data import DataBundle
from ..data.features import Features, cached_features, compute_features
from ..data.folder import choose_image_size
from ..models import create_model, get_model_spec
from ..models.registry import PretrainedCfg
from ..speeds import measured

Progress = Callable[[int], None]

BACKBONE = "lite0"  # the backbone that ships with imgclf (offline ImageNet weights)
# the shipped backbones the search tries, cheapest first: a larger one only at the size the first chose, when
# the budget allows it (tensorflow/tpu's published ImageNet top-1: 75.1, 76.7, 77.6)
BACKBONES = ("lite0", "lite1", "lite2")
# the ladder of sizes probed: small images are upsampled to a few of them, large photos probed at their own
# (up to 384 px: Lite2's 260 px weights still gain on larger inputs, and a 2-core CPU fine-tunes 384 px at
# ~0.4 s an image) and at the sizes below it
PROBE_SIZES = (64, 96, 128, 160, 224, 256, 300, 384)
FEATURE_TIMING_IMAGES = 16  # random images timed once per backbone, size and channels (imgclf.speeds)
OWN_SIZE_CAP = 4096  # reading the images' own size: no cap that matters


def facts(name: str = BACKBONE) -> PretrainedCfg:
    pretrained = get_model_spec(name).pretrained
    if pretrained is None:
        raise ValueError(f"model {name} has no pretrained weights: it is not a backbone")
    return pretrained


def own_size(data: DataBundle, max_pixels: int) -> int:
    """The images' own size (their shorter side, the median when they differ), from a sample of headers."""
    paths = [Path(s) for split in (data.train, data.val) for s in (split.sources or [])]
    return choose_image_size(paths, OWN_SIZE_CAP, max_pixels)[0] if paths else data.image_size


def largest_probe_size(side: int, name: str = BACKBONE) -> int:
    """The ladder's largest size up to ``side`` (the images' own), at least the size its features are worth at."""
    return max(s for s in PROBE_SIZES if s <= max(side, facts(name).useful_size))


def probe_ladder(side: int, name: str = BACKBONE) -> tuple[list[int], list[int]]:
    """The sizes to probe for images of ``side`` px: (from the largest worth it downwards, upsamplings beyond
    it to try while each still helps). Large photos start at their own size (the ladder's largest up to it)
    and go down; small images start where the backbone's features are worth it and may go up."""
    anchor = largest_probe_size(side, name)
    below = [s for s in PROBE_SIZES if s <= anchor][::-1]
    above = [s for s in PROBE_SIZES if s > anchor and s <= facts(name).input_size] if side < anchor else []
    return below, above


@functools.lru_cache(maxsize=4)
def shared_backbone(device: torch.device, name: str = BACKBONE) -> Backbone:
    """One backbone per device for a process: the doctor embeds images and their mirrors, and `--run` embeds
    them again, with the weights loaded once."""
    return Backbone(device, name)


class Backbone:
    """A pretrained network with its ImageNet weights and a new, zero head, in eval mode on ``device`` (one per
    channel count), and its features of images from the embedding cache."""

    def __init__(self, device: torch.device, name: str = BACKBONE) -> None:
        self.device, self.name, self.facts = device, name, facts(name)
        self.networks: dict[int, nn.Module] = {}

    def network(self, channels: int) -> nn.Module:
        if channels not in self.networks:
            model = create_model(self.name, channels, 1, self.facts.input_size)
            self.facts.load(model, None)
            self.networks[channels] = model.eval().to(self.device).to(memory_format=torch.channels_last)
        return self.networks[channels]

    def features(
        self, images: torch.Tensor, cache_dir: str | Path | None, tag: str, progress: Progress | None = None
    ) -> Features:
        """N x D features of uint8 ``images``, from the cache under ``tag`` (computed and kept the first time)."""
        channels = images.shape[1]
        network = self.network(channels)
        return cached_features(network, images, *self.facts.stats(channels), self.device, cache_dir, tag, progress)

    def seconds_per_image(self, size: int, channels: int) -> float:
        """This machine's seconds for one image's features at ``size``: timed once, kept (:mod:`imgclf.speeds`)."""

        def measure() -> float:
            images = torch.randint(0, 256, (FEATURE_TIMING_IMAGES, channels, size, size), dtype=torch.uint8)
            compute_features(self.network(channels), images[:2], *self.facts.stats(channels), self.device)  # warm
            start = time.perf_counter()
            compute_features(self.network(channels), images, *self.facts.stats(channels), self.device)
            return (time.perf_counter() - start) / FEATURE_TIMING_IMAGES

        return measured(f"features {self.name} {channels}x{size}px", self.device, measure)

"""Datasets: a registry of named sources, folder and CSV sources, splits, safe image decoding, and a
tensor-resident loader.

Names load on first use: inference imports :mod:`imgclf.data.images` alone, without the built-in datasets'
downloaders, the loader or the shard code."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

_LAZY = {
    **dict.fromkeys(["decode_images", "find_images", "read_image"], ".images"),
    **dict.fromkeys(["BatchIterator", "augment_batch", "normalise"], ".loader"),
    # through .prepare, which imports the built-in datasets and the sources: listed, they are all registered
    **dict.fromkeys(
        [
            "DataBundle",
            "channel_stats",
            "dataset_names",
            "get_dataset",
            "list_datasets",
            "list_sources",
            "list_sources",
            "load_data",
            "stratified_split",
        ],
        ".prepare",
    ),
    **dict.fromkeys(["RawDataset", "Split", "register_dataset", "register_source"], ".registry"),
}

if TYPE_CHECKING:
    from .images import decode_images, find_images, read_image
    from .loader import BatchIterator, augment_batch, normalise
    from .prepare import (
        DataBundle,
        channel_stats,
        dataset_names,
        get_dataset,
        list_datasets,
        list_sources,
        load_data,
        stratified_split,
    )
    from .registry import RawDataset, Split, register_dataset, register_source

__getattr__ = lazy_exports(__name__, _LAZY, globals())

__all__ = [
    "BatchIterator",
    "DataBundle",
    "RawDataset",
    "Split",
    "augment_batch",
    "channel_stats",
    "dataset_names",
    "decode_images",
    "find_images",
    "get_dataset",
    "list_datasets",
    "list_sources",
    "load_data",
    "normalise",
    "read_image",
    "register_dataset",
    "register_source",
    "stratified_split",
]

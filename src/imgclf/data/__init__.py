"""Datasets: a registry of named sources, folder and CSV sources, splits, safe image decoding, and a
tensor-resident loader."""

from . import builtin  # noqa: F401  (registers the built-in datasets)
from .images import decode_images, find_images, read_image
from .loader import BatchIterator, augment_batch, normalise
from .prepare import DataBundle, channel_stats, load_data, stratified_split
from .registry import RawDataset, Split, dataset_names, get_dataset, list_datasets, register_dataset

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
    "load_data",
    "normalise",
    "read_image",
    "register_dataset",
    "stratified_split",
]

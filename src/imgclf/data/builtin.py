"""Built-in datasets: MNIST, Fashion-MNIST, CIFAR-10/100 (through torchvision) and the shipped digits.

Files are looked for in ``--data-dir`` in torchvision's layout, uncompressed or as the original
``.gz``/``.tar.gz`` downloads; when absent, torchvision downloads them there.
"""

from __future__ import annotations

import gzip
import pickle
import tarfile
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision

from ..config import DataConfig
from ..errors import DataError
from .registry import RawDataset, Split, register_dataset


def _download(name: str, folder: Path, files: list[str], fetch: Callable[[], object]) -> None:
    try:
        fetch()
    except Exception as exc:  # noqa: BLE001 torchvision raises URLError, RuntimeError, OSError... when offline
        reason = str(exc).splitlines()[0][:120] if str(exc) else exc.__class__.__name__
        raise DataError(
            f"{name} is not in {folder} and could not be downloaded ({reason}); "
            f"put {', '.join(files)} there, or point `data_dir` (or $IMGCLF_DATA) at a folder that has them"
        ) from None


# ---------------------------------------------------------------- MNIST-style IDX files


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format), plain or gzipped."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.exists():
            return candidate
    return None


def _load_idx_dataset(cfg: DataConfig, tv_class: Any, classes: list[str], hflip: bool) -> RawDataset:
    root = Path(cfg.data_dir).expanduser()
    folder = root / tv_class.__name__ / "raw"
    stems = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    if any(_find(folder, s) is None for s in stems):
        _download(tv_class.__name__, folder, [f"{s}.gz" for s in stems], lambda: tv_class(str(root), download=True))
    arrays = []
    for stem in stems:
        path = _find(folder, stem)
        if path is None:
            raise DataError(f"{folder / stem}.gz: missing after the download; delete {folder} to download again")
        try:
            arrays.append(torch.from_numpy(_read_idx(path).copy()))
        except (OSError, ValueError, EOFError, IndexError):
            raise DataError(f"{path}: damaged or incomplete IDX file; delete it so it is downloaded again") from None
    train_x, train_y, test_x, test_y = arrays
    return RawDataset(
        classes=classes,
        train=Split(train_x.unsqueeze(1), train_y.long()),
        test=Split(test_x.unsqueeze(1), test_y.long()),
        hflip=hflip,
    )


@register_dataset(
    "mnist", "handwritten digits 0-9, 28x28 grayscale, 60,000 train + 10,000 test (torchvision)", train_images=60_000
)
def mnist(cfg: DataConfig) -> RawDataset:
    return _load_idx_dataset(cfg, torchvision.datasets.MNIST, [str(i) for i in range(10)], hflip=False)


@register_dataset(
    "fashion-mnist",
    "Zalando clothing, 10 classes, 28x28 grayscale, 60,000 train + 10,000 test (torchvision)",
    train_images=60_000,
)
def fashion_mnist(cfg: DataConfig) -> RawDataset:
    return _load_idx_dataset(
        cfg, torchvision.datasets.FashionMNIST, list(torchvision.datasets.FashionMNIST.classes), hflip=True
    )


# ---------------------------------------------------------------- CIFAR pickled batches


def _cifar_members(root: Path, base: str, archive: str, names: list[str]) -> dict[str, dict]:
    """Read the pickled batches from the extracted folder, or straight from the .tar.gz."""
    folder = root / base
    if all((folder / n).exists() for n in names):
        return {n: pickle.loads((folder / n).read_bytes(), encoding="latin1") for n in names}
    with tarfile.open(root / archive, "r:gz") as tar:
        batches = {}
        for n in names:
            member = tar.extractfile(f"{base}/{n}")
            if member is None:  # a folder where a batch file should be: damaged
                raise KeyError(n)
            batches[n] = pickle.load(member, encoding="latin1")
        return batches


def _load_cifar(cfg: DataConfig, tv_class: Any, label_key: str) -> RawDataset:
    root = Path(cfg.data_dir).expanduser()
    base, archive, meta = tv_class.base_folder, tv_class.filename, tv_class.meta["filename"]
    train_names = [name for name, _ in tv_class.train_list]
    names = [*train_names, tv_class.test_list[0][0], meta]
    present = all((root / base / n).exists() for n in names) or (root / archive).exists()
    if not present:
        _download(tv_class.__name__, root, [archive], lambda: tv_class(str(root), download=True))
    try:
        batches = _cifar_members(root, base, archive, names)
    except (OSError, KeyError, EOFError, pickle.UnpicklingError, tarfile.TarError):
        raise DataError(
            f"{root / archive}: damaged CIFAR files; delete {root / base} and the archive to download again"
        ) from None

    def split(batch_names: list[str]) -> Split:
        x = np.concatenate([batches[n]["data"] for n in batch_names]).reshape(-1, 3, 32, 32)
        y = np.concatenate([batches[n][label_key] for n in batch_names])
        return Split(torch.from_numpy(x), torch.from_numpy(y).long())

    return RawDataset(
        classes=list(batches[meta][tv_class.meta["key"]]),
        train=split(train_names),
        test=split([tv_class.test_list[0][0]]),
        hflip=True,
    )


@register_dataset(
    "cifar10", "10 object classes, 32x32 colour, 50,000 train + 10,000 test (torchvision)", train_images=50_000
)
def cifar10(cfg: DataConfig) -> RawDataset:
    return _load_cifar(cfg, torchvision.datasets.CIFAR10, "labels")


@register_dataset(
    "cifar100", "100 object classes, 32x32 colour, 50,000 train + 10,000 test (torchvision)", train_images=50_000
)
def cifar100(cfg: DataConfig) -> RawDataset:
    return _load_cifar(cfg, torchvision.datasets.CIFAR100, "fine_labels")


# ---------------------------------------------------------------- shipped with the package


@register_dataset(
    "digits",
    "shipped, works offline: 1,797 handwritten digits, 8x8 grayscale (UCI, CC BY 4.0)",
    train_images=1_797,
    has_test_split=False,
)
def digits(cfg: DataConfig) -> RawDataset:
    with resources.files(__package__).joinpath("shipped/digits.csv.gz").open("rb") as f:
        table = np.loadtxt(gzip.open(f), delimiter=",", dtype=np.float32)
    # 17 grey levels (0..16) -> 0..255
    images = torch.from_numpy(np.round(table[:, :64] * (255.0 / 16.0)).astype(np.uint8)).view(-1, 1, 8, 8)
    labels = torch.from_numpy(table[:, 64].astype(np.int64))
    return RawDataset(classes=[str(i) for i in range(10)], train=Split(images, labels), hflip=False)

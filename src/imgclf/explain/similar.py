"""Embeddings for the user: ``embed`` writes what a network's class layer sees for each image (the run's
network, or the shipped ``lite0``'s ImageNet features); ``similar`` shows a picture's nearest training images
by those embeddings (cosine distance, scikit-learn's nearest neighbours), with their labels, as a grid.

Training images' embeddings are cached like the decode cache, under a hash of the network and pixels.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import DataConfig, DecodeSpec, flatten
from ..data import Split, load_data
from ..data.features import cached_features, compute_features
from ..data.images import describe_skip, find_images, stream_images
from ..errors import ConfigError, DataError
from ..fsutil import atomic_path
from ..models.lite import pretrained_lite
from ..models.registry import pretrained_stats
from ..plots.figures import plot_image_grid
from ..plots.tables import Table
from ..predict import Classifier
from ..rundir import RunDir
from ..tasks import label_names

EMBED_SIZE = 224  # lite0's ImageNet size: the general-purpose embedding without a run
SIMILAR_K = 8


@dataclass
class Embeddings:
    files: list[str]
    features: np.ndarray  # N x D float32
    model: str
    image_size: int
    skipped: list[tuple[str, str]]
    labels: list[str] = field(default_factory=list)  # per file: its class sub-folder (see folder_labels)

    def save(self, path: str | os.PathLike) -> Path:
        """An .npz of ``files``, ``labels``, ``features``, ``model`` and ``image_size`` (numpy.load reads it)."""
        path = Path(path)
        with atomic_path(path, "out") as tmp, open(tmp, "wb") as f:
            np.savez(
                f,
                files=np.asarray(self.files),
                labels=np.asarray(self.labels, dtype=str),
                features=self.features,
                model=self.model,
                image_size=self.image_size,
            )
        return path


def folder_labels(files: Sequence[str], given: Sequence[str | os.PathLike]) -> list[str]:
    """Each file's sub-folder below the folder it was found in (its class, in a folder of class sub-folders, as
    training reads one); "" for a file named alone or lying at a folder's top."""
    roots = [Path(p).resolve() for p in given if Path(p).is_dir()]
    labels = []
    for file in files:
        path = Path(file).resolve()
        below = next((path.relative_to(root).parts for root in roots if path.is_relative_to(root)), ())
        labels.append(below[0] if len(below) > 1 else "")
    return labels


def embed_images(
    images: Sequence[str | os.PathLike], classifier: Classifier | None = None, device: str = "auto"
) -> Embeddings:
    """Embeddings of image files and folders: by ``classifier``'s network, or lite0's ImageNet features."""
    if classifier is not None:
        sources, batch, skipped = classifier.read_images(list(images))
        values = compute_features(classifier.model, batch, classifier.spec.mean, classifier.spec.std, classifier.device)
        labels = folder_labels(sources, images)
        return Embeddings(sources, values.numpy(), classifier.model_name, classifier.image_size, skipped, labels)
    from ..runtime import resolve_device

    files = find_images(images)
    if not files:
        raise DataError(f"no image files in {', '.join(map(str, images))}; give image files or folders")
    stats = pretrained_stats("lite0", 3)
    assert stats is not None
    target = resolve_device(device)
    network = pretrained_lite().to(target)
    named = {str(Path(p)) for p in images if Path(p).is_file()}
    kept, parts, skipped = [], [], []
    for part in stream_images(files, DecodeSpec(EMBED_SIZE), 3):
        for file, reason in part.skipped:
            if file in named:  # as predict: a file you name must be an image; one inside a folder is skipped
                raise DataError(f"{file}: {describe_skip(reason)}")
        kept += [str(f) for f in part.files]
        skipped += part.skipped
        if len(part.images):
            parts.append(compute_features(network, part.images, *stats, target))
    if not parts:
        raise DataError(f"none of the files in {', '.join(map(str, images))} is a readable image")
    values = torch.cat(parts)
    return Embeddings(kept, values.numpy(), "lite0 (ImageNet)", EMBED_SIZE, skipped, folder_labels(kept, images))


@dataclass
class Neighbour:
    file: str
    label: str
    similarity: float  # cosine similarity of the embeddings, 1 for the same direction


@dataclass
class SimilarResult:
    query: str
    neighbours: list[Neighbour]
    plot: Path | None = None

    def table(self) -> Table:
        return Table(
            ["rank", "training image", "label", "similarity"],
            [[str(i + 1), n.file, n.label, f"{n.similarity:.3f}"] for i, n in enumerate(self.neighbours)],
        )


def _training_data(classifier: Classifier, run: RunDir) -> tuple[DataConfig, Split, list[str]]:
    """The run's data settings and training split, as it trained, at the network's size, and its classes."""
    values = flatten(run.read_config())
    names = {f.name for f in dataclasses.fields(DataConfig)}
    given = {k: v for k, v in values.items() if k in names and v is not None}
    if "data" not in given:
        raise ConfigError(f"{run.path}: no config.yaml naming its data; `similar` needs the run's training images")
    cfg = DataConfig(**{**given, "image_size": classifier.image_size, "resize": classifier.spec.resize})
    data = load_data(cfg)
    if data.classes != classifier.classes:
        raise DataError(f"{cfg.data}: its classes are no longer the run's; `similar` needs the data the run trained on")
    return cfg, data.train, data.classes


@dataclass
class TrainingIndex:
    """A run's training images by their embeddings under the run's network, to ask for the nearest (the
    ``similar`` command, the studio's "try the model")."""

    classifier: Classifier
    images: torch.Tensor  # the training split's pixels, as trained on
    labels: torch.Tensor
    files: list[str]
    classes: list[str]
    index: Any  # scikit-learn's NearestNeighbors over the embeddings (cosine)

    @classmethod
    def of_run(cls, classifier: Classifier, run: RunDir) -> TrainingIndex:
        from sklearn.neighbors import NearestNeighbors

        cfg, train, classes = _training_data(classifier, run)
        spec = classifier.spec
        features = cached_features(
            classifier.model, train.images, spec.mean, spec.std, classifier.device, cfg.cache_dir, "similar"
        ).values.float()
        index = NearestNeighbors(metric="cosine").fit(features.numpy())
        return cls(classifier, train.images, train.labels, list(train.sources or []), classes, index)

    def nearest(self, features: np.ndarray, k: int) -> list[list[tuple[int, Neighbour]]]:
        """For each row of ``features`` (embeddings by the same network), its ``k`` nearest training images:
        (their index in the split, the neighbour), the nearest first."""
        distances, found = self.index.kneighbors(features, n_neighbors=min(k, len(self.images)))
        return [
            [(int(j), Neighbour(self._file(int(j)), self._label(int(j)), 1 - float(d))) for d, j in zip(row_d, row_j)]
            for row_d, row_j in zip(distances, found)
        ]

    def _file(self, j: int) -> str:
        return self.files[j] if j < len(self.files) else f"#{j}"

    def _label(self, j: int) -> str:
        return label_names(self.labels[j : j + 1], self.classes)[0]


def similar(
    run: str | os.PathLike,
    images: Sequence[str | os.PathLike],
    k: int = SIMILAR_K,
    out: str | os.PathLike | None = None,
    device: str = "auto",
) -> list[SimilarResult]:
    """For each image, the ``k`` training images of ``run`` nearest to it by the run's embeddings, drawn into
    ``out`` (default RUN/similar) as one grid per image."""
    from ..predict import load

    classifier = load(run, device=device)
    run_dir = RunDir(Path(run) if Path(run).is_dir() else Path(run).parent)
    training = TrainingIndex.of_run(classifier, run_dir)
    query = embed_images(images, classifier)
    folder = Path(out) if out is not None else run_dir.path / "similar"
    results = []
    decoded = classifier.read_images(list(images))[1]
    for i, (source, found) in enumerate(zip(query.files, training.nearest(query.features, k))):
        neighbours = [n for _, n in found]
        plot = folder / f"similar_{i + 1:03d}_{Path(source).stem[:40]}.png"
        grid = torch.cat([decoded[i : i + 1], torch.as_tensor(training.images[torch.as_tensor([j for j, _ in found])])])
        titles = ["your image", *(f"{n.label}\n{n.similarity:.2f}" for n in neighbours)]
        plot_image_grid(grid, titles, plot, suptitle=f"{Path(source).name}: the nearest training images (cosine)")
        results.append(SimilarResult(source, neighbours, plot))
    return results

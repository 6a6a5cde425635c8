"""Trying a run's model on an image in the studio: its answer with the probabilities, the Grad-CAM overlay, the
nearest training images, and ``unknown`` where ``evaluate --negatives`` measured where to say it.

Inference only: the first try of a run loads PyTorch and the model (never the training code), in a worker
thread; models and their training-image indexes stay loaded for the next image.
"""

from __future__ import annotations

import base64
import io
import threading
from collections import OrderedDict
from typing import Any

from ..rundir import RunDir, unknown_operating_points
from .workspace import Workspace

TOP_K = 5
NEAREST = 6  # training images shown beside an answer
LOADED = 3  # runs' models kept loaded, the most recently tried


class NotReady(Exception):
    """The nearest training images are still being embedded."""


class BadImage(ValueError):
    """An upload that is not a usable image: the message names it and why."""


def _png(pixels: Any) -> str:
    from PIL import Image

    array = pixels.permute(1, 2, 0).numpy()
    picture = Image.fromarray(array[..., 0] if array.shape[2] == 1 else array)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


class Models:
    """The runs' classifiers the studio has loaded, one at a time per run."""

    def __init__(self, workspace: Workspace, max_image_pixels: int) -> None:
        self.workspace, self.max_image_pixels = workspace, max_image_pixels
        self.loaded: OrderedDict[str, tuple[Any, threading.Lock]] = OrderedDict()
        self.indexes: dict[str, Any] = {}  # a run's TrainingIndex, or the error that stopped it
        self.indexing: set[str] = set()
        self.lock = threading.Lock()

    def _classifier(self, run: RunDir) -> tuple[Any, threading.Lock]:
        from ..predict import load

        key = str(run.path)
        with self.lock:
            if key not in self.loaded:
                self.loaded[key] = (
                    load(run.path, device="cpu", max_image_pixels=self.max_image_pixels),
                    threading.Lock(),
                )
                while len(self.loaded) > LOADED:  # the least recently tried goes (and its index)
                    old, _ = self.loaded.popitem(last=False)
                    self.indexes.pop(old, None)
            self.loaded.move_to_end(key)
            return self.loaded[key]

    def _index(self, run: RunDir, classifier: Any) -> Any:
        """The run's training images by embedding, or None while they are being embedded (in the background: a
        large folder takes a while the first time, then its features are cached); an ImgclfError raised."""
        key = str(run.path)
        with self.lock:
            found = self.indexes.get(key)
            if found is None and key not in self.indexing:
                self.indexing.add(key)
                threading.Thread(target=self._build, args=(key, run, classifier), daemon=True).start()
        if isinstance(found, Exception):
            raise found
        return found

    def _build(self, key: str, run: RunDir, classifier: Any) -> None:
        from ..errors import ImgclfError
        from ..explain.similar import TrainingIndex

        try:
            built: Any = TrainingIndex.of_run(classifier, run)
        except ImgclfError as exc:  # the training images moved or changed
            built = exc
        with self.lock:
            self.indexes[key] = built
            self.indexing.discard(key)

    def forget(self, run: RunDir) -> None:
        """Drop a run's loaded model (it trained further: its best.pt changed)."""
        with self.lock:
            self.loaded.pop(str(run.path), None)
            self.indexes.pop(str(run.path), None)

    def answer(self, run: RunDir, name: str, data: bytes) -> dict[str, Any]:
        """One uploaded image's answer, overlay and nearest training images (run in a worker thread)."""
        from ..data.features import compute_features
        from ..data.images import decode_bytes, describe_skip, to_channels
        from ..errors import ImgclfError
        from ..serve.app import explain_image

        classifier, lock = self._classifier(run)
        decoded = decode_bytes(data, classifier.decode_spec)
        if isinstance(decoded, str):
            raise BadImage(f"{name}: {describe_skip(decoded)}")
        image = to_channels(decoded[0], classifier.channels)
        measured = run.read_unknown_result()
        with lock:
            top, overlay, _ = explain_image(classifier, image, TOP_K)
            probs = classifier.predict_proba(image[None])
            unknown: dict[str, Any] = {"measured": measured is not None}
            if measured is not None:  # the score and threshold `evaluate --negatives` chose, as `predict` uses them
                point = unknown_operating_points(measured)[measured["chosen"]]
                scores = classifier.unknown_scores(image[None], probs)
                (prediction,) = classifier.top_k([name], probs, TOP_K, float(point["threshold"]), scores)
                unknown.update(score=measured["chosen"], threshold=point["threshold"], keeps=point["coverage"])
                unknown["value"] = float(scores[0])
            else:
                (prediction,) = classifier.top_k([name], probs, TOP_K)
            nearest: list[dict[str, Any]] = []
            nearest_error = None
            try:
                index = self._index(run, classifier)
                if index is None:
                    raise NotReady
                features = compute_features(classifier.model, image[None], classifier.spec.mean, classifier.spec.std,
                                            classifier.device)  # fmt: skip
                for j, neighbour in index.nearest(features.numpy(), NEAREST)[0]:
                    nearest.append(
                        {
                            "label": neighbour.label,
                            "similarity": neighbour.similarity,
                            "file": self.workspace.relative(neighbour.file)
                            if not neighbour.file.startswith("#")
                            else None,
                            "image": _png(index.images[j]),
                        }
                    )
            except ImgclfError as exc:  # the training images moved or changed: the answer stands without them
                nearest_error = str(exc)
            except NotReady:
                nearest_error = "embedding the training images to find the nearest: ask again in a moment"
        return {
            "file": name,
            "label": prediction.label,
            "labels": prediction.labels,
            "probability": top[0][1],
            "top_k": [{"label": label, "probability": p} for label, p in top],
            "overlay": overlay,
            "unknown": unknown,
            "nearest": nearest,
            "nearest_error": nearest_error,
            "nearest_pending": str(run.path) in self.indexing,
        }

"""The web app: a page at ``/``, ``POST /predict``, ``POST /explain``, ``GET /health``, ``GET /model``.

Uploads are decoded by the same guarded decoder as training and ``predict`` (header checked before any
pixel is allocated), in worker threads; the model runs in its own thread through the batcher. Every
problem with a request is a 4xx JSON answer ``{"error": ..., "file": ...}``; the server keeps serving.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from importlib import resources
from typing import Annotated, Any

import torch
from fastapi import FastAPI, File, Query, UploadFile
from fastapi.responses import HTMLResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from ..data.images import decode_bytes, describe_skip, to_channels
from ..errors import CheckpointError, ConfigError
from ..predict import Classifier
from ..runtime import imgclf_version
from ..tasks import Prediction
from .batcher import MicroBatcher, ModelThread
from .http import ERRORS, BodyLimit, RequestProblem, answer_errors_as_json, offline_docs
from .settings import ServeSettings

OVERLAY_SIZE = 256  # pixels of the Grad-CAM picture the page shows


class ClassScore(BaseModel):
    label: str
    probability: float


class ImagePrediction(BaseModel):
    file: str
    label: str  # multi-label runs: the labels over their thresholds, joined by ";" (empty: none)
    probability: float
    top_k: list[ClassScore]
    labels: list[ClassScore] | None = None  # multi-label runs: every label over its threshold, most probable first


class PredictResponse(BaseModel):
    predictions: list[ImagePrediction]


class ExplainResponse(ImagePrediction):
    overlay: str  # data: URL of a PNG, the image with its Grad-CAM heat map


def _image_prediction(
    name: str,
    top: list[tuple[str, float]],
    label: str | None = None,
    labels: list[tuple[str, float]] | None = None,
) -> ImagePrediction:
    """One image's answer from its (label, probability) pairs, most probable first; ``label``: the decided
    one (``unknown`` below the minimum confidence; a multi-label run's labels joined), else the most probable."""
    return ImagePrediction(
        file=name,
        label=label if label is not None else top[0][0],
        probability=top[0][1],
        top_k=[ClassScore(label=label, probability=prob) for label, prob in top],
        labels=None if labels is None else [ClassScore(label=lbl, probability=p) for lbl, p in labels],
    )


def _predictions(
    classifier: Classifier,
    names: list[str],
    images: torch.Tensor,
    probs: torch.Tensor,
    k: int,
    min_confidence: float,
    threshold: float | None = None,
) -> list[ImagePrediction]:
    """Each image's answer as the run's task decides it (a task without `unknown` ignores min_confidence; one
    without thresholds, threshold)."""
    scores = classifier.unknown_scores(images, probs) if min_confidence > 0 and classifier.novelty else None
    predictions = classifier.top_k(names, probs, k, min_confidence, scores, threshold)
    return [_image_prediction(name, p.top_k, p.label, p.labels) for name, p in zip(names, predictions)]


async def _decode(upload: UploadFile, classifier: Classifier) -> torch.Tensor:
    name = upload.filename or "upload"
    data = await upload.read()
    result = await run_in_threadpool(decode_bytes, data, classifier.decode_spec)  # its limit: the server's
    if isinstance(result, str):
        raise RequestProblem(422, f"{name}: {describe_skip(result)}", name)
    return to_channels(result[0], classifier.channels)


def _model_info(classifier: Classifier, settings: ServeSettings) -> dict[str, Any]:
    from ..rundir import RunDir  # the run's test metrics, when the checkpoint sits in a run directory

    try:
        metrics = RunDir(classifier.path.parent).read_metrics().get("test") if classifier.path else None
    except CheckpointError:
        metrics = None
    summary = {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float))}
    return {
        "model": classifier.model_name,
        "classes": classifier.classes,
        "image_size": classifier.image_size,
        "channels": classifier.channels,
        # the run's folder and file, not the absolute path: a client need not learn this machine's layout
        "checkpoint": f"{classifier.path.parent.name}/{classifier.path.name}" if classifier.path else None,
        "temperature": classifier.spec.temperature,  # the calibration the probabilities include
        "task": classifier.spec.task,  # how a probability becomes an answer: the decision and thresholds below
        **classifier.task.export_metadata(classifier.thresholds),
        "unknown_score": classifier.unknown_score,  # what min_confidence is compared with
        "changed_after_training": classifier.changed_by,  # e.g. `unknown` by familiarity (evaluate --negatives)
        "test_metrics": summary or None,
        "backend": settings.backend,  # where /predict's forward pass runs (/explain's is PyTorch's)
        "limits": {k: v for k, v in asdict(settings).items() if k != "backend"},
    }


def create_app(classifier: Classifier, settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI app serving ``classifier`` (see the module's docstring); ``uvicorn.run(app)`` runs it."""
    settings = settings or ServeSettings()
    model_thread = ModelThread()
    batcher = MicroBatcher(
        lambda images: classifier.predict_proba(images), model_thread, settings.max_batch, settings.max_wait_ms / 1000
    )
    info = _model_info(classifier, settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        await batcher.stop()
        model_thread.close()

    app = FastAPI(
        title="imgclf",
        summary=f"{classifier.model_name} classifying {len(classifier.classes)} classes",
        version=imgclf_version(),
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc are served below from files installed with the [serve] extra
        redoc_url=None,
    )
    app.state.batcher = batcher
    app.add_middleware(BodyLimit, max_bytes=settings.max_upload_bytes)

    answer_errors_as_json(app)
    offline_docs(app)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        html = resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")
        return HTMLResponse(html.replace("__MODEL__", json.dumps(info).replace("</", "<\\/")))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness: answers while the server runs, with how many images it has predicted."""
        return {"status": "ok", "images": batcher.images, "batches": batcher.batches}

    @app.get("/model")
    async def model() -> dict[str, Any]:
        """The model: its class names, input size and channels, the run's test metrics and the limits."""
        return info

    @app.post("/predict", response_model=PredictResponse, responses=ERRORS)
    async def predict(
        files: Annotated[
            list[UploadFile],
            File(
                min_length=1,  # the schema says what the server takes: at least one image, each not empty
                description="one or more image files, none empty (over the server's max_images: 413; see /model)",
            ),
        ],
        top_k: Annotated[int | None, Query(ge=1, le=1000, description="classes per image (default 5)")] = None,
        min_confidence: Annotated[
            float | None,
            Query(
                ge=0,
                le=1,
                description="label `unknown` below this calibrated top probability, or familiarity where "
                "`evaluate --negatives` chose it (default: the server's)",
            ),
        ] = None,
        threshold: Annotated[
            float | None,
            Query(
                gt=0,
                lt=1,
                description="runs with several labels per image: every label from this probability on "
                "(default: the server's, else the run's per-class thresholds)",
            ),
        ] = None,
    ) -> PredictResponse:
        """Classify one or several images: the top-k classes with probabilities, per image, in order (and, for a
        multi-label run, every label over its threshold)."""
        if not files:
            raise RequestProblem(400, "no image in the request; send files=@IMAGE as multipart form data")
        if len(files) > settings.max_images:
            raise RequestProblem(413, f"{len(files)} images in one request, over the limit of {settings.max_images}")
        images = torch.stack([await _decode(f, classifier) for f in files])
        probs = await batcher(images)
        names = [f.filename or f"upload {i}" for i, f in enumerate(files)]
        confidence = settings.min_confidence if min_confidence is None else min_confidence
        cut = settings.threshold if threshold is None else threshold
        return PredictResponse(
            predictions=_predictions(classifier, names, images, probs, top_k or settings.top_k, confidence, cut)
        )

    @app.post("/explain", response_model=ExplainResponse, responses=ERRORS)
    async def explain(file: Annotated[UploadFile, File(description="one image file")]) -> ExplainResponse:
        """One image's top classes and its Grad-CAM overlay (a PNG data URL): what the page shows."""
        image = await _decode(file, classifier)
        top, overlay, answer = await model_thread.run(
            explain_image, classifier, image, settings.top_k, settings.threshold
        )
        prediction = _image_prediction(file.filename or "upload", top, answer.label, answer.labels)
        return ExplainResponse(**prediction.model_dump(), overlay=overlay)

    return app


def explain_image(
    classifier: Classifier, image: torch.Tensor, k: int, threshold: float | None = None
) -> tuple[list[tuple[str, float]], str, Prediction]:
    """The top ``k`` (label, probability), the overlay (of the most probable class), and the answer as /predict
    gives it."""
    from ..explain.attribution import explain_batch, overlay_image  # captum and matplotlib: loaded on first use

    try:
        (explanation,) = explain_batch(classifier, image[None], "gradcam", top_k=k, per_label=False)
    except ConfigError:  # a model without a conv layer (the MLP): the input-gradient saliency instead
        (explanation,) = explain_batch(classifier, image[None], "saliency", top_k=k, per_label=False)
    buffer = io.BytesIO()
    overlay_image(image, explanation.heatmap, OVERLAY_SIZE).save(buffer, format="PNG")
    top = [(classifier.classes[c], p) for c, p in explanation.top_k]
    (answer,) = classifier.top_k(["upload"], classifier.predict_proba(image[None]), k, threshold=threshold)
    return top, "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode(), answer

"""CoreML ML Programs (``.mlpackage``, a folder) for iPhone, iPad and Mac apps, converted by Apple's
coremltools. Conversion and the written spec are checked on any machine; predictions run only on Apple's
systems (Core ML is part of macOS and iOS), so on Linux an export says it was not run rather than claiming
parity, and ``predict --backend coreml`` says where it runs."""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CheckpointError, ExportError
from . import converter, one_image_at_a_time, plain_copy, quiet_converter, runtime

if TYPE_CHECKING:
    import torch

INPUT, PROBABILITIES = "image", "probabilities"
LABEL, LABEL_PROBABILITIES = "classLabel", "classLabel_probs"  # a classifier's outputs, as Xcode shows them


def runs_here() -> bool:
    return sys.platform == "darwin"


def export_coreml(
    model: torch.nn.Module, example: torch.Tensor, path: Path, classes: list[str], activation: str, **_: Any
) -> None:
    """An ML Program taking an image (Core ML's image type: a CVPixelBuffer or a PIL image, 0-255 RGB or
    grey, at the model's size) and giving, for single-label models, Core ML's classifier outputs (the label
    and a probability per class, as Vision's VNClassificationObservation reads them); for several labels per
    image, the per-class probabilities as an array."""
    import torch

    ct = converter("coremltools", "coreml", "CoreML export")
    channels, size = example.shape[1], example.shape[-1]
    pixels = example[:1].float()  # Core ML hands the model pixels as floats 0-255: the graph's uint8 cast is a no-op
    with quiet_converter(), torch.no_grad():
        traced = torch.jit.trace(plain_copy(model), pixels, check_trace=False)
        colour = ct.colorlayout.RGB if channels == 3 else ct.colorlayout.GRAYSCALE
        single = activation == "softmax"  # one class an image: Core ML's classifier outputs
        converted = ct.convert(
            traced,
            inputs=[ct.ImageType(name=INPUT, shape=tuple(pixels.shape), color_layout=colour)],
            outputs=None if single else [ct.TensorType(name=PROBABILITIES)],
            classifier_config=ct.ClassifierConfig(list(classes)) if single else None,
            convert_to="mlprogram",
            compute_precision=ct.precision.FLOAT32,  # fp32 as exported elsewhere; Core ML may still run it on fp16
            minimum_deployment_target=ct.target.iOS16,
        )
    converted.short_description = f"imgclf image classifier: {len(classes)} classes"
    converted.user_defined_metadata["classes"] = json.dumps(list(classes))
    converted.user_defined_metadata["activation"] = activation
    converted.save(str(path))
    check_spec(path, channels, size, classes, single)


def check_spec(path: Path, channels: int, size: int, classes: list[str], single: bool) -> None:
    """Read the written package back (without Core ML, which Linux lacks) and check what an app relies on:
    the input image's size and colour, the outputs, the classes."""
    ct = converter("coremltools", "coreml", "CoreML export")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    (image,) = spec.description.input
    found = image.type.imageType
    colour = "RGB" if channels == 3 else "GRAYSCALE"
    outputs = [o.name for o in spec.description.output]
    problems = []
    if image.name != INPUT or (found.width, found.height) != (size, size):
        problems.append(f"input {image.name} {found.width}x{found.height}, not {INPUT} {size}x{size}")
    if ct.proto.FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(found.colorSpace) != colour:
        problems.append(f"input colour space is not {colour}")
    expected_outputs = [LABEL, LABEL_PROBABILITIES] if single else [PROBABILITIES]
    if sorted(outputs) != sorted(expected_outputs):
        problems.append(f"outputs {outputs}, not {expected_outputs}")
    if json.loads(spec.description.metadata.userDefined["classes"]) != list(classes):
        problems.append("the classes in its metadata differ")
    if spec.WhichOneof("Type") != "mlProgram":
        problems.append(f"a {spec.WhichOneof('Type')}, not an ML Program")
    if problems:
        raise ExportError(f"{path}: the CoreML spec is not what was exported: {'; '.join(problems)}")


class CoreMLBackend:
    """An .mlpackage run by Core ML (macOS): uint8 N x C x H x W in, probabilities out, image by image."""

    def __init__(self, path: str | os.PathLike) -> None:
        if not runs_here():
            raise CheckpointError(
                f"{path}: CoreML models run on Apple's systems only (macOS 13 or iOS 16 and later), not on "
                f"{sys.platform}; use --backend onnx or openvino here"
            )
        ct = runtime("coremltools", "coreml", "the CoreML backend")
        self.model = ct.models.MLModel(str(path))
        metadata = self.model.user_defined_metadata
        self.classes, self.single = json.loads(metadata["classes"]), metadata["activation"] == "softmax"

    def _one(self, image: torch.Tensor) -> torch.Tensor:
        import torch
        from PIL import Image

        pixels = image[0].permute(1, 2, 0).cpu().numpy()
        picture = Image.fromarray(pixels if pixels.shape[-1] == 3 else pixels[..., 0])
        answer = self.model.predict({INPUT: picture})
        if self.single:
            return torch.tensor([[float(answer[LABEL_PROBABILITIES][c]) for c in self.classes]])
        return torch.as_tensor(answer[PROBABILITIES]).float().reshape(1, -1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return one_image_at_a_time(self._one, images)

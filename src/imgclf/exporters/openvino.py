"""OpenVINO IR (a folder: model.xml and model.bin), fp32 and INT8 (NNCF's post-training quantization on the
run's validation images), run by OpenVINO's CPU plugin, as Intel laptops and NUCs run it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import CALIBRATION_IMAGES, converter, plain_copy, quiet_converter, runtime

if TYPE_CHECKING:
    import torch

IR = "model.xml"  # inside the format's folder; model.bin beside it holds the weights


def _convert(model: torch.nn.Module, example: torch.Tensor) -> Any:
    ov = converter("openvino", "openvino", "OpenVINO export")
    with quiet_converter():
        converted = ov.convert_model(plain_copy(model), example_input=example, input=[(-1, *example.shape[1:])])
    converted.inputs[0].get_tensor().set_names({"images"})
    converted.outputs[0].get_tensor().set_names({"probabilities"})
    return converted


def export_openvino(model: torch.nn.Module, example: torch.Tensor, path: Path, **_: Any) -> None:
    ov = converter("openvino", "openvino", "OpenVINO export")
    path.mkdir()
    ov.save_model(_convert(model, example), str(path / IR), compress_to_fp16=False)  # fp32 weights: parity first


def export_openvino_int8(
    model: torch.nn.Module, example: torch.Tensor, path: Path, calibration: torch.Tensor, **_: Any
) -> None:
    """INT8 weights and activations by NNCF's post-training quantization (its defaults: symmetric INT8
    weights per channel, activation ranges from ``calibration``, fast bias correction)."""
    ov = converter("openvino", "openvino", "OpenVINO INT8 export")
    nncf = converter("nncf", "openvino", "OpenVINO INT8 export")
    images = calibration[:CALIBRATION_IMAGES].numpy()
    dataset = nncf.Dataset([images[i : i + 1] for i in range(len(images))])  # one image an item: NNCF's advice
    with quiet_converter():
        quantized = nncf.quantize(_convert(model, example), dataset, subset_size=len(images))
    path.mkdir()
    ov.save_model(quantized, str(path / IR), compress_to_fp16=False)


class OpenVinoBackend:
    """An OpenVINO IR folder compiled for this CPU: uint8 N x C x H x W in, probabilities out."""

    def __init__(self, path: str | os.PathLike) -> None:
        import torch

        ov = runtime("openvino", "openvino", "the OpenVINO backend")
        config = {
            # fp32 arithmetic: the plugin's default on CPUs that report bf16 is bf16, which moves probabilities
            # by ~4e-3 (measured); INT8 layers stay INT8 either way
            "INFERENCE_PRECISION_HINT": "f32",
            "INFERENCE_NUM_THREADS": torch.get_num_threads(),  # the same threads PyTorch would use
        }
        self.model = ov.Core().compile_model(str(Path(path) / IR), "CPU", config)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.from_numpy(self.model(images.cpu().numpy())[0].copy())

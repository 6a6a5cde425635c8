"""TFLite (LiteRT) flatbuffers, fp32 and INT8, converted by Google's litert-torch and run here by the LiteRT
interpreter (with its XNNPACK delegate), as Android and a Raspberry Pi run them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import CALIBRATION_IMAGES, converter, one_image_at_a_time, plain_copy, quiet_converter, runtime

if TYPE_CHECKING:
    import torch


def export_tflite(model: torch.nn.Module, example: torch.Tensor, path: Path, **_: Any) -> None:
    litert_torch = converter("litert_torch", "tflite", "TFLite export")
    with quiet_converter():
        converted = litert_torch.convert(plain_copy(model), (example[:1],))  # batch 1; the interpreter resizes it
    converted.export(str(path))


def export_tflite_int8(
    model: torch.nn.Module, example: torch.Tensor, path: Path, calibration: torch.Tensor, **_: Any
) -> None:
    """Full-integer where the converter allows: INT8 weights (a scale per channel) and activations, whose ranges
    are observed on ``calibration`` (PyTorch 2 export quantization, the converter's own quantizer)."""
    import torch

    litert_torch = converter("litert_torch", "tflite", "TFLite INT8 export")
    pt2e = converter("litert_torch.quantize.pt2e_quantizer", "tflite", "TFLite INT8 export")
    quant_config = converter("litert_torch.quantize.quant_config", "tflite", "TFLite INT8 export")
    prepare = converter("torchao.quantization.pt2e.quantize_pt2e", "tflite", "TFLite INT8 export")
    quantizer = pt2e.PT2EQuantizer().set_global(pt2e.get_symmetric_quantization_config(is_per_channel=True))
    one, network = example[:1], plain_copy(model)
    # without test-time augmentation: quantized, the augmented graph (the network run on six views) kept the
    # answer for 7% of CIFAR-10 test images, the plain one for 98% (measured in PyTorch, before conversion)
    network.tta = False  # type: ignore[assignment]  # an InferenceModel; mypy sees a Module
    with quiet_converter(), torch.no_grad():
        observed = prepare.prepare_pt2e(torch.export.export(network, (one,)).module(), quantizer)
        for image in calibration[:CALIBRATION_IMAGES].split(1):  # the graph was exported for one image
            observed(image)
        quantized = prepare.convert_pt2e(observed, fold_quantize=False)
        converted = litert_torch.convert(
            quantized, (one,), quant_config=quant_config.QuantConfig(pt2e_quantizer=quantizer)
        )
    converted.export(str(path))


class TfliteBackend:
    """A .tflite file in the LiteRT interpreter: uint8 N x C x H x W in, probabilities out. The input is
    resized to each batch's size where the graph allows; where a reshape in it is fixed to one image (the
    converter bakes some), the batch runs image by image."""

    def __init__(self, path: str | os.PathLike) -> None:
        import torch

        interpreter = runtime("ai_edge_litert.interpreter", "tflite", "the TFLite backend")
        self.interpreter = interpreter.Interpreter(model_path=str(path), num_threads=torch.get_num_threads())
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]["index"]
        self.interpreter.allocate_tensors()
        self.shape, self.batches = tuple(self.input["shape"]), True

    def _run(self, images: torch.Tensor) -> torch.Tensor:
        import torch

        if tuple(images.shape) != self.shape:  # a new batch size: the interpreter plans its memory again
            self.interpreter.resize_tensor_input(self.input["index"], list(images.shape))
            self.interpreter.allocate_tensors()
            self.shape = tuple(images.shape)
        self.interpreter.set_tensor(self.input["index"], images.cpu().numpy())
        self.interpreter.invoke()
        return torch.from_numpy(self.interpreter.get_tensor(self.output).copy())

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.batches and len(images) > 1:
            try:
                return self._run(images)
            except RuntimeError:  # "failed to reshape": this graph takes one image
                self.batches, self.shape = False, ()
        return one_image_at_a_time(self._run, images)

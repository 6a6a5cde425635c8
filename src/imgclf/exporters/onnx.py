"""ONNX, fp32 (torch's dynamo exporter) and INT8 (ONNX Runtime's static quantization), run by ONNX Runtime."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ExportError
from . import CALIBRATION_BATCH, CALIBRATION_IMAGES, converter, quiet_converter, runtime

if TYPE_CHECKING:
    import torch

ONNX_OPSET = 18


def export_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path, **_: Any) -> None:
    import torch

    converter("onnxscript", "export", "ONNX export")  # torch's ONNX exporter needs it: checked first, for the message
    batch = torch.export.Dim("batch", min=1, max=65536)
    with quiet_converter():
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            input_names=["images"],
            output_names=["probabilities"],
            dynamic_shapes={"images": {0: batch}},
            opset_version=ONNX_OPSET,
            verbose=False,
        )
    if program is None:
        raise ExportError("torch.onnx.export returned no program; update PyTorch (2.5 or newer)")
    program.save(str(path))


def export_onnx_int8(
    model: torch.nn.Module, example: torch.Tensor, path: Path, calibration: torch.Tensor, **_: Any
) -> None:
    """ONNX with INT8 weights (per channel) and activations (static: their ranges calibrated on ``calibration``,
    the run's validation images), in QDQ form, by ONNX Runtime's quantization tools."""
    quantization = converter("onnxruntime.quantization", "export", "INT8 ONNX export")
    shape_inference = converter("onnxruntime.quantization.shape_inference", "export", "INT8 ONNX export")

    class Batches(quantization.CalibrationDataReader):  # type: ignore[name-defined]
        def __init__(self) -> None:
            images = calibration[:CALIBRATION_IMAGES].numpy()
            self.batches = iter(
                {"images": images[i : i + CALIBRATION_BATCH]} for i in range(0, len(images), CALIBRATION_BATCH)
            )

        def get_next(self) -> dict[str, Any] | None:
            return next(self.batches, None)

    fp32, prepared = path.with_name(path.name + ".fp32"), path.with_name(path.name + ".pre")
    try:
        export_onnx(model, example, fp32)
        with quiet_converter():  # a bias's "axis out of range" notes, advice on pre-processing (done here)
            # ONNX's own shape inference and graph optimisation; ORT's symbolic shape pass is for dynamic shapes
            # of transformers, and fails on some convolution graphs (the cnn's)
            shape_inference.quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
            quantization.quantize_static(
                str(prepared),
                str(path),
                Batches(),
                quant_format=quantization.QuantFormat.QDQ,  # quantize/dequantize pairs: any runtime reads them
                per_channel=True,  # a scale per output channel: depthwise convolutions lose far less
                weight_type=quantization.QuantType.QInt8,
                activation_type=quantization.QuantType.QUInt8,
            )
    finally:
        fp32.unlink(missing_ok=True)
        prepared.unlink(missing_ok=True)


class OnnxBackend:
    """An exported ONNX model run by ONNX Runtime: uint8 N x C x H x W in, probabilities out."""

    def __init__(self, path: str | os.PathLike) -> None:
        import torch

        onnxruntime = runtime("onnxruntime", "export", "the ONNX backend")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # the same threads PyTorch would use
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.from_numpy(self.session.run(None, {"images": images.cpu().numpy()})[0])

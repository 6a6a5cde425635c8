"""What a trained network learned: its layers (inspect), the pixels a prediction rests on (attribution)
and where it is wrong (errors). Each analysis returns a result object whose tables the terminal and the
HTML report render alike."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

METHODS = ("gradcam", "saliency")  # here, not in .attribution: the command line lists them without loading captum
ERRORS_TOP = 25  # mistakes listed and drawn by default

_LAZY = {  # name -> submodule, imported on first use (captum, matplotlib)
    **dict.fromkeys(
        [
            "ExplainResult",
            "Explanation",
            "explain_batch",
            "explain_images",
            "explain_sources",
            "last_conv_block",
            "plot_explanation_pages",
            "spatial_layers",
        ],
        ".attribution",
    ),
    **dict.fromkeys(
        ["ErrorAnalysis", "ErrorsResult", "Mistake", "analyse_errors", "test_image_names", "write_errors"], ".errors"
    ),
    **dict.fromkeys(
        [
            "InspectResult",
            "LayerInfo",
            "feature_maps",
            "first_layer_kernels",
            "inspect_classifier",
            "inspect_model",
            "layer_table",
            "mlp_parameters_for",
        ],
        ".inspect",
    ),
}

if TYPE_CHECKING:
    from .attribution import (
        ExplainResult,
        Explanation,
        explain_batch,
        explain_images,
        explain_sources,
        last_conv_block,
        plot_explanation_pages,
        spatial_layers,
    )
    from .errors import ErrorAnalysis, ErrorsResult, Mistake, analyse_errors, test_image_names, write_errors
    from .inspect import (
        InspectResult,
        LayerInfo,
        feature_maps,
        first_layer_kernels,
        inspect_classifier,
        inspect_model,
        layer_table,
        mlp_parameters_for,
    )


__getattr__ = lazy_exports(__name__, _LAZY, globals())


__all__ = [
    "ERRORS_TOP",
    "METHODS",
    "ErrorAnalysis",
    "ErrorsResult",
    "ExplainResult",
    "Explanation",
    "InspectResult",
    "LayerInfo",
    "Mistake",
    "analyse_errors",
    "explain_batch",
    "explain_images",
    "explain_sources",
    "feature_maps",
    "first_layer_kernels",
    "inspect_classifier",
    "inspect_model",
    "last_conv_block",
    "layer_table",
    "mlp_parameters_for",
    "plot_explanation_pages",
    "spatial_layers",
    "test_image_names",
    "write_errors",
]

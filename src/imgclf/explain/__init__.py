"""What a trained network learned: its layers (inspect), the pixels a prediction rests on (attribution)
and where it is wrong (errors)."""

from .attribution import METHODS, Explanation, explain_images, last_conv_block, spatial_layers
from .errors import ErrorAnalysis, Mistake, analyse_errors
from .inspect import LayerInfo, feature_maps, first_layer_kernels, inspect_model, mlp_parameters_for

__all__ = [
    "METHODS", "ErrorAnalysis", "Explanation", "LayerInfo", "Mistake", "analyse_errors", "explain_images", "feature_maps",
    "first_layer_kernels", "inspect_model", "last_conv_block", "mlp_parameters_for", "spatial_layers",
]

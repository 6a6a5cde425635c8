"""What a trained network learned: its layers (inspect), and later its attributions and its errors."""

from .inspect import LayerInfo, feature_maps, first_layer_kernels, inspect_model, mlp_parameters_for

__all__ = ["LayerInfo", "feature_maps", "first_layer_kernels", "inspect_model", "mlp_parameters_for"]

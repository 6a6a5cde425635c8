"""Reports built from a run's outputs: figures and terminal tables."""

from .plots import (
    plot_comparison, plot_confusion_matrix, plot_curves, plot_explanations, plot_feature_maps, plot_image_grid, plot_kernels,
    plot_per_class, plot_predictions,
)
from .html import HtmlReport
from .tables import per_class_table, table

__all__ = [
    "HtmlReport", "per_class_table", "plot_comparison", "plot_confusion_matrix", "plot_curves", "plot_explanations", "plot_feature_maps", "plot_image_grid", "plot_kernels",
    "plot_per_class", "plot_predictions", "table",
]

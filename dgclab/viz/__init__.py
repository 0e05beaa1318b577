"""Visualisation: static plots of runs and of DGC channel selections (``plot_x(data, ax=None)
-> Figure``, pure functions that a test or a widget can call)."""

from .plots import (
    plot_accuracy_vs_macs,
    plot_channel_usage,
    plot_dead_filters,
    plot_head_overlap,
    plot_k_schedule,
    plot_learning_curves,
    plot_macs,
    plot_saliency_bars,
    plot_schedule_curve,
    plot_selection_heatmap,
)

__all__ = [
    "plot_accuracy_vs_macs",
    "plot_channel_usage",
    "plot_dead_filters",
    "plot_head_overlap",
    "plot_k_schedule",
    "plot_learning_curves",
    "plot_macs",
    "plot_saliency_bars",
    "plot_schedule_curve",
    "plot_selection_heatmap",
]

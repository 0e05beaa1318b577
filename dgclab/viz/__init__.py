"""Visualisation: static plots of runs and of DGC channel selections (``plot_x(data, ax=None)
-> Figure``, pure functions that a test or a widget can call), attributions beside selections
(Captum), notebook explorers (ipywidgets) and a live view of training.

One concept per module: ``history`` (a run over epochs), ``cost`` (MACs), ``adaptive`` (MACs
per image under DGC-G's threshold, the anytime curve), ``family`` (the channel-grouping family
side by side: accuracy against cost, what each method's groups read), ``selection`` (what
the DGC heads select), ``dynamics`` (how the selections move during training),
``attribution``, ``widgets``, ``live``; ``style`` holds the palette, the figure helpers and the
conventions every plot follows, ``inputs`` the checks of what a plot reads.
"""

from .adaptive import plot_anytime_curve, plot_cheapest_and_dearest, plot_macs_per_image
from .attribution import (
    image_attributions,
    image_selection,
    plot_image_explanation,
    top_channel_maps,
)
from .cost import plot_accuracy_vs_macs, plot_macs
from .dynamics import plot_loss_around_k, plot_selection_dynamics
from .family import (
    FamilyExplorer,
    connectivity_layers,
    family_connectivity,
    family_explorer,
    plot_connectivity,
    plot_family_pareto,
)
from .history import (plot_dead_filters, plot_k_schedule, plot_learning_curves,
                      plot_schedule_curve, plot_test_accuracy)
from .live import LiveTrainingView, RecordingSnapshots, plot_training_state
from .selection import (
    plot_channel_usage,
    plot_head_overlap,
    plot_saliency_bars,
    plot_selection_heatmap,
)
from .widgets import (
    DiversityExplorer,
    EpochExplorer,
    ImageExplorer,
    ThresholdExplorer,
    diversity_explorer,
    epoch_explorer,
    image_explorer,
    threshold_explorer,
)

__all__ = [
    "DiversityExplorer",
    "EpochExplorer",
    "FamilyExplorer",
    "ImageExplorer",
    "LiveTrainingView",
    "RecordingSnapshots",
    "ThresholdExplorer",
    "connectivity_layers",
    "diversity_explorer",
    "epoch_explorer",
    "family_connectivity",
    "family_explorer",
    "image_attributions",
    "image_explorer",
    "image_selection",
    "plot_accuracy_vs_macs",
    "plot_anytime_curve",
    "plot_channel_usage",
    "plot_cheapest_and_dearest",
    "plot_connectivity",
    "plot_dead_filters",
    "plot_family_pareto",
    "plot_head_overlap",
    "plot_image_explanation",
    "plot_k_schedule",
    "plot_learning_curves",
    "plot_loss_around_k",
    "plot_macs",
    "plot_macs_per_image",
    "plot_saliency_bars",
    "plot_schedule_curve",
    "plot_selection_dynamics",
    "plot_selection_heatmap",
    "plot_test_accuracy",
    "plot_training_state",
    "threshold_explorer",
    "top_channel_maps",
]

"""Analysis: MAC counts as the DGC paper reports them (SPEC §1.5), what the DGC heads select
(SPEC §1.7), implicit filter-level sparsity and the removal of dead filters (SPEC §7),
self-grouping convolution (SG-CNN, SPEC §4: ``self_group``, ``to_grouped``), channel-similarity
pruning (SPEC §6, dgclab's reading of the metric: ``channel_similarity``, ``merge_similar``),
compute that adapts to the image under DGC-G's threshold (``compute_per_image``,
``compute_sweep``), how selections move during training (``selection_churn``,
``saliency_stats``, ``loss_around_k_steps``, ``bn_drift``, ``bn_swap``) and a training-time
metric tracker."""

from .macs import conv_output_hw, count_macs, dgc_layer_mac_terms, dgc_layer_macs
from .selection import (
    binary_entropy,
    channel_usage,
    head_input_dependence,
    head_jaccard,
    head_overlap,
    jaccard_similarity,
    realized_macs,
    sample_similarity,
)
from .adaptive import (
    PER_IMAGE_COLUMNS, SWEEP_COLUMNS, compute_per_image, compute_sweep, layer_pruning_rates,
)
from .channel_similarity import channel_distance, channel_similarity, merge_similar
from .dynamics import (
    BN_DRIFT_COLUMNS, BN_SWAP_COLUMNS, bn_drift, bn_swap, loss_around_k_steps, saliency_stats,
    selection_churn,
)
from .dead_filters import ConvWithBiasMap, PruningReport, remove_dead_filters
from .pruning_effect import pruning_effect
from .self_grouping import ChannelMask, SelfGroupedConv2d, self_group, to_grouped
from .sparsity import bn_relu_pairs, filter_sparsity
from .tracker import CHEAP_METRICS, EXPENSIVE_METRICS, PROBE_METRICS, STEP_METRICS, MetricTracker

__all__ = [
    "BN_DRIFT_COLUMNS",
    "BN_SWAP_COLUMNS",
    "CHEAP_METRICS",
    "ChannelMask",
    "ConvWithBiasMap",
    "EXPENSIVE_METRICS",
    "MetricTracker",
    "PER_IMAGE_COLUMNS",
    "PROBE_METRICS",
    "PruningReport",
    "STEP_METRICS",
    "SWEEP_COLUMNS",
    "SelfGroupedConv2d",
    "binary_entropy",
    "bn_drift",
    "bn_swap",
    "bn_relu_pairs",
    "channel_distance",
    "channel_similarity",
    "channel_usage",
    "compute_per_image",
    "compute_sweep",
    "conv_output_hw",
    "count_macs",
    "dgc_layer_mac_terms",
    "dgc_layer_macs",
    "filter_sparsity",
    "head_input_dependence",
    "head_jaccard",
    "head_overlap",
    "layer_pruning_rates",
    "loss_around_k_steps",
    "jaccard_similarity",
    "merge_similar",
    "pruning_effect",
    "realized_macs",
    "remove_dead_filters",
    "saliency_stats",
    "sample_similarity",
    "selection_churn",
    "self_group",
    "to_grouped",
]

"""Analysis: MAC counts as the DGC paper reports them (SPEC §1.5)."""

from .macs import conv_output_hw, count_macs, dgc_layer_mac_terms, dgc_layer_macs

__all__ = [
    "conv_output_hw",
    "count_macs",
    "dgc_layer_mac_terms",
    "dgc_layer_macs",
]

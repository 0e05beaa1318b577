"""Recording: per-sample channel selections of every DGC head."""

from .recording import LAYER_INFO_KEYS, Recording

__all__ = ["LAYER_INFO_KEYS", "Recording"]

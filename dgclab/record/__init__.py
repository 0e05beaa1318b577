"""Recording: per-sample channel selections of every DGC head.

``Recorder`` records them while a model runs (a context manager over forward hooks);
``Recording`` is what it fills and what ``load_recording`` returns; ``save_recording`` (or
``Recording.save``) writes one portable ``.npz``.
"""

from .io import load_recording, save_recording
from .recorder import Recorder
from .recording import LAYER_INFO_KEYS, Recording

__all__ = ["LAYER_INFO_KEYS", "Recorder", "Recording", "load_recording", "save_recording"]

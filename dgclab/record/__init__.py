"""Recording: per-sample channel selections of every DGC head.

``Recorder`` records them while a model runs (a context manager over forward hooks), for every
layer of the layer protocol (dynamic ones per sample, static ones once); ``record(model,
loader)`` runs a whole loader through it; ``Recording`` is what it fills and what
``load_recording`` returns; ``save_recording`` (or ``Recording.save``) writes one portable
``.npz``. Forwards inside ``paused()`` are recorded by no ``Recorder`` (the analyses' own probe
forwards run there).
"""

from .io import load_recording, save_recording
from .loop import record
from .recorder import Recorder, paused
from .recording import LAYER_INFO_KEYS, Recording, check_layer_info

__all__ = [
    "LAYER_INFO_KEYS",
    "Recorder",
    "Recording",
    "check_layer_info",
    "load_recording",
    "paused",
    "record",
    "save_recording",
]

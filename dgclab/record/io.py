"""Save a recording to one ``.npz`` file and load it back, exactly, without pickle.

The file is a zip of ``.npy`` arrays (``numpy.savez_compressed``), readable by any numpy and by
anything that reads zip and ``.npy``:

* ``metadata``: uint8, the UTF-8 bytes of a JSON object ``{"format": "dgclab.recording",
  "version": 1, "num_samples": N, "layers": [{"name", "info", "saliencies",
  "activation_max"}, ...]}``; ``info`` holds the layer's ``LAYER_INFO_KEYS``, the two booleans
  say which optional arrays the layer has.
* ``labels``, ``ids``: int64 (N,).
* ``selections_{i}``: uint8 (N, heads, ceil(C_in / 8)), layer i's selections bit-packed along
  the channel axis (``numpy.packbits``, big bit order, zero padding).
* ``saliencies_{i}``: float16 (N, heads, C_in) and ``activation_max_{i}``: float32 (N, C_out),
  where recorded.

Arrays are keyed by the layer's position in ``layers``, so that a layer name never has to be a
file name inside the zip. Compressed because bit-packed selections are far from random (many
channels are kept, or dropped, for nearly every image): the file is several times smaller, for
a write and read time that is small next to recording the samples.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import numpy as np

from .._atomic import atomic_open
from .recording import LAYER_INFO_KEYS, Recording

__all__ = ["save_recording", "load_recording", "FORMAT", "VERSION"]

FORMAT = "dgclab.recording"
VERSION = 1

_PAIRS = ("kernel_size", "stride", "padding", "dilation", "input_hw")
_POSITIVE = ("in_channels", "out_channels", "heads", "hidden")


def save_recording(recording: Recording, path) -> None:
    """Write ``recording`` (a ``Recording`` or a ``Recorder``) to ``path`` as one ``.npz``.

    The file is written to ``path + ".tmp"`` in the same folder and then renamed over
    ``path``, so that a crash never leaves a half-written file under the final name. ``path``
    is used as given (no ``.npz`` is appended).

    Args:
        recording: what to save.
        path: the file to write (str or ``os.PathLike``).
    """
    path = os.fspath(path)
    layers, arrays = [], {}
    for i, name in enumerate(recording.layer_names):
        has_sal = name in recording._saliencies
        has_act = name in recording._activation_max
        layers.append({"name": name, "info": _info_to_json(recording.layer_info(name)),
                       "saliencies": has_sal, "activation_max": has_act})
        arrays[f"selections_{i}"] = np.ascontiguousarray(recording.packed_selections(name))
        if has_sal:
            arrays[f"saliencies_{i}"] = recording.saliencies(name).numpy()
        if has_act:
            arrays[f"activation_max_{i}"] = recording.activation_max(name).numpy()
    arrays["labels"] = recording.labels.numpy()
    arrays["ids"] = recording.ids.numpy()
    metadata = {"format": FORMAT, "version": VERSION, "num_samples": len(recording),
                "layers": layers}
    text = json.dumps(metadata, allow_nan=False)
    arrays["metadata"] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)

    with atomic_open(path, "wb") as f:  # a file object: numpy appends no ".npz" to it
        np.savez_compressed(f, **arrays)


def load_recording(path) -> Recording:
    """Read a file written by ``save_recording`` / ``Recording.save``, checking all of it.

    Args:
        path: the ``.npz`` file.

    Returns:
        A ``Recording`` equal to the one saved: the same layers in the same order, selections,
        labels, ids, layer_info and optional arrays.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a readable recording (not a zip, truncated, corrupted, a
            missing or unexpected array, bad metadata, a wrong shape or dtype); the message
            names the file and the problem.
    """
    path = os.fspath(path)
    arrays = _read_npz(path)

    def fail(problem: str):
        raise ValueError(f"{path}: {problem}")

    meta = _read_metadata(arrays.pop("metadata", None), fail)
    n = meta["num_samples"]
    layers = meta["layers"]
    expected = {"labels", "ids"}
    for i, layer in enumerate(layers):
        expected.add(f"selections_{i}")
        expected.update(f"{kind}_{i}" for kind in ("saliencies", "activation_max") if layer[kind])
    missing = sorted(expected - set(arrays), key=_natural)
    if missing:
        fail(f"missing arrays {missing} that the metadata lists")
    extra = sorted(set(arrays) - expected, key=_natural)
    if extra:
        fail(f"unexpected arrays {extra} that the metadata does not list")

    def checked(key: str, shape: tuple, kind: str, itemsize: int, dtype) -> np.ndarray:
        arr = arrays[key]
        if arr.dtype.kind != kind or arr.dtype.itemsize != itemsize:
            fail(f"array {key!r} has dtype {arr.dtype}, expected {np.dtype(dtype)}")
        if arr.shape != shape:
            fail(f"array {key!r} has shape {arr.shape}, expected {shape}")
        return arr.astype(dtype, copy=False)  # native byte order

    labels = checked("labels", (n,), "i", 8, np.int64)
    ids = checked("ids", (n,), "i", 8, np.int64)
    selections, saliencies, activation_max, info = {}, {}, {}, {}
    for i, layer in enumerate(layers):
        name, layer_info = layer["name"], layer["info"]
        c, heads = layer_info["in_channels"], layer_info["heads"]
        packed = checked(f"selections_{i}", (n, heads, (c + 7) // 8), "u", 1, np.uint8)
        if c % 8 and np.any(packed[..., -1] & np.uint8((1 << (8 - c % 8)) - 1)):
            fail(f"array 'selections_{i}' has bits set past channel {c} (padding must be 0)")
        selections[name] = packed
        info[name] = layer_info
        if layer["saliencies"]:
            saliencies[name] = checked(f"saliencies_{i}", (n, heads, c), "f", 2, np.float16)
        if layer["activation_max"]:
            shape = (n, layer_info["out_channels"])
            activation_max[name] = checked(f"activation_max_{i}", shape, "f", 4, np.float32)
    return Recording(selections, info, labels=labels, ids=ids, saliencies=saliencies,
                     activation_max=activation_max)


# --------------------------------------------------------------------------------------------


def _read_npz(path: str) -> dict[str, np.ndarray]:
    """Every array of the archive, or ValueError saying why it cannot be read."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no recording file {path}")
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError as e:
        raise ValueError(f"{path}: cannot be read ({_name(e)}: {e})") from e
    if head.startswith(b"\x93NUMPY"):
        raise ValueError(f"{path}: a single .npy array, not an .npz archive of a recording")
    if not head.startswith(b"PK\x03\x04"):
        what = "an empty file" if not head else f"starts with {head!r}"
        raise ValueError(f"{path}: not an .npz (zip) archive: {what}")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except Exception as e:  # the parse boundary: BadZipFile, EOFError, zlib.error, a bad header
        raise ValueError(f"{path}: truncated or corrupted archive ({_name(e)}: {e})") from e


def _name(error: Exception) -> str:
    """``zlib.error``, ``zipfile.BadZipFile``, ``EOFError``: where the exception comes from."""
    kind = type(error)
    module = "" if kind.__module__ == "builtins" else kind.__module__ + "."
    return module + kind.__qualname__


def _read_metadata(raw, fail) -> dict:
    """The validated metadata object; pair-valued info entries become tuples again."""
    if raw is None:
        fail("no 'metadata' array: not a dgclab recording")
    if raw.dtype != np.uint8 or raw.ndim != 1:
        fail(f"'metadata' must be 1-D uint8 (JSON bytes), got {raw.dtype} {raw.shape}")
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        fail(f"'metadata' is not valid JSON ({e})")
    if not isinstance(meta, dict):
        fail(f"'metadata' must be a JSON object, got {type(meta).__name__}")
    if meta.get("format") != FORMAT:
        fail(f"format is {meta.get('format')!r}, expected {FORMAT!r}")
    version = meta.get("version")
    if not _is_int(version) or version < 1:
        fail(f"version must be a positive int, got {version!r}")
    if version > VERSION:
        fail(f"format version {version} is newer than this dgclab reads ({VERSION}); "
             f"upgrade dgclab")
    n = meta.get("num_samples")
    if not _is_int(n) or n < 0:
        fail(f"num_samples must be an int >= 0, got {n!r}")
    layers = meta.get("layers")
    if not isinstance(layers, list):
        fail(f"'layers' must be a list, got {type(layers).__name__}")
    if not layers and n:
        fail(f"{n} samples but no layers")
    names = set()
    for i, layer in enumerate(layers):
        if not isinstance(layer, dict) or not isinstance(layer.get("name"), str):
            fail(f"layers[{i}] must be an object with a string 'name', got {layer!r}")
        name = layer["name"]
        if name in names:
            fail(f"layer {name!r} is listed twice")
        names.add(name)
        for flag in ("saliencies", "activation_max"):
            if not isinstance(layer.get(flag), bool):
                fail(f"layer {name!r}: {flag!r} must be true or false, got {layer.get(flag)!r}")
        layer["info"] = _info_from_json(
            layer.get("info"), lambda problem, name=name: fail(f"layer {name!r}: {problem}")
        )
    return meta


def _info_to_json(info: Mapping) -> dict:
    out = {}
    for key, value in info.items():
        if isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, np.generic):
            value = value.item()
        out[key] = value
    return out


def _info_from_json(info, fail) -> dict:
    if not isinstance(info, dict):
        fail(f"'info' must be an object, got {info!r}")
    missing = [k for k in LAYER_INFO_KEYS if k not in info]
    if missing:
        fail(f"'info' lacks {missing}")
    out = dict(info)
    for key in _POSITIVE:
        if not _is_int(info[key]) or info[key] <= 0:
            fail(f"{key} must be a positive int, got {info[key]!r}")
    for key in _PAIRS:
        value = info[key]
        if not (isinstance(value, list) and len(value) == 2 and all(_is_int(v) for v in value)):
            fail(f"{key} must be a pair of ints, got {value!r}")
        out[key] = tuple(value)
    k = info["inactive_channels"]
    if not _is_int(k) or not 0 <= k < info["in_channels"]:
        fail(f"inactive_channels must be an int in [0, in_channels), got {k!r}")
    rate = info["pruning_rate"]
    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0 <= rate < 1:
        fail(f"pruning_rate must be a number in [0, 1), got {rate!r}")
    return out


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _natural(key: str):
    """Sort 'selections_10' after 'selections_9'."""
    head, _, tail = key.rpartition("_")
    return (head, int(tail)) if tail.isdigit() else (key, -1)

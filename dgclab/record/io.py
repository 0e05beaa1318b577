"""Save a recording to one ``.npz`` file and load it back, exactly, without pickle.

The file is a zip of ``.npy`` arrays (``numpy.savez_compressed``), readable by any numpy and by
anything that reads zip and ``.npy``:

* ``metadata``: uint8, the UTF-8 bytes of a JSON object ``{"format": "dgclab.recording",
  "version": 1, "num_samples": N, "layers": [{"name", "info", "saliencies",
  "activation_max"}, ...]}``; ``info`` holds the layer's kind and its keys
  (``check_layer_info``; files written before kinds existed have no ``kind``: DGC), pairs as
  lists of two ints; the two booleans say which optional arrays the layer has; an optional
  ``"attrs"`` object of JSON scalars (``Recording.attrs``, e.g. the epoch a trainer recorded
  at). No other key.
* ``labels``, ``ids``: int64 (N,).
* ``selections_{i}``: uint8 (N, heads, ceil(C_in / 8)), layer i's selections bit-packed along
  the channel axis (``numpy.packbits``, big bit order, zero padding); for a static layer (a
  kind whose layers are not dynamic) (heads, ceil(C_in / 8)), its connectivity, once.
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
from ..checks import check_type
from .recording import (
    Recording, check_attrs, check_layer_info, is_static_info, padding_bits_set,
)

__all__ = ["save_recording", "load_recording", "FORMAT", "VERSION"]

FORMAT = "dgclab.recording"
VERSION = 1

# The keys of version 1, at the top and per layer: anything else is damage, not data.
_META_KEYS = ("format", "version", "num_samples", "layers", "attrs")  # attrs: optional
_LAYER_KEYS = ("name", "info", "saliencies", "activation_max")


def save_recording(recording: Recording, path) -> None:
    """Write ``recording`` (a ``Recording`` or a ``Recorder``) to ``path`` as one ``.npz``.

    The file is written to a temporary file in the same folder and then renamed over
    ``path``, so that a crash never leaves a half-written file under the final name. ``path``
    is used as given (no ``.npz`` is appended).

    Args:
        recording: what to save.
        path: the file to write (str or ``os.PathLike``).
    """
    check_type("recording", recording, Recording)
    path = os.fspath(check_type("path", path, (str, os.PathLike)))
    layers, arrays = [], {}
    for i, name in enumerate(recording.layer_names):
        has_sal = name in recording._saliencies
        has_act = name in recording._activation_max
        layers.append({"name": name, "info": _info_to_json(recording.layer_info(name)),
                       "saliencies": has_sal, "activation_max": has_act})
        # a static layer's connectivity is stored once: (heads, ceil(C_in / 8))
        packed = (recording.packed_selections(name) if recording.is_dynamic(name)
                  else np.packbits(recording.connectivity(name).numpy(), axis=-1))
        arrays[f"selections_{i}"] = np.ascontiguousarray(packed)
        if has_sal:
            arrays[f"saliencies_{i}"] = recording.saliencies(name).numpy()
        if has_act:
            arrays[f"activation_max_{i}"] = recording.activation_max(name).numpy()
    arrays["labels"] = recording.labels.numpy()
    arrays["ids"] = recording.ids.numpy()
    metadata = {"format": FORMAT, "version": VERSION, "num_samples": len(recording),
                "layers": layers}
    attrs = check_attrs(recording.attrs)
    if attrs:
        metadata["attrs"] = attrs
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
            missing or unexpected array, a wrong shape or dtype, metadata of the wrong type or
            out of range: every field is checked, with ``check_layer_info`` for a layer's
            info); the message names the file, the key and the value.
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
        lead = () if is_static_info(layer_info) else (n,)  # a static layer: once
        packed = checked(f"selections_{i}", (*lead, heads, (c + 7) // 8), "u", 1, np.uint8)
        if padding_bits_set(packed, c):
            fail(f"array 'selections_{i}' has bits set past channel {c} (padding must be 0)")
        selections[name] = packed
        info[name] = layer_info
        if layer["saliencies"]:
            saliencies[name] = checked(f"saliencies_{i}", (n, heads, c), "f", 2, np.float16)
        if layer["activation_max"]:
            shape = (n, layer_info["out_channels"])
            activation_max[name] = checked(f"activation_max_{i}", shape, "f", 4, np.float32)
    try:  # everything was checked above; the constructor's checks are the last word
        return Recording(selections, info, labels=labels, ids=ids, saliencies=saliencies,
                         activation_max=activation_max, attrs=meta.get("attrs"))
    except (TypeError, ValueError) as e:
        fail(str(e))


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
            arrays = {key: data[key] for key in data.files}
    except Exception as e:  # the parse boundary: BadZipFile, EOFError, zlib.error, a bad header
        raise ValueError(f"{path}: truncated or corrupted archive ({_name(e)}: {e})") from e
    for key, value in arrays.items():
        if not isinstance(value, np.ndarray):  # numpy reads a member without the magic as bytes
            raise ValueError(f"{path}: member {key!r} is not an .npy array")
    return arrays


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
        meta = json.loads(raw.tobytes().decode("utf-8"), object_pairs_hook=_no_duplicates)
    except _Duplicate as e:
        fail(f"'metadata' has the key {e.args[0]!r} twice in one object")
    except (ValueError, RecursionError) as e:  # bad UTF-8 or JSON, a 5000-digit int, deep nesting
        fail(f"'metadata' is not valid JSON ({_name(e)}: {e})")
    if not isinstance(meta, dict):
        fail(f"'metadata' must be a JSON object, got {type(meta).__name__}")
    unknown = [k for k in meta if k not in _META_KEYS]
    if unknown:
        fail(f"'metadata' has unknown keys {unknown}")
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
        unknown = [k for k in layer if k not in _LAYER_KEYS]
        if unknown:
            fail(f"layers[{i}] has unknown keys {unknown}")
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
    """A layer's ``info`` object, checked by ``check_layer_info`` (pairs become tuples)."""
    if not isinstance(info, dict):
        fail(f"'info' must be an object, got {info!r}")
    for key in ("kernel_size", "stride", "padding", "dilation", "input_hw"):
        if key in info and not isinstance(info[key], list):  # the writer writes a pair
            fail(f"{key} must be a list of two ints, got {key}={info[key]!r}")
    try:
        return check_layer_info(info)
    except (TypeError, ValueError) as e:
        fail(str(e))


class _Duplicate(Exception):
    pass


def _no_duplicates(pairs: list[tuple]) -> dict:
    """``json.loads`` hook: an object with a key twice (the plain loader keeps the last)."""
    out = {}
    for key, value in pairs:
        if key in out:
            raise _Duplicate(key)
        out[key] = value
    return out


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _natural(key: str):
    """Sort 'selections_10' after 'selections_9'."""
    head, _, tail = key.rpartition("_")
    return (head, int(tail)) if tail.isdigit() else (key, -1)

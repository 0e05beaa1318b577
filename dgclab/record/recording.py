"""A recording: which channels every DGC head kept, for every recorded sample.

``Recording`` is the plain container that ``Recorder`` fills and ``load_recording`` returns; the
analysis functions (``dgclab.analysis``) accept either. Selections are stored bit-packed along
the channel axis (``numpy.packbits``), so 70,000 images through every DGC layer of a ResNet-20
take tens of MB, not GB.

Static layers of the layer protocol (a group conv: every image reads the same channels) are
stored once, as their (groups, C_in) connectivity, and read back like the dynamic ones: their
``selections`` are that connectivity for every sample, so every analysis takes both.
"""

from __future__ import annotations

import math

from collections.abc import Mapping

import numpy as np
import torch

from ..checks import check_int, check_pair, check_type
from ..layers import INFO_KEYS, DGCConv2d, conv_kind, conv_output_hw

__all__ = ["Recording", "LAYER_INFO_KEYS", "check_layer_info", "is_static_info"]

# What a recording keeps about a DGC layer: the keys of every grouping layer (``INFO_KEYS``:
# kind, geometry, G as ``heads``, input size) and DGC's own (hidden width, pruning rate, k).
# Enough to count MACs and to label plots without the model.
LAYER_INFO_KEYS = INFO_KEYS + DGCConv2d.EXTRA_INFO_KEYS
_PAIRS = {"kernel_size": 1, "stride": 1, "padding": 0, "dilation": 1, "input_hw": 1}  # key: min
# Largest MAC count of one image in one layer: exact in float64, and 1024 such layers sum
# within int64. The largest CNN layers count around 2**33.
_MAX_MACS = 2**53


def check_layer_info(info: Mapping) -> dict:
    """A layer's info as a recording holds it, or the error saying which key is wrong.

    Every grouping layer's info has ``INFO_KEYS`` (``dgclab.layers.INFO_KEYS``) and its kind's
    own keys (``EXTRA_INFO_KEYS`` of the kind's class in ``dgclab.layers.CONV_KINDS``; for DGC,
    ``LAYER_INFO_KEYS`` is the whole list). An info without ``kind`` is a DGC layer's: the
    recordings written before kinds existed held DGC layers only.

    Checked here for every kind: a registered grouping kind; positive channels and groups
    (``heads``); groups divide the output channels (the MAC count gives each group
    ``out_channels / heads`` outputs); kernel, stride, dilation >= 1 and padding >= 0 (an int
    or a pair); an input size the kernel fits in; at most 2**53 MACs per image at the dense
    convention. The kind's class checks its own keys (``check_info``; DGC: a positive hidden
    width, a pruning rate in [0, 1) that keeps a channel, k in [0, in_channels)). Groups need
    not divide the input channels (every DGC head chooses among all of them; hand-made teaching
    examples use 3 heads on 4 channels). ``Recording`` and ``load_recording`` both check
    through it, so that a recording that exists can be saved and loaded back.

    Args:
        info: a mapping with exactly the keys of its kind.

    Returns:
        A new dict in key order (``INFO_KEYS``, then the kind's): ints as ``int``, pairs as
        tuples of two ints, floats as ``float``.

    Raises:
        TypeError: ``info`` is not a mapping, or a value has the wrong type.
        ValueError: an unknown kind, a missing or unknown key, or a value out of range; the
            message names the key and the value.
    """
    check_type("info", info, Mapping)
    info = {"kind": "dgc"} | dict(info)
    kind = check_type("kind", info["kind"], str)
    spec = conv_kind(kind)
    if not spec.grouping:
        raise ValueError(f"kind={kind!r} is not a grouping layer; a recording holds those only")
    keys = INFO_KEYS + spec.layer_type.EXTRA_INFO_KEYS
    missing = [k for k in keys if k not in info]
    if missing:
        raise ValueError(f"info lacks {missing}")
    unknown = [k for k in info if k not in keys]
    if unknown:
        raise ValueError(f"info has unknown keys {unknown}; a {kind!r} layer's holds {keys}")
    out = {key: check_int(key, info[key], min=1)
           for key in ("in_channels", "out_channels", "heads")}
    out |= {key: check_pair(key, info[key], min=low) for key, low in _PAIRS.items()}
    heads = out["heads"]
    if out["out_channels"] % heads:  # each group computes out_channels / heads outputs
        raise ValueError(f"heads must divide out_channels, got heads={heads}, "
                         f"out_channels={out['out_channels']}")
    conv_output_hw(out["input_hw"], out["kernel_size"], out["stride"], out["padding"],
                   out["dilation"])  # ValueError if the kernel does not fit
    out = spec.layer_type.check_info(info | out | {"kind": kind})
    # The analyses count MACs per image in int64 (and divide them in float64): the layer's
    # dense count (SPEC §1.5, no keep factor) must stay exact in both, summed over many layers.
    macs = sum(spec.layer_type.mac_terms_from_info(out, "dense").values())
    if macs > _MAX_MACS:
        raise ValueError(
            f"a layer with in_channels={out['in_channels']}, out_channels={out['out_channels']}, "
            f"kernel_size={out['kernel_size']}, input_hw={out['input_hw']} costs {macs:.3g} MACs "
            f"per image, more than the 2**53 the analyses count exactly"
        )
    return {key: out[key] for key in keys}


def check_attrs(attrs: Mapping | None) -> dict:
    """A recording's ``attrs`` as a new dict: str keys, JSON scalar values (finite floats)."""
    if attrs is None:
        return {}
    check_type("attrs", attrs, Mapping)
    out = {}
    for key, value in attrs.items():
        if not isinstance(key, str):
            raise TypeError(f"attrs keys must be strings, got {key!r}")
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise TypeError(f"attrs[{key!r}] must be a str, int, float, bool or None, got "
                            f"{type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"attrs[{key!r}] must be finite, got {value!r}")
        out[key] = value
    return out


class Recording:
    """Per-sample channel selections of the DGC layers of a model, and what they came from.

    Args:
        selections: layer name -> bool tensor (N, heads, C_in), or a packed uint8 array
            (N, heads, ceil(C_in / 8)) from ``numpy.packbits(..., axis=-1)`` together with
            ``layer_info[name]["in_channels"]``. For a static layer (its kind's layers are not
            ``dynamic``) its connectivity instead: (heads, C_in) bool, or packed (heads,
            ceil(C_in / 8)), the same for every sample.
        layer_info: layer name -> dict with the keys of ``LAYER_INFO_KEYS`` (``input_hw`` is the
            (H, W) of the layer's input; ``inactive_channels`` is k when recorded).
        labels: (N,) int labels, -1 where unknown. Default: all -1.
        ids: (N,) int sample ids (e.g. dataset indices). Default: 0..N-1.
        saliencies: optional layer name -> float16 (N, heads, C_in) saliencies g.
        activation_max: optional layer name -> float32 (N, C_out) per-channel max of the layer's
            output over H, W.
        attrs: optional str -> JSON scalar (str, int, finite float, bool, None): what the
            samples were recorded at, e.g. ``{"epoch": 5}`` (a trainer's run folder uses it to
            tell a recording of its latest checkpoint from an older one). Saved with the file;
            ``rec.attrs`` is a plain dict that may be changed before saving.

    Every layer holds the same N samples, in the order they were seen.

    Raises:
        TypeError: an argument of the wrong type (a non-string layer name, non-integer labels
            or ids, a wrongly typed ``layer_info`` value).
        ValueError: what a recording cannot hold (see ``check_layer_info``; shapes that do not
            match the layer info or each other; a packed array with bits set past C_in), so
            that every ``Recording`` saves to a file that ``load_recording`` reads back.
    """

    def __init__(
        self,
        selections: Mapping[str, torch.Tensor | np.ndarray],
        layer_info: Mapping[str, Mapping],
        labels=None,
        ids=None,
        saliencies: Mapping[str, torch.Tensor | np.ndarray] | None = None,
        activation_max: Mapping[str, torch.Tensor | np.ndarray] | None = None,
        attrs: Mapping | None = None,
    ) -> None:
        check_type("selections", selections, Mapping)
        self.attrs = check_attrs(attrs)
        check_type("layer_info", layer_info, Mapping)
        bad = [n for n in selections if not isinstance(n, str)]
        if bad:
            raise TypeError(f"layer names must be strings, got {bad}")
        missing = [n for n in selections if n not in layer_info]
        if missing:
            raise ValueError(f"layer_info lacks the layers {missing}")
        self._info: dict[str, dict] = {}
        for name in selections:
            try:
                self._info[name] = check_layer_info(layer_info[name])
            except (TypeError, ValueError) as e:
                raise type(e)(f"layer_info[{name!r}]: {e}") from None
        self._packed: dict[str, np.ndarray] = {}  # (N, heads, bytes); static: (heads, bytes)
        sizes = set()
        for name, sel in selections.items():
            packed = _pack(sel, self._info[name], name)
            self._packed[name] = packed
            if packed.ndim == 3:
                sizes.add(packed.shape[0])
        if len(sizes) > 1:
            raise ValueError(f"every layer must hold the same samples, got sample counts {sizes}")
        if sizes:
            n = sizes.pop()
        else:  # static layers only: the samples are those tagged
            n = next((len(v) for v in (ids, labels) if v is not None), 0)
        self._labels = _vector(labels, n, -1, "labels")
        self._ids = _vector(ids, n, None, "ids")
        self._saliencies = self._optional(saliencies, "saliencies", np.float16, n,
                                          lambda i: (i["heads"], i["in_channels"]))
        self._activation_max = self._optional(activation_max, "activation_max", np.float32, n,
                                              lambda i: (i["out_channels"],))

    def _optional(self, arrays, what: str, dtype, n: int, shape) -> dict[str, np.ndarray]:
        """Optional per-layer arrays, checked against the layers: (n, *shape(info)) each."""
        if arrays is None:
            return {}
        check_type(what, arrays, Mapping)
        out = {}
        for name, values in arrays.items():
            if name not in self._info:
                raise ValueError(f"{what} has layer {name!r}, which has no selections")
            arr = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else values
            arr = np.asarray(arr, dtype=dtype)
            expected = (n, *shape(self._info[name]))
            if arr.shape != expected:
                raise ValueError(f"{what}[{name!r}] must have shape {expected}, got {arr.shape}")
            out[name] = arr
        return out

    # ---- what was recorded ----------------------------------------------------------------

    @property
    def layer_names(self) -> list[str]:
        """DGC layer names, in the model's ``named_modules`` order."""
        return list(self._packed)

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def labels(self) -> torch.Tensor:
        """(N,) int64 labels, -1 where unknown."""
        return torch.from_numpy(self._labels.copy())

    @property
    def ids(self) -> torch.Tensor:
        """(N,) int64 sample ids."""
        return torch.from_numpy(self._ids.copy())

    def layer_info(self, name: str) -> dict:
        """The layer's configuration (``LAYER_INFO_KEYS``) when recorded."""
        self._check_layer(name)
        return dict(self._info[name])

    def selections(self, name: str) -> torch.Tensor:
        """(N, heads, C_in) bool: True where that head kept that channel for that sample.

        For a static layer, its ``connectivity`` for every sample (an expanded view).
        """
        self._check_layer(name)
        c = self._info[name]["in_channels"]
        packed = self._packed[name]
        bits = torch.from_numpy(np.unpackbits(packed, axis=-1, count=c).astype(bool))
        return bits if packed.ndim == 3 else bits.expand(len(self), *bits.shape)

    def packed_selections(self, name: str) -> np.ndarray:
        """(N, heads, ceil(C_in / 8)) uint8, the bit-packed form (a read-only broadcast for a
        static layer, which stores one row of heads)."""
        self._check_layer(name)
        packed = self._packed[name]
        return packed if packed.ndim == 3 else np.broadcast_to(packed, (len(self), *packed.shape))

    def is_dynamic(self, name: str) -> bool:
        """Whether the layer chose its channels per sample (False: a static layer)."""
        self._check_layer(name)
        return self._packed[name].ndim == 3

    def connectivity(self, name: str) -> torch.Tensor:
        """(heads, C_in) bool: the channels each group of a static layer reads, for every sample.

        Raises:
            ValueError: a dynamic layer (its choice is per sample: ``selections``).
        """
        self._check_layer(name)
        packed = self._packed[name]
        if packed.ndim == 3:
            raise ValueError(f"{name!r} is a dynamic layer: its channels change per sample "
                             f"(see selections)")
        c = self._info[name]["in_channels"]
        return torch.from_numpy(np.unpackbits(packed, axis=-1, count=c).astype(bool))

    def saliencies(self, name: str) -> torch.Tensor:
        """(N, heads, C_in) float16 saliencies, if they were recorded."""
        self._check_layer(name)
        if name not in self._saliencies:
            raise ValueError(f"saliencies of {name!r} were not recorded (Recorder(saliency=True))")
        return torch.from_numpy(self._saliencies[name].copy())

    def activation_max(self, name: str) -> torch.Tensor:
        """(N, C_out) float32 per-channel max of the layer's output, if recorded."""
        self._check_layer(name)
        if name not in self._activation_max:
            raise ValueError(
                f"activation maxima of {name!r} were not recorded (Recorder(activations=True))"
            )
        return torch.from_numpy(self._activation_max[name].copy())

    def where(self, ids=None, labels=None) -> torch.Tensor:
        """Row indices (into the N recorded samples) with the given sample ids and/or labels."""
        keep = np.ones(len(self), dtype=bool)
        if ids is not None:
            keep &= np.isin(self._ids, np.asarray(ids).ravel())
        if labels is not None:
            keep &= np.isin(self._labels, np.asarray(labels).ravel())
        return torch.from_numpy(np.flatnonzero(keep))

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays this recording holds."""
        arrays = [self._labels, self._ids, *(self._packed[n] for n in self._packed),
                  *self._saliencies.values(), *self._activation_max.values()]
        return sum(a.nbytes for a in arrays)

    def save(self, path) -> None:
        """Write the recording to one ``.npz`` file; ``dgclab.load_recording`` reads it back.

        See ``dgclab.record.io.save_recording`` (portable: arrays and JSON, no pickle).
        """
        from .io import save_recording

        save_recording(self, path)

    def _check_layer(self, name: str) -> None:
        if name not in self._packed:
            raise ValueError(f"no DGC layer {name!r} in this recording; layers: {self.layer_names}")

    def __repr__(self) -> str:
        return f"Recording({len(self)} samples, {len(self._packed)} layers)"


def is_static_info(info: Mapping) -> bool:
    """Whether a (checked) layer info describes a static layer, stored once per recording."""
    return not conv_kind(info["kind"]).layer_type.dynamic


def _pack(sel, info: dict, name: str) -> np.ndarray:
    """(N, heads, ceil(C_in / 8)) uint8 from bool (N, heads, C_in) or already packed; a static
    layer's (heads, ceil(C_in / 8)) from its (heads, C_in) connectivity."""
    c, heads = info["in_channels"], info["heads"]
    arr = sel.detach().cpu().numpy() if isinstance(sel, torch.Tensor) else np.asarray(sel)
    lead = () if is_static_info(info) else ("N",)
    ndim = len(lead) + 2
    if arr.dtype == np.bool_ and arr.ndim == ndim and arr.shape[-2:] == (heads, c):
        return np.packbits(arr, axis=-1)
    if arr.dtype == np.uint8 and arr.ndim == ndim and arr.shape[-2:] == (heads, (c + 7) // 8):
        if padding_bits_set(arr, c):
            raise ValueError(
                f"selections[{name!r}] has bits set past channel {c} (padding must be 0)"
            )
        return np.ascontiguousarray(arr)
    shape = ", ".join([*lead, f"heads={heads}"])
    raise ValueError(
        f"selections[{name!r}] must be bool ({shape}, in_channels={c}) or packed uint8 "
        f"({shape}, {(c + 7) // 8}), got dtype {arr.dtype}, shape {arr.shape}"
        + (" (a static layer: its connectivity, once)" if not lead else "")
    )


def padding_bits_set(packed: np.ndarray, in_channels: int) -> bool:
    """Whether a packed (..., ceil(C / 8)) array has a 1 in the zero padding past channel C."""
    if in_channels % 8 == 0:
        return False
    return bool(np.any(packed[..., -1] & np.uint8((1 << (8 - in_channels % 8)) - 1)))


def _vector(values, n: int, fill, what: str) -> np.ndarray:
    if values is None:
        if fill is None:
            return np.arange(n, dtype=np.int64)
        return np.full(n, fill, dtype=np.int64)
    arr = int_vector(values, what)
    if len(arr) != n:
        raise ValueError(f"{what} must have one entry per sample ({n}), got {len(arr)}")
    return arr


def int_vector(values, what: str) -> np.ndarray:
    """A 1-D int64 copy of a tensor, array or sequence of integers.

    Raises:
        TypeError: not integers (floats would be truncated, bools are not ids).
        ValueError: not 1-D, or unsigned values beyond int64 (they would wrap to negatives).
    """
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.size and arr.dtype.kind not in "iu":
        raise TypeError(f"{what} must be integers, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-D (one entry per sample), got shape {arr.shape}")
    if arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{what} must fit in int64, got {int(arr.max())}")
    return arr.astype(np.int64)

"""A recording: which channels every DGC head kept, for every recorded sample.

``Recording`` is the plain container that ``Recorder`` fills and ``load_recording`` returns; the
analysis functions (``dgclab.analysis``) accept either. Selections are stored bit-packed along
the channel axis (``numpy.packbits``), so 70,000 images through every DGC layer of a ResNet-20
take tens of MB, not GB.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

__all__ = ["Recording", "LAYER_INFO_KEYS"]

# What a recording keeps about each DGC layer: enough to count MACs and to label plots without
# the model.
LAYER_INFO_KEYS = (
    "in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "heads",
    "hidden", "pruning_rate", "inactive_channels", "input_hw",
)


class Recording:
    """Per-sample channel selections of the DGC layers of a model, and what they came from.

    Args:
        selections: layer name -> bool tensor (N, heads, C_in), or a packed uint8 array
            (N, heads, ceil(C_in / 8)) from ``numpy.packbits(..., axis=-1)`` together with
            ``layer_info[name]["in_channels"]``.
        layer_info: layer name -> dict with the keys of ``LAYER_INFO_KEYS`` (``input_hw`` is the
            (H, W) of the layer's input; ``inactive_channels`` is k when recorded).
        labels: (N,) int labels, -1 where unknown. Default: all -1.
        ids: (N,) int sample ids (e.g. dataset indices). Default: 0..N-1.
        saliencies: optional layer name -> float16 (N, heads, C_in) saliencies g.
        activation_max: optional layer name -> float32 (N, C_out) per-channel max of the layer's
            output over H, W.

    Every layer holds the same N samples, in the order they were seen.
    """

    def __init__(
        self,
        selections: Mapping[str, torch.Tensor | np.ndarray],
        layer_info: Mapping[str, Mapping],
        labels=None,
        ids=None,
        saliencies: Mapping[str, torch.Tensor | np.ndarray] | None = None,
        activation_max: Mapping[str, torch.Tensor | np.ndarray] | None = None,
    ) -> None:
        missing = [n for n in selections if n not in layer_info]
        if missing:
            raise ValueError(f"layer_info lacks the layers {missing}")
        self._packed: dict[str, np.ndarray] = {}
        self._info = {n: dict(layer_info[n]) for n in selections}
        sizes = set()
        for name, sel in selections.items():
            packed = _pack(sel, self._info[name]["in_channels"], name)
            self._packed[name] = packed
            sizes.add(packed.shape[0])
        if len(sizes) > 1:
            raise ValueError(f"every layer must hold the same samples, got sample counts {sizes}")
        n = sizes.pop() if sizes else 0
        self._labels = _vector(labels, n, -1, "labels")
        self._ids = _vector(ids, n, None, "ids")
        self._saliencies = {k: np.asarray(v, dtype=np.float16) for k, v in (saliencies or {}).items()}
        self._activation_max = {
            k: np.asarray(v, dtype=np.float32) for k, v in (activation_max or {}).items()
        }

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
        """(N, heads, C_in) bool: True where that head kept that channel for that sample."""
        self._check_layer(name)
        c = self._info[name]["in_channels"]
        bits = np.unpackbits(self._packed[name], axis=-1, count=c)
        return torch.from_numpy(bits.astype(bool))

    def packed_selections(self, name: str) -> np.ndarray:
        """(N, heads, ceil(C_in / 8)) uint8, the stored bit-packed form."""
        self._check_layer(name)
        return self._packed[name]

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
        arrays = [self._labels, self._ids, *self._packed.values(), *self._saliencies.values(),
                  *self._activation_max.values()]
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
        return f"Recording({len(self)} samples, {len(self._packed)} DGC layers)"


def _pack(sel, in_channels: int, name: str) -> np.ndarray:
    arr = sel.detach().cpu().numpy() if isinstance(sel, torch.Tensor) else np.asarray(sel)
    if arr.dtype == np.bool_:
        if arr.ndim != 3 or arr.shape[-1] != in_channels:
            raise ValueError(
                f"selections[{name!r}] must be bool (N, heads, {in_channels}), got {arr.shape}"
            )
        return np.packbits(arr, axis=-1)
    if arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[-1] == (in_channels + 7) // 8:
        return np.ascontiguousarray(arr)
    raise ValueError(
        f"selections[{name!r}] must be bool (N, heads, {in_channels}) or packed uint8 "
        f"(N, heads, {(in_channels + 7) // 8}), got dtype {arr.dtype}, shape {arr.shape}"
    )


def _vector(values, n: int, fill, what: str) -> np.ndarray:
    if values is None:
        return np.full(n, fill, dtype=np.int64) if fill is not None else np.arange(n, dtype=np.int64)
    arr = np.asarray(values.cpu() if isinstance(values, torch.Tensor) else values).astype(np.int64).ravel()
    if arr.shape != (n,):
        raise ValueError(f"{what} must have one entry per sample ({n}), got shape {arr.shape}")
    return arr

"""What the DGC heads select: channel usage, head overlap, input dependence, realized MACs.

Su, Fang, Zhu, Pietikäinen, Liu, "Dynamic Group Convolution for Accelerating Convolutional
Neural Networks", ECCV 2020, arXiv 2007.04242. Every DGC head picks, per image, which input
channels it convolves (SPEC §1.1). These functions answer the questions users of the official
code keep asking (SPEC §1.7): do the heads pick the same channels, how much does the choice
depend on the image, and what did each image really cost?

Every function takes a ``dgclab.record.Recording`` (a loaded one, or a live ``Recorder``, which
is one) and reads only its public API: ``layer_names``, ``len()``, ``labels``, ``ids``,
``layer_info(name)`` and ``selections(name)`` -> bool (N, heads, C_in). Outputs are tidy pandas
DataFrames (one row per observation), except ``sample_similarity``, a square matrix.

Conventions:

* Jaccard of two sets A, B is ``|A & B| / |A | B|``; two empty sets count as identical (1).
* Entropies are in bits (log base 2): a channel selected for half the images has 1 bit, one
  selected always or never has 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from scipy.stats import hypergeom

from dgclab.checks import check_type
from dgclab.layers import conv_kind

from .macs import info_macs

__all__ = [
    "jaccard_similarity",
    "head_jaccard",
    "binary_entropy",
    "channel_usage",
    "head_overlap",
    "head_input_dependence",
    "sample_similarity",
    "realized_macs",
]

# Samples processed at once where a per-sample (heads x heads) or (N x N) product is formed.
_CHUNK = 4096


# --------------------------------------------------------------------------------------------
# Functional core
# --------------------------------------------------------------------------------------------


def jaccard_similarity(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """Pairwise Jaccard similarity of the rows of two boolean matrices.

    Args:
        a: (N, D) bool, each row a set of the D items.
        b: (M, D) bool; default ``a``.

    Returns:
        (N, M) float32, ``|a_i & b_j| / |a_i | b_j|``, and 1 where both rows are empty.

    Example:
        >>> a = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1]], dtype=torch.bool)
        >>> jaccard_similarity(a)
        tensor([[1., 0.],
                [0., 1.]])
    """
    check_type("a", a, torch.Tensor)
    b = a if b is None else check_type("b", b, torch.Tensor)
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"a and b must be (N, D) and (M, D) bool, got shapes {tuple(a.shape)}, {tuple(b.shape)}"
        )
    af, bf = a.float(), b.float()
    inter = af @ bf.T  # (N, M)
    union = af.sum(1, keepdim=True) + bf.sum(1) - inter  # (N, M)
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter))


def head_jaccard(selection: torch.Tensor) -> torch.Tensor:
    """Per sample, the Jaccard similarity of every pair of heads' selections.

    Args:
        selection: (N, heads, C) bool, True where a head kept a channel (a DGC layer's
            ``last_selection`` or ``Recording.selections(name)``).

    Returns:
        (N, heads, heads) float32, symmetric with ones on the diagonal; 1 where both heads kept
        nothing.
    """
    if check_type("selection", selection, torch.Tensor).dim() != 3:
        raise ValueError(
            f"selection must be (N, heads, C) bool, got shape {tuple(selection.shape)}"
        )
    s = selection.float()
    inter = s @ s.transpose(1, 2)  # (N, heads, heads)
    size = s.sum(-1)  # (N, heads)
    union = size.unsqueeze(2) + size.unsqueeze(1) - inter
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter))


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy in bits of a yes/no event of probability ``p`` (elementwise; 0 at p = 0 or 1)."""
    p = check_type("p", p, torch.Tensor).double()
    return (torch.special.entr(p) + torch.special.entr(1 - p)) / np.log(2)


def _chance_jaccard(a: int, b: int, c: int) -> float:
    """Expected Jaccard of two independent uniformly random subsets of sizes a and b of c items.

    The intersection is hypergeometric: X ~ Hypergeom(c, a, b), J = X / (a + b - X).
    """
    if a + b == 0:
        return 1.0
    x = np.arange(max(0, a + b - c), min(a, b) + 1)
    return float((hypergeom.pmf(x, c, a, b) * x / (a + b - x)).sum())


# --------------------------------------------------------------------------------------------
# Metrics over a recording
# --------------------------------------------------------------------------------------------


def channel_usage(
    recording, layers: Sequence[str] | None = None, per_class: bool = False
) -> pd.DataFrame:
    """How often each head keeps each input channel, overall or per class.

    Args:
        recording: a ``Recording`` or live ``Recorder``.
        layers: DGC layer names; default all of ``recording.layer_names``.
        per_class: one group per label value (``-1``, unknown, is a group of its own).

    Returns:
        DataFrame with one row per (layer, head, channel[, label]) and columns ``layer``,
        ``head``, ``channel``, [``label``,] ``samples`` (images in the group), ``count`` (images
        for which the head kept the channel), ``frequency`` (``count / samples``, NaN for an
        empty group) and ``entropy`` (bits, ``binary_entropy(frequency)``).

    Example:
        >>> from dgclab.record import record
        >>> model = resnet_cifar(8, width=8, conv="dgc", in_channels=1)
        >>> data = [(torch.randn(4, 1, 28, 28), torch.tensor([3, 7, 7, 1]))]
        >>> usage = channel_usage(record(model, data), per_class=True)
        >>> usage.pivot_table("frequency", ["layer", "head", "channel"], "label").shape
        (448, 3)
    """
    frames = []
    names = _layers(recording, layers)
    labels = recording.labels
    for name in names:
        sel = recording.selections(name)  # (N, heads, C)
        heads, channels = sel.shape[1:]
        groups = [(None, torch.arange(sel.shape[0]))]
        if per_class:
            groups = [(int(c), torch.nonzero(labels == c).flatten()) for c in labels.unique()]
        for label, rows in groups:
            count = sel[rows].sum(0)  # (heads, C)
            samples = len(rows)
            freq = count.double() / samples if samples else torch.full(count.shape, float("nan"))
            frame = pd.DataFrame(
                {
                    "layer": name,
                    "head": np.repeat(np.arange(heads), channels),
                    "channel": np.tile(np.arange(channels), heads),
                    "samples": samples,
                    "count": count.flatten().numpy().astype(np.int64),
                    "frequency": freq.flatten().numpy(),
                    "entropy": binary_entropy(freq).flatten().numpy(),
                }
            )
            if per_class:
                frame.insert(3, "label", label)
            frames.append(frame)
    columns = ["layer", "head", "channel"] + (["label"] if per_class else [])
    columns += ["samples", "count", "frequency", "entropy"]
    return _concat(frames, columns)


def head_overlap(
    recording, layers: Sequence[str] | None = None, chance: bool = False
) -> pd.DataFrame:
    """Do the heads pick the same channels? Mean pairwise Jaccard of heads' selections.

    For every sample and every pair of heads (a < b) of a layer, the Jaccard similarity of the
    two sets of kept channels; averaged over the samples. 1 means the heads always keep the same
    channels (they could share one selection), 0 that they never share one (SPEC §1.7).

    Args:
        recording: a ``Recording`` or live ``Recorder``.
        layers: DGC layer names; default all.
        chance: add ``jaccard_chance``, the mean over samples of the Jaccard that two heads
            would have if each kept a uniformly random set of its actual size (hypergeometric
            expectation): the baseline to compare ``jaccard`` with. With k = 0 every head keeps
            every channel and both are 1.

    Returns:
        DataFrame with one row per (layer, head_a, head_b), head_a < head_b: ``layer``,
        ``head_a``, ``head_b``, ``jaccard`` (float, NaN without samples)[, ``jaccard_chance``].
        A one-head layer has no rows.
    """
    rows = []
    for name in _layers(recording, layers):
        sel = recording.selections(name)  # (N, heads, C)
        n, heads, channels = sel.shape
        total = torch.zeros(heads, heads, dtype=torch.float64)
        for s in range(0, n, _CHUNK):
            total += head_jaccard(sel[s : s + _CHUNK]).double().sum(0)  # (heads, heads)
        mean = total / n if n else torch.full_like(total, float("nan"))
        sizes = sel.sum(-1).numpy()  # (N, heads)
        for a in range(heads):
            for b in range(a + 1, heads):
                row = {"layer": name, "head_a": a, "head_b": b, "jaccard": float(mean[a, b])}
                if chance:
                    row["jaccard_chance"] = _mean_chance(sizes[:, a], sizes[:, b], channels)
                rows.append(row)
    columns = ["layer", "head_a", "head_b", "jaccard"] + (["jaccard_chance"] if chance else [])
    return pd.DataFrame(rows, columns=columns)


def head_input_dependence(recording, layers: Sequence[str] | None = None) -> pd.DataFrame:
    """How input-dependent each head's selection is.

    A static group convolution keeps the same channels for every image: each channel is kept
    always or never, every entropy is 0 and there is one distinct selection. A head whose choice
    follows the image has channels kept only sometimes.

    Args:
        recording: a ``Recording`` or live ``Recorder``.
        layers: DGC layer names; default all.

    Returns:
        DataFrame with one row per (layer, head): ``layer``, ``head``, ``samples`` (N),
        ``channels`` (C_in), ``mean_kept`` (mean over samples of the channels kept),
        ``always`` / ``never`` (fraction of the C_in channels kept for every / for no sample),
        ``entropy`` (mean over channels of the binary entropy, in bits, of "this channel is
        kept": 0 for a static choice, 1 when every channel is kept for half the images),
        ``distinct`` (number of distinct selections among the samples) and ``pattern_entropy``
        (entropy in bits of the distribution of those selections; at most log2(N)).
        Statistics of an empty recording are NaN.
    """
    rows = []
    for name in _layers(recording, layers):
        sel = recording.selections(name)  # (N, heads, C)
        n, heads, channels = sel.shape
        freq = sel.double().mean(0) if n else torch.full((heads, channels), float("nan"))
        packed = np.packbits(sel.numpy(), axis=-1)  # (N, heads, ceil(C / 8))
        for h in range(heads):
            _, counts = np.unique(packed[:, h], axis=0, return_counts=True)
            p = counts / n if n else counts.astype(float)
            rows.append(
                {
                    "layer": name,
                    "head": h,
                    "samples": n,
                    "channels": channels,
                    "mean_kept": float(sel[:, h].sum(-1).double().mean()) if n else float("nan"),
                    "always": float((freq[h] == 1).double().mean()) if n else float("nan"),
                    "never": float((freq[h] == 0).double().mean()) if n else float("nan"),
                    "entropy": float(binary_entropy(freq[h]).mean()),
                    "distinct": len(counts),
                    "pattern_entropy": float(0.0 - (p * np.log2(p)).sum()) if n else float("nan"),
                }
            )
    columns = [
        "layer", "head", "samples", "channels", "mean_kept", "always", "never", "entropy",
        "distinct", "pattern_entropy",
    ]
    return pd.DataFrame(rows, columns=columns)


def sample_similarity(
    recording,
    layers: Sequence[str] | None = None,
    heads: Sequence[int] | None = None,
    rows=None,
    max_samples: int = 10_000,
) -> pd.DataFrame:
    """Sample-to-sample similarity of the channels the images used, to cluster images.

    Each sample is the set of (layer, head, channel) triples its heads kept, over the chosen
    layers and heads; two samples are compared with the Jaccard similarity of their sets.

    Args:
        recording: a ``Recording`` or live ``Recorder``.
        layers: DGC layer names; default all.
        heads: head indices to use in every layer; default all.
        rows: indices of the samples to compare (e.g. ``recording.where(labels=[3, 5])``);
            default all.
        max_samples: refuse more samples than this (the result is M x M); pass ``rows``.

    Returns:
        (M, M) DataFrame of float32 similarities in [0, 1], ones on the diagonal, with the
        samples' ids as index and columns (both named ``id``). Feed it to
        ``seaborn.clustermap`` or ``scipy.cluster.hierarchy`` (distance = 1 - similarity).
    """
    names = _layers(recording, layers)
    index = torch.arange(len(recording)) if rows is None else torch.as_tensor(rows).long().flatten()
    if len(index) > max_samples:
        raise ValueError(
            f"sample_similarity would build a {len(index)} x {len(index)} matrix; pass rows= "
            f"(e.g. recording.where(labels=...)) or raise max_samples={max_samples}"
        )
    parts = []
    for name in names:
        sel = recording.selections(name)[index]  # (M, heads, C)
        if heads is not None:
            bad = [h for h in heads if not 0 <= h < sel.shape[1]]
            if bad:
                raise ValueError(
                    f"heads {bad} out of range for layer {name!r} ({sel.shape[1]} heads)"
                )
            sel = sel[:, list(heads)]
        parts.append(sel.flatten(1))  # (M, heads * C)
    features = torch.cat(parts, dim=1) if parts else torch.zeros(len(index), 0, dtype=torch.bool)
    blocks = [  # (chunk, M) each
        jaccard_similarity(features[s : s + _CHUNK], features)
        for s in range(0, len(index), _CHUNK)
    ]
    sim = torch.cat(blocks) if blocks else torch.zeros(0, 0)
    ids = pd.Index(recording.ids[index].numpy(), name="id")
    return pd.DataFrame(sim.numpy(), index=ids, columns=ids.copy())


def realized_macs(
    recording, layers: Sequence[str] | None = None, per_layer: bool = False
) -> pd.DataFrame:
    """MACs each recorded image really cost in the DGC layers, beside the paper's count.

    For every recorded layer the recording's ``layer_info`` feeds the layer kind's own MAC
    formula (``info_macs``; for DGC, SPEC §1.5): ``realized`` counts, per image, the channels
    each head actually kept; ``paper`` uses the target keep ratio ``1 - xi`` (the same for
    every image); ``k_based`` counts ``C_in - k`` channels per head with the k in force when
    recorded (what the gather execution convolves; the kind's ``computed_channels_from_info``).
    Realized <= k_based always; realized <= paper once k has reached its
    final value (during the warm-up, k < round(xi * C_in), so an image can cost more than the
    paper's figure).

    Only DGC layers are counted: the rest of the network costs the same for every image
    (``count_macs(model, size, per_layer=True)`` lists it).

    Args:
        recording: a ``Recording`` or live ``Recorder``.
        layers: DGC layer names; default all.
        per_layer: one row per (sample, layer) instead of one per sample.

    Returns:
        ``per_layer=False``: one row per sample, columns ``id``, ``label``, ``realized``,
        ``k_based``, ``paper`` (int64 sums over the layers) and ``ratio`` (realized / paper).
        ``per_layer=True``: one row per (sample, layer), samples in recording order, layers in
        ``layer_names`` order: ``id``, ``label``, ``layer``, ``realized``, ``k_based``,
        ``paper``.
    """
    names = _layers(recording, layers)
    ids, labels = recording.ids.numpy(), recording.labels.numpy()
    n = len(ids)
    realized, k_based, paper = [], [], []
    for name in names:
        info = recording.layer_info(name)
        if info.get("input_hw") is None:
            raise ValueError(f"layer_info of {name!r} has no input_hw; realized MACs need it")
        kept = recording.selections(name).sum(-1).long()  # (N, heads)
        realized.append(info_macs(info, kept).numpy().astype(np.int64))
        computed = conv_kind(info["kind"]).layer_type.computed_channels_from_info(info)
        k_based.append(int(info_macs(info, torch.full((info["heads"],), computed))))
        paper.append(info_macs(info))

    if per_layer:
        lcount = len(names)
        return pd.DataFrame(
            {
                "id": np.repeat(ids, lcount),
                "label": np.repeat(labels, lcount),
                "layer": np.tile(np.asarray(names, dtype=object), n),
                "realized": np.stack(realized, 1).ravel() if names else np.zeros(0, np.int64),
                "k_based": np.tile(np.asarray(k_based, dtype=np.int64), n),
                "paper": np.tile(np.asarray(paper, dtype=np.int64), n),
            }
        )
    total_realized = np.sum(realized, axis=0) if names else np.zeros(n, np.int64)
    total_paper = int(sum(paper))
    return pd.DataFrame(
        {
            "id": ids,
            "label": labels,
            "realized": total_realized.astype(np.int64),
            "k_based": np.full(n, int(sum(k_based)), dtype=np.int64),
            "paper": np.full(n, total_paper, dtype=np.int64),
            "ratio": total_realized / total_paper if total_paper else np.full(n, np.nan),
        }
    )


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def check_recording(recording) -> None:
    """TypeError unless ``recording`` reads like a ``Recording`` (or a live ``Recorder``)."""
    if not all(hasattr(recording, a) for a in ("layer_names", "selections", "layer_info")):
        raise TypeError(f"recording must be a dgclab Recording (or Recorder), got "
                        f"{type(recording).__name__}")


def _layers(recording, layers: Sequence[str] | None) -> list[str]:
    check_recording(recording)
    names = list(recording.layer_names)
    if layers is None:
        return names
    if isinstance(layers, str):
        layers = [layers]
    missing = [n for n in layers if n not in names]
    if missing:
        raise ValueError(f"no DGC layers {missing} in this recording; layers: {names}")
    return list(layers)


def _mean_chance(a: np.ndarray, b: np.ndarray, c: int) -> float:
    """Mean over samples of ``_chance_jaccard`` for per-sample set sizes a, b (N,)."""
    if len(a) == 0:
        return float("nan")
    pairs, counts = np.unique(np.stack([a, b], 1), axis=0, return_counts=True)
    values = np.array([_chance_jaccard(int(x), int(y), c) for x, y in pairs])
    return float((values * counts).sum() / counts.sum())


def _concat(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)[columns]

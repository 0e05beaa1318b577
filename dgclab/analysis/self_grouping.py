"""Self-grouping convolution: cluster a dense conv's filters, give each cluster its own inputs.

Guo, Zhang, Wang, Zhou, Dong, "Self-grouping convolutional neural networks", Neural Networks
2020, arXiv 2009.13803 (SPEC §4). For a plain conv with weight ``W`` (O, C, kh, kw) and its
current mask (O, C) (all ones the first time):

1. importance of filter i for input channel j: ``v_i[j] = sum_taps |W[i, j] * mask[i, j]|``;
2. k-means of the O vectors ``v_i`` (``groups`` clusters, at most O, random init, 10 restarts;
   ``init="k-means++"`` recovers true groups more reliably, see ``self_group``);
   the centroid of a cluster is the mean of its filters' vectors;
3. ``T`` = the ``rate * 100``-th percentile of the concatenated ``centroid_{k(i)} * mask_i``
   over all filters i (``rate`` is the layer's cumulative target sparsity: masked entries count
   as zeros, so regrouping at 0.5 then 0.75 follows the paper's schedule cp = 10, 20, ... 90);
4. every filter of cluster k keeps input channel j iff ``centroid_k[j] * mask_k[j] > T``.

All filters of a cluster share one channel subset; subsets differ in size and may overlap
("diverse groups"). ``mask_k`` is the cluster's current subset: the channels that *every* filter
of the cluster still reads (the first time, all of them, and the rule is the paper's per-filter
rule). Reading it so keeps each cluster one group when a regrouping mixes filters of old
clusters, and makes a new mask a subset of the old one: masks only shrink. Two choices of ours,
both reported in the table's ``forced`` column: a cluster whose subset would be empty keeps its
strongest channel (the largest ``centroid_k[j] * mask_k[j]``; should its filters share no
channel any more, the largest ``centroid_k[j]``, the one place where a mask can grow back).

``self_group`` applies the masks in place as weight parametrizations
(``torch.nn.utils.parametrize``): ``conv.weight`` is ``original * mask`` in every forward, so
fine-tuning (the paper retrains after each step, SGD lr 0.01, wd 1e-4) keeps the masked weights
at zero while the kept ones learn. This is the authors' execution, a dense masked conv with no
speed-up; ``to_grouped`` builds the execution that computes only what the groups read:
``SelfGroupedConv2d``, equal to the masked conv: each cluster over its own channels, in CPU
float32 inference every cluster of a layer in one call of dgclab's C++ kernel
(``torch.ops.dgclab.cluster_conv2d``), elsewhere one small conv per cluster.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

from dgclab.checks import check_choice, check_float, check_int, check_type
from dgclab.layers import cpu_kernel, tuning
from dgclab.layers.base import GroupingConv

__all__ = ["ChannelMask", "EXECUTIONS", "INITS", "SelfGroupedConv2d", "TABLE_COLUMNS", "self_group",
           "to_grouped"]

EXECUTIONS = ("auto", "loop", "dense", "padded")
"""How ``SelfGroupedConv2d`` computes its clusters (its docstring)."""

INITS = ("random", "k-means++")
"""k-means initialisations: the paper's random rows, or k-means++ (see ``self_group``)."""
TABLE_COLUMNS = ("layer", "cluster", "filters", "channels", "forced", "overlap", "kept")
"""Columns of ``self_group``'s table, in order."""


class ChannelMask(nn.Module):
    """The weight parametrization of a self-grouped conv: ``weight = original * mask``.

    Buffers (saved in the state dict, moved with the model):
        mask: (O, C) float, 1 where filter i reads input channel j.
        cluster: (O,) long, the cluster of every filter, numbered 0 .. G - 1.

    Shapes: (O, C, kh, kw) -> (O, C, kh, kw).
    """

    def __init__(self, mask: torch.Tensor, cluster: torch.Tensor) -> None:
        super().__init__()
        check_type("mask", mask, torch.Tensor)
        check_type("cluster", cluster, torch.Tensor)
        if mask.dim() != 2 or cluster.shape != mask.shape[:1]:
            raise ValueError(f"mask must be (O, C) and cluster (O,), got {tuple(mask.shape)} and "
                             f"{tuple(cluster.shape)}")
        self.register_buffer("mask", mask.detach().clone().float())
        self.register_buffer("cluster", cluster.detach().clone().long())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask.to(weight.dtype)[:, :, None, None]  # (O, C, kh, kw)

    def extra_repr(self) -> str:
        clusters = int(self.cluster.max()) + 1 if self.cluster.numel() else 0
        return f"clusters={clusters}, kept={float(self.mask.mean()):.3f}"


def _channel_mask(conv: nn.Module) -> ChannelMask | None:
    """The ``ChannelMask`` parametrizing ``conv.weight``, or None."""
    if not parametrize.is_parametrized(conv, "weight"):
        return None
    return next((p for p in conv.parametrizations.weight if isinstance(p, ChannelMask)), None)


def _groupable(module: nn.Module) -> bool:
    """A plain dense conv: ``nn.Conv2d`` (parametrized or not), groups=1, no protocol layer."""
    return (
        isinstance(module, nn.Conv2d)
        and module.groups == 1
        and not isinstance(module, GroupingConv)  # has its own grouping
    )


def _cluster_masks(
    weight: torch.Tensor, mask: torch.Tensor, groups: int, rate: float, seed: int, init: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps 1-4 for one layer.

    Args:
        weight: (O, C, kh, kw), the layer's current (masked) weight.
        mask: (O, C) bool, its current mask.

    Returns:
        ``new_mask`` (O, C) bool, ``labels`` (O,) ints 0 .. G - 1, ``forced`` (G,) bool.
    """
    from sklearn.cluster import KMeans  # sklearn is slow to import; only this needs it

    w = weight.detach().double().cpu().numpy()
    m = mask.cpu().numpy()
    importance = np.abs(w * m[:, :, None, None]).sum(axis=(2, 3))  # (O, C)
    out_channels = importance.shape[0]
    kmeans = KMeans(n_clusters=min(groups, out_channels), init=init, n_init=10,
                    random_state=seed)
    # Duplicate vectors can leave a label unused: number the clusters that exist 0 .. G - 1.
    _, labels = np.unique(kmeans.fit_predict(importance), return_inverse=True)
    n_clusters = int(labels.max()) + 1
    # Means of the clusters, computed here: sklearn's centring leaves ~1e-17 where every member
    # is exactly 0, and the block-diagonal check needs those zeros exact.
    centroids = np.stack([importance[labels == k].mean(axis=0) for k in range(n_clusters)])
    threshold = np.percentile(centroids[labels] * m, rate * 100)  # over all O * C entries

    new_mask = np.zeros_like(m, dtype=bool)
    forced = np.zeros(n_clusters, dtype=bool)
    for k in range(n_clusters):
        shared = m[labels == k].all(axis=0)  # (C,) what every filter of the cluster reads
        score = centroids[k] * shared
        keep = score > threshold
        if not keep.any():
            forced[k] = True
            keep[int(np.argmax(score if shared.any() else centroids[k]))] = True
        new_mask[labels == k] = keep
    return new_mask, labels, forced


def _layer_rows(name: str, mask: np.ndarray, labels: np.ndarray, forced: np.ndarray) -> list:
    """The table rows of one layer: one per cluster, with the layer's overlap and kept."""
    subsets = [mask[labels == k][0] for k in range(len(forced))]  # (C,) bool each, shared
    jaccards = [
        (a & b).sum() / (a | b).sum()
        for i, a in enumerate(subsets) for b in subsets[i + 1:]
    ]
    overlap = float(np.mean(jaccards)) if jaccards else float("nan")  # one cluster: none
    kept = float(mask.mean())
    return [
        {"layer": name, "cluster": k, "filters": int((labels == k).sum()),
         "channels": int(subsets[k].sum()), "forced": bool(forced[k]),
         "overlap": overlap, "kept": kept}
        for k in range(len(forced))
    ]


def self_group(
    model: nn.Module,
    groups: int = 16,
    rate: float = 0.5,
    layers: Sequence[str] | None = None,
    seed: int = 0,
    init: str = "random",
) -> pd.DataFrame:
    """Self-group the dense convs of ``model`` in place (SG-CNN, SPEC §4); one step of cp.

    Every chosen conv gets (or updates: regrouping never stacks a second one) a ``ChannelMask``
    weight parametrization, so that its filters, clustered by importance, read only their
    cluster's input channels. Call it again with a higher ``rate`` after fine-tuning for the
    paper's schedule; masks only shrink (see the module docstring for the one exception).

    Args:
        model: any module; it is changed in place.
        groups: clusters per layer (16 in the paper); a layer with fewer filters gets one
            cluster per filter.
        rate: the cumulative target sparsity in (0, 1): the percentile (x 100) of the masked
            centroid entries that sets the threshold.
        layers: names (``named_modules``) of the convs to group; each must be an ``nn.Conv2d``
            with groups=1. Default: every such conv but the first (the stem, which reads the
            image, stays dense as in the paper).
        seed: ``random_state`` of the k-means.
        init: ``"random"`` (the paper's: k rows drawn at random, 10 restarts) or
            ``"k-means++"``. Random init often merges two true groups and splits a third, a
            local optimum no restart escapes: on a grouped conv stored dense (48 x 32, the
            SPEC §4 check) it finds the blocks 10/10 times for g = 2 and 4 but 0/10 for g = 8
            and 16; k-means++ finds them 10/10 up to g = 16 (also 64 x 64 and 128 x 128).

    Returns:
        A DataFrame with one row per (layer, cluster), columns ``TABLE_COLUMNS``: ``filters``
        (output channels of the cluster), ``channels`` (input channels it keeps), ``forced``
        (its subset was empty and kept its strongest channel), and per layer ``overlap`` (mean
        Jaccard similarity of the clusters' subsets over pairs; NaN for one cluster) and
        ``kept`` (fraction of the (O, C) connections kept).

    Raises:
        TypeError: ``model`` not a Module, ``layers`` not a sequence of names, a non-int
            ``groups`` or ``seed``, a non-real ``rate``.
        ValueError: ``groups < 1``, ``rate`` outside (0, 1), ``seed < 0``, a name in
            ``layers`` that is not in the model or not a dense conv, a model without any
            ``nn.Conv2d``, ``groups`` above the filters of a layer to group (more clusters than
            filters). A model whose convs all belong to protocol layers or are grouped already
            gives an empty table.

    Example:
        >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))
        >>> table = self_group(model, groups=2, rate=0.5)
        >>> list(table["layer"].unique()), int(table["filters"].sum())
        (['2'], 8)
    """
    check_type("model", model, nn.Module)
    groups = check_int("groups", groups, min=1)
    rate = check_float("rate", rate, min=0, max=1, min_inclusive=False, max_inclusive=False)
    seed = check_int("seed", seed, min=0, max=2**32 - 1)
    init = check_choice("init", init, INITS)
    modules = dict(model.named_modules())
    if not any(isinstance(m, nn.Conv2d) for m in modules.values()):
        raise ValueError(f"model has no nn.Conv2d to group (a {type(model).__name__} of "
                         f"{', '.join(sorted({type(m).__name__ for m in modules.values()}))})")
    # the convs inside a protocol layer (a DGC head's conv, an LGC's) or an already grouped
    # conv belong to it: never grouped on their own
    owners = [n + "." for n, m in modules.items()
              if isinstance(m, (GroupingConv, SelfGroupedConv2d))]
    modules = {n: m for n, m in modules.items() if not any(n.startswith(o) for o in owners)}
    if layers is None:
        names = [n for n, m in modules.items() if _groupable(m)][1:]
    else:
        if isinstance(layers, str) or not isinstance(layers, Sequence):
            raise TypeError(f"layers must be a sequence of module names, got "
                            f"{type(layers).__name__}")
        names = list(layers)
        for name in names:
            check_type("layers[...]", name, str)
            if name not in modules:
                raise ValueError(f"layers names no module of the model, got {name!r}")
            if not _groupable(modules[name]):
                raise ValueError(f"layers must name nn.Conv2d with groups=1, got {name!r} "
                                 f"({type(modules[name]).__name__})")
    for name in names:
        if groups > modules[name].out_channels:
            raise ValueError(f"groups={groups} is more clusters than layer {name!r} has filters "
                             f"({modules[name].out_channels}); leave it out with layers=[...] or "
                             f"use fewer groups")
    rows = []
    for name in names:
        conv = modules[name]
        param = _channel_mask(conv)
        weight = conv.weight.detach()  # already masked when parametrized
        mask = (torch.ones(weight.shape[:2], dtype=torch.bool) if param is None
                else param.mask.detach().cpu() > 0)
        new_mask, labels, forced = _cluster_masks(weight, mask, groups, rate, seed, init)
        mask_t = torch.from_numpy(new_mask).to(weight.device, torch.float32)
        labels_t = torch.from_numpy(labels).to(weight.device, torch.long)
        if param is None:
            parametrize.register_parametrization(conv, "weight", ChannelMask(mask_t, labels_t))
        else:  # update in place: one parametrization per conv, however often regrouped
            param.mask.copy_(mask_t)
            param.cluster = labels_t
        rows += _layer_rows(name, new_mask, labels, forced)
    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    return table.astype({"cluster": "int64", "filters": "int64", "channels": "int64",
                         "forced": "bool", "overlap": "float64", "kept": "float64"})


class SelfGroupedConv2d(nn.Module):
    """A self-grouped conv that computes only what its clusters read.

    Three executions, equal to the masked dense conv and to each other, and a choice of two:

    * ``"loop"``: each cluster convolves its own input channels with its own
      filters, exactly the clusters' MACs. In CPU float32 inference (``cpu_kernel.applies``)
      and with zero padding, every cluster of the layer runs in one call of dgclab's C++ op
      (``torch.ops.dgclab.cluster_conv2d``, ``dgclab/layers/csrc/dgc_cpu.cpp``): per image and
      cluster its channels are read in place and laid out as GEMM columns beside its conv's
      weight, one sgemm, the rows written at the cluster's output channels, so nothing of the
      batch's size is gathered and a layer is one dispatch. Elsewhere (autograd, another
      device or dtype, the kernel off: ``cpu_kernel.use(False)``) it is PyTorch's: one
      ``index_select`` gathers every cluster's input channels (a channel read by two clusters is
      gathered twice), cluster k's filters convolve its own slice (``convs[k]``, an
      ``nn.Conv2d`` over ``|S_k|`` channels), and one more ``index_select`` puts the outputs
      back into the original filter order: G small convs, each a call whose fixed cost can
      outweigh its MACs. ``convs`` are the parameters either way; the loop is what trains.
    * ``"padded"``: every cluster padded to the largest one (``max |S_k|`` channels, the
      padding reading channel 0 through zero weights, and ``max |filters_k|`` filters), all G
      clusters in one conv with ``groups=G``: one call, at the padded MACs
      (``padded_fraction``). Its weight is laid out from ``convs`` once and kept while they
      do not change. Inference only, kept for the comparison (README, "Self-grouping
      convolution"): KMeans clusters differ in size, and it is slower than the masked conv.
    * ``"dense"``: the clusters' weights laid out in one dense (O, C) weight, zeros where a
      cluster does not read, and one ordinary conv: the masked model's MACs at oneDNN's speed,
      which at large batches and half the MACs kept beats the loop (README). Laid out and kept
      like the padded weight; inference only.
    * ``"auto"`` (the default): the loop, except in eval-mode inference with
      ``dgclab.layers.tuning`` on, where the loop and the dense execution are timed on the
      first input of each shape and the faster one runs from then on.

    ``count_macs`` counts the PyTorch loop's inner convs (it runs its probe with the kernel
    off), the same MACs as the kernel's.

    Not a layer of dgclab's protocol (``GroupingConv``): a protocol layer is built from a shape
    by the conv registry and recorded as ``heads`` equal groups dividing ``out_channels``;
    clusters here have any sizes and any channel subsets. ``count_macs`` counts it through its
    inner ``nn.Conv2d`` s instead (``sum_k |filters_k| * |S_k| * kh * kw * H' * W'``, the
    kept fraction of the dense conv), and ``channel_groups`` and ``connectivity()`` say what
    its groups read, as a static protocol layer would.

    Args:
        conv: a dense conv (groups=1) whose weight already holds the masked values.
        cluster: (O,) long, filter -> cluster 0 .. G - 1.
        mask: (O, C) bool; cluster k reads the union of its filters' rows (one shared subset
            from ``self_group``; a union keeps the result exact if the rows differ).

    Shapes: (B, C, H, W) -> (B, O, H', W'), as ``conv``.
    """

    def __init__(self, conv: nn.Conv2d, cluster: torch.Tensor, mask: torch.Tensor) -> None:
        super().__init__()
        if not isinstance(conv, nn.Conv2d) or conv.groups != 1:
            raise ValueError(f"conv must be an nn.Conv2d with groups=1, got {conv!r}")
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride = conv.kernel_size, conv.stride
        self._zero_padding = conv.padding_mode == "zeros"  # what the kernel pads with
        self.padding, self.dilation = conv.padding, conv.dilation
        weight = conv.weight.detach()  # (O, C, kh, kw), masked
        cluster, mask = cluster.to(weight.device), mask.to(weight.device).bool()
        convs, channels, filters = [], [], []
        for k in range(int(cluster.max()) + 1):
            rows = (cluster == k).nonzero().flatten()  # the cluster's filters
            cols = mask[rows].any(0).nonzero().flatten()  # its input channels S_k
            small = nn.Conv2d(len(cols), len(rows), conv.kernel_size, conv.stride, conv.padding,
                              conv.dilation, bias=conv.bias is not None,
                              padding_mode=conv.padding_mode, device=weight.device,
                              dtype=weight.dtype)
            with torch.no_grad():
                small.weight.copy_(weight[rows][:, cols])
                if conv.bias is not None:
                    small.bias.copy_(conv.bias.detach()[rows])
            convs.append(small)
            channels.append(cols)
            filters.append(rows)
        self.convs = nn.ModuleList(convs)
        self.sizes = [len(c) for c in channels]
        self.register_buffer("gather", torch.cat(channels))  # (sum_k |S_k|,)
        # out channel o sits at place order[o] of the concatenated cluster outputs
        self.register_buffer("order", torch.argsort(torch.cat(filters)))  # (O,)
        # the clusters' filters one after another, the kernel's `filters`; not saved (order's
        # inverse), so that state dicts from before the kernel load
        self.register_buffer("filters", torch.cat(filters), persistent=False)  # (O,)
        self.register_buffer("cluster", cluster.long().clone())
        # the padded execution: cluster k's channels at [k * S, k * S + |S_k|) of the gather,
        # its filters at [k * F, k * F + |filters_k|) of the output, S and F the largest sizes
        width, height = max(self.sizes), max(len(f) for f in filters)
        padded = torch.zeros(len(convs), width, dtype=torch.long, device=weight.device)
        place = torch.empty(self.out_channels, dtype=torch.long, device=weight.device)
        for k, (cols, rows) in enumerate(zip(channels, filters)):
            padded[k, :len(cols)] = cols  # the rest read channel 0, through zero weights
            place[rows] = k * height + torch.arange(len(rows), device=weight.device)
        self.register_buffer("padded_gather", padded.flatten())  # (G * S,)
        self.register_buffer("padded_place", place)  # (O,)
        self._padded_shape = (width, height)
        self._weights = {}  # layout -> (the convs' versions, weight, bias): _laid_out
        self.execution = "auto"

    @property
    def padded_fraction(self) -> float:
        """MACs of the padded execution over the loop's (the clusters' own)."""
        width, height = self._padded_shape
        own = sum(c.in_channels * c.out_channels for c in self.convs)
        return len(self.convs) * width * height / own

    def _laid_out(self, layout: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The clusters' weights and biases in one tensor, laid out again only when a cluster's
        conv changed. ``"padded"``: (G * F, S, kh, kw), zeros where padded; ``"dense"``:
        (O, C, kh, kw) in output order, zeros where a cluster does not read."""
        key = tuple((c.weight._version, c.weight.data_ptr()) for c in self.convs)
        cached = self._weights.get(layout)
        if cached is None or cached[0] != key:
            first = self.convs[0].weight
            has_bias = self.convs[0].bias is not None
            if layout == "padded":
                width, height = self._padded_shape
                w = first.new_zeros(len(self.convs) * height, width, *first.shape[2:])
                bias = first.new_zeros(len(w)) if has_bias else None
                for k, conv in enumerate(self.convs):
                    rows = slice(k * height, k * height + conv.out_channels)
                    w[rows, :conv.in_channels] = conv.weight.detach()
                    if bias is not None:
                        bias[rows] = conv.bias.detach()
            else:
                w = first.new_zeros(self.out_channels, self.in_channels, *first.shape[2:])
                bias = first.new_zeros(self.out_channels) if has_bias else None
                filters = self.filters.split([c.out_channels for c in self.convs])
                for conv, rows, cols in zip(self.convs, filters, self.gather.split(self.sizes)):
                    w[rows.unsqueeze(1), cols] = conv.weight.detach()  # (|filters_k|, |S_k|, ..)
                    if bias is not None:
                        bias[rows] = conv.bias.detach()
            self._weights[layout] = (key, w, bias)
        return self._weights[layout][1], self._weights[layout][2]

    @property
    def execution(self) -> str:
        return self._execution

    @execution.setter
    def execution(self, value: str) -> None:
        self._execution = check_choice("execution", value, EXECUTIONS)

    @property
    def channel_groups(self) -> int:
        """G, the number of clusters."""
        return len(self.convs)

    def connectivity(self) -> torch.Tensor:
        """(G, C_in) bool: the input channels each cluster reads."""
        groups = torch.zeros(len(self.convs), self.in_channels, dtype=torch.bool,
                             device=self.gather.device)
        for k, cols in enumerate(self.gather.split(self.sizes)):
            groups[k, cols] = True
        return groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        execution = self._execution
        if execution in ("padded", "dense"):
            if torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()):
                raise ValueError(f"execution={execution!r} computes without autograd (its weight "
                                 "is a detached copy); use 'loop' or 'auto' to train")
        elif execution == "auto":
            execution = "loop"
            if tuning.enabled() and not self.training and not torch.is_grad_enabled():
                execution = tuning.choose(self._tuning_key(x), {
                    "loop": lambda: self._loop(x), "dense": lambda: self._dense(x)})
        if execution == "dense":
            return self._dense(x)
        if execution == "padded":
            weight, bias = self._laid_out("padded")
            y = F.conv2d(x.index_select(1, self.padded_gather), weight, bias, self.stride,
                         self.padding, self.dilation, groups=len(self.convs))  # (B, G F, H', W')
            return y.index_select(1, self.padded_place)  # (B, O, H', W')
        return self._loop(x)

    def _tuning_key(self, x: torch.Tensor) -> tuple:
        """What the measured choice depends on: the clusters' sizes, the conv's geometry, the
        input's shape and the thread count."""
        return ("SelfGroupedConv2d", self.in_channels, self.out_channels, tuple(self.sizes),
                tuple(c.out_channels for c in self.convs), self.kernel_size, self.stride,
                self.padding, self.dilation, tuple(x.shape), tuning.threads())

    def _dense(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self._laid_out("dense")  # (O, C, kh, kw), (O,)
        return self.convs[0]._conv_forward(x, weight, bias)  # the conv's padding mode included

    def _loop(self, x: torch.Tensor) -> torch.Tensor:
        if self._zero_padding and cpu_kernel.applies(x):  # every cluster in one C++ call
            convs = [conv._parameters for conv in self.convs]  # not Module.__getattr__ G times
            bias = None
            if convs[0]["bias"] is not None:  # (O,), in output channel order
                bias = torch.cat([p["bias"] for p in convs])[self.order]
            return torch.ops.dgclab.cluster_conv2d(
                x, self.gather, self.filters, [p["weight"] for p in convs], bias, self.stride,
                self.padding, self.dilation)  # (B, O, H', W')
        xs = x.index_select(1, self.gather).split(self.sizes, dim=1)  # (B, |S_k|, H, W) each
        ys = [conv(xk) for conv, xk in zip(self.convs, xs)]  # (B, |filters_k|, H', W') each
        return torch.cat(ys, dim=1).index_select(1, self.order)  # (B, O, H', W')

    def extra_repr(self) -> str:
        kept = sum(c.in_channels * c.out_channels for c in self.convs)
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, clusters={len(self.convs)}, "
                f"kept={kept / (self.in_channels * self.out_channels):.3f}, "
                f"execution={self._execution} (padded: {self.padded_fraction:.2f}x the MACs)")


def to_grouped(model: nn.Module, execution: str = "auto") -> nn.Module:
    """A copy of ``model`` in which every self-grouped conv is a ``SelfGroupedConv2d``.

    The original is unchanged. The copy computes the same outputs as the masked model (to
    float rounding) with ``kept`` of each layer's conv MACs; its weights are copies, so
    training one does not train the other.

    Args:
        model: a model with convs grouped by ``self_group``.
        execution: of every ``SelfGroupedConv2d`` (its docstring): "auto" (the loop, or with
            ``dgclab.layers.tuning`` on the faster of the loop and the dense conv, measured per
            shape in eval-mode inference), "loop" (each cluster over its own channels; in CPU
            float32 inference all in one call of the C++ kernel), "dense" or "padded"; an
            attribute of each layer, which can be changed later.

    Raises:
        TypeError: ``model`` is not a Module.
        ValueError: ``model`` has no conv grouped by ``self_group``.

    Example:
        >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))
        >>> _ = self_group(model, groups=2)
        >>> type(to_grouped(model)[2]).__name__
        'SelfGroupedConv2d'
    """
    check_type("model", model, nn.Module)
    check_choice("execution", execution, EXECUTIONS)
    grouped = copy.deepcopy(model)
    names = [n for n, m in grouped.named_modules() if _channel_mask(m) is not None]
    if not names:
        raise ValueError("model has no self-grouped conv; call self_group(model) first")
    for name in names:
        conv = grouped.get_submodule(name)
        param = _channel_mask(conv)
        layer = SelfGroupedConv2d(conv, param.cluster, param.mask > 0)
        layer.execution = execution
        grouped.set_submodule(name, layer)
    return grouped

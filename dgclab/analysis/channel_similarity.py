"""Channel-similarity pruning: cluster similar BN channels and merge each cluster into one.

Zhang, Zhao, Ni, Zhang, Deng, "Channel Pruning via Channel Similarity" (title as cited in SPEC
§6), arXiv 1908.02620. Channels of a layer whose outputs are alike do the same work: cluster the
channels of every layer hierarchically under a distance between channel outputs, keep one
representative per cluster, let the representative carry the others' outgoing weights, and
fine-tune. No sparsity training; it works on pre-trained models.

The metric is dgclab's reading, not the authors' code (none was released, and the exact metric
was not retrievable; SPEC §6). Channel i after its BN is ``y_i = gamma_i * z_i + beta_i``,
``z_i = (x_i - running_mean_i) / sqrt(running_var_i + eps)`` the normalised input. Model
``y_i`` as a variable of mean ``beta_i`` and standard deviation ``|gamma_i|`` (``z_i`` of mean 0
and variance 1) with correlation ``rho_ij`` between ``y_i`` and ``y_j``; then

    d_ij^2 = E[(y_i - y_j)^2] = (beta_i - beta_j)^2 + gamma_i^2 + gamma_j^2
                                 - 2 rho_ij |gamma_i| |gamma_j|.

``rho_ij`` is measured on data: the correlation of ``z_i`` and ``z_j`` over the loader's images
and spatial positions (eval mode), times ``sign(gamma_i gamma_j)`` (the correlation of the
``y``, which the affine flips when one gamma is negative; with positive gammas it is the
correlation of the ``z`` itself). Exact duplicate channels (same filter, same BN parameters)
have ``rho = 1`` and ``d = 0``; their outputs after the ReLU are identical, so adding one's
outgoing weights into the other's and removing it leaves the network's output unchanged.
The reading takes ``z`` to have mean 0 and variance 1, as the running statistics promise; it
measures only the correlation. Where the data disagree with the running statistics (two
channels whose ``z`` differ by a constant, say), the distance does not see it.

Scope, two kinds of network:

* the plain conv chains that ``remove_dead_filters`` walks (``dgclab.models.BasicNet``: an
  ``nn.Sequential`` of ``Conv2d -> BatchNorm2d -> ReLU`` triples, pools, flatten, dropout and a
  ``Linear``), with the same walk and the same slicing (``dead_filters.py``). A triple whose
  output is the model's output, or feeds a BN without a conv, is measured but not merged.
* residual networks of ``BasicBlock`` s (``dgclab.models.resnet_cifar`` with dense convs). Every
  ``BatchNorm2d`` is measured, but only the channels that no residual add ties are merged: the
  first conv and BN of each block (``conv1 -> bn1 -> relu1``), whose output feeds only the
  block's second conv. The channels of a block's last BN, of its shortcut (``downsample``) and
  of the stem are summed with another layer's channels by a residual add; merging one of them
  would have to merge the same channels in every tied layer at once (the whole stage), and
  dgclab leaves them alone.

Anything else (DenseNets, DGC or other grouping layers inside a block, a self-grouped conv):
``ValueError`` naming the first module that cannot be followed.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform
from tqdm.auto import tqdm

from dgclab.checks import check_float, check_int, check_type
from dgclab.models.resnet_cifar import BasicBlock
from dgclab.modes import eval_mode
from dgclab.record import paused

# The chain walk and the slicing are dead_filters.py's, shared with it.
from .dead_filters import (
    ConvWithBiasMap,
    _Link,
    filter_chain,
    filter_units,
    find_consumer,
    slice_bn_,
    slice_conv_in,
    slice_conv_out,
    slice_linear_in,
)
from .sparsity import batch_count, batch_inputs, device_and_dtype

__all__ = ["block_widths", "channel_distance", "channel_similarity", "merge_similar",
           "resize_blocks_"]


def channel_distance(
    gamma: torch.Tensor, beta: torch.Tensor, corr: torch.Tensor
) -> torch.Tensor:
    """The pairwise distances of one BN's channels, dgclab's reading of the paper's metric.

    ``d_ij^2 = (beta_i - beta_j)^2 + gamma_i^2 + gamma_j^2 - 2 rho_ij |gamma_i| |gamma_j|``
    with ``rho_ij = sign(gamma_i gamma_j) corr_ij``, i.e. ``E[(y_i - y_j)^2]`` for
    ``y = gamma * z + beta`` and ``z`` of mean 0, variance 1 and correlation ``corr`` (see the
    module docstring). Computed in float64; ``d^2`` is clamped at 0 before the square root.

    Args:
        gamma: (C,) BN scales.
        beta: (C,) BN shifts.
        corr: (C, C) correlation of the normalised channels (``z``).

    Returns:
        (C, C) float64 distances ``d_ij`` (not squared), symmetric, 0 on the diagonal.

    Example:
        >>> channel_distance(torch.ones(2), torch.zeros(2), torch.eye(2))  # uncorrelated
        tensor([[0.0000, 1.4142],
                [1.4142, 0.0000]], dtype=torch.float64)
    """
    gamma, beta, corr = (check_type(name, t, torch.Tensor).double()
                         for name, t in (("gamma", gamma), ("beta", beta), ("corr", corr)))
    c = gamma.shape[0]
    if gamma.shape != (c,) or beta.shape != (c,) or corr.shape != (c, c):
        raise ValueError(
            f"gamma and beta must be (C,) and corr (C, C), got gamma {tuple(gamma.shape)}, "
            f"beta {tuple(beta.shape)}, corr {tuple(corr.shape)}"
        )
    rho = torch.sign(gamma)[:, None] * torch.sign(gamma)[None, :] * corr  # of y, not of z
    a = gamma.abs()
    d2 = (
        (beta[:, None] - beta[None, :]) ** 2
        + a[:, None] ** 2
        + a[None, :] ** 2
        - 2 * rho * a[:, None] * a[None, :]
    )  # (C, C)
    d = d2.clamp_min(0).sqrt()
    d.fill_diagonal_(0)
    return d


def channel_similarity(
    model: nn.Module,
    loader: Iterable,
    max_batches: int | None = None,
    *,
    progress: bool | None = None,
) -> pd.DataFrame:
    """Pairwise channel distances of every conv-BN-ReLU layer of a chain, every BN of a ResNet.

    The distance is dgclab's reading of the metric of Zhang et al. (arXiv 1908.02620), whose
    exact form was not retrievable: ``d_ij^2 = (beta_i - beta_j)^2 + gamma_i^2 + gamma_j^2 -
    2 rho_ij |gamma_i| |gamma_j|`` (``channel_distance``; the module docstring derives it). The
    correlations come from one pass over ``loader``: the BN's normalised input
    ``(x - running_mean) / sqrt(running_var + eps)``, per channel, over images and spatial
    positions, in eval mode under ``torch.no_grad()`` (every module's mode restored, hooks
    removed in ``finally``), inside ``dgclab.record.paused()``. A channel that is constant over
    the data has correlation 0 with every other.

    Args:
        model: an ``nn.Sequential`` conv chain such as ``dgclab.models.basicnet``, or a dense
            ``dgclab.models.resnet_cifar`` (see the module docstring); it is not modified.
        loader: iterable of batches, each a tensor or an ``(x, y, ...)`` tuple/list whose first
            element is the input (read once: an iterator works).
        max_batches: use only the first batches of the loader.
        progress: a tqdm bar over the batches; None (default): only on a terminal or notebook.

    Returns:
        One row per pair ``i < j`` of every layer, in chain order (a ResNet: every BN, in
        ``named_modules`` order): ``layer`` (the BN's name),
        ``i``, ``j``, ``distance`` (``d_ij``, float). C channels give C (C - 1) / 2 rows.

    Raises:
        TypeError: ``model`` not a module, ``max_batches`` not an int.
        ValueError: a model that is neither such a chain nor such a ResNet (naming the first
            module that cannot be followed), ``max_batches < 1``, a loader that yields no image
            or a batch without an input tensor.

    Example:
        >>> model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU())
        >>> channel_similarity(model, [torch.randn(4, 1, 8, 8)])[["layer", "i", "j"]]
          layer  i  j
        0     1  0  1
        1     1  0  2
        2     1  1  2
    """
    check_type("model", model, nn.Module)
    distances = _layer_distances(model, loader, max_batches, progress)
    frames = []
    for name, d in distances.items():
        i, j = np.triu_indices(d.shape[0], k=1)
        frames.append(pd.DataFrame({"layer": name, "i": i, "j": j, "distance": d[i, j]}))
    columns = ["layer", "i", "j", "distance"]
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)[columns]


def merge_similar(
    model: nn.Module,
    loader: Iterable,
    threshold: float | None = None,
    ratio: float | None = None,
    *,
    max_batches: int | None = None,
    progress: bool | None = None,
) -> nn.Module:
    """A smaller copy of ``model`` in which each cluster of similar channels is one channel.

    Per conv-BN-ReLU layer of a chain, or per ResNet block's first conv-BN-ReLU (the layers
    that no residual add ties; see the module docstring): the distances of ``channel_similarity`` (dgclab's reading of the
    paper's metric), average-linkage hierarchical clustering
    (``scipy.cluster.hierarchy.linkage(..., "average")``), then ``fcluster``: with
    ``threshold``, criterion ``"distance"`` (channels merge while the average distance between
    their clusters is at most ``threshold``); with ``ratio``, criterion ``"maxclust"`` with
    ``round((1 - ratio) * C)`` clusters (at least 1). Tied merge heights can make ``maxclust``
    return fewer clusters, i.e. remove more channels, than asked.

    In each cluster the channel with the largest ``|gamma|`` stays. The others' outgoing weights
    (the next conv's input-channel slices, or the ``Linear``'s input columns after the pool and
    flatten) are ADDED into the representative's, and they are cut out of their conv (weight
    rows, bias) and BN (all four vectors). For exact duplicates this changes no output (eval
    mode); for merely similar channels it is the approximation the method fine-tunes away.

    The model is not modified. Layers whose output is the model's output, or feeds a BN without
    a conv, are not merged. In a ResNet (``BasicBlock`` s of plain ``nn.Conv2d``), each block's
    ``conv1 -> bn1 -> relu1`` is merged into its ``conv2``; channels tied by a residual add (a
    block's ``bn2``, its ``downsample`` shortcut, the stem) are left alone, so every stage keeps
    its width and only the blocks' inner widths shrink (``block_widths``).

    Args:
        model: an ``nn.Sequential`` conv chain such as ``dgclab.models.basicnet``, or a dense
            ``dgclab.models.resnet_cifar``.
        loader: batches for the correlations (see ``channel_similarity``); read once.
        threshold: a distance, in the units of ``channel_similarity`` (>= 0).
        ratio: the fraction of channels to remove per layer, in (0, 1).
            Exactly one of ``threshold`` and ``ratio``.
        max_batches: use only the first batches of the loader.
        progress: a tqdm bar over the batches; None (default): only on a terminal or notebook.

    Returns:
        The merged copy (same class, in the original's training mode); ``dgclab.count_macs``
        of it is at most the original's.

    Raises:
        TypeError: ``model`` not a module; ``threshold``, ``ratio`` or ``max_batches`` of the
            wrong type.
        ValueError: both or neither of ``threshold`` and ``ratio``; ``threshold < 0``; ``ratio``
            outside (0, 1); a model that is neither a plain chain nor a dense ResNet (naming the
            module); the errors of ``channel_similarity``.

    Example:
        >>> model = basicnet(1, 10, widths=(8, 8, 16, 16, 32, 32, 32)).eval()
        >>> merged = merge_similar(model, [torch.randn(8, 1, 28, 28)], ratio=0.5)
        >>> merged.features.bn1.num_features
        4
    """
    check_type("model", model, nn.Module)
    if (threshold is None) == (ratio is None):
        raise ValueError(
            f"pass exactly one of threshold and ratio, got threshold={threshold!r}, "
            f"ratio={ratio!r}"
        )
    if threshold is not None:
        threshold = check_float("threshold", threshold, min=0)
    else:
        ratio = check_float("ratio", ratio, min=0, max=1, min_inclusive=False,
                            max_inclusive=False)

    distances = _layer_distances(model, loader, max_batches, progress)  # checks the structure
    merged = copy.deepcopy(model)
    blocks = _residual_blocks(merged)
    if blocks is not None:
        for name, block in blocks:
            if block.bn1.num_features < 2:
                continue
            # conv1 -> bn1 -> (relu1) -> conv2: the untied unit and its only consumer
            unit = [_Link(f"{name}.{key}", block, key) for key in ("conv1", "bn1", "conv2")]
            labels = _clusters(distances[f"{name}.bn1"], threshold, ratio)
            _merge_unit(unit, (0, 1), 2, labels, block.bn1.weight.detach().abs())
        return merged
    chain = filter_chain(merged)
    for i_conv, i_bn, i_relu in filter_units(chain):
        bn = chain[i_bn].module
        j, _, _ = find_consumer(chain, i_relu + 1)
        if j is None or bn.num_features < 2:
            continue  # nothing takes the merged weights, or nothing to merge
        labels = _clusters(distances[chain[i_bn].name], threshold, ratio)
        gamma = bn.weight.detach().abs() if bn.weight is not None else torch.ones(len(labels))
        _merge_unit(chain, (i_conv, i_bn), j, labels, gamma)
    return merged


# --------------------------------------------------------------------------------------------
# Residual networks
# --------------------------------------------------------------------------------------------


def _residual_blocks(model: nn.Module) -> list[tuple[str, BasicBlock]] | None:
    """``(name, block)`` of every ``BasicBlock`` of ``model``; None when it has none.

    Raises ValueError when a block's untied unit is not a plain ``Conv2d -> BatchNorm2d`` into a
    plain ``Conv2d`` (a DGC or other grouping conv, a self-grouped conv, groups > 1).
    """
    blocks = [(n, m) for n, m in model.named_modules() if isinstance(m, BasicBlock)]
    if not blocks:
        return None
    for name, block in blocks:
        for key, kind in (("conv1", nn.Conv2d), ("bn1", nn.BatchNorm2d), ("conv2", nn.Conv2d)):
            module = getattr(block, key)
            if type(module) is not kind or getattr(module, "groups", 1) != 1:
                raise ValueError(
                    f"channel similarity merges a ResNet block's conv1 -> bn1 -> conv2 only "
                    f"when they are a plain nn.Conv2d (groups=1) and nn.BatchNorm2d; module "
                    f"{name}.{key!s} is {type(module).__name__}"
                    + (f" with groups={module.groups}" if kind is nn.Conv2d
                       and type(module) is kind else "")
                )
    return blocks


def block_widths(model: nn.Module) -> dict[str, int]:
    """The inner width (``bn1.num_features``) of every ``BasicBlock``: what ``merge_similar``
    changes in a ResNet, and all that ``resize_blocks_`` needs to rebuild its structure.

    Example:
        >>> block_widths(resnet_cifar(8, width=8, in_channels=1))
        {'layer1.0': 8, 'layer2.0': 16, 'layer3.0': 32}
    """
    check_type("model", model, nn.Module)
    return {n: m.bn1.num_features for n, m in model.named_modules() if isinstance(m, BasicBlock)}


def resize_blocks_(model: nn.Module, widths: dict[str, int]) -> nn.Module:
    """Give the named blocks of a freshly built ResNet the inner widths of a merged one, in
    place (fresh ``conv1``, ``bn1``, ``conv2`` of those widths), so that the merged model's
    state dict loads into it: a merged ResNet saves as its config plus ``block_widths``.

    Args:
        model: a dense ``resnet_cifar`` (any weights).
        widths: block name -> inner width, e.g. ``block_widths(merged)``.

    Returns:
        ``model``.

    Raises:
        ValueError: a name that is not a ``BasicBlock`` of ``model``, a width < 1.
    """
    check_type("model", model, nn.Module)
    blocks = dict(_residual_blocks(model) or [])
    for name, width in widths.items():
        if name not in blocks:
            raise ValueError(f"widths names no BasicBlock of the model, got {name!r}")
        check_int(f"widths[{name!r}]", width, min=1)
        block = blocks[name]
        c1, c2 = block.conv1, block.conv2
        block.conv1 = nn.Conv2d(c1.in_channels, width, c1.kernel_size, c1.stride, c1.padding,
                                bias=c1.bias is not None)
        block.bn1 = nn.BatchNorm2d(width, eps=block.bn1.eps, momentum=block.bn1.momentum)
        block.conv2 = nn.Conv2d(width, c2.out_channels, c2.kernel_size, c2.stride, c2.padding,
                                bias=c2.bias is not None)
    return model


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------


def _layer_distances(
    model: nn.Module, loader: Iterable, max_batches: int | None, progress: bool | None
) -> dict[str, np.ndarray]:
    """BN name -> (C, C) float64 distances, for every conv-BN-ReLU unit of the chain (a ResNet:
    for every BN)."""
    if max_batches is not None:
        max_batches = check_int("max_batches", max_batches, min=1)
    if _residual_blocks(model) is not None:  # checks the blocks
        bns = {n: m for n, m in model.named_modules() if type(m) is nn.BatchNorm2d}
    else:
        try:
            chain = filter_chain(model)
        except ValueError as error:  # the walk names remove_dead_filters; say who asked
            raise ValueError(f"channel similarity: {error}") from error
        bns = {chain[i_bn].name: chain[i_bn].module for _, i_bn, _ in filter_units(chain)}
    corr = _correlations(model, loader, bns, max_batches, progress)
    out = {}
    for name, bn in bns.items():
        c = bn.num_features
        gamma = bn.weight.detach().cpu() if bn.weight is not None else torch.ones(c)
        beta = bn.bias.detach().cpu() if bn.bias is not None else torch.zeros(c)
        out[name] = channel_distance(gamma, beta, corr[name]).numpy()
    return out


def _correlations(
    model: nn.Module,
    loader: Iterable,
    bns: dict[str, nn.BatchNorm2d],
    max_batches: int | None,
    progress: bool | None,
) -> dict[str, torch.Tensor]:
    """BN name -> (C, C) correlation of its normalised input over images and positions."""
    device = device_and_dtype(model)[0]
    # Running sums in float64: count, sum z, sum z z^T.
    sums: dict[str, list] = {name: [0, 0.0, 0.0] for name in bns}

    def make_hook(name: str):
        def hook(module, args):
            x = args[0].detach().double()  # (B, C, H, W)
            if module.running_mean is not None:
                mean = module.running_mean.double()[None, :, None, None]
                var = module.running_var.double()[None, :, None, None]
                x = (x - mean) / torch.sqrt(var + module.eps)
            # Without running statistics (eval mode uses the batch's) the correlation is the
            # same: it does not change under a per-channel shift and positive scale.
            z = x.transpose(0, 1).flatten(1)  # (C, B*H*W)
            entry = sums[name]
            entry[0] += z.shape[1]
            entry[1] = entry[1] + z.sum(1)  # (C,)
            entry[2] = entry[2] + z @ z.T  # (C, C)

        return hook

    total = batch_count(loader, max_batches)

    images = 0
    handles = []
    with eval_mode(model), paused(), tqdm(
        total=total, desc="channel similarity",
        disable=None if progress is None else not progress,
    ) as bar:
        try:
            handles = [bn.register_forward_pre_hook(make_hook(n)) for n, bn in bns.items()]
            with torch.no_grad():
                for b, batch in enumerate(loader):
                    if max_batches is not None and b >= max_batches:
                        break
                    x = batch_inputs(batch).to(device)
                    images += x.shape[0]
                    model(x)
                    bar.update()
        finally:
            for handle in handles:
                handle.remove()
    if not images:
        raise ValueError(f"the loader yielded no image (max_batches={max_batches}): no "
                         f"correlation to measure")

    out = {}
    for name, (n, s, ss) in sums.items():
        mean = (s / n).cpu()  # (C,)
        cov = (ss / n).cpu() - mean[:, None] * mean[None, :]  # (C, C)
        std = cov.diagonal().clamp_min(0).sqrt()  # (C,)
        scale = std[:, None] * std[None, :]
        # A constant channel correlates with nothing (its std is 0, or rounding noise).
        live = std > 1e-12 * max(float(std.max()), 1.0)
        corr = torch.where(scale > 0, cov / scale.clamp_min(1e-300), torch.zeros_like(cov))
        corr = corr * (live[:, None] & live[None, :])
        corr = corr.clamp(-1, 1)
        corr.fill_diagonal_(1)
        out[name] = corr
    return out


# --------------------------------------------------------------------------------------------
# Clustering and merging
# --------------------------------------------------------------------------------------------


def _clusters(d: np.ndarray, threshold: float | None, ratio: float | None) -> np.ndarray:
    """(C,) cluster labels (1..K) of a (C, C) distance matrix."""
    c = d.shape[0]
    tree = linkage(squareform(d, checks=False), method="average")  # (C - 1, 4)
    if threshold is not None:
        return fcluster(tree, t=threshold, criterion="distance")
    k = max(1, round((1 - ratio) * c))
    return fcluster(tree, t=k, criterion="maxclust")


def _merge_unit(chain, unit: tuple[int, int], j: int, labels: np.ndarray,
                gamma: torch.Tensor) -> None:
    """Fold each cluster into its largest-|gamma| channel; slice producer, BN and consumer."""
    i_conv, i_bn = unit
    channels = len(labels)
    keep, gone, into = [], [], []  # kept channels; removed ones and the channel they join
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rep = int(members[int(gamma[members].argmax())])
        keep.append(rep)
        for m in members:
            if m != rep:
                gone.append(int(m))
                into.append(rep)
    if not gone:
        return
    device = gamma.device
    keep_t = torch.tensor(sorted(keep), device=device)
    gone_t = torch.tensor(gone, device=device)
    into_t = torch.tensor(into, device=device)

    consumer = chain[j].module
    # Add the removed channels' outgoing weights into their representatives'.
    with torch.no_grad():
        if type(consumer) is nn.Linear:
            if consumer.in_features % channels:
                raise ValueError(
                    f"Linear {chain[j].name!r} with in_features={consumer.in_features} does not "
                    f"read {channels} flattened channels of equal size"
                )
            # (out, C, HW): HW columns per channel, 1 after a global pool.
            w = consumer.weight.view(consumer.out_features, channels, -1)
        else:
            inner = consumer.conv if type(consumer) is ConvWithBiasMap else consumer
            w = inner.weight  # (C_out, C, kh, kw)
        w.index_add_(1, into_t, w[:, gone_t])

    zeros = torch.zeros(len(gone), device=device)  # no constant to fold: the slicers only cut
    if type(consumer) is nn.Linear:
        new, _ = slice_linear_in(consumer, channels, keep_t, gone_t, zeros)
    else:
        new, _ = slice_conv_in(consumer, keep_t, gone_t, zeros)
    chain[j].replace(new)
    chain[i_conv].replace(slice_conv_out(chain[i_conv].module, keep_t))
    slice_bn_(chain[i_bn].module, keep_t)

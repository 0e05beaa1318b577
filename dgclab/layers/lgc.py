"""Learned group convolution (LGC), CondenseNet's layer (SPEC §2).

Huang, Liu, van der Maaten, Weinberger, "CondenseNet: An Efficient DenseNet using Learned Group
Convolutions", CVPR 2018, arXiv 1711.09224. Official code: github ShichenLiu/CondenseNet, whose
class ``LearnedGroupConv`` this layer reproduces key for key (``norm``, ``conv`` and the buffers
``_mask``, ``_count``, ``_stage``).

An LGC layer is ``BN -> ReLU -> (dropout) -> conv`` whose weight is ``W * M``: a dense conv
under a 0/1 mask. Its ``G`` output groups are interleaved (output channel o is in group
``o mod G``) and every group learns which input channels it reads. Training runs in stages
set by the progress p in [0, 1]: stage s starts at ``p = s / (2 (C - 1))`` (C, the condense
factor; C = 4: p = 1/6, 1/3, 1/2), and each stage drops, in every group on its own,
the ``C_in / C`` input channels of least L1 importance not dropped yet:

    importance[g, j] = sum over outputs o in group g (and kernel taps) of |W[o, j] * M[o, j]|

After ``C - 1`` stages each group keeps ``C_in / C`` channels and the second half of training
keeps the mask fixed. ``CondensedConv2d`` is then the same function as a real group conv
(index_select -> BN -> ReLU -> grouped conv -> channel shuffle), ``C`` times cheaper; the
models' ``condense`` converts a whole network.

Differences from the official code (SPEC §2): no class-level global progress (the trainer or
the user calls ``set_progress``, in any mode; forward never changes the mask) and a jump over
several stages applies every missed stage in order (the official layer drops at most one stage
per forward). CondenseNet's LGC is 1x1 only; dgclab's extension to a k x k kernel sums the
importance over the kernel taps (the mask covers every tap of a kept channel); the 1x1 case is
the original.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checks import (
    check_bool, check_conv_geometry, check_float, check_int, check_type,
)
from .base import GroupingConv, conv_channel_macs, grouping_layers

__all__ = [
    "LearnedGroupConv2d",
    "CondensedConv2d",
    "condensing_stage",
    "lgc_reads",
    "lgc_importance",
    "lgc_group_lasso",
    "lgc_drop_channels",
    "group_lasso",
]

LASSO_FLOOR = 1e-6  # official clamp under the square root: keeps the gradient finite at 0


# --------------------------------------------------------------------------------------------
# Functional core
# --------------------------------------------------------------------------------------------


def condensing_stage(progress: float, condense_factor: int) -> int:
    """The condensing stage in force at training progress p: the largest s with
    ``p >= s / (2 (C - 1))``, at most ``C - 1`` (0 before the first drop, and for C = 1).

    Example:
        >>> [condensing_stage(p, 4) for p in (0.0, 1 / 6, 0.2, 1 / 3, 0.5, 1.0)]
        [0, 1, 1, 2, 3, 3]
    """
    progress = check_float("progress", progress, min=0, max=1)
    c = check_int("condense_factor", condense_factor, min=1)
    return sum(1 for s in range(1, c) if progress >= s / (2 * (c - 1)))


def _per_group(values: torch.Tensor, groups: int) -> torch.Tensor:
    """(C_out, C_in, kh, kw) -> (G, C_out / G, C_in, kh, kw): output o = d * G + g is [g, d]."""
    c_out = values.shape[0]
    return values.view(c_out // groups, groups, *values.shape[1:]).transpose(0, 1)


def lgc_reads(mask: torch.Tensor, groups: int) -> torch.Tensor:
    """(G, C_in) bool: the input channels group g reads (a nonzero mask entry in any of its
    outputs and taps)."""
    return _per_group(mask, groups).amax(dim=(1, 3, 4)) > 0


def lgc_importance(weight: torch.Tensor, mask: torch.Tensor, groups: int) -> torch.Tensor:
    """(G, C_in) L1 importance of every input channel for every group.

    ``sum over the group's outputs and the kernel taps of |W * M|`` (interleaved groups: output
    o is in group ``o mod G``). Detached.
    """
    masked = (weight.detach() * mask).abs()  # (C_out, C_in, kh, kw)
    return _per_group(masked, groups).sum(dim=(1, 3, 4))  # (G, C_in)


def lgc_drop_channels(
    weight: torch.Tensor, mask: torch.Tensor, groups: int, count: int
) -> torch.Tensor:
    """A new mask where every group has dropped ``count`` more input channels.

    Each group drops, among the channels it still reads, the ``count`` of least
    ``lgc_importance``; ties go to the lower channel index (a stable sort).

    Raises:
        ValueError: a group that reads fewer than ``count`` channels.
    """
    importance = lgc_importance(weight, mask, groups)  # (G, C_in)
    reads = lgc_reads(mask, groups)  # (G, C_in)
    short = (reads.sum(1) < count).nonzero().flatten().tolist()
    if short:
        raise ValueError(f"groups {short} read fewer than count={count} channels")
    # Already dropped channels go last: the sort picks among the channels still read.
    ranked = importance.masked_fill(~reads, float("inf")).sort(dim=1, stable=True).indices
    dropped = ranked[:, :count]  # (G, count)
    keep = reads.clone()
    keep.scatter_(1, dropped, False)  # (G, C_in)
    new = mask.clone()
    grouped = _per_group(new, groups)  # a view of new: (G, C_out / G, C_in, kh, kw)
    grouped.mul_(keep[:, None, :, None, None].to(mask.dtype))
    return new


def lgc_group_lasso(weight: torch.Tensor, mask: torch.Tensor, groups: int) -> torch.Tensor:
    """CondenseNet's group lasso, a 0-d tensor differentiable in ``weight``.

    ``sum over groups g and input channels j of sqrt(max(S[g, j], 1e-6))``, with ``S[g, j]`` the
    sum over the group's outputs (and the kernel taps) of ``(W[o, j] * M[o, j])^2``.
    """
    squares = _per_group((weight * mask).pow(2), groups).sum(dim=(1, 3, 4))  # (G, C_in)
    return squares.clamp(min=LASSO_FLOOR).sqrt().sum()


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------


class LearnedGroupConv2d(GroupingConv, nn.Module):
    """Learned group convolution, faithful to CondenseNet's ``LearnedGroupConv``.

    Forward for x of shape (B, C_in, H, W): ``conv2d(dropout(ReLU(BN(x))), W * M)``, no bias.
    The mask M starts at ones; ``set_progress`` drops channels group by group (module
    docstring).

    Args:
        in_channels: C_in, divisible by ``groups`` and ``condense_factor``.
        out_channels: C_out, divisible by ``groups``.
        kernel_size, stride, padding, dilation: of the conv, an int or a pair of ints. 1x1 is
            CondenseNet's layer; k x k is dgclab's extension (importance over all taps).
        groups: G, the interleaved output groups (output o is in group ``o mod G``).
        condense_factor: C, each group keeps ``C_in / C`` channels at the end; default G.
        dropout: rate of the dropout between the ReLU and the conv (0: none).
        group_lasso: add the group lasso to the loss (``regularization``) until stage G - 1;
            off by default (lambda = 0 in CondenseNet's CIFAR recipe).

    Every argument is checked (TypeError for a wrong type, ValueError for a bad value), and so
    is a ``_stage`` that ``load_state_dict`` brings.

    Example:
        >>> layer = LearnedGroupConv2d(64, 128, groups=4)
        >>> layer.set_progress(0.5)  # all three stages of C = 4
        >>> layer.connectivity().sum(1).tolist()  # channels each group keeps
        [16, 16, 16, 16]
    """

    kind = "lgc"
    dynamic = False
    EXTRA_INFO_KEYS = ("condense_factor", "stage")

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size=1,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 4,
        condense_factor: int | None = None,
        dropout: float = 0.0,
        group_lasso: bool = False,
    ) -> None:
        super().__init__()
        in_channels, out_channels, kernel_size, stride, padding, dilation = check_conv_geometry(
            in_channels, out_channels, kernel_size, stride, padding, dilation)
        groups = check_int("groups", groups, min=1)
        condense_factor = groups if condense_factor is None else condense_factor
        condense_factor = check_int("condense_factor", condense_factor, min=1)
        dropout = check_float("dropout", dropout, min=0, max=1, max_inclusive=False)
        group_lasso = check_bool("group_lasso", group_lasso)
        _check_divides(in_channels, out_channels, groups, condense_factor)

        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = kernel_size, stride
        self.padding, self.dilation = padding, dilation
        self.groups, self.condense_factor = groups, condense_factor
        self.dropout, self.group_lasso = dropout, group_lasso

        self.norm = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU(inplace=True)
        if dropout > 0:
            self.drop = nn.Dropout(dropout)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation,
                              bias=False)
        # The official buffers, float of shape (1,) for the counters: checkpoints load as they are.
        self.register_buffer("_count", torch.zeros(1))  # channels each group dropped so far
        self.register_buffer("_stage", torch.zeros(1))  # last condensing stage applied
        self.register_buffer("_mask", torch.ones_like(self.conv.weight))

    # ---- state ------------------------------------------------------------------------------

    @property
    def mask(self) -> torch.Tensor:
        """(C_out, C_in, kh, kw) the 0/1 mask M (the ``_mask`` buffer)."""
        return self._mask

    @property
    def stage(self) -> int:
        """The last condensing stage applied, in [0, C - 1] (the ``_stage`` buffer)."""
        return self._checked_stage(self._stage, "_stage")

    def _checked_stage(self, value: torch.Tensor, name: str) -> int:
        if value.numel() != 1:
            raise ValueError(f"{name} must hold one value, got shape {tuple(value.shape)}")
        stage = value.item()
        if stage != int(stage) or not 0 <= stage < self.condense_factor:
            raise ValueError(f"{name} must be an int in [0, {self.condense_factor - 1}], "
                             f"got {name}={stage:g}")
        return int(stage)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        # The stage enters from a file here: refuse a bad one, naming the key.
        key = prefix + "_stage"
        value = state_dict.get(key)
        if isinstance(value, torch.Tensor) and not value.is_meta:
            self._checked_stage(value, key)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    # ---- the layer protocol (base.py) ---------------------------------------------------------

    @property
    def channel_groups(self) -> int:
        return self.groups

    def connectivity(self) -> torch.Tensor:
        """(G, C_in) bool: the input channels each group still reads (from the mask)."""
        return lgc_reads(self._mask, self.groups).cpu()

    def extra_info(self) -> dict:
        return {"condense_factor": self.condense_factor, "stage": self.stage}

    @classmethod
    def check_info(cls, info: dict) -> dict:
        """A condense factor and a G that divide C_in, a stage in [0, C - 1]."""
        out = dict(info)
        out["condense_factor"] = check_int("condense_factor", info["condense_factor"], min=1)
        _check_divides(info["in_channels"], info["out_channels"], info["heads"],
                       out["condense_factor"])
        out["stage"] = check_int("stage", info["stage"], min=0, max=out["condense_factor"] - 1)
        return out

    @classmethod
    def mac_terms_from_info(cls, info, convention="paper") -> dict[str, int]:
        """MACs of one image, term by term: the ReLU over the input and the conv.

        ``"paper"`` is CondenseNet's count: ReLU ``C_in*H*W`` and the dense conv's MACs divided
        by C (each group reads ``C_in / C`` channels, whatever the stage; BN counts 0).
        ``"dense"`` is what this layer's masked forward computes: the dense conv.
        """
        c, (h, w) = info["in_channels"], info["input_hw"]
        per_group = c // info["condense_factor"] if convention == "paper" else c
        return {"relu": c * h * w, "conv": info["heads"] * per_group * conv_channel_macs(info)}

    @classmethod
    def computed_channels_from_info(cls, info) -> int:
        """Channels each group reads at the recorded stage: ``C_in - stage * C_in / C``."""
        return info["in_channels"] - info["stage"] * (info["in_channels"]
                                                      // info["condense_factor"])

    def set_progress(self, progress: float) -> None:
        """Apply every condensing stage up to the one progress p falls in, each in order.

        A p of an earlier stage changes nothing: dropped channels stay dropped.
        """
        target = condensing_stage(progress, self.condense_factor)
        delta = self.in_channels // self.condense_factor
        with torch.no_grad():
            for stage in range(self.stage + 1, target + 1):
                self._mask.copy_(lgc_drop_channels(self.conv.weight, self._mask, self.groups,
                                                   delta))
                self._count.fill_(stage * delta)
                self._stage.fill_(stage)

    def regularization(self) -> torch.Tensor | None:
        """The group lasso (``lgc_group_lasso``) while enabled and stage < G - 1, else None."""
        if not self.group_lasso or self.stage >= self.groups - 1:
            return None
        return lgc_group_lasso(self.conv.weight, self._mask, self.groups)

    # ---- forward ------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.norm(x))  # (B, C_in, H, W)
        if self.dropout > 0:
            x = self.drop(x)
        weight = self.conv.weight * self._mask  # (C_out, C_in, kh, kw); no gradient where M = 0
        return F.conv2d(x, weight, None, self.stride, self.padding, self.dilation)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"
        if self.stride != (1, 1):
            s += f", stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        stage = self._stage.item()  # unchecked: printing a model must not fail
        s += (f", groups={self.groups}, condense_factor={self.condense_factor}, "
              f"stage={stage:g}/{self.condense_factor - 1}")
        if self.dropout:
            s += f", dropout={self.dropout}"
        return s + (", group_lasso=True" if self.group_lasso else "")


class CondensedConv2d(nn.Module):
    """An LGC layer as a real group conv: what CondenseNet's conversion builds.

    Forward: ``index_select(x, index)`` (each group's kept channels, ascending, group after
    group) -> BN (those channels' statistics, duplicated where several groups keep one) ->
    ReLU -> (dropout) -> ``Conv2d(G * kept, C_out, groups=G)`` -> channel shuffle back to the
    interleaved order (grouped output ``g * C_out / G + d`` is output ``d * G + g``).
    In eval mode it computes what the masked layer computes; it is no protocol layer, so
    ``count_macs`` counts the ops it runs (the paper's count of the LGC when G = C).

    Build it with ``CondensedConv2d.from_learned(layer)``.

    Args:
        in_channels: C_in of the input it selects from.
        out_channels: C_out.
        kept_channels: channels each group reads.
        kernel_size, stride, padding, dilation, groups, dropout: as the LGC layer's.
    """

    def __init__(self, in_channels: int, out_channels: int, kept_channels: int, kernel_size=1,
                 stride=1, padding=0, dilation=1, groups: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        in_channels = check_int("in_channels", in_channels, min=1)
        out_channels = check_int("out_channels", out_channels, min=1)
        kept_channels = check_int("kept_channels", kept_channels, min=1, max=in_channels)
        groups = check_int("groups", groups, min=1)
        if out_channels % groups:
            raise ValueError(f"groups must divide out_channels, got groups={groups}, "
                             f"out_channels={out_channels}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kept_channels = kept_channels
        self.dropout = check_float("dropout", dropout, min=0, max=1, max_inclusive=False)
        width = groups * kept_channels
        self.register_buffer("index", torch.zeros(width, dtype=torch.long))
        self.norm = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        if self.dropout > 0:
            self.drop = nn.Dropout(self.dropout)
        self.conv = nn.Conv2d(width, out_channels, kernel_size, stride, padding, dilation,
                              groups=groups, bias=False)

    @classmethod
    def from_learned(cls, layer: LearnedGroupConv2d) -> CondensedConv2d:
        """The condensed twin of ``layer`` at its current mask (any stage).

        Raises:
            TypeError: ``layer`` is not a ``LearnedGroupConv2d``.
            ValueError: groups that read different numbers of channels (a hand-edited mask).
        """
        check_type("layer", layer, LearnedGroupConv2d)
        g, c_out = layer.groups, layer.out_channels
        reads = layer.connectivity()  # (G, C_in)
        counts = reads.sum(1).tolist()
        if len(set(counts)) != 1 or counts[0] == 0:
            raise ValueError(f"every group must read the same number of channels, got {counts}")
        weight = layer.conv.weight.detach()
        new = cls(layer.in_channels, c_out, counts[0], layer.kernel_size, layer.stride,
                  layer.padding, layer.dilation, g, layer.dropout)
        new = new.to(weight.device, weight.dtype)
        index = torch.cat([row.nonzero().flatten() for row in reads]).to(weight.device)
        kept = index.view(g, -1)  # (G, kept)
        with torch.no_grad():
            new.index.copy_(index)
            grouped = _per_group(weight * layer.mask, g)  # (G, C_out/G, C_in, kh, kw)
            # (G, C_out/G, kept, kh, kw): each group's filters over its own kept channels
            chosen = torch.stack([grouped[i][:, kept[i]] for i in range(g)])
            new.conv.weight.copy_(chosen.flatten(0, 1))  # grouped output g * C_out/G + d
            norm, source = new.norm, layer.norm
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(norm, name).copy_(getattr(source, name)[index])
            norm.num_batches_tracked.copy_(source.num_batches_tracked)
        norm.eps, norm.momentum = source.eps, source.momentum
        new.train(layer.training)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.norm(x.index_select(1, self.index)))  # (B, G * kept, H, W)
        if self.dropout > 0:
            x = self.drop(x)
        out = self.conv(x)  # (B, C_out, H', W'), group after group
        return F.channel_shuffle(out, self.groups) if self.groups > 1 else out

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kept_channels={self.kept_channels}, "
                f"groups={self.groups}")


def group_lasso(model: nn.Module) -> torch.Tensor:
    """Sum of every LGC layer's ``regularization()`` term (the unscaled group lasso).

    Layers with the lasso off (the default) or at stage >= G - 1 add nothing. The trainer adds
    ``lambda * regularization_loss(model)``, which for a model whose only grouping layers are
    LGC layers is this.

    Returns:
        A 0-d tensor (0 for a model without an active term).

    Raises:
        TypeError: ``model`` is not a module.
    """
    check_type("model", model, nn.Module)
    terms = [layer.regularization() for _, layer in grouping_layers(model)
             if isinstance(layer, LearnedGroupConv2d)]
    terms = [t for t in terms if t is not None]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def _check_divides(in_channels: int, out_channels: int, groups: int, condense_factor: int
                   ) -> None:
    if in_channels % groups:
        raise ValueError(f"groups must divide in_channels, got groups={groups}, "
                         f"in_channels={in_channels}")
    if in_channels % condense_factor:
        raise ValueError(f"condense_factor must divide in_channels, got condense_factor="
                         f"{condense_factor}, in_channels={in_channels}")
    if out_channels % groups:
        raise ValueError(f"groups must divide out_channels, got groups={groups}, "
                         f"out_channels={out_channels}")

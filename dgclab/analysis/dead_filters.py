"""Cut dead filters out of a plain CNN, folding what they still output into their consumers.

Mehta, Kim, Theobalt, "On Implicit Filter Level Sparsity in Convolutional Neural Networks",
CVPR 2019, arXiv 1811.12495 (SPEC §7). A filter (conv output channel -> BN -> ReLU) whose BN
scale is ``gamma_i = 0`` outputs the constant ``ReLU(beta_i)`` whatever its input (the running
statistics no longer matter). Removing it:

* slices the filter out of its conv (weight rows, bias) and its BN (all four vectors);
* slices the matching input channel out of the layer that consumes it (the next conv, or the
  linear layer after the global pool and flatten) and, when ``c_i = ReLU(beta_i) > 0``, folds
  the constant into that consumer:

  - a ``Linear`` after the pooling: a pooled constant is still ``c_i``, so
    ``bias += W[:, cols(i)].sum(1) * c_i``: exact;
  - a conv without padding (a 1x1 conv, or any k x k "valid" conv), or whose padding repeats the
    input (``padding_mode`` reflect / replicate / circular): every output position sees ``c_i``
    under every tap, so ``bias += W[:, i].sum((-2, -1)) * c_i``: exact;
  - a zero-padded k x k conv: border positions see fewer taps of the constant, so a plain bias
    would be wrong at the borders. The consumer becomes a ``ConvWithBiasMap``, which adds
    ``conv2d(ones(H, W), sum_i c_i W[:, i])``, the per-position response to the constant image
    under the same zero padding: exact.

Max pooling keeps a constant channel constant (its padding is -inf), and so do average pools
without padding, adaptive (global) pools, dropout in eval mode and ReLU (``c_i >= 0``). With
``|gamma_i| < threshold`` but not 0 (the authors' pruning rule), the filter's output is only
nearly constant and the removal is approximate: ``PruningReport.max_logit_change`` and
``pruning_effect`` measure by how much; they do not assume it is zero.

Scope: a model that is one ``nn.Sequential`` (nested ``nn.Sequential`` are read in order) of
``Conv2d``, ``BatchNorm2d``, ``ReLU``, ``MaxPool2d``, ``AvgPool2d``, adaptive pools,
``Flatten``, ``Dropout``, ``Identity``, ``Linear`` (and ``ConvWithBiasMap``, so that a pruned
model can be pruned again): ``dgclab.models.BasicNet`` and plain conv chains. The filters are the
``Conv2d -> BatchNorm2d -> ReLU`` triples. Residual networks, DenseNets and DGC layers have no
such chain (a filter's output feeds an addition, a concatenation or a saliency generator):
``remove_dead_filters`` raises ``ValueError`` naming the first module it cannot follow.

One concept in one file (about 550 lines): the walk along the chain, the slicing of each
producer and its consumer, and the folding of the constants are one procedure and read best
together; measuring what the removal changed is ``pruning_effect.py``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from dgclab.modes import eval_mode
from dgclab.record import paused

from .macs import count_macs
from .sparsity import dead_by_gamma

__all__ = ["ConvWithBiasMap", "PruningReport", "remove_dead_filters"]

# Modules the walk understands, by exact type: a subclass may compute something else.
_CONVS = (nn.Conv2d,)
# Between a filter's ReLU and its consumer: these keep a constant channel constant (AvgPool2d
# only without padding, or with count_include_pad=False; checked where it matters).
_PASSTHROUGH = (
    nn.ReLU,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Dropout,
    nn.Dropout2d,
    nn.Identity,
    nn.Flatten,
)


class ConvWithBiasMap(nn.Module):
    """A conv followed by a per-position bias: what removed constant input channels contributed.

    ``forward(x) = conv(x) + conv2d(ones(1, 1, H, W), bias_kernel, stride, padding, dilation)``:
    the second term is the conv's response to the removed channels' constant image, zero padding
    included, summed over the removed channels into one kernel (``sum_i c_i W[:, i]``). Its
    interior is the plain bias ``bias_kernel.sum((1, 2, 3))``; its borders differ.

    The map depends on the input size (H, W). It is computed the first time a size is seen and
    cached (keyed by size, device, dtype and the kernel's version counter, so loading a state
    dict refreshes it): the pruned model works at any input size, exactly. The map's one
    1-channel conv per new size is not counted by ``count_macs`` once the size is cached
    (``remove_dead_filters`` caches the example input's size); the map's addition is, like a
    bias, not counted. ``bias_kernel`` is a buffer, not a parameter.

    Args:
        conv: the consumer conv, already without the removed input channels (``groups=1``).
        bias_kernel: (out_channels, 1, kh, kw), ``sum_i c_i W[:, i]`` over the removed channels.

    Shapes: (B, C_in, H, W) -> (B, C_out, H', W'), as ``conv``.
    """

    def __init__(self, conv: nn.Conv2d, bias_kernel: torch.Tensor) -> None:
        super().__init__()
        if type(conv) is not nn.Conv2d or conv.groups != 1:
            raise ValueError(f"conv must be an nn.Conv2d with groups=1, got {conv!r}")
        expected = (conv.out_channels, 1, *conv.kernel_size)
        if tuple(bias_kernel.shape) != expected:
            raise ValueError(
                f"bias_kernel must have shape {expected}, got {tuple(bias_kernel.shape)}"
            )
        self.conv = conv
        self.register_buffer("bias_kernel", bias_kernel.detach().clone())
        self._maps: dict[tuple, torch.Tensor] = {}

    @property
    def in_channels(self) -> int:
        return self.conv.in_channels

    @property
    def out_channels(self) -> int:
        return self.conv.out_channels

    def bias_map(self, hw: tuple[int, int], device=None, dtype=None) -> torch.Tensor:
        """(out_channels, H', W'): what is added to the conv's output for an (H, W) input."""
        device = self.bias_kernel.device if device is None else device
        dtype = self.bias_kernel.dtype if dtype is None else dtype
        key = (int(hw[0]), int(hw[1]), device, dtype, self.bias_kernel._version)
        if key not in self._maps:
            if len(self._maps) > 16:  # many sizes: keep the cache small
                self._maps.clear()
            ones = torch.ones(1, 1, key[0], key[1], device=device, dtype=dtype)
            # The same padding as the conv: zeros for padding_mode="zeros" (the only mode that
            # needs a map; the others fold into a plain bias).
            with torch.no_grad():
                self._maps[key] = F.conv2d(
                    ones,
                    self.bias_kernel.to(device=device, dtype=dtype),
                    None,
                    self.conv.stride,
                    self.conv.padding,
                    self.conv.dilation,
                )[0]  # (C_out, H', W')
        return self._maps[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.bias_map(x.shape[-2:], x.device, x.dtype)

    def extra_repr(self) -> str:
        return "bias map from removed constant input channels"


@dataclass
class PruningReport:
    """What ``remove_dead_filters`` did.

    Attributes:
        layers: one row per conv-BN-ReLU filter group, in chain order: ``layer`` (the BN's name),
            ``conv``, ``filters`` (before), ``dead`` (``|gamma| < gamma_threshold``),
            ``removed``, ``kept`` (after), ``constant`` (removed filters with
            ``ReLU(beta) > 0``, folded into the consumer), ``consumer`` (its name, or "") and
            ``fold`` (``"none"``, ``"bias"``, ``"bias map"``, ``"linear bias"``, or why dead
            filters were kept).
        params_before, params_after: ``sum(p.numel() for p in model.parameters())``.
        macs_before, macs_after: ``count_macs`` per image at the example input's size (None
            without ``example_input``).
        max_logit_change: ``max |logits_pruned - logits|`` on ``example_input`` in eval mode
            (None without it). About 1e-6 for gamma exactly 0; with ``0 < |gamma| <
            threshold`` the real change, measured.
        gamma_threshold: the rule used.
    """

    layers: pd.DataFrame
    params_before: int
    params_after: int
    macs_before: int | None = None
    macs_after: int | None = None
    max_logit_change: float | None = None
    gamma_threshold: float = 1e-3
    notes: list[str] = field(default_factory=list)

    @property
    def filters_before(self) -> int:
        return int(self.layers["filters"].sum())

    @property
    def removed(self) -> int:
        return int(self.layers["removed"].sum())

    @property
    def filters_after(self) -> int:
        return self.filters_before - self.removed

    def summary(self) -> dict:
        """The totals as one flat dict (a row of a results table)."""
        return {
            "filters_before": self.filters_before,
            "filters_removed": self.removed,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "max_logit_change": self.max_logit_change,
        }

    def __str__(self) -> str:
        lines = [
            f"removed {self.removed} of {self.filters_before} filters "
            f"(|gamma| < {self.gamma_threshold:g})",
            f"parameters {self.params_before:,} -> {self.params_after:,}",
        ]
        if self.macs_before is not None:
            lines.append(f"MACs/image {self.macs_before:,} -> {self.macs_after:,}")
        if self.max_logit_change is not None:
            lines.append(f"max |logit change| on the example input: {self.max_logit_change:.3g}")
        return "\n".join(lines + self.notes)


def remove_dead_filters(
    model: nn.Module,
    gamma_threshold: float = 1e-3,
    example_input: torch.Tensor | None = None,
) -> tuple[nn.Module, PruningReport]:
    """A smaller copy of ``model`` without its dead filters, and what that saved.

    A filter is dead when the ``|gamma|`` of its BN is below ``gamma_threshold``. Its constant
    output ``ReLU(beta)`` is folded into the consumer (see the module docstring): exact when
    gamma is 0, for beta <= 0 and beta > 0 alike; approximate (and measured) otherwise. The
    equivalence is for eval mode (BN with running statistics). The model is not modified.

    Supported structure: an ``nn.Sequential`` chain (nested ``nn.Sequential`` flattened) whose
    filters are ``Conv2d -> BatchNorm2d -> ReLU`` and whose other modules are pools, flatten,
    dropout, identity and ``Linear``, i.e. ``dgclab.models.BasicNet``. Convs with ``groups > 1``,
    residual networks and DGC layers raise ``ValueError``. A filter group whose output is the
    model's output keeps its filters; if every filter of a group is dead, the one with the
    largest ``|gamma|`` is kept so that the chain stays connected (both noted in the report).

    Args:
        model: the network.
        gamma_threshold: dead when ``|gamma| < gamma_threshold`` (SPEC §7: 1e-3). To remove
            only exact zeros, pass the smallest positive float (``5e-324``); 0 removes nothing.
        example_input: (B, C, H, W), optional. Used for MACs per image (at this size) and for
            ``max_logit_change``; the pruned model works at any input size.

    Returns:
        ``(pruned, report)``: the pruned copy (same class, in the original's training mode;
        consumers that needed a bias map are ``ConvWithBiasMap``) and a ``PruningReport``.

    Example:
        >>> model = basicnet().eval()
        >>> with torch.no_grad():
        ...     model.features.bn3.weight[:10] = 0
        >>> pruned, report = remove_dead_filters(model, example_input=torch.randn(1, 1, 28, 28))
        >>> report.removed, report.max_logit_change < 1e-4
        (10, True)
    """
    if not isinstance(gamma_threshold, (int, float)) or not gamma_threshold >= 0:
        raise ValueError(f"gamma_threshold must be a number >= 0, got {gamma_threshold!r}")
    if example_input is not None and (
        not isinstance(example_input, torch.Tensor) or example_input.dim() != 4
    ):
        raise ValueError(
            f"example_input must be a (B, C, H, W) tensor, got "
            f"{getattr(example_input, 'shape', type(example_input).__name__)}"
        )
    filter_chain(model)  # raises on an unsupported structure before anything is copied
    pruned = copy.deepcopy(model)
    chain = filter_chain(pruned)

    rows, notes = [], []
    for unit in filter_units(chain):
        rows.append(_prune_unit(chain, unit, gamma_threshold, notes))
    layers = pd.DataFrame(
        rows,
        columns=["layer", "conv", "filters", "dead", "removed", "kept", "constant", "consumer",
                 "fold"],
    )

    report = PruningReport(
        layers=layers,
        params_before=_params(model),
        params_after=_params(pruned),
        gamma_threshold=float(gamma_threshold),
        notes=notes,
    )
    if example_input is not None:
        size = (1, *example_input.shape[1:])
        x = example_input.to(model_device(model))
        report.max_logit_change = float(_max_logit_change(model, pruned, x))  # caches bias maps
        report.macs_before = count_macs(model, size)
        report.macs_after = count_macs(pruned, size)
    return pruned, report


# --------------------------------------------------------------------------------------------
# The chain
# --------------------------------------------------------------------------------------------


@dataclass
class _Link:
    name: str  # qualified module name
    parent: nn.Sequential
    key: str  # attribute of the module in its parent

    @property
    def module(self) -> nn.Module:
        return getattr(self.parent, self.key)

    def replace(self, module: nn.Module) -> None:
        setattr(self.parent, self.key, module)


def filter_chain(model: nn.Module) -> list[_Link]:
    """The leaves of a (nested) nn.Sequential in call order; ValueError on anything else."""
    if not isinstance(model, nn.Sequential) or type(model).forward is not nn.Sequential.forward:
        raise ValueError(
            f"remove_dead_filters needs an nn.Sequential chain (conv-BN-ReLU ... pool, flatten, "
            f"linear) whose call order is its module order; got {type(model).__name__}, whose "
            f"forward is its own (residual networks and DGC networks are not supported)"
        )
    links: list[_Link] = []

    def walk(seq: nn.Sequential, prefix: str) -> None:
        for key, child in seq.named_children():
            name = prefix + key
            if type(child) is nn.Sequential:
                walk(child, name + ".")
            elif type(child) in (*_CONVS, ConvWithBiasMap, nn.BatchNorm2d, nn.Linear,
                                 *_PASSTHROUGH):
                if type(child) in _CONVS and child.groups != 1:
                    raise ValueError(
                        f"remove_dead_filters supports convs with groups=1 only; module "
                        f"{name!r} has groups={child.groups}"
                    )
                links.append(_Link(name, seq, key))
            else:
                raise ValueError(
                    f"remove_dead_filters cannot follow module {name!r} "
                    f"({type(child).__name__}): it supports Conv2d, BatchNorm2d, ReLU, pools, "
                    f"Flatten, Dropout, Identity and Linear in an nn.Sequential chain"
                )

    walk(model, "")
    return links


def _is_conv(module: nn.Module) -> bool:
    return type(module) in _CONVS or type(module) is ConvWithBiasMap


def filter_units(chain: list[_Link]) -> list[tuple[int, int, int]]:
    """Indices (conv, bn, relu) of every conv -> BatchNorm2d -> ReLU triple."""
    units = []
    for i in range(len(chain) - 2):
        conv, bn, relu = (chain[i + j].module for j in range(3))
        if (
            _is_conv(conv)
            and type(bn) is nn.BatchNorm2d
            and type(relu) is nn.ReLU
            and bn.num_features == conv.out_channels
        ):
            units.append((i, i + 1, i + 2))
    return units


def find_consumer(chain: list[_Link], start: int) -> tuple[int | None, bool, str]:
    """The first conv or linear after ``start``: (index or None, flattened on the way, why not).

    Raises ValueError when a module on the way would not keep a constant channel constant."""
    flattened = False
    for j in range(start, len(chain)):
        module = chain[j].module
        if _is_conv(module):
            if flattened:
                raise ValueError(f"conv {chain[j].name!r} after a Flatten is not supported")
            return j, flattened, ""
        if type(module) is nn.Linear:
            if not flattened:
                raise ValueError(
                    f"Linear {chain[j].name!r} is applied to a 4-D map without a Flatten "
                    f"before it; remove_dead_filters cannot follow that"
                )
            return j, flattened, ""
        if type(module) is nn.Flatten:
            if module.start_dim != 1 or module.end_dim != -1:
                raise ValueError(f"Flatten {chain[j].name!r} must flatten dims 1..-1")
            flattened = True
        elif type(module) is nn.BatchNorm2d:
            return None, flattened, f"kept: {chain[j].name!r} (a BN without conv) consumes it"
    return None, flattened, "kept: it is the model's output"


def _prune_unit(chain: list[_Link], unit: tuple[int, int, int], threshold: float,
                notes: list[str]) -> dict:
    i_conv, i_bn, i_relu = unit
    conv, bn = chain[i_conv].module, chain[i_bn].module
    channels = bn.num_features
    gamma = bn.weight.detach().abs() if bn.weight is not None else torch.ones(channels)
    dead = dead_by_gamma(gamma, threshold)  # (C,) bool
    beta = bn.bias.detach() if bn.bias is not None else torch.zeros(channels)
    row = {"layer": chain[i_bn].name, "conv": chain[i_conv].name, "filters": channels,
           "dead": int(dead.sum()), "removed": 0, "kept": channels, "constant": 0,
           "consumer": "", "fold": "none"}
    if not dead.any():
        return row
    j, flattened, why = find_consumer(chain, i_relu + 1)
    if j is None:
        row["fold"] = why
        notes.append(f"{chain[i_bn].name}: {int(dead.sum())} dead filters {why[len('kept: '):]}")
        return row
    if dead.all():
        keep_one = int(gamma.argmax())
        dead = dead.clone()
        dead[keep_one] = False
        notes.append(f"{chain[i_bn].name}: every filter is dead; filter {keep_one} is kept")
    keep = torch.nonzero(~dead).flatten()
    gone = torch.nonzero(dead).flatten()
    const = F.relu(beta[gone])  # (D,) what each removed filter outputs

    # Passthrough checks that matter only when something nonzero flows through them.
    if (const > 0).any():
        for link in chain[i_relu + 1 : j]:
            m = link.module
            if type(m) is nn.AvgPool2d and _pad_any(m.padding) and m.count_include_pad:
                raise ValueError(
                    f"AvgPool2d {link.name!r} pads with zeros (count_include_pad=True): a "
                    f"constant channel does not stay constant; cannot fold"
                )

    chain[i_conv].replace(slice_conv_out(conv, keep))
    slice_bn_(bn, keep)

    consumer = chain[j].module
    row.update(removed=len(gone), kept=len(keep), constant=int((const > 0).sum()),
               consumer=chain[j].name)
    if type(consumer) is nn.Linear:
        new, fold = slice_linear_in(consumer, channels, keep, gone, const)
    else:
        new, fold = slice_conv_in(consumer, keep, gone, const)
    chain[j].replace(new)
    row["fold"] = fold
    return row


# --------------------------------------------------------------------------------------------
# Slicing and folding
# --------------------------------------------------------------------------------------------


def _new_conv(old: nn.Conv2d, in_channels: int, out_channels: int, bias: bool) -> nn.Conv2d:
    return nn.Conv2d(
        in_channels, out_channels, old.kernel_size, old.stride, old.padding, old.dilation,
        groups=1, bias=bias, padding_mode=old.padding_mode, device=old.weight.device,
        dtype=old.weight.dtype,
    ).train(old.training)


def slice_conv_out(module: nn.Module, keep: torch.Tensor) -> nn.Module:
    """Keep output channels ``keep`` of a conv (or of a ConvWithBiasMap)."""
    conv = module.conv if type(module) is ConvWithBiasMap else module
    new = _new_conv(conv, conv.in_channels, len(keep), conv.bias is not None)
    with torch.no_grad():
        new.weight.copy_(conv.weight[keep])  # (C_out', C_in, kh, kw)
        if conv.bias is not None:
            new.bias.copy_(conv.bias[keep])
    if type(module) is ConvWithBiasMap:
        return ConvWithBiasMap(new, module.bias_kernel[keep]).train(module.training)
    return new


def slice_bn_(bn: nn.BatchNorm2d, keep: torch.Tensor) -> None:
    """Keep channels ``keep`` of a BN, in place."""
    with torch.no_grad():
        for name in ("weight", "bias"):
            p = getattr(bn, name)
            if p is not None:
                setattr(bn, name, nn.Parameter(p[keep].clone(), requires_grad=p.requires_grad))
        for name in ("running_mean", "running_var"):
            b = getattr(bn, name)
            if b is not None:
                setattr(bn, name, b[keep].clone())
    bn.num_features = len(keep)


def _pad_any(padding) -> bool:
    if isinstance(padding, str):
        return padding != "valid"
    if isinstance(padding, int):
        return padding > 0
    return any(p > 0 for p in padding)


def slice_conv_in(module: nn.Module, keep, gone, const) -> tuple[nn.Module, str]:
    """Drop input channels ``gone`` of a consumer conv, folding their constants ``const``."""
    inner = module.conv if type(module) is ConvWithBiasMap else module
    weight = inner.weight.detach()  # (C_out, C_in, kh, kw)
    # The removed channels' contribution, as one 1-input-channel kernel: (C_out, 1, kh, kw).
    kernel = (weight[:, gone] * const.view(1, -1, 1, 1)).sum(1, keepdim=True)
    folds = bool((const > 0).any())
    needs_map = folds and inner.padding_mode == "zeros" and _pad_any(inner.padding)
    has_bias = inner.bias is not None or (folds and not needs_map)
    new = _new_conv(inner, len(keep), inner.out_channels, has_bias)
    with torch.no_grad():
        new.weight.copy_(weight[:, keep])
        if has_bias:
            new.bias.copy_(inner.bias if inner.bias is not None else torch.zeros_like(new.bias))
            if folds and not needs_map:
                # No zero padding: every position sees the constant under every tap.
                new.bias.add_(kernel.sum((1, 2, 3)))
    if type(module) is ConvWithBiasMap:  # already has a map: extend it
        bias_kernel = module.bias_kernel + (kernel if needs_map else 0)
        return ConvWithBiasMap(new, bias_kernel).train(module.training), (
            "bias map" if needs_map else "bias" if folds else "none"
        )
    if needs_map:
        return ConvWithBiasMap(new, kernel).train(module.training), "bias map"
    return new, "bias" if folds else "none"


def slice_linear_in(linear: nn.Linear, channels: int, keep, gone, const) -> tuple[nn.Linear, str]:
    """Drop the flattened columns of channels ``gone``, folding their constants into the bias."""
    if linear.in_features % channels:
        raise ValueError(
            f"Linear with in_features={linear.in_features} does not read {channels} flattened "
            f"channels of equal size"
        )
    per = linear.in_features // channels  # columns per channel (H*W after the pool; 1 if global)
    weight = linear.weight.detach().view(linear.out_features, channels, per)  # (out, C, HW)
    folds = bool((const > 0).any())
    has_bias = linear.bias is not None or folds
    new = nn.Linear(len(keep) * per, linear.out_features, bias=has_bias,
                    device=linear.weight.device, dtype=linear.weight.dtype).train(linear.training)
    with torch.no_grad():
        new.weight.copy_(weight[:, keep].reshape(linear.out_features, -1))
        if has_bias:
            new.bias.copy_(linear.bias if linear.bias is not None else torch.zeros_like(new.bias))
            if folds:
                # Every flattened position of channel i holds c_i.
                new.bias.add_((weight[:, gone] * const.view(1, -1, 1)).sum((1, 2)))
    return new, "linear bias" if folds else "none"


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_device(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


@torch.no_grad()
def _max_logit_change(model: nn.Module, pruned: nn.Module, x: torch.Tensor) -> float:
    with eval_mode(model, pruned), paused():
        return float((model(x) - pruned(x)).abs().max())

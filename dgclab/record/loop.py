"""Record a model's DGC selections over a stream of batches in one call.

``record(model, data)`` is the loop that every recording of a data set writes by hand::

    with eval_mode(model), torch.no_grad(), Recorder(model) as rec:
        for x, y in loader:
            rec.tag(labels=y)
            model(x.to(device))

in eval mode (every submodule's mode restored afterwards, see ``dgclab.modes.eval_mode``),
without autograd, with the labels (and sample ids, when the batches carry them) tagged before
each forward. What it returns is the ``Recorder``, a ``Recording``: the analyses take it as it
is, and ``rec.save(path)`` writes it. A loop that needs the model's outputs too (a test loss, an
accuracy) still writes ``with Recorder(model)`` itself: ``record`` keeps no output.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import torch
import torch.nn as nn
from torch.utils.data import Dataset, IterableDataset
from tqdm.auto import tqdm

from ..checks import check_bool, check_type
from ..modes import eval_mode
from .recorder import Recorder

__all__ = ["record"]


def record(
    model: nn.Module,
    data: Iterable,
    *,
    saliency: bool = False,
    activations: bool = False,
    max_samples: int | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> Recorder:
    """Run ``model`` over every batch of ``data`` and record its DGC layers' selections.

    Each batch is one forward, in eval mode under ``torch.no_grad()``, inside
    ``Recorder(model, saliency=..., activations=..., max_samples=..., seed=...)``. Before it,
    the batch's labels and ids are tagged (``Recorder.tag``); untagged samples get label -1
    and, as id, their position in the stream (0, 1, 2, ... over all batches), as in a
    ``Recorder``.

    Args:
        model: a model with ``DGCConv2d`` layers. Its modes (every submodule's) are restored
            afterwards, also when a forward raises.
        data: an iterable of batches (a ``DataLoader``, a list ...). A batch is ``x``, ``(x, y)``
            or ``(x, y, ids)`` (a tuple or a list): ``x`` the (B, C, H, W) input, ``y`` (B,)
            integer labels, ``ids`` (B,) integer sample ids (e.g. dataset indices); ``y`` and
            ``ids`` may be None.
        saliency, activations, max_samples, seed: passed to ``Recorder``: also keep the
            saliencies, the per-channel output maxima; keep at most ``max_samples`` samples (a
            uniform random sample of all seen, drawn with ``seed``).
        device: where each ``x`` is moved before its forward (the model must already be
            there). Default: the device of the model's parameters (of its buffers if it has
            none; ``x`` stays where it is if it has neither).
        progress: a ``tqdm.auto`` bar over the batches.

    Returns:
        The ``Recorder``, done recording: ``selections(name)`` (N, heads, C_in) bool,
        ``labels`` (N,), ``ids`` (N,) ..., N the samples kept, in the order they were seen. No
        batch at all gives an empty recording.

    Raises:
        TypeError: ``model`` not an ``nn.Module``; ``data`` not an iterable of batches (a
            tensor, or a map-style ``Dataset``, which yields single samples: wrap it in a
            ``DataLoader``); a batch that is neither a tensor nor an ``(x, y[, ids])`` tuple
            or list, or whose ``x`` is not a tensor; labels or ids that are not integers.
        ValueError: a model without DGC layers; labels or ids of another length than the
            batch (from ``Recorder``).

    Example:
        >>> model = resnet_cifar(8, conv="dgc", in_channels=1, width=8)
        >>> data = [(torch.randn(4, 1, 28, 28), torch.tensor([3, 7, 7, 1]))] * 2
        >>> rec = record(model, data)
        >>> rec.selections("layer1.0.conv1").shape, rec.labels[:4].tolist(), rec.ids.tolist()
        (torch.Size([8, 4, 8]), [3, 7, 7, 1], [0, 1, 2, 3, 4, 5, 6, 7])
    """
    check_type("model", model, nn.Module)
    if isinstance(data, torch.Tensor) or (
        isinstance(data, Dataset) and not isinstance(data, IterableDataset)
    ):
        raise TypeError(
            f"data must be an iterable of batches, got {type(data).__name__}, which yields "
            f"single samples: pass a DataLoader over it, or [x] for one batch"
        )
    if not isinstance(data, Iterable):
        raise TypeError(f"data must be an iterable of batches, got {type(data).__name__}")
    if device is not None:
        device = torch.device(check_type("device", device, (torch.device, str)))
    else:
        device = _model_device(model)
    check_bool("progress", progress)

    with Recorder(model, saliency=saliency, activations=activations, max_samples=max_samples,
                  seed=seed) as rec:
        with eval_mode(model), torch.no_grad():
            for i, batch in enumerate(tqdm(data, desc="record", unit="batch",
                                           disable=not progress)):
                x, labels, ids = _unpack(batch, i)
                rec.tag(labels=labels, ids=ids)  # ids None: positions in the stream
                model(x if device is None else x.to(device))
    return rec


def _unpack(batch, i: int) -> tuple[torch.Tensor, object, object]:
    """``(x, labels, ids)`` of batch number ``i``: ``x``, ``(x, y)`` or ``(x, y, ids)``."""
    if isinstance(batch, torch.Tensor):
        return batch, None, None
    if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
        got = (f"a {type(batch).__name__} of {len(batch)} items"
               if isinstance(batch, (tuple, list)) else type(batch).__name__)
        raise TypeError(
            f"batch {i} must be a Tensor or an (x, y) or (x, y, ids) tuple or list, got {got}"
        )
    x, labels, ids = (*batch, None) if len(batch) == 2 else batch
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"the x of batch {i} must be a Tensor, got {type(x).__name__}")
    return x, labels, ids


def _model_device(model: nn.Module) -> torch.device | None:
    """The device of the model's first parameter (or buffer); None if it has neither."""
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return None if first is None else first.device

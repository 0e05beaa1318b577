"""Run models in eval mode for a block, and give every submodule its own mode back afterwards;
keep what the grouping layers' last forward left (``last_forward_kept``) across a probe.

Measuring a model (recording its selections, probing its BN-ReLU pairs, attributing a
prediction) needs eval mode: BatchNorm with its running statistics, dropout off. The caller's
model may be in the middle of training, and need not be in one mode throughout: a frozen
backbone in eval mode under a head in train mode is common. ``model.train(was_training)``
would put every submodule in the root's mode; ``eval_mode`` instead saves each submodule's own
``training`` flag and restores exactly that, also when the block raises.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch.nn as nn

from .checks import check_type
from .layers import grouping_layers

__all__ = ["eval_mode", "last_forward_kept"]


@contextmanager
def eval_mode(*models: nn.Module) -> Iterator[None]:
    """Every given model in eval mode inside the block; every submodule's mode restored after.

    On exit, normal or by an exception, each submodule of each model gets back the
    ``training`` flag it had on entry (a model in mixed modes stays mixed). The flags are set
    directly, so ``train()`` overrides are not called on the way back. Blocks nest, and a model
    may be given twice or share submodules with another: each module is saved once.

    Args:
        *models: the ``nn.Module`` s to put in eval mode (none is allowed: nothing happens).

    Yields:
        None.

    Raises:
        TypeError: an argument that is not an ``nn.Module`` (named ``models[i]``), raised
            before any mode changes.

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 2), nn.Dropout())
        >>> _ = model[0].eval()  # mixed modes: the root and the dropout train, the linear does not
        >>> with eval_mode(model):
        ...     model.training, model[1].training
        (False, False)
        >>> model.training, model[0].training, model[1].training
        (True, False, True)
    """
    for i, model in enumerate(models):
        check_type(f"models[{i}]", model, nn.Module)
    # A dict: a module shared between models, or a model given twice, is saved once.
    modes = {m: m.training for model in models for m in model.modules()}
    try:
        for model in models:
            model.eval()
        yield
    finally:
        for module, training in modes.items():
            module.training = training


@contextmanager
def last_forward_kept(model: nn.Module) -> Iterator[None]:
    """The ``last_*`` attributes of every grouping layer of ``model`` restored on exit.

    A probe forward (``count_macs``, ``filter_sparsity``) runs the model on inputs of its own;
    the layers' ``last_selection``, ``last_saliency``, ``last_lasso`` (whatever ``last_*`` a
    layer keeps) must still describe the caller's last forward afterwards, also when the block
    raises. Attributes the block adds are removed (set to None) again.
    """
    saved = [(layer, {k: v for k, v in vars(layer).items() if k.startswith("last_")})
             for _, layer in grouping_layers(check_type("model", model, nn.Module))]
    try:
        yield
    finally:
        for layer, attributes in saved:
            for key in [k for k in vars(layer) if k.startswith("last_")]:
                setattr(layer, key, attributes.get(key))

"""Training DGC-G: the global threshold follows the pruning schedule.

``TrainConfig(selection="threshold")`` builds the model's DGC layers under the global-threshold
rule (``DGCConv2d.threshold``, starting at 0) and has the ``Trainer`` call a
``ThresholdFollower`` after every training step: it moves the shared threshold toward the one at
which the step's saliencies give the schedule's current target rate, the mean over DGC layers of
k / C_in (``dgclab.layers.follow_threshold``: an exponential moving average of per-batch
weighted quantiles, momentum 0.5: a quantile over every saliency of the model is steady from
batch to batch, and a long memory would lag a fast schedule). So the mean pruning rate follows
the official schedule, while each image, head and layer keeps as many channels as its
saliencies clear. The lasso is
unchanged. The threshold is a buffer of every DGC layer: checkpoints carry it, and a resumed run
continues from it exactly. Single-process only: the threshold is moved on rank 0.
"""

from __future__ import annotations

from ..checks import check_float
from ..layers import follow_threshold

__all__ = ["ThresholdFollower"]


class ThresholdFollower:
    """A ``Trainer`` callback: ``follow_threshold`` after every step, toward ``k_frac``."""

    def __init__(self, momentum: float = 0.5) -> None:
        self.momentum = check_float("momentum", momentum, min=0, max=1, max_inclusive=False)

    def on_step_end(self, trainer, step: int, epoch: int, logs) -> None:
        follow_threshold(trainer.model, trainer.k_frac(), self.momentum)

"""The study's DGC question: do the heads of a DGC layer select input channels that are dead?

The extension of Mehta, Kim, Theobalt (CVPR 2019, arXiv 1811.12495) to dynamic group
convolution (Su et al., ECCV 2020, arXiv 2007.04242; SPEC §7): a DGC layer's heads choose their
input channels per image from saliencies computed on the layer's BN-ReLU output, so a channel
that the BN has killed carries nothing to choose by. ``selection_by_status`` compares how often
the heads select dead ("zero", "constant") and live channels, over a ``Recording`` of the same
images the per-filter sparsity table was measured on.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..checks import check_type

__all__ = ["STATUSES", "selection_by_status"]

STATUSES = ("zero", "constant", "live")  # of a DGC layer's input channel (selection_by_status)


def selection_by_status(recording, filters: pd.DataFrame) -> pd.DataFrame:
    """Do DGC heads select input channels that carry nothing? Selection frequency by status.

    A DGC layer's input channels go through the layer's own BN-ReLU (``<layer>.norm``) before
    the saliency generators and the heads see them. Each channel's status, from the per-filter
    sparsity table of that BN over the same images:

    * ``"zero"``: its max ReLU(BN) output over the data is below the activation threshold: the
      heads see (almost) nothing in it;
    * ``"constant"``: not zero, but ``|gamma| < 1e-3``: a (nearly) constant ``ReLU(beta)``, no
      information;
    * ``"live"``: the rest.

    Args:
        recording: a ``Recording`` (or live ``Recorder``) of the DGC layers over the images.
        filters: ``filter_sparsity(model, loader, per_filter=True)`` over the same images.

    Returns:
        One row per (DGC layer, status): ``layer``, ``in_channels``, ``heads``, ``k`` (channels
        each head dropped, from the recording's layer info), ``status``, ``channels`` (of that
        status), ``frequency`` (fraction of (image, head) pairs in which such a channel was
        selected, mean over those channels; NaN if none),
        ``frequency_all`` (the same over all the layer's channels: what every status would get
        if the heads ignored it).
    """
    check_type("filters", filters, pd.DataFrame)
    needed = {"layer", "filter", "dead_gamma", "dead_activation"}
    if not needed <= set(filters.columns):
        raise ValueError(
            f"filters must be a per-filter filter_sparsity table with a loader (columns "
            f"{sorted(needed)}), got columns {list(filters.columns)}"
        )
    rows = []
    for name in recording.layer_names:
        table = filters[filters["layer"] == f"{name}.norm"].sort_values("filter")
        if table.empty:
            raise ValueError(f"filters has no rows for {name}.norm, the BN of DGC layer {name!r}")
        sel = recording.selections(name)  # (N, heads, C) bool
        freq = sel.double().mean(dim=(0, 1)).numpy()  # (C,) per channel
        zero = table["dead_activation"].to_numpy(bool)
        constant = table["dead_gamma"].to_numpy(bool) & ~zero
        status = np.where(zero, "zero", np.where(constant, "constant", "live"))
        k = recording.layer_info(name)["inactive_channels"]
        for s in STATUSES:
            mask = status == s
            rows.append({
                "layer": name, "in_channels": sel.shape[2], "heads": sel.shape[1], "k": k,
                "status": s, "channels": int(mask.sum()),
                "frequency": float(freq[mask].mean()) if mask.any() else float("nan"),
                "frequency_all": float(freq.mean()),
            })
    columns = ["layer", "in_channels", "heads", "k", "status", "channels", "frequency",
               "frequency_all"]
    return pd.DataFrame(rows, columns=columns)

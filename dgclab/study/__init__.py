"""Studies: grids of training runs that answer one question each, with their tables and figures.

``run_sparsity_study`` is the implicit filter-level sparsity study of Mehta, Kim, Theobalt
(CVPR 2019, arXiv 1811.12495) on dgclab's own grid, extended to a DGC network (SPEC §7); it is
``python -m dgclab study sparsity`` on the command line.
"""

from . import plots, sparsity
from .plots import (
    plot_dead_fraction,
    plot_dead_over_training,
    plot_dgc_selection,
    plot_gamma_distribution,
)
from .sparsity import (
    BUDGETS,
    GRID,
    STUDY_DATASETS,
    Arm,
    StudyResult,
    format_report,
    load_study,
    orderings,
    publish_study,
    refresh_study,
    run_sparsity_study,
    select_arms,
    selection_by_status,
    summarize,
    write_figures,
)

__all__ = [*sparsity.__all__, *plots.__all__]

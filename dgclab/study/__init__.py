"""Studies: grids of training runs that answer one question each, with their tables and figures.

``run_sparsity_study`` is the implicit filter-level sparsity study of Mehta, Kim, Theobalt
(CVPR 2019, arXiv 1811.12495) on dgclab's own grid, extended to a DGC network (SPEC §7); it is
``python -m dgclab study sparsity`` on the command line. ``run_pilot`` is that study's pilot
(one arm trained until its filters die, to set the study's budget); ``python -m
dgclab.study.pilot`` on the command line. ``run_self_grouping`` is the staged SG-CNN schedule
(Guo et al., arXiv 2009.13803: ``self_group`` at rising rates, fine-tuning between); ``python -m
dgclab.study.self_grouping`` on the command line.

One concept per module: ``grid`` (the arms, budgets and dead-filter rules), ``runner`` (the
study itself: train and measure every arm), ``dgc_selection`` (do DGC heads select dead channels?),
``folder`` (the study folder's files, read and written), ``summary`` (per-arm summary, the
orderings against Mehta et al., by arm and by depth; the printed report), ``plots`` (the
figures), ``pilot``, ``self_grouping``.
"""

from .dgc_selection import selection_by_status
from .folder import StudyResult, load_study, publish_study, refresh_study, write_figures
from .grid import BUDGETS, GRID, PILOT_BUDGET, STUDY_DATASETS, Arm, select_arms
from .plots import (
    plot_dead_fraction,
    plot_dead_over_training,
    plot_dgc_selection,
    plot_gamma_distribution,
)
from .runner import run_sparsity_study
from .summary import depth_ordering, format_report, orderings, summarize

# The pilot is imported on first use (PEP 562), so that ``python -m dgclab.study.pilot`` runs the
# module once, as __main__, rather than after a first import through this package.
_PILOT_NAMES = ("PILOT_ARM", "PILOT_COLUMNS", "PILOT_MAX_EPOCHS", "PILOT_MAX_MINUTES",
                "PILOT_PATIENCE", "PILOT_WIDTHS", "run_pilot", "stop_reason")
# The same for the self-grouping schedule (``python -m dgclab.study.self_grouping``).
_SELF_GROUPING_NAMES = ("PAPER_STAGES", "STAGE_COLUMNS", "load_self_grouped",
                        "run_self_grouping", "save_self_grouped")
_LAZY = {**{n: "pilot" for n in (*_PILOT_NAMES, "pilot")},
         **{n: "self_grouping" for n in (*_SELF_GROUPING_NAMES, "self_grouping")}}

__all__ = [
    "Arm",
    "BUDGETS",
    "GRID",
    "PILOT_BUDGET",
    "STUDY_DATASETS",
    "StudyResult",
    "depth_ordering",
    "format_report",
    "load_study",
    "orderings",
    "plot_dead_fraction",
    "plot_dead_over_training",
    "plot_dgc_selection",
    "plot_gamma_distribution",
    "publish_study",
    "refresh_study",
    "run_sparsity_study",
    "select_arms",
    "selection_by_status",
    "summarize",
    "write_figures",
    *_PILOT_NAMES,
    *_SELF_GROUPING_NAMES,
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        return module if name == _LAZY[name] else getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

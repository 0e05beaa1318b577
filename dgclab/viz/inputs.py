"""The inputs dgclab's plots read, checked before anything is drawn: a run's history
(``metrics.csv``), a table with required columns, a ``Recording``.

Each check names what is wrong, so that a bad argument fails in one line rather than deep in
matplotlib: ``TypeError`` with the type received, ``ValueError`` with the missing columns and the
columns there are.
"""

from __future__ import annotations

import pandas as pd

__all__ = ["history_frame", "require_columns", "check_recording"]


def history_frame(history, columns: list[str]) -> pd.DataFrame:
    """``history`` (a run's ``metrics.csv`` as a DataFrame) sorted by epoch, once it is known to
    hold ``columns`` and at least one row."""
    if not isinstance(history, pd.DataFrame):
        raise TypeError(f"history must be a pandas DataFrame (metrics.csv), got "
                         f"{type(history).__name__}")
    require_columns(history, columns, "history")
    if history.empty:
        raise ValueError("history has no rows: no epoch has finished")
    return history.sort_values("epoch")


def require_columns(frame: pd.DataFrame, columns: list[str], what: str) -> None:
    """Raise ValueError naming the ``columns`` that ``frame`` (called ``what``) lacks."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks the columns {missing}; it has {list(frame.columns)}")


def check_recording(recording) -> None:
    """Raise TypeError unless ``recording`` looks like a ``Recording`` (or live ``Recorder``)."""
    if not all(hasattr(recording, a) for a in ("layer_names", "selections", "labels")):
        raise TypeError(f"expected a dgclab Recording (or Recorder), got "
                         f"{type(recording).__name__}")


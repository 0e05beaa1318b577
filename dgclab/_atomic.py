"""Atomic file writes, shared by checkpoints, recordings, metrics and reports.

``atomic_open`` writes through a temporary file in the target's folder, fsyncs it and renames it
over the target: a process killed at any moment leaves either the old file or the new one, never
half a file, and no temporary file survives an exception. A SIGKILL leaves its temporary file
(``.NAME.XXXXXXXX.tmp``) behind: ``remove_stale_temporaries`` deletes them, and the trainer
calls it on its run folder when it starts.
"""

from __future__ import annotations

import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_open", "atomic_write_bytes", "atomic_write_csv", "atomic_write_text",
           "remove_stale_temporaries"]

# ``tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp")``: a dot, the target's name, a dot, the
# random part (letters, digits and underscores), ".tmp".
_TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp$")


@contextmanager
def atomic_open(path, mode: str = "wb", encoding: str | None = None):
    """Open a temporary file that replaces ``path`` when the ``with`` block succeeds."""
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got mode={mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual mode
        with os.fdopen(fd, mode, encoding=encoding if mode == "w" else None) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def atomic_write_csv(path, frame) -> None:
    """Write the DataFrame ``frame`` to the CSV file ``path`` (without the index), atomically."""
    atomic_write_text(path, frame.to_csv(index=False))


def remove_stale_temporaries(folder) -> list[Path]:
    """Delete what killed atomic writes left in ``folder``; return the paths removed.

    Only call it where no other process is writing into ``folder`` (a run folder when its
    trainer starts): a temporary file of a write in progress looks the same.
    """
    removed = []
    for path in Path(folder).iterdir():
        if path.is_file() and _TEMPORARY.match(path.name):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed

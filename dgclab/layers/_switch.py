"""A process-wide on/off setting with a context manager: the C++ kernel (``cpu_kernel``), the
Triton kernel (``dgc_triton``) and measured executions (``tuning``) each have one."""

from __future__ import annotations

import contextlib

from ..checks import check_bool


class Switch:
    """``on``, a bool; ``set(flag)`` checks the type; ``with switch.use(flag):`` sets it for a
    block and restores what it was, also when the block raises."""

    def __init__(self, on: bool) -> None:
        self.on = check_bool("on", on)

    def set(self, flag: bool) -> None:
        self.on = check_bool("flag", flag)

    @contextlib.contextmanager
    def use(self, flag: bool):
        before = self.on
        self.set(flag)
        try:
            yield
        finally:
            self.on = before

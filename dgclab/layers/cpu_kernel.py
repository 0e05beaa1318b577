"""The fused CPU kernel of the gather execution (``csrc/dgc_cpu.cpp``).

In CPU inference (no autograd, float32) ``DGCConv2d`` in the gather execution runs one C++ op
instead of its PyTorch formulation:

* ``torch.ops.dgclab.dgc_forward``: the whole layer in one call: the eval-mode BN-ReLU (folded
  to ``relu(x * scale + shift)``; the normalised activations are never written out), the pool,
  every head's saliency MLP, the selection, and per image and head one sgemm over the kept
  channels only, written at its interleaved output channels. A DGC network at batch 1 spends
  most of its time dispatching small ops (README, "Speed"); this makes it one dispatch a layer.
  It returns the output, the saliencies and the selection, which the layer keeps as
  ``last_saliency`` and ``last_selection`` as every execution does.
* ``torch.ops.dgclab.gather_conv2d``: the conv part alone, with the channels and gates given,
  behind the functional ``dgc_gather_conv``; in CPU float32 training it is the forward of
  ``dgc_gather.KernelGatherConv``, an autograd Function whose backward is PyTorch's.
* ``torch.ops.dgclab.cluster_conv2d``: a self-grouped conv (SG-CNN's clusters of any sizes,
  ``dgclab.analysis.SelfGroupedConv2d``), every cluster in one call, each over its own input
  channels with its own filters; also a static grouped conv whose groups are small
  (``group.group_conv2d``: the groups as clusters of contiguous channels).

The kernel is compiled on first use with ``torch.utils.cpp_extension.load`` (a C++ compiler with
OpenMP, and ninja, a dependency of dgclab; 10-20 s once), into a folder per torch version under
``TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``), and loaded from there later.
Where it cannot be built (no compiler, a BLAS without ``sgemm_``), a warning says why once and
the layers keep their PyTorch formulation, which gives the same numbers (NaN and Inf
included). ``DGCLAB_CPU_KERNEL=0`` in the environment, or ``set_enabled(False)``, turns it off;
any value of the variable other than 0/1 (false/true, off/on, no/yes) is refused at import.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
import warnings
from pathlib import Path

import torch

from ._switch import Switch

__all__ = [
    "available", "applies", "applies_under_autograd", "enabled", "set_enabled", "use", "load",
    "build_error", "build_directory",
]

SOURCE = Path(__file__).with_name("csrc") / "dgc_cpu.cpp"

_ENV = "DGCLAB_CPU_KERNEL"
_ENV_VALUES = {"0": False, "false": False, "off": False, "no": False,
               "1": True, "true": True, "on": True, "yes": True, "": True}


def _enabled_by_environment() -> bool:
    """``DGCLAB_CPU_KERNEL``: unset or 1 (true, on, yes) enables, 0 (false, off, no) disables;
    anything else is refused, so that a typo never leaves the kernel silently on."""
    value = os.environ.get(_ENV, "1")
    if value.strip().lower() not in _ENV_VALUES:
        raise ValueError(f"{_ENV} must be 0 or 1, got {_ENV}={value!r}")
    return _ENV_VALUES[value.strip().lower()]


_lock = threading.Lock()
_switch = Switch(_enabled_by_environment())
_state: dict[str, object] = {
    "loaded": None,  # None: not tried; True: ops registered; False: build failed
    "error": None,
}


def build_directory() -> Path:
    """Where the kernel is built: one folder per torch version and Python, so that a venv with
    another torch never loads a build made against this one."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions"
    version = f"py{sys.version_info.major}{sys.version_info.minor}"
    return Path(root) / f"dgclab-torch{torch.__version__.replace('+', '-')}-{version}"


def _ninja_on_path() -> None:
    """torch's builder runs ``ninja`` from PATH; the pip package's binary may not be on it (a
    venv's python run without activating the venv)."""
    if shutil.which("ninja") is None:
        try:
            import ninja
        except ImportError:
            return
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def load() -> bool:
    """Build (or load the cached build of) the kernel; True when its ops are registered.

    A failure is remembered: a warning with the reason is given once, later calls return False.
    """
    if _state["loaded"] is not None:
        return bool(_state["loaded"])
    with _lock:
        if _state["loaded"] is None:
            try:
                # Importing cpp_extension logs "No CUDA runtime is found" on CPU-only machines.
                logger = logging.getLogger("torch.utils.cpp_extension")
                level = logger.level
                logger.setLevel(logging.ERROR)
                try:
                    from torch.utils.cpp_extension import load as build
                finally:
                    logger.setLevel(level)

                _ninja_on_path()
                directory = build_directory()
                directory.mkdir(parents=True, exist_ok=True)
                if not (directory / "dgclab_cpu.so").exists():
                    print("dgclab: compiling the fused CPU kernel for DGC layers (once, 10-20 s)",
                          file=sys.stderr, flush=True)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    build(
                        name="dgclab_cpu",
                        sources=[str(SOURCE)],
                        build_directory=str(directory),
                        # OpenMP: ATen's parallel_for; no memcpy calls for rows of a few floats
                        extra_cflags=["-O3", "-fopenmp", "-fno-tree-loop-distribute-patterns"],
                        extra_ldflags=["-fopenmp"],
                        is_python_module=False,
                        verbose=False,
                    )
                torch.ops.dgclab.gather_conv2d  # noqa: B018 - raises if not registered
                _state["loaded"] = True
            except Exception as error:  # no compiler, no ninja, link error: keep PyTorch's path
                _state["loaded"], _state["error"] = False, error
                warnings.warn(
                    f"dgclab: the fused CPU kernel could not be built ({type(error).__name__}: "
                    f"{str(error).strip().splitlines()[-1] if str(error).strip() else ''}); "
                    "DGC layers use their PyTorch gather execution (same results, slower)",
                    RuntimeWarning,
                    stacklevel=2,
                )
    return bool(_state["loaded"])


def build_error() -> Exception | None:
    """Why the kernel could not be built (None if it was built or not tried yet)."""
    return _state["error"]


def enabled() -> bool:
    """Whether the layer may use the kernel (it is built on first use)."""
    return _switch.on


def set_enabled(flag: bool) -> None:
    """Let DGC layers use the kernel (True, the default) or keep their PyTorch formulation."""
    _switch.set(flag)


def use(flag: bool):
    """``with cpu_kernel.use(False): ...`` runs the block with the kernel off (or on)."""
    return _switch.use(flag)


def available() -> bool:
    """Enabled and built (building it now if it was not tried yet)."""
    return enabled() and load()


def _compiling() -> bool:
    """Under torch.compile tracing (the ops have no fake-tensor implementation)."""
    is_compiling = getattr(torch.compiler, "is_compiling", None)  # torch >= 2.3
    return bool(is_compiling and is_compiling())


def applies(x: torch.Tensor) -> bool:
    """Whether a forward on ``x`` may take the kernel: CPU, float32, no autograd, not tracing."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_grad_enabled()
        and not _compiling()
        and available()
    )


def applies_under_autograd(x: torch.Tensor) -> bool:
    """Whether a training forward on ``x`` may run its gather conv by the kernel (inside an
    autograd Function, ``dgc_gather.KernelGatherConv``): CPU, float32, autograd on, not
    tracing."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and torch.is_grad_enabled()
        and not _compiling()
        and available()
    )

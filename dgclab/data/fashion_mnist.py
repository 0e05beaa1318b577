"""Fashion-MNIST (Xiao, Rasul, Vollgraf 2017, arXiv 1708.07747) made available offline.

torchvision's ``FashionMNIST`` reader expects the four original idx files, uncompressed, in
``<root>/FashionMNIST/raw``. ``ensure_fashion_mnist`` puts them there from, in order:

1. ``<root>`` itself (already prepared: nothing to do);
2. Debian's ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``), installing
   it with apt-get when we are root and it is missing;
3. torchvision's download (needs internet).

When none works, the error lists every place tried and why it failed.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from pathlib import Path

__all__ = ["FASHION_MNIST_FILES", "DEBIAN_DIR", "ensure_fashion_mnist", "fashion_mnist_ready"]

FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
DEBIAN_PACKAGE = "dataset-fashion-mnist"


def _raw_dir(root: Path) -> Path:
    return Path(root) / "FashionMNIST" / "raw"


def fashion_mnist_ready(root: str | os.PathLike) -> bool:
    """True when torchvision's reader will find all four files under ``root``."""
    raw = _raw_dir(Path(root))
    return all((raw / name).is_file() for name in FASHION_MNIST_FILES)


def _gunzip_atomic(src: Path, dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".part")
    with gzip.open(src, "rb") as fin, open(tmp, "wb") as fout:
        shutil.copyfileobj(fin, fout)
    os.replace(tmp, dst)  # a killed copy never leaves a truncated file under the real name


def _from_debian(root: Path, allow_apt: bool) -> str | None:
    """Copy from Debian's package; returns None on success, else why it did not work."""
    if not all((DEBIAN_DIR / f"{n}.gz").is_file() for n in FASHION_MNIST_FILES):
        if not allow_apt:
            return f"{DEBIAN_DIR} has no files and apt-get was not allowed"
        if shutil.which("apt-get") is None:
            return f"{DEBIAN_DIR} has no files and apt-get is not available"
        if hasattr(os, "geteuid") and os.geteuid() != 0:
            return (f"{DEBIAN_DIR} has no files and installing {DEBIAN_PACKAGE} needs root "
                    f"(run: sudo apt-get install {DEBIAN_PACKAGE})")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for cmd in (["apt-get", "install", "-y", "-q", DEBIAN_PACKAGE],
                    ["apt-get", "update", "-q"],
                    ["apt-get", "install", "-y", "-q", DEBIAN_PACKAGE]):
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if done.returncode == 0 and cmd[1] == "install":
                break
        else:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            return f"apt-get install {DEBIAN_PACKAGE} failed: {tail[0]}"
    raw = _raw_dir(root)
    raw.mkdir(parents=True, exist_ok=True)
    for name in FASHION_MNIST_FILES:
        if not (raw / name).is_file():
            _gunzip_atomic(DEBIAN_DIR / f"{name}.gz", raw / name)
    return None


def _from_torchvision(root: Path) -> str | None:
    try:
        from torchvision.datasets import FashionMNIST

        for train in (True, False):
            FashionMNIST(str(root), train=train, download=True)
    except Exception as err:  # network errors come in many types
        return f"torchvision download failed: {type(err).__name__}: {err}"
    return None


def ensure_fashion_mnist(
    root: str | os.PathLike = "data", allow_apt: bool = True, allow_download: bool = True
) -> Path:
    """Make Fashion-MNIST available under ``root`` for ``torchvision.datasets.FashionMNIST``.

    Args:
        root: the folder passed to torchvision as ``root`` (files land in
            ``root/FashionMNIST/raw``).
        allow_apt: may install Debian's ``dataset-fashion-mnist`` when running as root.
        allow_download: may fall back to torchvision's download.

    Returns:
        ``root`` as a Path.

    Raises:
        RuntimeError: listing every place tried and why each failed.
    """
    root = Path(root)
    if fashion_mnist_ready(root):
        return root
    tried = [f"{_raw_dir(root)}: not all of {', '.join(FASHION_MNIST_FILES)} present"]
    why = _from_debian(root, allow_apt)
    if why is None and fashion_mnist_ready(root):
        return root
    tried.append(f"Debian {DEBIAN_PACKAGE} ({DEBIAN_DIR}): {why}")
    if allow_download:
        why = _from_torchvision(root)
        if why is None and fashion_mnist_ready(root):
            return root
        tried.append(f"torchvision download into {root}: {why}")
    else:
        tried.append("torchvision download: not allowed")
    raise RuntimeError("Fashion-MNIST is not available. Tried:\n  - " + "\n  - ".join(tried))

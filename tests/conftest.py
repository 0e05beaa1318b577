"""Shared pytest fixtures."""

from pathlib import Path

import pytest
import torch

# helpers.py (shared by test modules in several folders) is no test module: without this its
# asserts would fail with a bare AssertionError instead of pytest's explanation.
pytest.register_assert_rewrite("helpers")


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """``../shared/fixtures`` next to the repository (outputs of the official DGC code).

    Tests that request it are skipped when the folder is absent.
    """
    path = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
    if not path.is_dir():
        pytest.skip(f"fixture folder {path} is absent")
    return path


@pytest.fixture
def one_thread():
    """One torch thread for tiny models (a loaded 2-core machine runs them far faster so), and
    no pyplot figure left behind by the test."""
    import matplotlib.pyplot as plt

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    assert plt.get_fignums() == []

"""The repo's promises about itself: one dependency list, the two commands, the layout."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"torch": "pytorch"}  # conda-forge spells a few packages differently


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ \[;]", requirement.strip(), maxsplit=1)[0].lower()


def test_environment_yml_lists_the_same_packages_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in project["dependencies"]}
    wanted |= {_name(r) for r in project["optional-dependencies"]["dev"]}
    wanted = {CONDA_NAMES.get(n, n) for n in wanted}
    text = (ROOT / "environment.yml").read_text()
    listed = set()
    for line in text[text.index("dependencies:"):].splitlines():
        m = re.match(r"\s*-\s+([A-Za-z0-9_.\-]+)", line)
        if m and m.group(1) not in ("pip", "python", "-e"):
            listed.add(_name(m.group(1)))
    assert listed == wanted


def test_user_asked_layout_exists():
    for path in ("notebooks", "dgclab", "tests", "data/README.md", "environment.yml",
                 "README.md", "pyproject.toml", "Makefile", ".ci/run"):
        assert (ROOT / path).exists(), path
    assert "make test" in (ROOT / ".ci/run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme


def test_constraints_pin_the_tested_torch_pair():
    pins = (ROOT / "constraints.txt").read_text()
    assert "torch==2.14.1" in pins and "torchvision==0.29.1" in pins


def test_command_line_entry_point_answers_help():
    done = subprocess.run([sys.executable, "-m", "dgclab", "--help"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for command in ("demo", "data"):
        assert command in done.stdout


def test_readme_api_block_runs():
    """The README's API sketch is code a reader will paste: it must run (bar the line that
    needs a released checkpoint)."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## The API in a few lines"):]
    block = section[section.index("```python\n") + len("```python\n"):]
    block = block[: block.index("```")]
    runnable = "\n".join(line for line in block.splitlines() if "released_checkpoint" not in line)
    namespace: dict = {}
    exec(compile(runnable, "README.md", "exec"), namespace)
    assert namespace["y"].shape == (8, 128, 32, 32)
    assert namespace["layer"].inactive_channels == 48
    assert namespace["converted"] and "conv1" in namespace["skipped"]

"""A real browser: JupyterLab headless on localhost, notebook 03 run in Debian's Chromium driven by
Playwright; the image explorer must render and redraw when the image changes."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = "03_channel_saliency_per_image.ipynb"
CHROMIUM = "/usr/bin/chromium"
# Flags for a closed network and a root user (see the environment notes in the README).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyterlab(tmp_path):
    """JupyterLab serving a copy of notebook 03 (the repo's copy is never modified)."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is absent: `make test` installs Debian's chromium when it runs "
                    "as root; elsewhere run `apt-get install chromium`")
    pytest.importorskip("playwright.sync_api")
    (tmp_path / "notebooks").mkdir()
    shutil.copy(ROOT / "notebooks" / NOTEBOOK, tmp_path / "notebooks" / NOTEBOOK)
    (tmp_path / "data").symlink_to(ROOT / "data")
    port, token = _free_port(), "dgclab-test"
    env = os.environ | {"DGCLAB_FAST": "1", "OMP_NUM_THREADS": "1"}
    log = open(tmp_path / "jupyterlab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}",
         "--LabApp.expose_app_in_browser=True", "--allow-root"],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=1)
                break
            except OSError:
                if server.poll() is not None:
                    raise RuntimeError((tmp_path / "jupyterlab.log").read_text()[-2000:]) from None
                time.sleep(0.5)
        else:
            raise RuntimeError("JupyterLab did not start within 60 s")
        yield url, token
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _explorer_image(page):
    """The src of the image the explorer's Output widget currently shows."""
    img = page.locator(".widget-output img").first
    img.wait_for(state="visible", timeout=240_000)
    return img.get_attribute("src")


@pytest.mark.slow
def test_notebook_03_explorer_in_chromium(jupyterlab, tmp_path):
    from playwright.sync_api import sync_playwright

    url, token = jupyterlab
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{url}/lab/tree/notebooks/{NOTEBOOK}?token={token}")
            page.wait_for_function("window.jupyterapp && document.querySelector('.jp-Notebook')",
                                   timeout=120_000)
            # wait for the kernel, then run every cell through JupyterLab's own command
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
            page.wait_for_function(
                "() => { const w = window.jupyterapp.shell.currentWidget;"
                " return w && w.sessionContext && w.sessionContext.session"
                " && w.sessionContext.session.kernel"
                " && w.sessionContext.session.kernel.connectionStatus === 'connected'; }",
                timeout=120_000)
            page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")

            page.wait_for_selector(".widget-slider", timeout=240_000)
            before = _explorer_image(page)
            page.screenshot(path=str(tmp_path / "explorer_before.png"), full_page=True)

            # move the image slider by one with the keyboard (continuous_update=False commits it)
            page.locator(".widget-slider .noUi-handle").first.focus()
            page.keyboard.press("ArrowRight")
            page.wait_for_function(
                "(before) => { const img = document.querySelector('.widget-output img');"
                " return img && img.getAttribute('src') !== before; }",
                arg=before, timeout=240_000)
            after = _explorer_image(page)
            page.screenshot(path=str(tmp_path / "explorer_after.png"), full_page=True)
        finally:
            browser.close()
    assert before.startswith("data:image/png") and after.startswith("data:image/png")
    assert before != after
    assert (tmp_path / "explorer_after.png").stat().st_size > 10_000

"""Browser tests: the app started on a free loopback port in a fresh project folder, driven by Playwright for
Python in Debian's headless Chromium (a fresh profile each session). CI installs both (.ci/browser-setup);
elsewhere the tests are skipped, with the reason, when either is missing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("SDLORA_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "tests" / "artifacts"


def _missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install playwright; CI runs .ci/browser-setup)"
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium; CI runs .ci/browser-setup)"
    return None


def pytest_collection_modifyitems(config, items):
    reason = _missing()
    for item in items:
        if "tests/browser" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.browser)
            if reason and os.environ.get("CI", "").lower() not in ("1", "true"):
                item.add_marker(pytest.mark.skip(reason=reason))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def project(tmp_path_factory) -> Path:
    """A project folder: a test preset and a small generated data set."""
    from conftest import make_shape_folder

    root = tmp_path_factory.mktemp("project")
    make_shape_folder(root / "datasets" / "shapes", count=6)
    (root / "presets").mkdir()
    (root / "presets" / "uitest.yaml").write_text(
        "name: uitest\nmodel: tiny\ndata:\n  dir: datasets/shapes\n  resolution: 64\n"
        "network:\n  rank: 4\ntrain:\n  steps: 6\n  batch_size: 2\n  lr: 1e-3\n  seed: 1\n"
        "sample:\n  prompts: [\"a red circle\"]\n  steps: 2\n", encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def app_url(project):
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    log = open(project / "app.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "ui.app", "--port", str(port)], cwd=project, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 90
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(f"the app did not start: {(project / 'app.log').read_text()[-2000:]}")
            time.sleep(0.3)
    yield url
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="session")
def browser_context():
    reason = _missing()
    if reason:
        pytest.fail(reason)  # only reached in CI, where the tools must be there
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="sdlora-chromium-")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True,
                                                       args=CHROMIUM_FLAGS, viewport={"width": 1400, "height": 1000})
        context.set_default_timeout(30_000)
        yield context
        context.close()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def page(browser_context, app_url):
    page = browser_context.new_page()
    page.goto(app_url)
    page.wait_for_selector("#tab-dataset", state="attached")
    yield page
    page.close()


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"ui-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path

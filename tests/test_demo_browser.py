"""The demo in a real browser: ``cadcoder demo`` on a local port, driven by Playwright in Debian's Chromium.

Playwright drives the system browser (``/usr/bin/chromium``, or ``$CADCODER_CHROMIUM``); it never downloads
its own build. ``scripts/install.sh`` installs both. The test skips, saying why, only where they are missing.
Set ``CADCODER_DEMO_SCREENSHOT=path.png`` to keep the screenshot of the page with its result.
"""

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
from PIL import Image

from test_demo import PROGRAMS, model_dir, renders  # noqa: F401  (module fixtures shared with the service tests)

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
# Headless Chromium without a GPU renders WebGL (the 3D view) with SwiftShader only when asked to.
CHROMIUM_ARGS = ["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]
STARTUP_SECONDS = 240
REQUEST_MS = 180_000


def _chromium() -> str | None:
    env = os.environ.get("CADCODER_CHROMIUM")
    if env:
        return env if os.access(env, os.X_OK) else None
    found = [c for c in CHROMIUM_CANDIDATES if os.access(c, os.X_OK)]
    return found[0] if found else shutil.which("chromium")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright is not installed: pip install -e '.[test]' installs it (scripts/install.sh does)")
    executable = _chromium()
    if executable is None:
        pytest.skip("no Chromium found (looked for $CADCODER_CHROMIUM and /usr/bin/chromium): install Debian's "
                    "chromium package, as scripts/install.sh does; Playwright must not download its own")  # fmt: skip
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):  # noqa: F811
    """``cadcoder demo`` serving the tiny model; yields its URL, stops it afterwards."""
    port = _free_port()
    log = tmp_path_factory.mktemp("demo-server") / "server.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "TQDM_DISABLE": "1"}
    examples = tmp_path_factory.mktemp("demo-examples")
    cmd = [sys.executable, "-m", "cadcoder", "demo", "--model", str(model_dir), "--port", str(port), "--timeout", "30",
           "--examples-dir", str(examples), "--num-examples", "2"]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if proc.poll() is not None:
                pytest.fail(f"cadcoder demo exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"cadcoder demo did not serve {url} within {STARTUP_SECONDS} s:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _upload(page, path: Path) -> None:
    from playwright.sync_api import expect

    clear = page.locator("#cc-upload button[aria-label='Clear']")
    if clear.count():
        clear.first.click()
    page.locator("#cc-upload input[type=file]").set_input_files(str(path))
    expect(page.locator("#cc-upload")).to_contain_text(path.stem)


def _generate(page) -> None:
    page.locator("#cc-run").click()


def test_upload_gives_code_3d_view_and_downloads_and_a_corrupt_upload_an_error(browser, server, renders, tmp_path):  # noqa: F811
    from playwright.sync_api import expect

    good = tmp_path / "good_part.png"
    renders[0].save(good)
    corrupt = tmp_path / "corrupt_part.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(server)
    expect(page.locator("#cc-run")).to_be_visible(timeout=60_000)
    expect(page.locator("#cc-examples img")).to_have_count(2)  # the app made its own example images

    _upload(page, good)
    _generate(page)
    status = page.locator("#cc-status")
    expect(status).to_contain_text("Done", timeout=REQUEST_MS)
    code = page.locator("#cc-code .cm-content").inner_text()
    assert "cq.Workplane('XY').box(2, 1, 0.5)" in code
    expect(page.locator("#cc-view canvas")).to_have_count(1)
    links = page.locator("#cc-downloads a[download]")
    expect(links).to_have_count(3)
    names = sorted(links.nth(i).get_attribute("download") for i in range(3))
    assert names == ["part.py", "part.step", "part.stl"]
    program_link = next(links.nth(i) for i in range(3) if links.nth(i).get_attribute("download") == "part.py")
    downloaded = page.request.get(program_link.get_attribute("href"))
    assert downloaded.ok and downloaded.text().strip() == PROGRAMS[0]
    table = page.locator("#cc-table")
    expect(table).to_contain_text("highest render-and-compare score")  # the chosen candidate and why
    expect(table).to_contain_text("sampled")
    page.wait_for_timeout(3000)  # the 3D viewer loads its GLB after the page reports the result
    shot = tmp_path / "demo.png"
    page.screenshot(path=str(shot), full_page=True)
    assert Image.open(shot).size[0] == 1400
    if os.environ.get("CADCODER_DEMO_SCREENSHOT"):
        shutil.copy(shot, os.environ["CADCODER_DEMO_SCREENSHOT"])

    _upload(page, corrupt)
    _generate(page)
    expect(status).to_contain_text("not an image that can be read", timeout=REQUEST_MS)

    _upload(page, good)
    _generate(page)
    expect(status).to_contain_text("Done", timeout=REQUEST_MS)  # the page keeps serving after a bad upload
    page.close()

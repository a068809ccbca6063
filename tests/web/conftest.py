"""Fixtures of the web UI tests (helpers in webutil.py)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from webutil import ARTIFACTS, CHROMIUM, SKIP_REASON, PageErrors, Server, open_context, sync_playwright


@pytest.fixture(scope="session")
def model_path() -> Path:
    import rllama.models

    return rllama.models.resolve("smollm2")


@pytest.fixture(scope="session")
def server(model_path):
    s = Server(model_path)
    if httpx.get(s.url + "/", timeout=10).status_code != 200:
        s.stop()
        pytest.fail("the server serves no web UI at /: the installed rllama lacks rllama/web "
                    "(reinstall it: pip install . or maturin develop)")
    yield s
    s.stop()


@pytest.fixture(scope="session")
def browser():
    if SKIP_REASON:
        pytest.skip(SKIP_REASON)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield b
        b.close()


@pytest.fixture
def ui(browser, server):
    """A fresh page on the UI, with short fast replies; yields (page, errors)."""
    ctx = open_context(browser)
    page = ctx.new_page()
    errors = PageErrors()
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.on("console", lambda m: errors.append(f"console: {m.text}")
            if m.type == "error" and "Failed to load resource" not in m.text else None)
    page.goto(server.url + "/")
    page.wait_for_selector("#server-state[data-state='ok']", timeout=15000)
    yield page, errors
    ctx.close()



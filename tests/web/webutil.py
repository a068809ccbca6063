"""Helpers of the web UI tests: Playwright driving Debian's Chromium against a real `python -m rllama serve`.

Playwright cannot download browsers here, so it is given the system Chromium
(RLLAMA_CHROMIUM, default /usr/bin/chromium). Without Playwright or Chromium the tests are
skipped with the reason; `.ci/run` installs both.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

CHROMIUM = os.environ.get("RLLAMA_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None

SKIP_REASON = None
if sync_playwright is None:
    SKIP_REASON = "playwright is not installed (pip install playwright; .ci/run does)"
elif not (os.path.isfile(CHROMIUM) or shutil.which(CHROMIUM)):
    SKIP_REASON = f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/run does)"

# Short replies keep the suite fast; tests that need long ones change the request.
FAST_SETTINGS = {"n_predict": 24, "temperature": 0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model: Path, *args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(os.environ.get("TMPDIR", "/tmp")) / f"rllama-web-server-{self.port}.log"
        self._logf = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        cmd = [sys.executable, "-m", "rllama", "serve", "-m", str(model), "--port", str(self.port),
               "-c", "2048", "-t", "2", *args]
        self.proc = subprocess.Popen(cmd, stdout=self._logf, stderr=subprocess.STDOUT)
        deadline = time.time() + 90
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"server not ready:\n{self.output()}")

    def output(self) -> str:
        self._logf.flush()
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._logf.close()


class PageErrors(list):
    """Uncaught exceptions and console errors of a page (resources that 404 aside)."""


def open_context(browser, *, settings: dict | None = None, viewport=(1280, 800), color_scheme="light",
                 storage: dict | None = None, bypass_csp: bool = True):
    # bypass_csp: Playwright evaluates its wait predicates with eval, which the page's CSP forbids;
    # the XSS tests so check the renderer alone, without the CSP behind it
    ctx = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]}, color_scheme=color_scheme,
                              bypass_csp=bypass_csp)
    seed = {"rllama.settings": json.dumps(FAST_SETTINGS if settings is None else settings)}
    seed.update({k: json.dumps(v) for k, v in (storage or {}).items()})
    # seed localStorage once per origin (a reload keeps what the page saved since)
    ctx.add_init_script(script="""
        (seed => { try {
            if (!sessionStorage.getItem('seeded')) {
                for (const [k, v] of Object.entries(seed)) localStorage.setItem(k, v);
                sessionStorage.setItem('seeded', '1');
            }
        } catch (_) {} })(SEED);
    """.replace("SEED", json.dumps(seed)))
    return ctx


def wait_slots_idle(url: str, headers: dict | None = None, timeout: float = 10) -> list:
    deadline = time.time() + timeout
    slots: list = []
    while time.time() < deadline:
        slots = httpx.get(url + "/slots", headers=headers or {}, timeout=5).json()
        if all(not s.get("is_processing", s.get("state") == 1) for s in slots):
            return slots
        time.sleep(0.1)
    raise AssertionError(f"slots still processing after {timeout}s: {slots}")

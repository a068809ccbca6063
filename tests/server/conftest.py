"""A real `python -m rllama serve` process on a free loopback port, with the real smollm2 model."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ROOT = Path(__file__).resolve().parents[2]


def checkout_env() -> dict[str, str]:
    """Serve this checkout's code (python/, with its built extension) even when another copy of
    rllama is installed in the environment."""
    src = ROOT / "python"
    if not any((src / "rllama").glob("_core*.so")):
        return {}
    return {"PYTHONPATH": os.pathsep.join([str(src), *filter(None, [os.environ.get("PYTHONPATH")])])}


class Server:
    def __init__(self, model: Path, *args: str, scheme: str = "http", env: dict[str, str] | None = None,
                 verify: object = True):
        self.port = free_port()
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.verify = verify
        self.log = Path(os.environ.get("TMPDIR", "/tmp")) / f"rllama-server-{self.port}.log"
        cmd = [sys.executable, "-m", "rllama", "serve", "-m", str(model), "--port", str(self.port),
               "-c", "2048", "-t", "2", *args]
        self._logf = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self._logf, stderr=subprocess.STDOUT,
                                     env={**os.environ, **checkout_env(), **(env or {})})

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                r = httpx.get(self.url + "/health", timeout=2, verify=self.verify)
                if r.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready after {timeout}s:\n{self.output()}")

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kw.pop("timeout", 60), verify=self.verify, **kw)

    def output(self) -> str:
        self._logf.flush()
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._logf.close()
        return self.proc.returncode


@pytest.fixture(scope="session")
def model_path() -> Path:
    import rllama.models

    return rllama.models.resolve("smollm2")


@pytest.fixture(scope="module")
def start_server(model_path):
    """start_server(*flags) -> a ready Server, stopped at the end of the module."""
    started: list[Server] = []

    def start(*args: str, **kw) -> Server:
        s = Server(model_path, *args, **kw)
        started.append(s)
        s.wait_ready()
        return s

    yield start
    for s in started:
        s.stop()


@pytest.fixture(scope="module")
def server(start_server, tmp_path_factory) -> Server:
    """The full-featured server most tests share: embeddings, metrics, slot files."""
    slots = tmp_path_factory.mktemp("slots")
    s = start_server("--embeddings", "--metrics", "--slot-save-path", str(slots))
    s.slot_dir = slots
    return s


@pytest.fixture(scope="session")
def server_env() -> dict[str, str]:
    """The environment for a subprocess that should run this checkout's rllama."""
    return {**os.environ, **checkout_env()}

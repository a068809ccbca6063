"""Model resolution: paths, built-in names, the cache directory, URL downloads with resume."""

from __future__ import annotations

import hashlib
import http.server
import threading
import typing
from pathlib import Path

import pytest
from rllama import ModelLoadError, models


def test_local_path_and_errors(tmp_path):
    p = tmp_path / "m.gguf"
    p.write_bytes(b"GGUF")
    assert models.resolve(p) == p
    assert models.resolve(str(p)) == p
    with pytest.raises(ModelLoadError, match="no such file"):
        models.resolve(tmp_path / "missing.gguf")
    with pytest.raises(ModelLoadError, match="not a regular file"):
        models.resolve(tmp_path)


def test_builtins_are_cached_and_verified(smollm2_path, gemma3_path):
    assert smollm2_path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert gemma3_path.name == "gemma-3-270m-q4_k_m.gguf"
    h = hashlib.sha256(gemma3_path.read_bytes()).hexdigest()
    assert h == models.BUILTIN["gemma3"].sha256
    assert models.resolve("smollm2") == smollm2_path  # second call: from the cache
    assert models.resolve(None) == smollm2_path  # the default model


def test_cache_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv("RLLAMA_CACHE", str(tmp_path / "c"))
    assert models.cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()


class _Handler(http.server.BaseHTTPRequestHandler):
    payload = b""
    fail_after: int | None = None
    requests: typing.ClassVar[list] = []

    def log_message(self, *a):
        pass

    def do_GET(self):
        _Handler.requests.append(self.headers.get("Range"))
        if self.path.endswith("/missing.gguf"):
            self.send_response(404)
            self.end_headers()
            return
        data, start = _Handler.payload, 0
        rng = self.headers.get("Range")
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if _Handler.fail_after is not None:
            self.wfile.write(body[:_Handler.fail_after])
            self.wfile.flush()
            self.connection.close()
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_url_download_resume_and_atomicity(tmp_path, monkeypatch, server):
    monkeypatch.setenv("RLLAMA_CACHE", str(tmp_path))
    _Handler.payload = bytes(range(256)) * 4000
    _Handler.requests = []
    # First attempt dies half-way: no file at the target, a partial beside it.
    _Handler.fail_after = 300_000
    with pytest.raises(ModelLoadError):
        models.resolve(f"{server}/dl/model.gguf")
    assert not (tmp_path / "model.gguf").exists()
    partial = tmp_path / "model.gguf.partial"
    assert partial.exists() and 0 < partial.stat().st_size < len(_Handler.payload)
    # Second attempt resumes with a Range request and completes.
    _Handler.fail_after = None
    p = models.resolve(f"{server}/dl/model.gguf")
    assert p == tmp_path / "model.gguf" and p.read_bytes() == _Handler.payload
    assert _Handler.requests[-1].startswith("bytes=") and _Handler.requests[-1] != "bytes=0-"
    assert not partial.exists()
    # Cached now: no new request.
    n = len(_Handler.requests)
    assert models.resolve(f"{server}/dl/model.gguf") == p and len(_Handler.requests) == n


def test_url_errors(tmp_path, monkeypatch, server):
    monkeypatch.setenv("RLLAMA_CACHE", str(tmp_path))
    with pytest.raises(ModelLoadError, match="HTTP 404"):
        models.resolve(f"{server}/missing.gguf")
    with pytest.raises(ModelLoadError, match="cannot download"):
        models.resolve("http://127.0.0.1:9/nothing-listens-here.gguf")
    assert not any(Path(tmp_path).glob("*.gguf"))


def test_hf_url():
    assert models.hf_url("org/repo", "f.gguf") == "https://huggingface.co/org/repo/resolve/main/f.gguf"

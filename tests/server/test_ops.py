"""Operations: cancellation on disconnect, concurrent clients, TLS, SIGTERM mid-stream, static files."""

from __future__ import annotations

import datetime
import json
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

LONG = {"prompt": "Write a very long story about a dragon.", "n_predict": 1500, "ignore_eos": True,
        "temperature": 0, "stream": True}


def wait_idle(server, timeout: float = 10) -> float:
    t0 = time.time()
    with server.client() as c:
        while time.time() - t0 < timeout:
            h = c.get("/health").json()
            if h["slots_processing"] == 0:
                return time.time() - t0
            time.sleep(0.05)
    raise AssertionError("the generation kept running after the client went away")


def test_client_disconnect_cancels_generation(server):
    with server.client() as c:
        with c.stream("POST", "/completion", json=LONG) as r:
            assert r.status_code == 200
            n = 0
            for line in r.iter_lines():
                if line.startswith("data: "):
                    n += 1
                    if n == 3:
                        break
        # Mid-stream the slot was busy; once the connection is gone it is freed within moments,
        # long before 1500 tokens could have been generated.
        waited = wait_idle(server)
        assert waited < 5
        slot = c.get("/slots").json()[0]
        assert slot["is_processing"] is False and slot["next_token"]["n_decoded"] < 200
        r = c.post("/completion", json={"prompt": "After cancel", "n_predict": 4, "temperature": 0})
        assert r.status_code == 200 and r.json()["tokens_predicted"] == 4


def test_disconnect_of_non_streamed_request(server):
    with server.client(timeout=1.0) as c, pytest.raises(httpx.ReadTimeout):
        c.post("/completion", json={**LONG, "stream": False})
    assert wait_idle(server) < 5


def test_concurrent_clients(server):
    prompts = [f"Count from {i}:" for i in range(6)]

    def one(p: str) -> dict:
        with server.client() as c:
            return c.post("/completion", json={"prompt": p, "n_predict": 6, "temperature": 0}).json()

    def one_stream(p: str) -> str:
        with server.client() as c, c.stream("POST", "/completion",
                                            json={"prompt": p, "n_predict": 6, "temperature": 0, "stream": True}) as r:
            parts = [json.loads(ln[6:]) for ln in r.iter_lines() if ln.startswith("data: ")]
        assert parts[-1]["stop"] is True
        return "".join(x["content"] for x in parts[:-1])

    with ThreadPoolExecutor(8) as ex:
        plain = list(ex.map(one, prompts))
        streamed = list(ex.map(one_stream, prompts))
    assert all(r["tokens_predicted"] == 6 for r in plain)
    assert [r["content"] for r in plain] == streamed  # greedy answers do not depend on the company they keep
    with server.client() as c:
        assert c.get("/health").json()["status"] == "ok"


def make_cert(tmp_path):
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    kf, cf = tmp_path / "key.pem", tmp_path / "cert.pem"
    kf.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    cf.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return kf, cf


def test_tls(start_server, tmp_path):
    import ssl

    kf, cf = make_cert(tmp_path)
    ctx = ssl.create_default_context(cafile=str(cf))
    s = start_server("--ssl-key-file", str(kf), "--ssl-cert-file", str(cf), scheme="https", verify=ctx)
    with s.client() as c:
        r = c.post("/completion", json={"prompt": "Secure", "n_predict": 3, "temperature": 0})
        assert r.status_code == 200 and r.json()["tokens_predicted"] == 3
    with pytest.raises(httpx.ConnectError):  # an unknown certificate is refused by a verifying client
        httpx.get(s.url + "/health", timeout=5)
    with pytest.raises(httpx.HTTPError):  # plain HTTP to the TLS port gets no answer
        httpx.get(s.url.replace("https", "http") + "/health", timeout=5)


def test_sigterm_mid_stream(start_server):
    s = start_server()
    got_first = threading.Event()
    result: dict = {}

    def consume() -> None:
        try:
            with s.client() as c, c.stream("POST", "/completion", json=LONG) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        got_first.set()
        except httpx.HTTPError as e:
            result["error"] = e

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    assert got_first.wait(30)
    t0 = time.time()
    s.proc.send_signal(signal.SIGTERM)
    rc = s.proc.wait(timeout=15)
    assert rc == 0, s.output()
    assert time.time() - t0 < 10
    t.join(10)
    assert not t.is_alive()


def test_sigint_idle_exits_zero(start_server):
    s = start_server()
    s.proc.send_signal(signal.SIGINT)
    assert s.proc.wait(timeout=15) == 0


def test_static_path(start_server, tmp_path):
    from pathlib import Path

    root = tmp_path / "www"
    (root / "sub").mkdir(parents=True)
    (root / "index.html").write_text("<h1>hello static</h1>")
    (root / "sub" / "app.js").write_text("console.log(1)")
    (tmp_path / "secret.txt").write_text("do not serve")
    s = start_server("--path", str(root), "--api-key", "k")
    with s.client() as c:
        r = c.get("/")
        assert r.status_code == 200 and "hello static" in r.text  # the UI needs no key
        r = c.get("/sub/app.js")
        assert r.status_code == 200 and r.text == "console.log(1)"
        for path in ("/../secret.txt", "/%2e%2e/secret.txt", "/sub/../../secret.txt", "/..%2fsecret.txt",
                     "//etc/passwd", "/sub/%2e%2e/%2e%2e/secret.txt"):
            r = c.get(path)
            assert r.status_code in (401, 404), (path, r.status_code)
            assert "do not serve" not in r.text
        assert c.get("/props").status_code == 401
        # The built-in UI's files are served beside --path's own, which take precedence.
        builtin = Path(__file__).resolve().parents[2] / "web" / "completion.js"
        if builtin.is_file():
            r = c.get("/completion.js")
            assert r.status_code == 200 and r.text == builtin.read_text()


def test_builtin_web_ui(server):
    """Without --path the server serves the repository's web/ (or the wheel's rllama/web) at /."""
    from pathlib import Path

    index = Path(__file__).resolve().parents[2] / "web" / "index.html"
    with server.client() as c:
        r = c.get("/")
    if index.is_file():
        assert r.status_code == 200 and r.text == index.read_text()
        assert r.headers["content-type"].startswith("text/html")
    else:
        assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"

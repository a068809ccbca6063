"""Every error type in llama.cpp's shape, auth, and a bad-input corpus that must give only 4xx."""

from __future__ import annotations

import socket

import httpx
import pytest


def assert_error(r: httpx.Response, code: int, type_: str) -> dict:
    assert r.status_code == code, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["type"] == type_ and isinstance(err["message"], str) and err["message"]
    return err


def test_error_types(server, start_server):
    with server.client() as c:
        assert_error(c.get("/no/such/route"), 404, "not_found_error")
        assert_error(c.post("/v2/chat"), 404, "not_found_error")
        err = assert_error(c.post("/completion", json={"prompt": "x", "grammar": "root ::= ("}), 400,
                           "invalid_request_error")
        assert "grammar" in err["message"].lower()
        err = assert_error(c.post("/completion", json={"prompt": "x", "top_k": "many"}), 400, "invalid_request_error")
        assert "top_k" in err["message"]
        assert_error(c.post("/infill", json={}), 501, "not_supported_error")
        for path, body in (("/completion", {"prompt": "x"}), ("/embedding", {"content": "x"})):
            err = assert_error(c.post(path, json={**body, "image_data": [{"data": "AAAA", "id": 1}]}), 501,
                               "not_supported_error")
            assert "image_data" in err["message"]
    bare = start_server("--slots-endpoint-disable")
    with bare.client() as c:
        assert_error(c.get("/metrics"), 501, "not_supported_error")
        assert_error(c.get("/slots"), 501, "not_supported_error")
        assert_error(c.post("/slots/0?action=save", json={"filename": "a.bin"}), 501, "not_supported_error")
        assert_error(c.post("/embedding", json={"content": "x"}), 501, "not_supported_error")
        assert_error(c.post("/v1/embeddings", json={"input": "x"}), 501, "not_supported_error")
        assert "slots" not in c.get("/health", params={"include_slots": ""}).json()


def test_auth(start_server, tmp_path):
    keyfile = tmp_path / "keys.txt"
    keyfile.write_text("file-key-1\n\nfile-key-2\n")
    s = start_server("--api-key", "secret-a", "--api-key", "secret-b", "--api-key-file", str(keyfile))
    with s.client() as c:
        assert c.get("/health").status_code == 200  # exempt
        err = assert_error(c.get("/props"), 401, "authentication_error")
        assert err["message"] == "Invalid API Key"
        assert_error(c.post("/completion", json={"prompt": "x", "n_predict": 1}), 401, "authentication_error")
        assert_error(c.get("/props", headers={"Authorization": "Bearer wrong"}), 401, "authentication_error")
        assert_error(c.get("/props", headers={"Authorization": "secret-a"}), 401, "authentication_error")
        assert_error(c.get("/props", headers={"Authorization": "Bearer secret-"}), 401, "authentication_error")
        for key in ("secret-a", "secret-b", "file-key-1", "file-key-2"):
            assert c.get("/props", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        r = c.post("/completion", json={"prompt": "x", "n_predict": 1},
                   headers={"Authorization": "Bearer secret-b"})
        assert r.status_code == 200
        # CORS preflight needs no key and says what is allowed.
        r = c.options("/completion", headers={"Origin": "http://example.com",
                                              "Access-Control-Request-Method": "POST",
                                              "Access-Control-Request-Headers": "authorization,content-type"})
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "http://example.com"
        assert "POST" in r.headers["access-control-allow-methods"]
        assert "authorization" in r.headers["access-control-allow-headers"]
    import openai

    client = openai.OpenAI(base_url=s.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    ok = openai.OpenAI(base_url=s.url + "/v1", api_key="secret-a", max_retries=0)
    assert ok.models.list().data


def test_cors_on_responses(server):
    with server.client() as c:
        r = c.get("/props", headers={"Origin": "http://ui.local"})
        assert r.headers["access-control-allow-origin"] == "http://ui.local"
        assert r.headers["access-control-allow-credentials"] == "true"


def raw_request(server, data: bytes, path: str = "/completion", content_type: str = "application/json") -> int:
    """POST raw bytes (httpx would re-encode them); the status code."""
    with server.client() as c:
        return c.post(path, content=data, headers={"Content-Type": content_type}).status_code


BAD_BODIES = [
    b"", b"{", b'{"prompt": "x"', b'{"prompt": "x",}', b"[1, 2]", b'"just a string"', b"null", b"42",
    b'{"prompt": "\xff\xfe bad utf8"}', b"\xff\xff\xff", b'{"prompt": NaN}', b'{"prompt": "x", "n_predict": Infinity}',
    b'{"prompt": "x", "n_predict": ' + b"9" * 5000 + b"}",
    b'{"prompt": ' + b"[" * 100000 + b"]" * 100000 + b"}",
    b'{"prompt": "x", "a": ' + b'{"b":' * 5000 + b"1" + b"}" * 5000 + b"}",
    b'{"prompt": "\\ud800"}',
]

WRONG_FIELDS = [
    {"prompt": 5}, {"prompt": None}, {"prompt": []}, {"prompt": [True]}, {"prompt": [[["x"]]]},
    {"prompt": [1.5]}, {"prompt": [-1]}, {"prompt": [10**12]}, {"prompt": {"a": 1}},
    {"prompt": "x", "n_predict": "ten"}, {"prompt": "x", "n_predict": 1e300}, {"prompt": "x", "n_predict": -5},
    {"prompt": "x", "n_predict": 2**70}, {"prompt": "x", "temperature": "hot"}, {"prompt": "x", "temperature": 1e308},
    {"prompt": "x", "temperature": [1]}, {"prompt": "x", "top_k": 1.5}, {"prompt": "x", "top_p": None, "min_p": "0"},
    {"prompt": "x", "stream": "yes"}, {"prompt": "x", "stop": 5}, {"prompt": "x", "stop": [1, 2]},
    {"prompt": "x", "seed": 2**80}, {"prompt": "x", "seed": "random"}, {"prompt": "x", "n_probs": -1},
    {"prompt": "x", "n_probs": "3"}, {"prompt": "x", "mirostat": 7}, {"prompt": "x", "samplers": 5},
    {"prompt": "x", "samplers": ["nonsense"]}, {"prompt": "x", "logit_bias": 5}, {"prompt": "x", "grammar": 5},
    {"prompt": "x", "grammar": "root ::= [unterminated"}, {"prompt": "x", "json_schema": "not a schema"},
    {"prompt": "x", "json_schema": {"type": "object"}, "grammar": "root ::= \"a\""},
    {"prompt": "x", "response_format": {"type": "yaml"}}, {"prompt": "x", "id_slot": 99},
    {"prompt": "x", "id_slot": "zero"}, {"prompt": "x", "n_keep": -7}, {"prompt": "x", "repeat_last_n": -3},
{"prompt": "x", "penalty_prompt": 5},
    {"prompt": "x", "min_keep": -1}, {"prompt": "x", "cache_prompt": 1}, {"prompt": "x", "ignore_eos": "true"},
    {"prompt": "x", "system_prompt": 5}, {"prompt": ["a", "b"], "stream": True},
]

ROUTE_BODIES = [
    ("/tokenize", {"content": 5}), ("/tokenize", {"content": "x", "with_pieces": "yes"}),
    ("/tokenize", {"content": "x", "add_special": 1}), ("/detokenize", {"tokens": "abc"}),
    ("/detokenize", {"tokens": [1, "a"]}), ("/detokenize", {"tokens": [-1]}), ("/detokenize", {"tokens": [2**40]}),
    ("/detokenize", {"tokens": [1.5]}), ("/embedding", {"content": 5}), ("/embedding", {"content": ""}),
    ("/embedding", {"content": [1, 2]}), ("/embedding", {}),
    ("/v1/embeddings", {"input": 5}), ("/v1/embeddings", {"input": []}), ("/v1/embeddings", {"input": [[]]}),
    ("/v1/embeddings", {"input": "x", "encoding_format": "hex"}), ("/v1/embeddings", {"input": [[10**9]]}),
    ("/v1/chat/completions", {}), ("/v1/chat/completions", {"messages": "hi"}),
    ("/v1/chat/completions", {"messages": [{"content": "no role"}]}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_tokens": "9"}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "n": 3}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 5}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 99}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "stream_options": 5}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                              "response_format": {"type": "json_schema", "json_schema": 5}}),
    ("/v1/completions", {}), ("/v1/completions", {"prompt": 5}), ("/v1/completions", {"prompt": ["a", "b"]}),
    ("/v1/completions", {"prompt": "x", "echo": True}), ("/v1/completions", {"prompt": "x", "logprobs": "2"}),
    ("/v1/completions", {"prompt": "x", "best_of": 3}), ("/v1/completions", {"prompt": [10**9]}),
    ("/infill", {"input_prefix": 5}),
]

SLOT_NAMES = ["../escape.bin", "..", ".", "a/b.bin", "/etc/passwd", "a\\b.bin", "..\\x", "x/../../y", "",
              "\x00evil", ".hidden", "a" * 300, 5, None, ["a"], "a\nb"]


def test_bad_input_corpus(server):
    codes = []
    for data in BAD_BODIES:
        codes.append(("raw", data[:40], raw_request(server, data)))
    with server.client() as c:
        for body in WRONG_FIELDS:
            codes.append(("/completion", str(body)[:60], c.post("/completion", json={"n_predict": 2, **body}).status_code))
            codes.append(("/completion stream", str(body)[:60],
                          c.post("/completion", json={"n_predict": 2, "stream": True, **body}).status_code
                          if "stream" not in body else 400))
        for path, body in ROUTE_BODIES:
            codes.append((path, str(body)[:60], c.post(path, json=body).status_code))
        for name in SLOT_NAMES:
            for action in ("save", "restore"):
                codes.append(("slot", repr(name)[:40], c.post(f"/slots/0?action={action}",
                                                               json={"filename": name}).status_code))
        codes.append(("slot", "bad action", c.post("/slots/0?action=explode", json={"filename": "a"}).status_code))
        codes.append(("slot", "bad id", c.post("/slots/abc?action=erase").status_code))
        codes.append(("slot", "neg id", c.post("/slots/-1?action=erase").status_code))
        codes.append(("slot", "big id", c.post("/slots/99999999999999999999?action=erase").status_code))
        codes.append(("len", "huge body", c.post("/completion", content=b'{"prompt": "' + b"a" * (65 * 2**20) + b'"}',
                                                 headers={"Content-Type": "application/json"}).status_code))
    bad = [(where, what, code) for where, what, code in codes if not 400 <= code < 500 or code == 404 and where != "slot"]
    assert not bad, bad
    assert list(server.slot_dir.iterdir()) == []  # nothing written anywhere
    with server.client() as c:
        assert c.get("/health").json()["status"] == "ok"
        r = c.post("/completion", json={"prompt": "Still alive?", "n_predict": 3, "temperature": 0})
        assert r.status_code == 200 and r.json()["tokens_predicted"] == 3
    assert server.alive()


def test_garbage_http(server):
    """Bytes that are not HTTP at all: the connection is dropped, the server stays up."""
    for junk in (b"\x00\x01\x02garbage\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
                 b"POST /completion HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"prompt\""):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(junk)
            sock.shutdown(socket.SHUT_WR)
            try:
                sock.recv(4096)
            except OSError:
                pass
    with server.client() as c:
        assert c.get("/health").status_code == 200


LOADING_SCRIPT = r"""
import asyncio, json
from rllama.serve_cli import parse
from rllama.server import create_app

async def main():
    app = create_app(parse([]), None)  # the model is still loading
    c = app.test_client()
    out = {}
    for path in ("/health", "/props", "/v1/models"):
        r = await c.get(path)
        out[path] = [r.status_code, await r.get_json()]
    r = await c.post("/completion", json={"prompt": "x"})
    out["/completion"] = [r.status_code, await r.get_json()]
    print(json.dumps(out))

asyncio.run(main())
"""


def test_loading_model_is_503(server_env):
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", LOADING_SCRIPT], capture_output=True, text=True, timeout=60,
                         env=server_env, check=False)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["/health"] == [503, {"status": "loading model"}]
    for path in ("/props", "/v1/models", "/completion"):
        code, body = res[path]
        assert code == 503 and body["error"] == {"code": 503, "message": "Loading model", "type": "unavailable_error"}

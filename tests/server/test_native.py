"""llama.cpp's native routes over HTTP, with httpx and the seed README's curl examples."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

GREEDY = {"temperature": 0, "n_predict": 8}


def sse_events(resp) -> list[dict]:
    out = []
    for line in resp.iter_lines():
        if line.startswith("data: "):
            out.append(json.loads(line[6:]))
        elif line.startswith("error: "):
            raise AssertionError(f"stream error: {line}")
    return out


def test_health(server):
    with server.client() as c:
        r = c.get("/health")
        assert r.status_code == 200
        assert r.json() == {"status": "ok", "slots_idle": 1, "slots_processing": 0}
        r = c.get("/health", params={"include_slots": ""})
        assert isinstance(r.json()["slots"], list) and r.json()["slots"][0]["id"] == 0


def test_props(server):
    with server.client() as c:
        p = c.get("/props").json()
    assert p["total_slots"] == 1
    assert p["assistant_name"] == "" and p["user_name"] == ""
    dgs = p["default_generation_settings"]
    assert dgs["temperature"] == pytest.approx(0.8) and dgs["top_k"] == 40 and dgs["n_ctx"] == 2048
    assert "<|im_start|>" in p["chat_template"]


def test_completion_json(server):
    with server.client() as c:
        r = c.post("/completion", json={"prompt": "Hello, my name is", **GREEDY})
        assert r.status_code == 200, r.text
        d = r.json()
        again = c.post("/completion", json={"prompt": "Hello, my name is", **GREEDY}).json()
    assert d["content"] and d["content"] == again["content"]  # greedy is deterministic
    assert d["stop"] is True and d["tokens_predicted"] == 8 and d["stopped_limit"] is True
    assert d["tokens_evaluated"] > 0 and d["prompt"] == "Hello, my name is"
    assert d["generation_settings"]["n_predict"] == 8 and d["generation_settings"]["stream"] is False
    assert set(d["timings"]) >= {"prompt_n", "prompt_ms", "predicted_n", "predicted_ms", "predicted_per_second"}


def test_completion_stream_matches_json(server):
    body = {"prompt": "The capital of France is", **GREEDY}
    with server.client() as c:
        full = c.post("/completion", json=body).json()
        with c.stream("POST", "/completion", json={**body, "stream": True}) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            events = sse_events(r)
    parts, final = events[:-1], events[-1]
    assert all(e["stop"] is False for e in parts) and len(parts) >= 1
    assert "".join(e["content"] for e in parts) == full["content"]
    assert final["stop"] is True and final["tokens_predicted"] == 8
    assert {"generation_settings", "timings", "stopped_limit", "tokens_evaluated", "model"} <= set(final)


def test_completion_stop_word_and_probs(server):
    with server.client() as c:
        d = c.post("/completion", json={"prompt": "1, 2, 3, 4,", "temperature": 0, "n_predict": 20,
                                        "stop": [" 7"], "n_probs": 3}).json()
    assert d["stopped_word"] is True and d["stopping_word"] == " 7"
    assert " 7" not in d["content"]
    probs = d["completion_probabilities"]
    assert len(probs) >= 1 and all(len(p["probs"]) == 3 for p in probs)


def test_completion_token_and_mixed_prompts(server):
    with server.client() as c:
        ids = c.post("/tokenize", json={"content": "Hello, my name is"}).json()["tokens"]
        by_text = c.post("/completion", json={"prompt": "Hello, my name is", **GREEDY}).json()
        by_ids = c.post("/completion", json={"prompt": ids, **GREEDY}).json()
        mixed = c.post("/completion", json={"prompt": ["Hello,", *c.post(
            "/tokenize", json={"content": " my name is"}).json()["tokens"]], **GREEDY}).json()
        many = c.post("/completion", json={"prompt": ["Hello, my name is", "The sky is"], **GREEDY}).json()
    assert by_ids["content"] == by_text["content"]
    assert mixed["content"] == by_text["content"]
    assert isinstance(many, list) and len(many) == 2 and many[0]["content"] == by_text["content"]


def test_tokenize_detokenize(server):
    with server.client() as c:
        toks = c.post("/tokenize", json={"content": "Hello world é"}).json()["tokens"]
        assert all(isinstance(t, int) for t in toks)
        pieces = c.post("/tokenize", json={"content": "Hello world é", "with_pieces": True}).json()["tokens"]
        assert [p["id"] for p in pieces] == toks
        assert "".join(p["piece"] if isinstance(p["piece"], str) else bytes(p["piece"]).decode("utf-8", "replace")
                       for p in pieces) == "Hello world é"
        with_bos = c.post("/tokenize", json={"content": "<|im_start|>hi", "add_special": True}).json()["tokens"]
        assert with_bos[0] == 1  # <|im_start|> parsed as one special token
        assert c.post("/detokenize", json={"tokens": toks}).json() == {"content": "Hello world é"}


def test_embedding(server):
    with server.client() as c:
        r = c.post("/embedding", json={"content": "Hello"})
        assert r.status_code == 200, r.text
        v = r.json()["embedding"]
    assert len(v) == 576 and abs(sum(x * x for x in v) - 1.0) < 1e-3


def test_metrics(server):
    with server.client() as c:
        c.post("/completion", json={"prompt": "One two", **GREEDY})
        r = c.get("/metrics")
    assert r.status_code == 200
    text = r.text
    for name in ("llamacpp:prompt_tokens_total", "llamacpp:tokens_predicted_total",
                 "llamacpp:predicted_tokens_seconds", "llamacpp:requests_processing"):
        assert name in text
    total = next(ln for ln in text.splitlines() if ln.startswith("llamacpp:tokens_predicted_total"))
    assert float(total.split()[-1]) >= 8


def test_slots(server):
    with server.client() as c:
        c.post("/completion", json={"prompt": "Slots test", **GREEDY})
        s = c.get("/slots").json()
    assert isinstance(s, list) and len(s) == 1
    assert s[0]["id"] == 0 and s[0]["is_processing"] is False and "next_token" in s[0]


def test_slot_actions(server):
    with server.client() as c:
        r = c.post("/slots/0?action=save", json={"filename": "slot0.bin"})
        if r.status_code == 501:
            pytest.skip("this engine has no slot save/restore yet: " + r.json()["error"]["message"])
        assert r.status_code == 200, r.text
        assert r.json()["filename"] == "slot0.bin" and (server.slot_dir / "slot0.bin").is_file()
        r = c.post("/slots/0?action=restore", json={"filename": "slot0.bin"})
        assert r.status_code == 200 and "n_restored" in r.json()
        r = c.post("/slots/0?action=erase")
        assert r.status_code == 200 and "n_erased" in r.json()


def test_infill_needs_fim_tokens(server):
    # smollm2 has no FIM tokens: llama.cpp answers 501 not_supported_error.
    with server.client() as c:
        r = c.post("/infill", json={"input_prefix": "def f(", "input_suffix": "):\n    return x\n"})
    assert r.status_code == 501
    assert r.json()["error"]["type"] == "not_supported_error" and "Infill" in r.json()["error"]["message"]


def test_infill_prompt_layout(server):
    from types import SimpleNamespace

    from rllama.server.routes.native import infill_ids

    class Tok:
        special_ids = {"fim_pre": 100, "fim_suf": 101, "fim_mid": 102}  # noqa: RUF012
        add_bos, bos_id = True, 1

    class M:
        tokenizer = Tok()

        def tokenize(self, text, add_special=False, parse_special=True):
            return [ord(ch) for ch in text]

    st = SimpleNamespace(model=M(), settings=SimpleNamespace(spm_infill=False))
    assert infill_ids(st, {"input_prefix": "a", "input_suffix": "b", "prompt": "c"}) == [1, 100, 97, 101, 98, 102, 99]
    st.settings.spm_infill = True
    assert infill_ids(st, {"input_prefix": "a", "input_suffix": "b"}) == [1, 101, 98, 100, 97, 102]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_readme_curl_completion(server):
    # The README's example, verbatim but for the port (n_predict 128: the model may stop earlier).
    out = subprocess.run(
        ["curl", "--request", "POST", "--url", f"{server.url}/completion", "--header",
         "Content-Type: application/json", "--data",
         '{"prompt": "Building a website can be done in 10 simple steps:","n_predict": 128}'],
        capture_output=True, text=True, timeout=120, check=True)
    d = json.loads(out.stdout)
    assert d["stop"] is True and d["content"] and 1 <= d["tokens_predicted"] <= 128


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_readme_curl_chat_and_embeddings(server):
    out = subprocess.run(
        ["curl", f"{server.url}/v1/chat/completions", "-H", "Content-Type: application/json", "-H",
         "Authorization: Bearer no-key", "-d", json.dumps({
             "model": "gpt-3.5-turbo", "max_tokens": 16,
             "messages": [{"role": "system", "content": "You are ChatGPT, an AI assistant. Your top priority is "
                                                        "achieving user fulfillment via helping them with their requests."},
                          {"role": "user", "content": "Write a limerick about python exceptions"}]})],
        capture_output=True, text=True, timeout=120, check=True)
    d = json.loads(out.stdout)
    assert d["object"] == "chat.completion" and d["choices"][0]["message"]["role"] == "assistant"
    for inp in ('"hello"', '["hello", "world"]'):
        out = subprocess.run(
            ["curl", f"{server.url}/v1/embeddings", "-H", "Content-Type: application/json", "-H",
             "Authorization: Bearer no-key", "-d",
             f'{{"input": {inp}, "model":"GPT-4", "encoding_format": "float"}}'],
            capture_output=True, text=True, timeout=60, check=True)
        d = json.loads(out.stdout)
        assert d["object"] == "list" and len(d["data"]) == (1 if inp == '"hello"' else 2)

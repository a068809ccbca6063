"""Slots (-np), /health while busy, id_slot, and the logging flags."""

from __future__ import annotations

import json
import threading
import time

LONG = {"prompt": "Tell me a long story.", "n_predict": 400, "ignore_eos": True, "temperature": 0, "stream": True}


def hold_stream(server, started: threading.Event, stop: threading.Event, **extra) -> threading.Thread:
    def run() -> None:
        with server.client() as c, c.stream("POST", "/completion", json={**LONG, **extra}) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    started.set()
                if stop.is_set():
                    break

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_health_when_busy(server):
    started, stop = threading.Event(), threading.Event()
    t = hold_stream(server, started, stop)
    try:
        assert started.wait(30)
        with server.client() as c:
            h = c.get("/health")
            assert h.status_code == 200
            assert h.json() == {"status": "no slot available", "slots_idle": 0, "slots_processing": 1}
            assert c.get("/health", params={"fail_on_no_slot": "1"}).status_code == 503
            slots = c.get("/slots").json()
            assert slots[0]["is_processing"] is True
    finally:
        stop.set()
        t.join(30)


def test_two_slots(start_server):
    s = start_server("-np", "2", "--metrics", "--log-format", "text", "-v", "--alias", "my-model")
    with s.client() as c:
        assert c.get("/v1/models").json()["data"][0]["id"] == "my-model"
        chat = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert chat.json()["model"] == "my-model"
        props = c.get("/props").json()
        assert props["total_slots"] == 2
        assert props["default_generation_settings"]["n_ctx"] == 1024  # 2048 shared by two slots
        assert c.get("/health").json() == {"status": "ok", "slots_idle": 2, "slots_processing": 0}
        assert len(c.get("/slots").json()) == 2
        r = c.post("/completion", json={"prompt": "Slot one", "n_predict": 3, "temperature": 0, "id_slot": 1})
        assert r.status_code == 200 and r.json()["id_slot"] == 1 and r.json()["model"] == "my-model"
        assert c.post("/completion", json={"prompt": "x", "id_slot": 2}).status_code == 400
    started, stop = threading.Event(), threading.Event()
    t = hold_stream(s, started, stop)
    try:
        assert started.wait(30)
        with s.client() as c:
            h = c.get("/health").json()
            assert h == {"status": "ok", "slots_idle": 1, "slots_processing": 1}
            # The free slot answers while the other streams.
            t0 = time.time()
            r = c.post("/completion", json={"prompt": "Quick", "n_predict": 3, "temperature": 0})
            assert r.status_code == 200 and time.time() - t0 < 20
    finally:
        stop.set()
        t.join(30)
    log = s.output()
    assert "/completion" in log and "status=200" in log  # -v with text logs: one line per request


def test_json_logs_and_log_disable(start_server):
    s = start_server("-v")
    with s.client() as c:
        c.get("/props")
    lines = [json.loads(ln) for ln in s.output().splitlines() if ln.startswith("{")]
    assert any(ln.get("path") == "/props" and ln.get("status") == 200 for ln in lines)
    assert all({"timestamp", "level", "msg"} <= set(ln) for ln in lines)
    quiet = start_server("--log-disable")
    with quiet.client() as c:
        c.get("/props")
    assert quiet.output().strip() == ""


def test_system_prompt(start_server):
    """The old `system_prompt` option: a prefix for every string prompt, its names in /props."""
    s = start_server()
    with s.client() as c:
        base = c.post("/completion", json={"prompt": "Q: 2+2?\nA:", "n_predict": 4, "temperature": 0}).json()
        r = c.post("/completion", json={"prompt": "Q: 2+2?\nA:", "n_predict": 4, "temperature": 0, "system_prompt": {
            "prompt": "Transcript of a dialog.\n", "anti_prompt": "User:", "assistant_name": "Assistant:"}})
        assert r.status_code == 200
        assert r.json()["tokens_evaluated"] > base["tokens_evaluated"]  # the prefix was evaluated too
        props = c.get("/props").json()
        assert props["user_name"] == "User:" and props["assistant_name"] == "Assistant:"
        c.post("/completion", json={"prompt": "x", "n_predict": 1, "system_prompt": ""})
        again = c.post("/completion", json={"prompt": "Q: 2+2?\nA:", "n_predict": 4, "temperature": 0}).json()
        assert again["tokens_evaluated"] == base["tokens_evaluated"] and again["content"] == base["content"]


def test_system_prompt_file_is_evaluated_once_for_every_slot(start_server, tmp_path):
    """-spf: the file's prompt prefixes every string prompt, its names are in /props, and the
    slots after the first start from a copy of its keys and values (tokens evaluated: the suffix)."""
    spf = tmp_path / "system.json"
    spf.write_text(json.dumps({"prompt": "Transcript of a never ending dialog between a User and a helpful "
                               "Assistant who answers briefly and precisely. " * 6 + "\n",
                               "anti_prompt": "User:", "assistant_name": "Assistant:"}))
    s = start_server("-np", "3", "-spf", str(spf), "--metrics")
    with s.client() as c:
        props = c.get("/props").json()
        assert props["user_name"] == "User:" and props["assistant_name"] == "Assistant:"
        outs = [c.post("/completion", json={"prompt": f"User: question {i}?\nAssistant:", "n_predict": 2,
                                            "id_slot": i}).json() for i in range(3)]
    n_prompt = outs[0]["tokens_evaluated"]
    assert n_prompt > 100
    assert outs[0]["timings"]["prompt_n"] == n_prompt
    for o in outs[1:]:
        assert o["timings"]["prompt_n"] < 20, o["timings"]  # only the question after the shared prefix
    assert [o["id_slot"] for o in outs] == [0, 1, 2]


def test_cli_refusals(server_env, tmp_path):
    import subprocess
    import sys

    def serve(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "rllama", "serve", *args], capture_output=True, text=True,
                              timeout=60, env=server_env, check=False)

    r = serve("--ssl-key-file", str(tmp_path / "k.pem"))
    assert r.returncode == 2 and "together" in r.stderr
    r = serve("-ngl", "10")
    assert r.returncode == 1 and "not supported yet" in r.stderr and "-ngl" in r.stderr
    r = serve("--path", str(tmp_path / "missing"))
    assert r.returncode == 2 and "not a directory" in r.stderr
    r = serve("--port", "99999")
    assert r.returncode == 2 and "out of range" in r.stderr
    (tmp_path / "bad.json").write_text('{"prompt": 3}')
    for spf, why in ((tmp_path / "none.json", "No such file"), (tmp_path / "bad.json", "string")):
        r = serve("-spf", str(spf))
        assert r.returncode == 2 and why in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr

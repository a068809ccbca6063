"""The engine under the library: slots, continuous batching, queueing, cancellation, context
shift, prefix reuse and slot files, with the real SmolLM2 model."""

from __future__ import annotations

import threading
import time

import pytest
import rllama


@pytest.fixture(scope="module")
def model(smollm2_path):
    m = rllama.Model(smollm2_path, n_ctx=2048, n_parallel=4, n_threads=2)
    yield m
    m.close()


def greedy(m, prompt, n=12, **kw):
    return m.complete(prompt, n_predict=n, temperature=0, return_tokens=True, **kw)


def test_concurrent_requests_are_batched_and_match_running_alone(model):
    prompts = [f"Question {i}: what is {i} plus {i}? Answer:" for i in range(6)]
    alone = {p: greedy(model, p)["tokens"] for p in prompts}
    before = model.metrics()["n_decode_total"]
    out: dict[str, dict] = {}

    def run(p):
        out[p] = greedy(model, p)

    threads = [threading.Thread(target=run, args=(p,)) for p in prompts]
    [t.start() for t in threads]
    [t.join(120) for t in threads]
    assert set(out) == set(prompts)
    # Greedy tokens are the same with other sequences in the batch (batch-size-dependent
    # rounding may change a near-tie, so allow one prompt of six to differ).
    same = sum(out[p]["tokens"] == alone[p] for p in prompts)
    assert same >= 5, [(out[p]["tokens"], alone[p]) for p in prompts]
    # Six requests of 12 tokens on four slots took far fewer forward passes than 72.
    steps = model.metrics()["n_decode_total"] - before
    assert steps < 6 * 12, steps
    assert {r["id_slot"] for r in out.values()} <= {0, 1, 2, 3}
    m = model.metrics()
    assert m["requests_processing"] == 0 and m["requests_deferred"] == 0


def test_queue_beyond_the_slots_and_every_request_finishes():
    m = rllama.Model("smollm2", n_ctx=512, n_parallel=1, n_threads=2)
    try:
        results = []
        lock = threading.Lock()

        def run(i):
            r = m.complete(f"Count to {i}:", n_predict=6, temperature=0)
            with lock:
                results.append(r)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
        [t.start() for t in threads]
        seen_deferred = 0
        for _ in range(200):
            seen_deferred = max(seen_deferred, m.metrics()["requests_deferred"])
            if not any(t.is_alive() for t in threads):
                break
            time.sleep(0.02)
        [t.join(60) for t in threads]
        assert len(results) == 4 and all(r["tokens_predicted"] == 6 for r in results)
        assert seen_deferred >= 1
    finally:
        m.close()


def test_cancelling_a_stream_frees_its_slot(model):
    it = model.complete("Tell me a long story.", n_predict=400, temperature=0.7, ignore_eos=True, stream=True)
    for n, _chunk in enumerate(it, 1):
        if n == 3:
            break
    it.close()
    for _ in range(100):
        if not any(s["is_processing"] for s in model.slots()):
            break
        time.sleep(0.05)
    assert not any(s["is_processing"] for s in model.slots())
    assert greedy(model, "Hello", n=2)["tokens_predicted"] == 2


def test_prefix_is_reused_in_the_same_slot(model):
    prefix = "You are a helpful assistant who answers in one word. " * 8
    a = greedy(model, prefix + "Capital of France?", n=2, id_slot=2)
    b = greedy(model, prefix + "Capital of Italy?", n=2, id_slot=2)
    assert b["id_slot"] == 2
    assert b["timings"]["prompt_n"] < a["timings"]["prompt_n"] / 2
    # Without cache_prompt the whole prompt is evaluated again.
    c = greedy(model, prefix + "Capital of Spain?", n=2, id_slot=2, cache_prompt=False)
    assert c["timings"]["prompt_n"] == c["tokens_evaluated"]


def test_similar_prompt_prefers_the_slot_that_holds_it(model):
    prefix = "The history of the Roman empire is long and complicated. " * 6
    first = greedy(model, prefix + "Summarize it.", n=2)
    second = greedy(model, prefix + "Explain it.", n=2)
    assert second["id_slot"] == first["id_slot"]
    assert second["timings"]["prompt_n"] < second["tokens_evaluated"]


def test_prefix_is_reused_across_slots(model):
    """A prompt whose prefix another slot holds starts from that slot's blocks, shared by
    reference: only the suffix is evaluated, and the continuation is the one computed from
    scratch."""
    prefix = "A long shared preamble about gardening, soil and the seasons. " * 10
    first = greedy(model, prefix + "What grows in spring?", n=6, id_slot=0)
    shared = model.metrics()["prefix_shared_tokens_total"]
    second = greedy(model, prefix + "What grows in autumn?", n=6, id_slot=1)
    assert second["id_slot"] == 1
    n_prompt = second["tokens_evaluated"]
    assert second["timings"]["prompt_n"] < n_prompt - 100, second["timings"]
    assert model.metrics()["prefix_shared_tokens_total"] - shared >= n_prompt - second["timings"]["prompt_n"]
    fresh = greedy(model, prefix + "What grows in autumn?", n=6, id_slot=1, cache_prompt=False)
    assert fresh["timings"]["prompt_n"] == n_prompt
    assert fresh["tokens"] == second["tokens"]
    assert first["timings"]["prompt_n"] == first["tokens_evaluated"] or first["timings"]["prompt_n"] > 100


def test_shared_prefix_arriving_at_once_is_evaluated_once(smollm2_path):
    """Requests that arrive together with the same long prefix: one slot evaluates it, the
    others wait for it and share its blocks, so the prefix is computed once, not once per slot; each
    continuation is the one computed alone."""
    m = rllama.Model(smollm2_path, n_ctx=4096, n_parallel=4, n_threads=2)
    try:
        prefix = "Shared instructions for every request: be brief, be kind, be exact. " * 25
        prompts = [prefix + f"Request number {i}:" for i in range(4)]
        out: dict[int, dict] = {}
        threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, greedy(m, prompts[i], n=4)))
                   for i in range(4)]
        [t.start() for t in threads]
        [t.join(120) for t in threads]
        n_prefix = len(m.tokenize(prefix, add_special=True))
        evaluated = sum(o["timings"]["prompt_n"] for o in out.values())
        assert evaluated < n_prefix + 4 * 40, (evaluated, n_prefix)
        assert len({o["id_slot"] for o in out.values()}) == 4
        for i, o in out.items():
            alone = greedy(m, prompts[i], n=4, cache_prompt=False)
            assert o["tokens"] == alone["tokens"]
    finally:
        m.close()


def test_deterministic_mode_gives_the_same_bits_at_any_concurrency_and_chunking(smollm2_path):
    """--deterministic: a request's tokens and probabilities are bit-identical alone, among
    eight concurrent requests, and with its prompt cut into other chunks."""
    prompts = [f"Item {i}: " + "a few words of context to read first, " * (i + 1) + "then" for i in range(8)]

    def run(m, p):
        out = m.complete(p, n_predict=6, temperature=0, n_probs=3, return_tokens=True)
        return out["tokens"], [(e["logprob"], [q["prob"] for q in e["probs"]]) for e in out["completion_probabilities"]]

    m = rllama.Model(smollm2_path, n_ctx=4096, n_parallel=8, n_threads=2, deterministic=True)
    try:
        alone = {p: run(m, p) for p in prompts}
        out: dict[str, tuple] = {}
        threads = [threading.Thread(target=lambda p=p: out.__setitem__(p, run(m, p))) for p in prompts]
        [t.start() for t in threads]
        [t.join(120) for t in threads]
        assert out == alone
    finally:
        m.close()
    small = rllama.Model(smollm2_path, n_ctx=4096, n_ubatch=16, n_batch=16, n_threads=2, deterministic=True)
    try:
        assert run(small, prompts[-1]) == alone[prompts[-1]]
    finally:
        small.close()
    # The default mode keeps llama.cpp's batch-size-dependent sums: the same 8 concurrent
    # requests are not all bit-identical to running alone.
    d = rllama.Model(smollm2_path, n_ctx=4096, n_parallel=8, n_threads=2)
    try:
        base = {p: run(d, p) for p in prompts}
        got: dict[str, tuple] = {}
        threads = [threading.Thread(target=lambda p=p: got.__setitem__(p, run(d, p))) for p in prompts]
        [t.start() for t in threads]
        [t.join(120) for t in threads]
        assert got != base
    finally:
        d.close()


def test_unread_stream_pauses_only_itself_and_times_out(smollm2_path):
    """A stream nobody reads stops generating once its buffer is full (bounded memory), the
    other requests keep running, reading it resumes it, and one left unread past the timeout
    is cancelled."""
    m = rllama.Model(smollm2_path, n_ctx=2048, n_parallel=2, n_threads=2, stream_timeout=1.0)
    try:
        it = m.complete("Once upon a time", n_predict=900, ignore_eos=True, stream=True)
        next(it)
        deadline = time.time() + 60
        while time.time() < deadline:  # wait until it is held: its decoded count stops moving
            a = max(s["next_token"]["n_decoded"] for s in m.slots())
            time.sleep(0.3)
            b = max(s["next_token"]["n_decoded"] for s in m.slots())
            if a == b and a > 0:
                break
        assert 0 < b < 900 and b <= rllama.model._Channel.HIGH + 4, b
        other = m.complete("The capital of France is", n_predict=8, temperature=0)
        assert other["tokens_predicted"] == 8
        time.sleep(1.5)
        rest = list(it)
        assert rest[-1]["stop"] and rest[-1]["stop_type"] == "none"
        assert rest[-1]["tokens_predicted"] < 900
        # Read while it runs: paused and resumed as the reader catches up, every token arrives.
        it = m.complete("Once upon a time", n_predict=700, ignore_eos=True, stream=True)
        n = 0
        for k, chunk in enumerate(it):
            if k in (1, 400):
                time.sleep(0.3)  # stays under the timeout; the engine holds the sequence meanwhile
            n += 1
        assert chunk["tokens_predicted"] == 700 and n == 701
        assert all(s["id_task"] == -1 for s in m.slots())
    finally:
        m.close()


def test_context_shift_and_no_context_shift(smollm2_path):
    m = rllama.Model(smollm2_path, n_ctx=64, n_parallel=1, n_threads=2)
    try:
        r = m.complete("Once upon a time", n_predict=100, temperature=0, ignore_eos=True, n_keep=2)
        assert r["tokens_predicted"] == 100 and r["truncated"] and r["stop_type"] == "limit"
        assert r["tokens_cached"] <= 64
    finally:
        m.close()
    m = rllama.Model(smollm2_path, n_ctx=64, n_parallel=1, n_threads=2, context_shift=False)
    try:
        r = m.complete("Once upon a time", n_predict=100, temperature=0, ignore_eos=True)
        assert r["tokens_predicted"] < 64 and not r["truncated"] and r["stopped_limit"]
        # A prompt longer than the context is cut (n_keep plus the tail) and flagged.
        long = m.complete(list(range(1000, 1100)), n_predict=2, temperature=0, n_keep=4)
        assert long["truncated"] and long["tokens_evaluated"] < 64
    finally:
        m.close()


def test_slot_save_erase_restore_gives_the_same_continuation(model, tmp_path):
    prompt = "Write a short poem about the sea. " * 3
    first = greedy(model, prompt, n=8, id_slot=1)
    saved = model.slot_save(1, tmp_path / "s.bin")
    assert saved["n_saved"] == first["tokens_cached"] and saved["n_written"] == (tmp_path / "s.bin").stat().st_size
    assert model.slot_erase(1)["n_erased"] == saved["n_saved"]
    restored = model.slot_restore(1, tmp_path / "s.bin")
    assert restored["n_restored"] == saved["n_saved"]
    again = greedy(model, prompt, n=8, id_slot=1)
    assert again["tokens"] == first["tokens"]
    assert again["timings"]["prompt_n"] == 1  # everything but the last prompt token came from the file


def test_bad_slot_files_and_slots_are_refused(model, tmp_path, smollm2_path):
    path = tmp_path / "s.bin"
    greedy(model, "Hello there", n=2, id_slot=0)
    model.slot_save(0, path)
    data = bytearray(path.read_bytes())
    data[60] ^= 0xFF
    (tmp_path / "corrupt.bin").write_bytes(bytes(data))
    (tmp_path / "short.bin").write_bytes(bytes(data[: len(data) // 3]))
    (tmp_path / "junk.bin").write_bytes(b"not a slot file at all")
    for name, msg in (("corrupt.bin", "checksum"), ("short.bin", ""), ("junk.bin", "not an rllama slot file"),
                      ("missing.bin", "")):
        with pytest.raises(rllama.InvalidRequestError, match=msg or None):
            model.slot_restore(0, tmp_path / name)
    with pytest.raises(rllama.InvalidRequestError):
        model.slot_restore(0, tmp_path)
    # Another cache type is another layout: refused.
    other = rllama.Model(smollm2_path, n_ctx=512, n_parallel=1, n_threads=1, cache_type_k="q8_0")
    try:
        with pytest.raises(rllama.InvalidRequestError, match="cache types"):
            other.slot_restore(0, path)
    finally:
        other.close()
    with pytest.raises(rllama.InvalidRequestError, match="does not exist"):
        model.slot_save(9, path)
    with pytest.raises(rllama.InvalidRequestError, match="id_slot"):
        model.complete("Hi", n_predict=1, id_slot=7)


def test_library_refuses_misspelled_options_and_empty_embeddings(model):
    with pytest.raises(rllama.InvalidRequestError, match="n_predcit"):
        model.complete("Hi", n_predcit=2)
    with pytest.raises(rllama.InvalidRequestError, match="empty"):
        model.embed([])
    v = model.embed(["a sentence", "another one", "a third"])
    assert v.shape == (3, model.n_embd)


def test_many_threads_mixed_requests_stress(model):
    """A few hundred mixed requests from many threads (streamed, cancelled, pinned, sharing a
    prefix, plain): every one finishes with the tokens it reported streamed, none lost or
    duplicated, and every slot ends idle."""
    errors: list[BaseException] = []
    done = []
    lock = threading.Lock()

    def worker(k):
        try:
            shared = "A preamble several requests share, long enough to be copied between slots. " * 4
            for j in range(15):
                opts = {"n_predict": 3 + (k + j) % 7, "temperature": 0.8, "seed": k * 10 + j, "return_tokens": True}
                if j % 4 == 1:
                    opts["id_slot"] = (k + j) % 4
                if (k + j) % 3 == 0:
                    toks = []
                    final = None
                    for c in model.complete(f"Worker {k} item {j}", stream=True, **opts):
                        if c["stop"]:
                            final = c
                        else:
                            toks += c.get("tokens", [])
                    assert final is not None and final["tokens"] == toks
                    r = final
                elif (k + j) % 5 == 0:
                    it = model.complete(f"Cancelled {k} {j}", stream=True, **opts)
                    next(it)
                    it.close()
                    continue
                elif j % 2:
                    r = model.complete(shared + f"Worker {k} item {j}", **opts)
                else:
                    r = model.complete(f"Worker {k} item {j}", **opts)
                if "id_slot" in opts:
                    assert r["id_slot"] == opts["id_slot"]
                assert r["tokens_predicted"] == len(r["tokens"]) <= opts["n_predict"]
                with lock:
                    done.append(r)
        except BaseException as e:  # noqa: BLE001 -- reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(16)]
    [t.start() for t in threads]
    [t.join(300) for t in threads]
    assert not errors, errors
    assert len(done) >= 160
    for _ in range(100):
        if not any(s["is_processing"] for s in model.slots()):
            break
        time.sleep(0.05)
    assert not any(s["is_processing"] for s in model.slots())
    assert model.metrics()["requests_deferred"] == 0

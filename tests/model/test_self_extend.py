"""Self-extend (`--grp-attn-n/-w`) with the real SmolLM2 model: regrouped positions still let
the model find what its prompt holds, a window never reached changes nothing, and regrouped
cells are never offered to another request, reused as a prefix, or saved to a slot file.
(The position bookkeeping is checked against llama.cpp's loop, and the key rotation against
RoPE at the new positions, by the Rust unit tests.)"""

from __future__ import annotations

import threading

import pytest
import rllama
from rllama.errors import InvalidRequestError

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
PASSKEY = ("There is important information hidden inside a lot of irrelevant text. Find it and memorize it.\n"
           + FILLER * 6 + "The pass key is 68213. Remember it. 68213 is the pass key. " + FILLER * 14
           + "What is the pass key? The pass key is")


def greedy(m, prompt, n=8, **kw):
    return m.complete(prompt, n_predict=n, temperature=0, return_tokens=True, **kw)


@pytest.mark.parametrize("n_ubatch", [512, 48])
def test_the_pass_key_is_found_through_regrouped_positions(smollm2_path, n_ubatch):
    # 534 prompt tokens, windows of 64: the positions are regrouped before every prompt chunk
    # and generated token once they pass the window, so the passkey's keys are re-rotated many times.
    m = rllama.Model(smollm2_path, n_ctx=2048, n_threads=2, n_ubatch=n_ubatch, grp_attn_n=4, grp_attn_w=64)
    try:
        r = greedy(m, PASSKEY, n=6)
        assert r["content"].strip().startswith("68213"), r["content"]
        assert not r["truncated"]
        # The grouped positions are far below the cells': the model ran at positions under
        # about a quarter of the sequence, yet gives the same answer as without self-extend.
        plain = rllama.Model(smollm2_path, n_ctx=2048, n_threads=2, n_ubatch=n_ubatch)
        try:
            assert greedy(plain, PASSKEY, n=6)["content"].strip().startswith("68213")
        finally:
            plain.close()
    finally:
        m.close()


def test_a_window_never_reached_changes_nothing(smollm2_path):
    prompt = "The history of the city of Rome begins with a small settlement on the banks of the river"
    a = rllama.Model(smollm2_path, n_ctx=512, n_threads=2)
    b = rllama.Model(smollm2_path, n_ctx=512, n_threads=2, grp_attn_n=2, grp_attn_w=256)
    c = rllama.Model(smollm2_path, n_ctx=512, n_threads=2, grp_attn_n=2, grp_attn_w=16)
    try:
        plain = greedy(a, prompt, n=40)
        assert greedy(b, prompt, n=40)["tokens"] == plain["tokens"]
        # Regrouping does change the continuation (the keys moved), yet it stays on topic.
        grouped = greedy(c, prompt, n=40)
        assert grouped["tokens"] != plain["tokens"]
        assert "Rom" in grouped["content"]
    finally:
        for m in (a, b, c):
            m.close()


def test_regrouped_cells_are_never_shared_or_reused(smollm2_path, tmp_path):
    m = rllama.Model(smollm2_path, n_ctx=2048, n_parallel=2, n_threads=2, grp_attn_n=2, grp_attn_w=32)
    try:
        prompt = "A long preamble about rivers, bridges and the towns beside them. " * 12
        first = greedy(m, prompt, n=12, id_slot=0)
        # Slot 0 regrouped its cells: another slot takes only the blocks cached before that
        # (evaluated at their own positions) and continues identically.
        other = greedy(m, prompt, n=12, id_slot=1)
        assert other["tokens"] == first["tokens"]
        # Slot 0 again: its own regrouped cache is dropped, not taken as a prefix.
        again = greedy(m, prompt, n=12, id_slot=0)
        assert again["tokens"] == first["tokens"]
        assert again["timings"]["prompt_n"] < again["tokens_evaluated"]  # from the cached blocks
        # Without any cached block: the same tokens once more.
        fresh = greedy(m, prompt, n=12, id_slot=1, cache_prompt=False)
        assert fresh["timings"]["prompt_n"] == fresh["tokens_evaluated"]
        assert fresh["tokens"] == first["tokens"]
        # A slot file cannot hold regrouped positions: a clear error, and the slot keeps working.
        with pytest.raises(InvalidRequestError, match="self-extended"):
            m.slot_save(0, tmp_path / "s.bin")
        assert not (tmp_path / "s.bin").exists()
        short = greedy(m, "Hi", n=2, id_slot=0)  # 3 cells: never regrouped
        assert m.slot_save(0, tmp_path / "s.bin")["n_saved"] == short["tokens_cached"]
    finally:
        m.close()


def test_concurrent_self_extended_requests_keep_their_own_positions(smollm2_path):
    prompts = [f"Story {i}: " + "In a small harbour town the boats came home at dusk, and " * (2 + 3 * i)
               for i in range(4)]
    kw = {"n_ctx": 4096, "n_threads": 2, "grp_attn_n": 2, "grp_attn_w": 32, "deterministic": True}
    m = rllama.Model(smollm2_path, n_parallel=4, **kw)
    try:
        alone = [greedy(m, p, n=24, cache_prompt=False)["tokens"] for p in prompts]
        out = [None] * 4

        def run(i):
            out[i] = greedy(m, prompts[i], n=24, cache_prompt=False)["tokens"]

        ts = [threading.Thread(target=run, args=(i,)) for i in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert out == alone
        assert all(s["id_task"] == -1 for s in m.slots())
    finally:
        m.close()


def test_self_extend_stops_at_the_context_instead_of_shifting(smollm2_path):
    m = rllama.Model(smollm2_path, n_ctx=128, n_threads=2, grp_attn_n=2, grp_attn_w=32)
    try:
        r = m.complete("Once upon a time", n_predict=300, temperature=0, ignore_eos=True)
        assert r["stopped_limit"] and not r["truncated"]
        assert r["tokens_predicted"] < 128 and r["tokens_cached"] <= 128
    finally:
        m.close()


def test_bad_settings_and_sliding_window_models_are_refused(smollm2_path, gemma3_path):
    for n, w, says in [(0, 512, "grp_attn_n"), (3, 512, "multiple"), (4, 2, "multiple")]:
        with pytest.raises(InvalidRequestError, match=says):
            rllama.Model(smollm2_path, n_ctx=256, grp_attn_n=n, grp_attn_w=w)
    with pytest.raises(InvalidRequestError, match="sliding-window"):
        rllama.Model(gemma3_path, n_ctx=256, grp_attn_n=2, grp_attn_w=64)

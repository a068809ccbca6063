"""The paged KV pool under the engine: prefixes shared across slots by reference, prompts that
wait for blocks, context shift over shared blocks, slot files, with the real SmolLM2 model."""

from __future__ import annotations

import threading

import rllama

BLOCK = 64


def greedy(m, prompt, n=8, **kw):
    return m.complete(prompt, n_predict=n, temperature=0, return_tokens=True, **kw)


def blocks(n_tokens):
    return -(-n_tokens // BLOCK)


def test_a_prefix_is_shared_across_slots_without_copying(smollm2_path):
    m = rllama.Model(smollm2_path, n_ctx=2048, n_parallel=2, n_threads=2)
    try:
        prefix = "A long shared preamble about rivers, bridges and the towns beside them. " * 20
        a = greedy(m, prefix + "Which river is longest?", id_slot=0)
        before = m.metrics()
        b = greedy(m, prefix + "Which bridge is oldest?", id_slot=1)
        after = m.metrics()
        n_prompt = b["tokens_evaluated"]
        shared = after["prefix_shared_tokens_total"] - before["prefix_shared_tokens_total"]
        # Only the suffix was evaluated; the rest is referenced, not copied: both slots together
        # hold fewer blocks than their two caches would take apart.
        assert b["timings"]["prompt_n"] == n_prompt - shared and shared > 3 * BLOCK
        assert after["kv_blocks_used"] < blocks(a["tokens_cached"]) + blocks(b["tokens_cached"])
        assert after["kv_blocks_used"] <= blocks(a["tokens_cached"]) + blocks(b["tokens_cached"] - shared) + 1
        # The same continuation as evaluating the whole prompt.
        fresh = greedy(m, prefix + "Which bridge is oldest?", id_slot=1, cache_prompt=False)
        assert fresh["timings"]["prompt_n"] == n_prompt
        assert fresh["tokens"] == b["tokens"]
    finally:
        m.close()


def test_requests_wait_for_blocks_then_complete(smollm2_path):
    # A unified pool of 256 cells (4 blocks): each request needs 2 blocks, so at most two run
    # at once and the others wait in the queue until blocks come back.
    m = rllama.Model(smollm2_path, n_ctx=256, n_parallel=4, kv_unified=True, n_threads=2)
    try:
        prompts = [f"Story number {i}: " + "the quick brown fox jumps over the lazy dog. " * 8 for i in range(4)]
        alone = [greedy(m, p, n=16, cache_prompt=False) for p in prompts]
        assert all(r["tokens_evaluated"] + 16 <= 2 * BLOCK for r in alone)
        out: dict[int, dict] = {}
        threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, greedy(m, prompts[i], n=16, cache_prompt=False)))
                   for i in range(4)]
        [t.start() for t in threads]
        [t.join(300) for t in threads]
        assert sorted(out) == [0, 1, 2, 3]
        for i in range(4):
            assert out[i]["tokens_predicted"] == 16 and not out[i]["truncated"]
        assert m.metrics()["kv_blocks_total"] == 4
    finally:
        m.close()


def test_context_shift_copies_the_shared_blocks_it_rotates(smollm2_path):
    # Slots of 128 positions: the second request shares the first's prompt blocks, then shifts
    # its context; the cached blocks keep the first request's keys.
    m = rllama.Model(smollm2_path, n_ctx=256, n_parallel=2, n_threads=2)
    try:
        prompt = "In the beginning there was a small village near the mountains, and " * 6
        a = greedy(m, prompt, n=8, id_slot=0)
        assert a["tokens_evaluated"] > BLOCK
        long = m.complete(prompt, n_predict=150, temperature=0, ignore_eos=True, n_keep=8, id_slot=1)
        assert long["truncated"] and long["tokens_predicted"] == 150
        assert long["timings"]["prompt_n"] < long["tokens_evaluated"]  # it started from shared blocks
        m.slot_erase(0)
        again = greedy(m, prompt, n=8, id_slot=0)
        assert again["timings"]["prompt_n"] < again["tokens_evaluated"]
        assert again["tokens"] == a["tokens"]
    finally:
        m.close()


def test_save_erase_restore_of_a_slot_whose_blocks_are_shared(smollm2_path, tmp_path):
    m = rllama.Model(smollm2_path, n_ctx=2048, n_parallel=3, n_threads=2)
    try:
        prefix = "Notes on the weather in coastal cities through the year. " * 10
        greedy(m, prefix + "January?", id_slot=0)
        # From slot 0's own cache: all but the last prompt token.
        jan = greedy(m, prefix + "January?", id_slot=0)
        assert jan["timings"]["prompt_n"] == 1
        first = greedy(m, prefix + "July?", id_slot=2)
        assert first["timings"]["prompt_n"] < first["tokens_evaluated"] / 2
        saved = m.slot_save(2, tmp_path / "s.bin")
        assert saved["n_saved"] == first["tokens_cached"]
        assert m.slot_erase(2)["n_erased"] == saved["n_saved"]
        assert m.slot_restore(2, tmp_path / "s.bin")["n_restored"] == saved["n_saved"]
        again = greedy(m, prefix + "July?", id_slot=2)
        assert again["timings"]["prompt_n"] == 1
        assert again["tokens"] == first["tokens"]
        # Slot 0's blocks, shared all along, were not touched by any of it: slot 1 takes them
        # and continues as slot 0 did.
        other = greedy(m, prefix + "January?", id_slot=1)
        assert other["timings"]["prompt_n"] == 1
        assert other["tokens"] == jan["tokens"]
    finally:
        m.close()

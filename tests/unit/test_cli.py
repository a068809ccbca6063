"""The command line, run as a user runs it: `python -m rllama ...` in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from rllama.serve_cli import ServerSettings, parse, unsupported


def run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "rllama", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_help_and_unknown_command():
    r = run("--help")
    assert r.returncode == 0 and "serve" in r.stdout and "inspect" in r.stdout
    r = run("frobnicate")
    assert r.returncode == 2 and "unknown command" in r.stderr


def test_inspect_smollm2(smollm2_path):
    r = run("inspect", "smollm2")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for needle in ("architecture:  llama", "layers:        30", "embedding:     576", "vocab:         49152",
                   "gpt2/smollm", "Q4_1×210", "Q8_0×1", "F32×61", "chat template: yes"):
        assert needle in out, (needle, out)


def test_inspect_gemma3(gemma3_path):
    r = run("inspect", str(gemma3_path))
    assert r.returncode == 0, r.stderr
    assert "architecture:  gemma3" in r.stdout and "Q4_K×27" in r.stdout and "Q6_K×9" in r.stdout
    assert "chat template: no" in r.stdout


def test_inspect_json(smollm2_path):
    r = run("inspect", "smollm2", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["summary"]["architecture"] == "llama" and d["summary"]["quant_types"]["Q4_1"] == 210
    assert d["metadata"]["tokenizer.ggml.tokens"] == "<array of 49152>"
    assert d["metadata"]["llama.block_count"] == 30 and len(d["tensors"]) == 272


def test_corrupt_file_one_line(tmp_path, smollm2_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(smollm2_path.read_bytes()[:5000])
    r = run("inspect", str(bad))
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rllama: error:") and "offset" in lines[0], r.stderr
    r = run("inspect", str(tmp_path / "nope.gguf"))
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1


def test_serve_defaults_match_llama_server():
    s = parse([])
    assert (s.ctx_size, s.batch_size, s.ubatch_size, s.port, s.host, s.parallel, s.timeout) == (
        512, 2048, 512, 8080, "127.0.0.1", 1, 600)
    assert (s.n_predict, s.grp_attn_n, s.grp_attn_w, s.cache_type_k, s.cache_type_v, s.defrag_thold) == (
        -1, 1, 512, "f16", "f16", -1.0)
    assert (s.yarn_ext_factor, s.yarn_attn_factor, s.yarn_beta_slow, s.yarn_beta_fast) == (1.0, 1.0, 1.0, 32.0)
    assert s.log_format == "json" and not s.embeddings and not s.metrics and s.api_key == []
    assert unsupported(s) == []


def test_serve_every_flag_spelling():
    argv = ["-v", "-t", "2", "-tb", "2", "--threads-http", "3", "-m", "x.gguf", "-a", "alias", "-c", "1024",
            "-b", "256", "-ub", "128", "--mlock", "--no-mmap", "-to", "30", "--host", "0.0.0.0", "--port", "9000",
            "--path", "web", "--api-key", "k1", "--api-key", "k2", "--api-key-file", "keys.txt", "--embeddings",
            "-np", "4", "-cb", "-n", "64", "--slots-endpoint-disable", "--metrics", "--slot-save-path", "/tmp",
            "--chat-template", "chatml", "--log-disable", "--log-format", "text", "--rope-scaling", "linear",
            "--yarn-ext-factor", "0.5", "--yarn-attn-factor", "1.5", "--yarn-beta-slow", "2", "--yarn-beta-fast",
            "16", "--pooling", "mean", "-dt", "0.1", "-fa", "-mu", "http://127.0.0.1:1/m.gguf",
            "-hfr", "r", "-hff", "f"]
    s = parse(argv)
    assert s.api_key == ["k1", "k2"] and s.parallel == 4 and s.cont_batching and s.flash_attn == "on"
    assert parse(["-fa", "off"]).flash_attn == "off" and parse([]).flash_attn == "auto"
    assert s.log_format == "text" and s.pooling == "mean" and s.yarn_beta_fast == 16.0
    assert unsupported(s) == []
    long = ["--verbose", "--threads", "2", "--threads-batch", "2", "--model", "x", "--alias", "a", "--ctx-size", "8",
            "--batch-size", "8", "--ubatch-size", "8", "--timeout", "1", "--parallel", "2", "--cont-batching",
            "--n-predict", "3", "--defrag-thold", "0.5", "--flash-attn", "--model-url", "http://x/y",
            "--hf-repo", "r", "--hf-file", "f", "--n-gpu-layers", "0", "--main-gpu", "0"]
    assert parse(long).ctx_size == 8


@pytest.mark.parametrize("flags, name", [
    (["-ngl", "10"], "-ngl"), (["-ts", "3,2"], "-ts"), (["-mg", "1"], "-mg"), (["--numa"], "--numa"),
    (["--numa", "isolate"], "--numa"), (["--lora", "a.gguf"], "--lora"), (["--lora-base", "b"], "--lora-base"),
    (["--mmproj", "p"], "--mmproj"),
])
def test_serve_refuses_unbuilt_features(flags, name):
    r = run("serve", *flags)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "not supported yet" in lines[0] and name in lines[0]


@pytest.mark.parametrize("flags, says", [
    (["--grp-attn-n", "0"], "--grp-attn-n 0"), (["--grp-attn-n", "4", "--grp-attn-w", "6"], "--grp-attn-w 6"),
    (["--grp-attn-n", "4", "--grp-attn-w", "2"], "multiple of --grp-attn-n (4)"),
])
def test_serve_refuses_bad_self_extend_settings(flags, says):
    r = run("serve", *flags)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0]


def test_serve_bad_flags():
    r = run("serve", "--bogus")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    r = run("serve", "-ctk", "q9_9")
    assert r.returncode == 2
    r = run("serve", "-hfr", "only-repo")
    assert r.returncode == 1 and "together" in r.stderr


def test_pull_prints_cached_path(smollm2_path):
    r = run("pull", "smollm2")
    assert r.returncode == 0 and r.stdout.strip() == str(smollm2_path)


def test_settings_fields_cover_parser():
    from dataclasses import fields

    from rllama.serve_cli import build_parser

    dests = {a.dest for a in build_parser()._actions if a.dest != "help"}
    assert dests == {f.name for f in fields(ServerSettings)}


def test_bench_kernels_on_a_models_matrices(gemma3_path):
    r = run("bench", "kernels", "-m", str(gemma3_path), "-t", "1", "-r", "1", "--gemm-tokens", "3")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    gemm = {(x["tensor"], x["type"]) for x in rows if x["metric"] == "gemm_gflops"}
    # gemma3's Q4_K_M file: K-quant and legacy matrices, each role once per type.
    assert {("attn_output.weight", "Q4_K"), ("ffn_down.weight", "Q6_K"), ("ffn_up.weight", "Q5_0")} <= gemm
    assert all(x["value"] > 0 for x in rows)
    shapes = {x["tensor"]: x["shape"] for x in rows if x["metric"] == "gemv_gbps"}
    assert shapes["ffn_down.weight"] == [640, 2048]
    assert shapes["token_embd.weight"] == [262144, 640]  # the output matrix, tied to the embeddings


def test_bench_kernels_random_and_bad_type():
    r = run("bench", "kernels", "--types", "Q4_0", "-t", "1", "-r", "1", "--gemm-tokens", "2")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert {x["metric"] for x in rows} == {"read_bw_gbps", "gemv_gbps", "gemm_gflops"}
    # gemv from DRAM (the figure held against the read bandwidth) and from the caches, per shape.
    assert sorted(x["cache"] for x in rows if x["metric"] == "gemv_gbps") == ["cold"] * 3 + ["warm"] * 3
    # Each cold gemv beside a cold read of as many bytes, timed alternately with it.
    assert all(x["read_gbps"] > 0 and x["pct_of_read"] > 0 for x in rows if x.get("cache") == "cold")
    r = run("bench", "kernels", "--types", "Q9_Z", "-t", "1", "-r", "1")
    assert r.returncode != 0 and "Q9_Z" in r.stderr and "Traceback" not in r.stderr


def test_bench_serve_prints_every_figure(smollm2_path):
    r = run("bench", "serve", "-m", str(smollm2_path), "-c", "2", "-n", "8", "--requests", "4", "-t", "1",
            "--deterministic")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    metrics = {row["metric"] for row in rows}
    assert {"aggregate_gen_tokens_per_s", "ttft_p50", "latency_p50"} <= metrics, metrics
    assert all(row["deterministic"] is True and row["cpu"] for row in rows)
    assert all(row["concurrency"] == 2 for row in rows if row["metric"] != "peak_rss")
    agg = next(row for row in rows if row["metric"] == "aggregate_gen_tokens_per_s")
    assert agg["value"] > 0

"""`python -m rllama bench load` against a real server: JSON lines for every metric and level."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.parametrize("api", ["native", "oai"])
def test_bench_load(server, server_env, api):
    out = subprocess.run([sys.executable, "-m", "rllama", "bench", "load", "--url", server.url, "--api", api,
                          "-c", "1,2", "-n", "4", "--rounds", "1", "--warmup", "0"],
                         check=False, capture_output=True, text=True, timeout=120, env=server_env)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    metrics = {(r["concurrency"], r["metric"]): r for r in rows}
    for c in (1, 2):
        for m in ("tokens_per_second", "ttft_p50", "ttft_p95", "latency_p50", "latency_p95"):
            row = metrics[(c, m)]
            assert row["bench"] == "load" and row["value"] > 0 and row["unit"] in ("tok/s", "ms")
        assert metrics[(c, "ttft_p50")]["value"] <= metrics[(c, "latency_p50")]["value"]


def test_bench_load_bad_args(server_env):
    out = subprocess.run([sys.executable, "-m", "rllama", "bench", "load", "-c", "one"], capture_output=True,
                         text=True, timeout=60, env=server_env, check=False)
    assert out.returncode == 2 and "bad -c" in out.stderr


def test_bench_load_reads_the_server_threads_cpu(server, server_env):
    """--server-pid splits the server's CPU by thread: the compute threads (rllama-*) carry the work,
    and the HTTP side's share is a ratio between 0 and 1."""
    out = subprocess.run([sys.executable, "-m", "rllama", "bench", "load", "--url", server.url, "-c", "2", "-n", "16",
                          "--rounds", "1", "--warmup", "0", "--server-pid", str(server.proc.pid)],
                         check=False, capture_output=True, text=True, timeout=120, env=server_env)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    cpu = {r["thread"]: r["value"] for r in rows if r["metric"] == "server_cpu_s"}
    assert any(name.startswith("rllama-") and s > 0 for name, s in cpu.items()), cpu
    share = [r["value"] for r in rows if r["metric"] == "http_cpu_share"]
    assert len(share) == 1 and 0 <= share[0] < 1
    http = sum(s for name, s in cpu.items() if not name.startswith("rllama-"))
    assert share[0] == pytest.approx(http / sum(cpu.values()), abs=0.05)  # the seconds are rounded to 0.01
    assert next(r for r in rows if r["metric"] == "client_cpu_s")["value"] >= 0


def test_bench_load_refuses_a_missing_server_pid(server_env):
    out = subprocess.run([sys.executable, "-m", "rllama", "bench", "load", "--server-pid", "999999999"],
                         capture_output=True, text=True, timeout=60, env=server_env, check=False)
    assert out.returncode == 2 and "--server-pid" in out.stderr

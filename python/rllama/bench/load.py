"""`python -m rllama bench load --url URL [--api native|oai] -c 1,4,8,16 -n 128`: a load generator.

For each concurrency C, C streaming clients each send `--rounds` requests of `-n` tokens
(ignore_eos, so every request generates exactly n) to any server with llama.cpp's API — ours or
llama-server — and the run prints JSON lines: aggregate tokens/s (all tokens over the wall time),
TTFT p50/p95 (request sent -> first token) and latency p50/p95 (request sent -> last byte).
`--api native` streams POST /completion, `--api oai` streams POST /v1/completions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
from dataclasses import dataclass
from typing import Any

import httpx

PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."


@dataclass
class Sample:
    ttft: float
    latency: float
    tokens: int


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def request_body(api: str, prompt: str, n: int, seed: int) -> tuple[str, dict[str, Any]]:
    common = {"stream": True, "ignore_eos": True, "temperature": 0.8, "seed": seed, "cache_prompt": False}
    if api == "oai":
        return "/v1/completions", {"model": "bench", "prompt": prompt, "max_tokens": n,
                                   "stream_options": {"include_usage": True}, **common}
    return "/completion", {"prompt": prompt, "n_predict": n, **common}


def count_event(api: str, ev: dict[str, Any]) -> tuple[int, int | None]:
    """(new tokens seen in a chunk, the final token count if the event carries it)."""
    if api == "oai":
        if ev.get("usage"):
            return 0, int(ev["usage"]["completion_tokens"])
        choices = ev.get("choices") or []
        return (1 if choices and choices[0].get("text") else 0), None
    if ev.get("stop"):
        return 0, int(ev.get("tokens_predicted", 0))
    return (1 if ev.get("content") else 0), None


async def one_request(client: httpx.AsyncClient, api: str, prompt: str, n: int, seed: int) -> Sample:
    path, body = request_body(api, prompt, n, seed)
    t0 = time.perf_counter()
    ttft = None
    seen, final = 0, None
    async with client.stream("POST", path, json=body) as r:
        if r.status_code != 200:
            text = (await r.aread()).decode("utf-8", "replace")
            raise RuntimeError(f"{path}: HTTP {r.status_code}: {text[:300]}")
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                if line.startswith("error: "):
                    raise RuntimeError(f"{path}: stream error: {line[7:300]}")
                continue
            data = line[6:]
            if data == "[DONE]":
                break
            ev = json.loads(data)
            if "error" in ev:
                raise RuntimeError(f"{path}: stream error: {ev['error']}")
            new, fin = count_event(api, ev)
            if new and ttft is None:
                ttft = time.perf_counter() - t0
            seen += new
            if fin is not None:
                final = fin
    latency = time.perf_counter() - t0
    return Sample(ttft=ttft if ttft is not None else latency, latency=latency,
                  tokens=final if final is not None else seen)


async def run_level(url: str, api: str, concurrency: int, n: int, rounds: int, prompt: str,
                    headers: dict[str, str], timeout: float) -> tuple[list[Sample], float]:
    limits = httpx.Limits(max_connections=concurrency + 2, max_keepalive_connections=concurrency + 2)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, headers=headers, limits=limits) as client:
        async def worker(w: int) -> list[Sample]:
            out = []
            for r in range(rounds):
                out.append(await one_request(client, api, f"{prompt} (client {w}, round {r})", n,
                                             seed=1000 * w + r))
            return out

        t0 = time.perf_counter()
        results = await asyncio.gather(*(worker(w) for w in range(concurrency)))
        wall = time.perf_counter() - t0
    return [s for rs in results for s in rs], wall


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of each thread of process `pid`, summed by thread name (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/stat") as f:
                stat = f.read()
        except OSError:  # the thread ended between listing and reading
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def cpu_rows(tags: dict[str, Any], before: dict[str, float], after: dict[str, float]) -> list[dict[str, Any]]:
    """The server's CPU seconds during a level, by thread name. rllama names its compute threads
    `rllama-*`; every other thread of its process is the HTTP side (Quart, Hypercorn, the pump), so
    `http_cpu_share` is what serving over HTTP costs next to the model's own work."""
    used = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    rows = [{**tags, "metric": "server_cpu_s", "thread": k, "value": round(v, 2), "unit": "s"}
            for k, v in sorted(used.items()) if v > 0]
    total = sum(used.values())
    http = sum(v for k, v in used.items() if not k.startswith("rllama-"))
    if total > 0 and any(k.startswith("rllama-") for k in used):
        rows.append({**tags, "metric": "http_cpu_share", "value": round(http / total, 4), "unit": "ratio"})
    return rows


def emit(row: dict[str, Any]) -> None:
    print(json.dumps(row), flush=True)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m rllama bench load",
                                 description="Streaming load generator for llama.cpp-compatible servers.")
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--api", choices=["native", "oai"], default="native")
    ap.add_argument("-c", "--concurrency", default="1,4,8,16", help="comma-separated client counts")
    ap.add_argument("-n", "--n-predict", type=int, default=128, help="tokens per request")
    ap.add_argument("--rounds", type=int, default=2, help="requests per client at each concurrency")
    ap.add_argument("--prompt", default=PROMPT)
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--warmup", type=int, default=1, help="untimed requests before measuring")
    ap.add_argument("--server-pid", type=int, default=None,
                    help="also print the CPU seconds of this local server process's threads per level "
                         "(Linux), and for rllama the share its HTTP side took")
    args = ap.parse_args(argv)
    try:
        levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    except ValueError:
        print(f"rllama bench load: error: bad -c {args.concurrency!r} (e.g. 1,4,8,16)", file=sys.stderr)
        return 2
    if not levels or any(c < 1 for c in levels) or args.n_predict < 1 or args.rounds < 1:
        print("rllama bench load: error: concurrency, -n and --rounds must be positive", file=sys.stderr)
        return 2
    if args.server_pid is not None and not os.path.isdir(f"/proc/{args.server_pid}/task"):
        print(f"rllama bench load: error: no process {args.server_pid} to read (--server-pid, Linux)",
              file=sys.stderr)
        return 2
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    url = args.url.rstrip("/")
    try:
        if args.warmup:
            asyncio.run(run_level(url, args.api, 1, min(8, args.n_predict), args.warmup, args.prompt, headers,
                                  args.timeout))
        for c in levels:
            cpu0 = thread_cpu(args.server_pid) if args.server_pid is not None else None
            client0 = resource.getrusage(resource.RUSAGE_SELF)
            samples, wall = asyncio.run(run_level(url, args.api, c, args.n_predict, args.rounds, args.prompt,
                                                  headers, args.timeout))
            tokens = sum(s.tokens for s in samples)
            tags = {"bench": "load", "api": args.api, "concurrency": c, "n_predict": args.n_predict,
                    "requests": len(samples), "url": url}
            ttft = [s.ttft * 1e3 for s in samples]
            lat = [s.latency * 1e3 for s in samples]
            emit({**tags, "metric": "tokens_per_second", "value": round(tokens / wall, 2), "unit": "tok/s"})
            emit({**tags, "metric": "ttft_p50", "value": round(percentile(ttft, 0.5), 1), "unit": "ms"})
            emit({**tags, "metric": "ttft_p95", "value": round(percentile(ttft, 0.95), 1), "unit": "ms"})
            emit({**tags, "metric": "latency_p50", "value": round(percentile(lat, 0.5), 1), "unit": "ms"})
            emit({**tags, "metric": "latency_p95", "value": round(percentile(lat, 0.95), 1), "unit": "ms"})
            client1 = resource.getrusage(resource.RUSAGE_SELF)
            client_cpu = client1.ru_utime + client1.ru_stime - client0.ru_utime - client0.ru_stime
            emit({**tags, "metric": "client_cpu_s", "value": round(client_cpu, 2), "unit": "s"})
            if cpu0 is not None:
                for row in cpu_rows(tags, cpu0, thread_cpu(args.server_pid)):
                    emit(row)
    except (httpx.HTTPError, RuntimeError) as e:
        print(f"rllama bench load: error: {e}", file=sys.stderr)
        return 1
    return 0

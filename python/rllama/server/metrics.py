"""Prometheus exposition of the engine's counters under llama.cpp's `llamacpp:*` names."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

# (key in Model.metrics(), metric name without `_total`, help)
COUNTERS = [
    ("prompt_tokens_total", "llamacpp:prompt_tokens", "Number of prompt tokens processed."),
    ("prompt_seconds_total", "llamacpp:prompt_seconds", "Prompt process time"),
    ("tokens_predicted_total", "llamacpp:tokens_predicted", "Number of generation tokens processed."),
    ("tokens_predicted_seconds_total", "llamacpp:tokens_predicted_seconds", "Predict process time"),
    ("n_decode_total", "llamacpp:n_decode", "Total number of llama_decode() calls"),
]
GAUGES = [
    ("kv_cache_usage_ratio", "llamacpp:kv_cache_usage_ratio", "KV-cache usage. 1 means 100 percent usage."),
    ("kv_cache_tokens", "llamacpp:kv_cache_tokens", "KV-cache tokens."),
    ("requests_processing", "llamacpp:requests_processing", "Number of request processing."),
    ("requests_deferred", "llamacpp:requests_deferred", "Number of request deferred."),
]


class EngineCollector:
    def __init__(self, read: Callable[[], dict[str, Any]]):
        self.read = read

    def collect(self) -> Iterator[Metric]:
        m = self.read()
        for key, name, help_ in COUNTERS:
            if key in m:
                c = CounterMetricFamily(name, help_)
                c.add_metric([], float(m[key]))
                yield c
        # Averages over the server's life, as llama.cpp reports them.
        for name, num, den, help_ in [
            ("llamacpp:prompt_tokens_seconds", "prompt_tokens_total", "prompt_seconds_total",
             "Average prompt throughput in tokens/s."),
            ("llamacpp:predicted_tokens_seconds", "tokens_predicted_total", "tokens_predicted_seconds_total",
             "Average generation throughput in tokens/s."),
        ]:
            if num in m and den in m:
                g = GaugeMetricFamily(name, help_)
                g.add_metric([], float(m[num]) / float(m[den]) if m[den] else 0.0)
                yield g
        if "n_busy_slots_total" in m and m.get("n_decode_total"):
            g = GaugeMetricFamily("llamacpp:n_busy_slots_per_decode", "Average number of busy slots per decode")
            g.add_metric([], float(m["n_busy_slots_total"]) / float(m["n_decode_total"]))
            yield g
        for key, name, help_ in GAUGES:
            if key in m:
                g = GaugeMetricFamily(name, help_)
                g.add_metric([], float(m[key]))
                yield g


def render(read: Callable[[], dict[str, Any]]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(read))
    return generate_latest(registry)

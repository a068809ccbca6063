"""Schemathesis against the app's own OpenAPI document: requests generated from it (valid and not)
on every route never give a server error; the server stays healthy after.

Driven through schemathesis' Python API (strategies per operation) rather than its pytest plugin,
which does not load under the pytest this project pins."""

from __future__ import annotations

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode

SKIP = {"/infill"}  # 501 for a model without FIM tokens (tested in test_native)


def test_every_operation_never_5xx(server):
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    ran = []
    for result in schema.get_all_operations():
        op = result.ok()
        if op.path in SKIP:
            continue
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = op.as_strategy(generation_mode=mode)

            @settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                      database=None)
            @given(case=strategy)
            def check(case):
                if isinstance(case.body, dict):
                    case.body = {**case.body, "n_predict": 2, "max_tokens": 2}  # keep generation short
                case.call_and_validate(checks=[not_a_server_error], timeout=60)

            try:
                check()
            except Unsatisfiable:
                assert mode == GenerationMode.NEGATIVE  # nothing to get wrong (a GET without parameters)
        ran.append(op.path)
    assert {"/completion", "/v1/chat/completions", "/tokenize", "/slots/{id_slot}"} <= set(ran)


def test_document_names_every_route(server):
    doc = httpx.get(server.url + "/openapi.json", timeout=10).json()
    assert doc["openapi"].startswith("3.")
    for path in ("/completion", "/tokenize", "/detokenize", "/embedding", "/infill", "/props", "/health",
                 "/slots", "/slots/{id_slot}", "/metrics", "/v1/chat/completions", "/v1/completions",
                 "/v1/embeddings", "/v1/models"):
        assert path in doc["paths"], path


def test_healthy_after(server):
    with server.client() as c:
        assert c.get("/health").json()["status"] == "ok"
        assert c.post("/completion", json={"prompt": "ok", "n_predict": 2}).status_code == 200

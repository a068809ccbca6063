"""The app's OpenAPI 3.1 document (GET /openapi.json), built from the same option tables the
routes validate with (`rllama.server.validate`), so the document and the checks cannot drift."""

from __future__ import annotations

from typing import Any

from rllama.server import validate

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["code", "message", "type"], "properties": {
        "code": {"type": "integer"}, "message": {"type": "string"},
        "type": {"type": "string", "enum": ["invalid_request_error", "authentication_error", "not_found_error",
                                            "server_error", "permission_error", "unavailable_error",
                                            "not_supported_error"]}}}},
}

TOKEN_IDS = {"type": "array", "items": {"type": "integer", "minimum": 0}}
PROMPT = {"oneOf": [{"type": "string"}, TOKEN_IDS,
                    {"type": "array", "items": {"oneOf": [{"type": "string"}, {"type": "integer", "minimum": 0}]}}]}


def completion_options() -> dict[str, Any]:
    props: dict[str, Any] = {}
    for name in validate._NUMBERS:
        props[name] = {"type": "number"}
    for name, (lo, hi) in validate._INTS.items():
        props[name] = {"type": "integer", "minimum": lo, "maximum": hi}
    for name in validate._BOOLS:
        props[name] = {"type": "boolean"}
    props.update(
        grammar={"type": "string"},
        stop={"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
        samplers={"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
        logit_bias={"oneOf": [{"type": "array", "items": {"type": "array"}}, {"type": "object"}]},
        json_schema={"type": "object"},
        response_format={"type": "object", "properties": {
            "type": {"type": "string", "enum": ["text", "json_object", "json_schema"]}}},
        penalty_prompt={"oneOf": [{"type": "string"}, TOKEN_IDS]},
    )
    return props


def _post(summary: str, body: dict[str, Any], stream: bool = False) -> dict[str, Any]:
    ok: dict[str, Any] = {"application/json": {"schema": {}}}
    if stream:
        ok["text/event-stream"] = {"schema": {"type": "string"}}
    errors = {str(c): {"description": d, "content": {"application/json": {"schema": ERROR}}}
              for c, d in [(400, "invalid request"), (401, "missing or wrong API key"), (404, "unknown slot"),
                           (501, "feature not enabled or not supported"), (503, "model loading")]}
    return {"post": {"summary": summary,
                     "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
                     "responses": {"200": {"description": "OK", "content": ok}, **errors}}}


def _get(summary: str) -> dict[str, Any]:
    return {"get": {"summary": summary, "responses": {
        "200": {"description": "OK"},
        "501": {"description": "disabled", "content": {"application/json": {"schema": ERROR}}},
        "503": {"description": "loading", "content": {"application/json": {"schema": ERROR}}}}}}


def document() -> dict[str, Any]:
    opts = completion_options()
    completion = {"type": "object", "required": ["prompt"], "properties": {"prompt": PROMPT, **opts}}
    message = {"type": "object", "required": ["role"], "properties": {
        "role": {"type": "string"}, "content": {"oneOf": [{"type": "string"}, {"type": "array"}, {"type": "null"}]}}}
    chat = {"type": "object", "required": ["messages"], "properties": {
        "messages": {"type": "array", "minItems": 1, "items": message},
        "model": {"type": "string"}, "max_tokens": {"type": "integer", "minimum": -1},
        "max_completion_tokens": {"type": "integer", "minimum": -1}, "n": {"type": "integer", "const": 1},
        "logprobs": {"type": "boolean"}, "top_logprobs": {"type": "integer", "minimum": 0, "maximum": 20},
        "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
        **{k: v for k, v in opts.items() if k not in ("n_probs",)}}}
    oai_completion = {"type": "object", "required": ["prompt"], "properties": {
        "prompt": {"oneOf": [{"type": "string"}, TOKEN_IDS]}, "model": {"type": "string"},
        "max_tokens": {"type": "integer", "minimum": -1}, "logprobs": {"type": "integer", "minimum": 0, "maximum": 20},
        "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}}, **opts}}
    embeddings = {"type": "object", "required": ["input"], "properties": {
        "input": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}, TOKEN_IDS]},
        "model": {"type": "string"}, "encoding_format": {"type": "string", "enum": ["float", "base64"]}}}
    paths: dict[str, Any] = {
        "/health": _get("server state"), "/props": _get("server settings"), "/slots": _get("slot states"),
        "/metrics": _get("Prometheus metrics (--metrics)"), "/v1/models": _get("the served model"),
        "/completion": _post("llama.cpp completion", completion, stream=True),
        "/infill": _post("fill in the middle", {"type": "object", "properties": {
            "input_prefix": {"type": "string"}, "input_suffix": {"type": "string"}, **opts}}, stream=True),
        "/tokenize": _post("text to tokens", {"type": "object", "properties": {
            "content": {"type": "string"}, "add_special": {"type": "boolean"}, "with_pieces": {"type": "boolean"},
            "parse_special": {"type": "boolean"}}}),
        "/detokenize": _post("tokens to text", {"type": "object", "properties": {"tokens": TOKEN_IDS}}),
        "/embedding": _post("embedding (--embeddings)", {"type": "object", "required": ["content"], "properties": {
            "content": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}}}),
        "/v1/chat/completions": _post("OpenAI chat completion", chat, stream=True),
        "/v1/completions": _post("OpenAI text completion", oai_completion, stream=True),
        "/v1/embeddings": _post("OpenAI embeddings (--embeddings)", embeddings),
    }
    slot = _post("save, restore or erase a slot's cache (--slot-save-path)",
                 {"type": "object", "properties": {"filename": {"type": "string"}}})
    slot["post"]["parameters"] = [
        {"name": "id_slot", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}},
        {"name": "action", "in": "query", "required": True,
         "schema": {"type": "string", "enum": ["save", "restore", "erase"]}}]
    paths["/slots/{id_slot}"] = slot
    return {"openapi": "3.1.0", "info": {"title": "rllama server (llama.cpp server API)", "version": "1"},
            "paths": paths}

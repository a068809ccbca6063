"""OpenAI-compatible routes: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models.

The shaping is `rllama.openai`'s (the library's too); these handlers validate, run, stream.
"""

from __future__ import annotations

from typing import Any

from quart import Blueprint, jsonify

from rllama import openai as oai
from rllama.server import validate
from rllama.server.errors import invalid
from rllama.server.routes.native import pooling, prompt_input, require_embeddings
from rllama.server.state import State, body_json, ready_state
from rllama.server.streaming import sse_response

bp = Blueprint("openai", __name__)

DONE = b"data: [DONE]\n\n"


def served_name(st: State) -> str:
    return st.settings.alias or oai.model_name(st.model)


def _check(body: dict[str, Any]) -> None:
    validate.check_completion_options({k: v for k, v in body.items() if k != "max_tokens"})
    validate.check_int(body, "max_tokens", -1, validate.INT32_MAX)
    validate.check_int(body, "max_completion_tokens", -1, validate.INT32_MAX)


async def _answer(st: State, req: oai.OpenAIRequest, shaper: oai.ChatShaper, prompt: Any):
    opts = dict(req.options)
    if not req.stream:
        final = await st.backend.complete(prompt, opts)
        return jsonify(shaper.response(final))

    started = [False]

    def shape(chunk: dict[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if not started[0]:
            started[0] = True
            first = shaper.start()
            if first is not None:
                out.append(first)
        if chunk.get("stop"):
            out += shaper.end(chunk)
        else:
            c = shaper.chunk(chunk)
            if c is not None:
                out.append(c)
        return out

    return await sse_response(st.backend.stream(prompt, opts), shape, done=DONE)


@bp.post("/v1/chat/completions")
@bp.post("/chat/completions")
async def chat_completions():
    st = ready_state()
    body = await body_json()
    _check(body)
    req = oai.parse_chat(body, st.model, default_n_predict=st.settings.n_predict)
    return await _answer(st, req, oai.ChatShaper(req, served_name(st)), req.prompt)


@bp.post("/v1/completions")
async def completions():
    st = ready_state()
    body = await body_json()
    _check({k: v for k, v in body.items() if k != "logprobs"})
    req = oai.parse_completion(body, default_n_predict=st.settings.n_predict)
    prompt = prompt_input(st, req.prompt, add_special=req.options.get("add_special", True) is not False)
    return await _answer(st, req, oai.CompletionShaper(req, served_name(st)), prompt)


@bp.post("/v1/embeddings")
async def embeddings():
    st = ready_state()
    require_embeddings(st)
    body = await body_json()
    if pooling(st) == "none":
        raise invalid("Pooling type 'none' is not OAI compatible. Please use a different pooling type")
    texts = oai.parse_embeddings_input(body, lambda ids: st.model.detokenize(
        validate.token_list(ids, "input", st.model.n_vocab)))
    n_tokens = sum(len(st.model.tokenize(t, add_special=True)) for t in texts)
    vecs = await st.backend.embed(texts, pooling(st))
    return jsonify(oai.embeddings_response(list(vecs), served_name(st), n_tokens,
                                           body.get("encoding_format", "float")))


@bp.get("/v1/models")
@bp.get("/models")
async def models():
    st = ready_state()
    m = st.model
    arch = m.metadata.get("general.architecture", "")
    meta: dict[str, Any] = {"n_vocab": m.n_vocab, "n_ctx_train": m.metadata.get(f"{arch}.context_length"),
                            "n_embd": m.n_embd, "n_ctx": m.n_ctx}
    try:
        meta["size"] = m.path.stat().st_size
    except OSError:
        pass
    return jsonify({"object": "list", "data": [{
        "id": served_name(st), "object": "model", "created": int(st.started), "owned_by": "llamacpp",
        "meta": meta,
    }]})

"""llama.cpp's own routes: /completion, /tokenize, /detokenize, /embedding, /infill, /props."""

from __future__ import annotations

import asyncio
from typing import Any

from quart import Blueprint, jsonify

from rllama import params
from rllama.server import validate
from rllama.server.errors import invalid, not_supported
from rllama.server.state import State, body_json, ready_state
from rllama.server.streaming import sse_response

bp = Blueprint("native", __name__)


# Prompts -------------------------------------------------------------------------------------------
def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def split_prompts(prompt: Any) -> list[Any]:
    """llama.cpp's prompt forms: a string, token ids, a mixed list of both (one prompt), or an
    array of those (several prompts)."""
    if isinstance(prompt, str):
        return [prompt]
    if not isinstance(prompt, list) or not prompt:
        raise invalid('"prompt" must be a string, an array of token ids, or an array of prompts')
    if any(_is_int(x) for x in prompt):
        return [prompt]  # one prompt, possibly mixed ids and strings
    if all(isinstance(x, (str, list)) for x in prompt):
        return list(prompt)
    raise invalid('"prompt" must be a string, an array of token ids, or an array of prompts')


def prompt_input(st: State, prompt: Any, add_special: bool) -> str | list[int]:
    """One prompt as the library takes it: a string, or token ids (mixed lists tokenized here)."""
    if isinstance(prompt, str):
        return prompt
    if not isinstance(prompt, list) or not prompt:
        raise invalid('"prompt" must be a string or a non-empty array of token ids and strings')
    n_vocab = st.model.n_vocab
    if all(_is_int(t) for t in prompt):
        return validate.token_list(prompt, "prompt", n_vocab)
    ids: list[int] = []
    for i, piece in enumerate(prompt):
        if isinstance(piece, str):
            ids += st.model.tokenize(piece, add_special=add_special and i == 0, parse_special=True)
        elif _is_int(piece):
            if not 0 <= piece < n_vocab:
                raise invalid(f'"prompt": token id {piece} out of range (vocabulary size {n_vocab})')
            ids.append(piece)
        else:
            raise invalid('"prompt": a mixed prompt holds only token ids and strings')
    if not ids:
        raise invalid('"prompt" is empty')
    return ids


def completion_request(st: State, body: dict[str, Any]) -> dict[str, Any]:
    """Checked /completion options ready for the backend (prompt excluded)."""
    validate.check_completion_options(body)
    opts = validate.completion_options(body, st.model.n_vocab)
    if "n_predict" not in opts and "max_tokens" not in opts and st.settings.n_predict >= 0:
        opts["n_predict"] = st.settings.n_predict
    id_slot = body.get("id_slot", body.get("slot_id"))
    if id_slot is not None:
        validate.check_int({"id_slot": id_slot}, "id_slot", -1, 2**31 - 1)
        if not -1 <= id_slot < st.backend.n_parallel:
            raise invalid(f'"id_slot" must be -1 or a slot id below {st.backend.n_parallel}, got {id_slot}')
        if id_slot >= 0:
            opts["id_slot"] = int(id_slot)
    return opts


def _system_prompt(st: State, body: dict[str, Any]) -> None:
    """The old `system_prompt` option: a prefix for every string prompt, names for /props."""
    sp = body.get("system_prompt")
    if sp is None:
        return
    if isinstance(sp, str):
        sp = {"prompt": sp}
    if not isinstance(sp, dict) or not all(isinstance(sp.get(k, ""), str)
                                           for k in ("prompt", "anti_prompt", "assistant_name")):
        raise invalid('"system_prompt" must be an object with string "prompt", "anti_prompt", "assistant_name"')
    st.system_prompt = {k: sp.get(k, "") for k in ("prompt", "anti_prompt", "assistant_name")}


def _with_system(st: State, prompt: Any) -> Any:
    sp = st.system_prompt.get("prompt", "")
    if sp and isinstance(prompt, str):
        return sp + prompt
    return prompt


async def run_completion(st: State, prompts: list[Any], opts: dict[str, Any]) -> Any:
    """Non-streamed results: one object, or a list for several prompts."""
    add_special = opts.get("add_special", True) is not False
    inputs = [_with_system(st, prompt_input(st, p, add_special)) for p in prompts]
    if len(inputs) == 1:
        return await st.backend.complete(inputs[0], opts)
    return list(await asyncio.gather(*(st.backend.complete(p, opts) for p in inputs)))


async def stream_completion(st: State, prompt: Any, opts: dict[str, Any]):
    return await sse_response(st.backend.stream(prompt, opts), lambda c: [c], error_prefix=b"error: ")


@bp.post("/completion")
@bp.post("/completions")
async def completion():
    st = ready_state()
    body = await body_json()
    if "prompt" not in body:
        raise invalid('"prompt" is required')
    opts = completion_request(st, body)
    _system_prompt(st, body)
    prompts = split_prompts(body["prompt"])
    if opts.get("stream"):
        if len(prompts) != 1:
            raise invalid('"stream" takes one prompt per request')
        add_special = opts.get("add_special", True) is not False
        return await stream_completion(st, _with_system(st, prompt_input(st, prompts[0], add_special)), opts)
    return jsonify(await run_completion(st, prompts, opts))


# Infill ----------------------------------------------------------------------------------------------
def infill_ids(st: State, body: dict[str, Any]) -> list[int]:
    """[fim_pre] prefix [fim_suf] suffix [fim_mid] prompt (or suffix first with --spm-infill)."""
    for k in ("input_prefix", "input_suffix", "prompt"):
        validate.check_str(body, k)
    tok = st.model.tokenizer
    missing = [name for name, i in (("prefix", tok.special_ids.get("fim_pre")),
                                    ("suffix", tok.special_ids.get("fim_suf")),
                                    ("middle", tok.special_ids.get("fim_mid"))) if i is None]
    if missing:
        raise not_supported("Infill is not supported by this model: "
                            + " ".join(f"{m} token is missing." for m in missing))
    pre = st.model.tokenize(body.get("input_prefix", ""), add_special=False, parse_special=False)
    suf = st.model.tokenize(body.get("input_suffix", ""), add_special=False, parse_special=False)
    extra = st.model.tokenize(body.get("prompt", ""), add_special=False, parse_special=False)
    p_ids, s_ids, m_id = tok.special_ids["fim_pre"], tok.special_ids["fim_suf"], tok.special_ids["fim_mid"]
    if st.settings.spm_infill:
        ids = [s_ids, *suf, p_ids, *pre, m_id, *extra]
    else:
        ids = [p_ids, *pre, s_ids, *suf, m_id, *extra]
    if tok.add_bos and tok.bos_id is not None:
        ids.insert(0, tok.bos_id)
    return ids


@bp.post("/infill")
async def infill():
    st = ready_state()
    body = await body_json()
    ids = infill_ids(st, body)
    opts = completion_request(st, body)
    if opts.get("stream"):
        return await stream_completion(st, ids, opts)
    return jsonify(await st.backend.complete(ids, opts))


# Tokens ------------------------------------------------------------------------------------------------
LARGE_TEXT = 1 << 16


async def tokenize_text(st: State, text: str, add_special: bool, parse_special: bool) -> list[int]:
    """Tokenize; a large text off the event loop, so other requests keep being served."""
    if len(text) < LARGE_TEXT:
        return st.model.tokenize(text, add_special=add_special, parse_special=parse_special)
    return await asyncio.to_thread(st.model.tokenize, text, add_special, parse_special)


@bp.post("/tokenize")
async def tokenize():
    st = ready_state()
    body = await body_json()
    content = body.get("content", "")
    if not isinstance(content, str):
        raise invalid('"content" must be a string')
    for k in ("add_special", "with_pieces", "parse_special"):
        validate.check_bool(body, k)
    ids = await tokenize_text(st, content, add_special=bool(body.get("add_special", False)),
                              parse_special=body.get("parse_special", True) is not False)
    if not body.get("with_pieces"):
        return jsonify({"tokens": ids})
    out = []
    for i in ids:
        raw = st.model.token_to_piece(i)
        try:
            piece: Any = raw.decode("utf-8")
        except UnicodeDecodeError:
            piece = list(raw)  # a partial UTF-8 sequence: its bytes, like llama.cpp
        out.append({"id": i, "piece": piece})
    return jsonify({"tokens": out})


@bp.post("/detokenize")
async def detokenize():
    st = ready_state()
    body = await body_json()
    ids = validate.token_list(body.get("tokens", []), "tokens", st.model.n_vocab)
    return jsonify({"content": st.model.detokenize(ids)})


# Embeddings -----------------------------------------------------------------------------------------------
def pooling(st: State) -> str:
    return st.settings.pooling or "mean"


def require_embeddings(st: State) -> None:
    if not st.settings.embeddings:
        raise not_supported("This server does not support embeddings. Start it with `--embeddings`")


@bp.post("/embedding")
@bp.post("/embeddings")
async def embedding():
    st = ready_state()
    require_embeddings(st)
    body = await body_json()
    if body.get("image_data"):
        raise not_supported('"image_data" is not supported: this server has no multimodal projector (--mmproj)')
    content = body.get("content", body.get("input"))
    single = isinstance(content, str)
    if single:
        texts = [content]
    elif isinstance(content, list) and content and all(isinstance(x, str) for x in content):
        texts = list(content)
    else:
        raise invalid('"content" must be a string or an array of strings')
    if any(not t for t in texts):
        raise invalid('"content" must not be empty')
    vecs = await st.backend.embed(texts, pooling(st))
    as_list = [v.tolist() for v in vecs]
    if single:
        return jsonify({"embedding": as_list[0]})
    return jsonify([{"index": i, "embedding": v} for i, v in enumerate(as_list)])


# Props ------------------------------------------------------------------------------------------------------
def default_generation_settings(st: State) -> dict[str, Any]:
    req = params.parse({"prompt": ""}, tokenize=None, n_vocab=st.model.n_vocab, n_ctx=st.backend.n_ctx_slot,
                       default_n_predict=st.settings.n_predict)
    return params.generation_settings(req, n_ctx=st.backend.n_ctx_slot, model=st.model.alias, seed=-1)


@bp.get("/props")
async def props():
    from rllama.chat import resolve_template

    st = ready_state()
    return jsonify({
        "assistant_name": st.system_prompt.get("assistant_name", ""),
        "user_name": st.system_prompt.get("anti_prompt", ""),
        "default_generation_settings": default_generation_settings(st),
        "total_slots": st.backend.n_parallel,
        "chat_template": resolve_template(st.settings.chat_template, st.model.chat_template),
        "model_path": str(st.model.path),
        "n_ctx": st.model.n_ctx,
    })

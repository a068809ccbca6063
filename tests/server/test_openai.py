"""The /v1 routes through the official `openai` client."""

from __future__ import annotations

import base64
import json

import numpy as np
import openai
import pytest

MESSAGES = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="sk-no-key-required", max_retries=0)


def test_models(client):
    models = client.models.list().data
    assert len(models) == 1 and models[0].id == "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_chat(client):
    r = client.chat.completions.create(model="gpt-3.5-turbo", messages=MESSAGES, max_tokens=10, temperature=0)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.model == "SmolLM2-135M-Instruct.Q4_1.gguf"
    ch = r.choices[0]
    assert ch.message.role == "assistant" and ch.message.content
    assert ch.finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 10 and r.usage.prompt_tokens > 10
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    again = client.chat.completions.create(model="x", messages=MESSAGES, max_tokens=10, temperature=0)
    assert again.choices[0].message.content == ch.message.content


def test_chat_stream_matches_and_usage(client):
    full = client.chat.completions.create(model="x", messages=MESSAGES, max_tokens=10, temperature=0)
    chunks = list(client.chat.completions.create(model="x", messages=MESSAGES, max_tokens=10, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [full.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    no_usage = list(client.chat.completions.create(model="x", messages=MESSAGES, max_tokens=3, temperature=0,
                                                   stream=True))
    assert all(c.usage is None for c in no_usage)


def test_chat_logprobs(client):
    r = client.chat.completions.create(model="x", messages=MESSAGES, max_tokens=5, temperature=0,
                                       logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for t in content:
        assert len(t.top_logprobs) == 3 and t.logprob <= 0
        assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob >= t.top_logprobs[2].logprob
        assert t.logprob == pytest.approx(t.top_logprobs[0].logprob)  # greedy: the top token
        assert bytes(t.bytes).decode() == t.token


def test_chat_json_schema(client):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                                "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    r = client.chat.completions.create(
        model="x", messages=[{"role": "user", "content": "Describe a person as JSON."}], max_tokens=60,
        temperature=0, response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": schema}})
    import jsonschema

    jsonschema.validate(json.loads(r.choices[0].message.content), schema)
    r = client.chat.completions.create(model="x", messages=[{"role": "user", "content": "A JSON object."}],
                                       max_tokens=40, temperature=0, response_format={"type": "json_object"})
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    else:
        assert r.choices[0].message.content.lstrip().startswith("{")


def test_completions(client):
    r = client.completions.create(model="x", prompt="The sky is", max_tokens=6, temperature=0, logprobs=2)
    assert r.object == "text_completion" and r.choices[0].text
    lp = r.choices[0].logprobs
    assert "".join(lp.tokens) == r.choices[0].text and len(lp.top_logprobs[0]) == 2
    chunks = list(client.completions.create(model="x", prompt="The sky is", max_tokens=6, temperature=0,
                                            stream=True))
    assert "".join(c.choices[0].text for c in chunks) == r.choices[0].text
    assert chunks[-1].choices[0].finish_reason == r.choices[0].finish_reason


def test_embeddings(client):
    r = client.embeddings.create(model="x", input=["hello", "world"], encoding_format="float")
    assert [d.index for d in r.data] == [0, 1] and len(r.data[0].embedding) == 576
    assert r.usage.prompt_tokens > 0
    single = client.embeddings.create(model="x", input="hello", encoding_format="float")
    assert np.allclose(single.data[0].embedding, r.data[0].embedding, atol=1e-5)


def test_embeddings_base64(server):
    import httpx

    body = {"input": "hello", "encoding_format": "base64"}
    d = httpx.post(server.url + "/v1/embeddings", json=body, timeout=60).json()
    f = httpx.post(server.url + "/v1/embeddings", json={**body, "encoding_format": "float"}, timeout=60).json()
    vec = np.frombuffer(base64.b64decode(d["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(vec, f["data"][0]["embedding"], atol=1e-6)


def test_library_matches_http(client, model_path):
    import rllama

    m = rllama.Model(model_path, n_ctx=2048, n_threads=1)
    local = m.create_chat_completion(MESSAGES, max_tokens=8, temperature=0)
    remote = client.chat.completions.create(model="x", messages=MESSAGES, max_tokens=8, temperature=0)
    assert local["object"] == "chat.completion"
    assert local["choices"][0]["message"]["content"] == remote.choices[0].message.content
    chunks = list(m.create_chat_completion(MESSAGES, max_tokens=8, temperature=0, stream=True))
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == remote.choices[0].message.content
    text = m.create_completion("The sky is", max_tokens=4, temperature=0)
    assert text["object"] == "text_completion" and text["choices"][0]["text"]


def test_errors_through_client(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="x", messages=[], max_tokens=2)
    assert e.value.status_code == 400
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="x", messages=MESSAGES, max_tokens=2, n=2)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="x", messages=MESSAGES, response_format={"type": "xml"})


def test_chat_stream_logprobs_and_bias(client):
    full = client.chat.completions.create(model="x", messages=MESSAGES, max_tokens=4, temperature=0, logprobs=True,
                                          top_logprobs=2)
    chunks = list(client.chat.completions.create(model="x", messages=MESSAGES, max_tokens=4, temperature=0,
                                                 logprobs=True, top_logprobs=2, stream=True))
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [t.token for t in streamed] == [t.token for t in full.choices[0].logprobs.content]
    assert all(len(t.top_logprobs) == 2 for t in streamed)
    # OpenAI's logit_bias form ({"token id": bias}) bans the greedy first token.
    first = full.choices[0].logprobs.content[0].token
    import httpx

    ids = httpx.post(str(client.base_url).replace("/v1/", "/tokenize"), json={"content": first}).json()["tokens"]
    banned = client.chat.completions.create(model="x", messages=MESSAGES, max_tokens=4, temperature=0,
                                            logit_bias={str(ids[0]): -100})
    assert not banned.choices[0].message.content.startswith(first)

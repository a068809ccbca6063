"""Chat templates against llama.cpp's rendered prompts (golden chat_*.json), and the built-ins."""

import pytest
import rllama.gguf
from rllama import InvalidRequestError
from rllama.chat import BUILTIN_TEMPLATES, apply_template, resolve_template


@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
def test_golden_templates(model, golden, request):
    ref = golden(f"chat_{model}.json")
    path = request.getfixturevalue(f"{model}_path")
    meta = rllama.gguf.read(path).metadata
    source = resolve_template(None, meta.get("tokenizer.chat_template"))
    if model == "gemma3":
        # No template in this GGUF: the reference server falls back to ChatML, as we do.
        assert "tokenizer.chat_template" not in meta
        assert source == BUILTIN_TEMPLATES["chatml"]
    if model == "smollm2":
        assert source == ref["server_chat_template"]
    for item in ref["items"]:
        got = apply_template(source, item["messages"], add_generation_prompt=item["add_generation_prompt"])
        assert got == item["prompt"]


def test_builtins_render():
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
            {"role": "assistant", "content": "A"}, {"role": "user", "content": "V"}]
    for name, src in BUILTIN_TEMPLATES.items():
        out = apply_template(src, msgs, bos_token="<s>", eos_token="</s>")
        assert "U" in out and "A" in out and "V" in out, name
    assert apply_template(BUILTIN_TEMPLATES["gemma"], msgs, bos_token="<bos>").startswith(
        "<bos><start_of_turn>user\nS\n\nU<end_of_turn>\n")


def test_content_parts_and_errors():
    src = BUILTIN_TEMPLATES["chatml"]
    parts = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert apply_template(src, parts) == "<|im_start|>user\na\nb<|im_end|>\n<|im_start|>assistant\n"
    with pytest.raises(InvalidRequestError):
        apply_template(src, [])
    with pytest.raises(InvalidRequestError):
        apply_template(src, [{"content": "no role"}])
    with pytest.raises(InvalidRequestError):
        resolve_template("no-such-template")
    with pytest.raises(InvalidRequestError, match="chat template error"):
        apply_template("{{ raise_exception('bad role') }}", [{"role": "user", "content": "x"}])
    with pytest.raises(InvalidRequestError, match="invalid chat template"):
        apply_template("{% for %}", [{"role": "user", "content": "x"}])


def test_sandbox_blocks_attribute_escape():
    from jinja2.exceptions import SecurityError

    with pytest.raises((SecurityError, InvalidRequestError)):
        apply_template("{{ ''.__class__.__subclasses__() }}", [{"role": "user", "content": "x"}])
    assert apply_template("{{ ''.__class__ }}", [{"role": "user", "content": "x"}]) == ""

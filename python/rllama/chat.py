"""Chat templates: a model's jinja2 template (sandboxed), or a built-in one by name.

The template comes from `--chat-template` (a built-in name or jinja text), else the GGUF's
`tokenizer.chat_template`, else ChatML — the same fallback llama.cpp's server uses.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any

from jinja2 import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from rllama.errors import InvalidRequestError

# Built-in templates, selectable by name with --chat-template. Written for rllama; each renders the
# prompt format its model family was trained on.
BUILTIN_TEMPLATES: dict[str, str] = {
    "chatml": (
        "{%- for message in messages -%}"
        "{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' -}}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"
    ),
    "llama2": (
        "{{- bos_token -}}"
        "{%- set ns = namespace(system='') -%}"
        "{%- for message in messages -%}"
        "{%- if message.role == 'system' -%}{%- set ns.system = message.content -%}"
        "{%- elif message.role == 'user' -%}"
        "{{- '[INST] ' -}}"
        "{%- if ns.system -%}{{- '<<SYS>>\n' + ns.system + '\n<</SYS>>\n\n' -}}{%- set ns.system = '' -%}{%- endif -%}"
        "{{- message.content + ' [/INST]' -}}"
        "{%- else -%}{{- message.content + eos_token -}}"
        "{%- endif -%}"
        "{%- endfor -%}"
    ),
    "llama3": (
        "{{- bos_token -}}"
        "{%- for message in messages -%}"
        "{{- '<|start_header_id|>' + message.role + '<|end_header_id|>\n\n' + message.content | trim + '<|eot_id|>' -}}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}{%- endif -%}"
    ),
    "gemma": (
        "{{- bos_token -}}"
        "{%- set ns = namespace(system='') -%}"
        "{%- for message in messages -%}"
        "{%- if message.role == 'system' -%}{%- set ns.system = message.content + '\n\n' -%}"
        "{%- else -%}"
        "{%- set role = 'model' if message.role == 'assistant' else message.role -%}"
        "{{- '<start_of_turn>' + role + '\n' + ns.system + message.content | trim + '<end_of_turn>\n' -}}"
        "{%- set ns.system = '' -%}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- '<start_of_turn>model\n' -}}{%- endif -%}"
    ),
    "phi3": (
        "{%- for message in messages -%}"
        "{{- '<|' + message.role + '|>\n' + message.content + '<|end|>\n' -}}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- '<|assistant|>\n' -}}{%- endif -%}"
    ),
    "zephyr": (
        "{%- for message in messages -%}"
        "{{- '<|' + message.role + '|>\n' + message.content + eos_token + '\n' -}}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- '<|assistant|>\n' -}}{%- endif -%}"
    ),
    "mistral": (
        "{{- bos_token -}}"
        "{%- for message in messages -%}"
        "{%- if message.role == 'system' -%}{{- '[SYSTEM_PROMPT]' + message.content + '[/SYSTEM_PROMPT]' -}}"
        "{%- elif message.role == 'user' -%}{{- '[INST]' + message.content + '[/INST]' -}}"
        "{%- else -%}{{- message.content + eos_token -}}"
        "{%- endif -%}"
        "{%- endfor -%}"
    ),
    "vicuna": (
        "{%- for message in messages -%}"
        "{%- if message.role == 'system' -%}{{- message.content + '\n\n' -}}"
        "{%- elif message.role == 'user' -%}{{- 'USER: ' + message.content + '\n' -}}"
        "{%- else -%}{{- 'ASSISTANT: ' + message.content + eos_token + '\n' -}}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
    ),
}

DEFAULT_TEMPLATE = "chatml"


def _raise(message: str) -> None:
    raise TemplateError(message)


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False, sort_keys: bool = False) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)


@lru_cache(maxsize=32)
def _compile(source: str):
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except TemplateError as e:
        raise InvalidRequestError(f"invalid chat template: {e}") from None


def resolve_template(name_or_source: str | None, model_template: str | None = None) -> str:
    """The jinja source to use: a built-in name, literal jinja text, the model's own, or ChatML."""
    if name_or_source:
        if name_or_source in BUILTIN_TEMPLATES:
            return BUILTIN_TEMPLATES[name_or_source]
        if "{%" in name_or_source or "{{" in name_or_source:
            return name_or_source
        raise InvalidRequestError(
            f"unknown chat template {name_or_source!r} (built-in: {', '.join(BUILTIN_TEMPLATES)})"
        )
    return model_template or BUILTIN_TEMPLATES[DEFAULT_TEMPLATE]


def _text_content(content: Any) -> str:
    """OpenAI messages may carry a list of parts; templates get their text joined."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for p in content:
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str):
                parts.append(p["text"])
            else:
                raise InvalidRequestError("unsupported message content part: only 'text' parts are supported")
        return "\n".join(parts)
    raise InvalidRequestError("message content must be a string or a list of text parts")


def normalize_messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("'messages' must be a non-empty array")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise InvalidRequestError(f"messages[{i}] must be an object with a string 'role'")
        m = dict(m)
        m["content"] = _text_content(m.get("content"))
        out.append(m)
    return out


def apply_template(
    template: str,
    messages: Any,
    *,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
    **extra: Any,
) -> str:
    """Render `messages` with the jinja `template` source."""
    tmpl = _compile(template)
    try:
        return tmpl.render(
            messages=normalize_messages(messages),
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token,
            eos_token=eos_token,
            **extra,
        )
    except InvalidRequestError:
        raise
    except TemplateError as e:
        raise InvalidRequestError(f"chat template error: {e}") from None

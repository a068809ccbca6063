"""Chat templates: a model's jinja2 template (sandboxed), or a built-in one by name.

The template comes from `--chat-template` (a built-in name or jinja text), else the GGUF's
`tokenizer.chat_template`, else ChatML — the same fallback llama.cpp's server uses.
"""

from __future__ import annotations

import functools
import json
import re
import sys
import threading
import time
from datetime import datetime
from functools import lru_cache
from typing import Any

from jinja2 import TemplateError as JinjaTemplateError
from jinja2.compiler import CodeGenerator
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from rllama.errors import InvalidRequestError, TemplateError

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


# Rendering limits. A template (from a GGUF, --chat-template or a request) is code: these bound
# its work and memory so that a hostile one fails with a TemplateError instead of running forever
# or exhausting memory. Real chat templates over thousands of messages stay far below them.
MAX_STEPS = 2_000_000  # template lines executed (every loop iteration counts)
MAX_SECONDS = 10.0  # wall clock for one render
MAX_OUTPUT_CHARS = 16 * 2**20  # the rendered prompt
MAX_VALUE_CHARS = 16 * 2**20  # one string or list built by the template
MAX_WORK_CHARS = 128 * 2**20  # characters and items built by all operations of one render
MAX_INT_BITS = 4096  # results of ** and of int arithmetic in general
MAX_COMPILE_CHARS = 2 * 2**20  # template source size

# Width and precision of %-formatting, and the digits of a {...:spec} field.
_PERCENT_SPEC = re.compile(r"%[-#0 +]*(\d*)(?:\.(\d*))?")
_BRACE_SPEC = re.compile(r"\{[^{}]*?:([^{}]*)\}")
_DIGITS = re.compile(r"\d+")
_NESTED_FIELD = re.compile(r"\{[^{}]*\{")


class _Budget:
    """The work left to one render (one per thread: rendering never awaits)."""

    def __init__(self) -> None:
        self.steps = 0
        self.work = 0
        self.deadline = time.monotonic() + MAX_SECONDS

    def step(self) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise TemplateError(f"chat template exceeded its work limit ({MAX_STEPS} steps)")
        if not self.steps & 1023 and time.monotonic() > self.deadline:
            raise TemplateError(f"chat template exceeded its time limit ({MAX_SECONDS:g} s)")

    def charge(self, n: int) -> None:
        if n > MAX_VALUE_CHARS:
            raise TemplateError(f"chat template built a value of {n} characters or items "
                                f"(limit {MAX_VALUE_CHARS})")
        self.work += n
        if self.work > MAX_WORK_CHARS:
            raise TemplateError(f"chat template exceeded its memory limit ({MAX_WORK_CHARS} characters built)")


_local = threading.local()


def _charge(n: int) -> None:
    b: _Budget | None = getattr(_local, "budget", None)
    if b is not None:
        b.charge(n)


def _size(v: Any) -> int:
    return len(v) if isinstance(v, (str, bytes, list, tuple, dict)) else 0


def _check_int(v: Any) -> Any:
    if isinstance(v, int) and not isinstance(v, bool) and v.bit_length() > MAX_INT_BITS:
        raise TemplateError(f"chat template built an integer of more than {MAX_INT_BITS} bits")
    return v


def _check_width(what: str, *widths: Any) -> None:
    for w in widths:
        if isinstance(w, int) and not isinstance(w, bool) and w > MAX_VALUE_CHARS:
            raise TemplateError(f"chat template: {what} width {w} is over the limit ({MAX_VALUE_CHARS})")


def _check_format_string(fmt: Any, args: Any = ()) -> None:
    """'%100000000s' and '{:>100000000}' allocate their width: refuse huge widths up front, and
    widths taken from the arguments ('%*s', '{:>{}}') when an argument is a huge int."""
    if not isinstance(fmt, str):
        return
    numbers = [g for m in _PERCENT_SPEC.finditer(fmt) for g in m.groups() if g]
    numbers += [d for m in _BRACE_SPEC.finditer(fmt) for d in _DIGITS.findall(m.group(1))]
    for n in numbers:
        if len(n) > 8 or int(n) > MAX_VALUE_CHARS:
            raise TemplateError(f"chat template: format width {n} is over the limit ({MAX_VALUE_CHARS})")
    if "*" in fmt or _NESTED_FIELD.search(fmt):
        values = args.values() if isinstance(args, dict) else args if isinstance(args, (list, tuple)) else [args]
        _check_width("format", *values)


def _bounded_binop(op: str, left: Any, right: Any) -> None:
    """Refuse, before computing it, an operation whose result would be huge."""
    if op == "*":
        for a, b in ((left, right), (right, left)):
            if isinstance(b, int) and not isinstance(b, bool) and _size(a) and b > 0:
                _charge(len(a) * b)
        if isinstance(left, int) and isinstance(right, int) and \
                left.bit_length() + right.bit_length() > MAX_INT_BITS:
            raise TemplateError(f"chat template built an integer of more than {MAX_INT_BITS} bits")
    elif op == "**":
        if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1 and \
                (right > MAX_INT_BITS or (abs(left).bit_length() - 1) * right > MAX_INT_BITS):
            raise TemplateError(f"chat template built an integer of more than {MAX_INT_BITS} bits")
    elif op == "+":
        if _size(left) and _size(right):
            _charge(len(left) + len(right))
    elif op == "%" and isinstance(left, str):
        _check_format_string(left, right)
        _charge(len(left))


# str methods that allocate from an int argument.
_WIDTH_METHODS = {"center", "ljust", "rjust", "zfill", "expandtabs"}


class _BoundedCodeGenerator(CodeGenerator):
    """Jinja's code generator with `~` concatenation routed through the environment, so that
    doubling a string in a loop is charged like `+`."""

    def visit_Concat(self, node: Any, frame: Any) -> None:
        self.write("environment.bounded_concat(")
        super().visit_Concat(node, frame)
        self.write(")")


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%", "//", "/"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _bounded_binop(operator, left, right)
        return _check_int(super().call_binop(context, operator, left, right))

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        name = getattr(obj, "__name__", "")
        if isinstance(getattr(obj, "__self__", None), str):
            if name in _WIDTH_METHODS:
                _check_width(name, *args, *kwargs.values())
            elif name == "replace" and len(args) >= 2:
                _charge(_replace_size(obj.__self__, args[0], args[1]))
        r = super().call(context, obj, *args, **kwargs)
        _charge(_size(r))
        return _check_int(r)

    def wrap_str_format(self, value: Any) -> Any:
        f = super().wrap_str_format(value)
        if f is None:
            return None
        fmt = value.__self__

        @functools.wraps(f)
        def checked(*args: Any, **kwargs: Any) -> str:
            _check_format_string(fmt, [*args, *kwargs.values()])
            r = f(*args, **kwargs)
            _charge(len(r))
            return r

        return checked

    @staticmethod
    def bounded_concat(s: Any) -> Any:
        _charge(_size(s))
        return s


def _replace_size(s: Any, old: Any, new: Any) -> int:
    if not (isinstance(s, str) and isinstance(old, str) and isinstance(new, str)):
        return 0
    n = s.count(old) if old else len(s) + 1
    return len(s) + n * max(0, len(new) - len(old))


def _raise(message: str) -> None:
    raise JinjaTemplateError(message)


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False, sort_keys: bool = False) -> str:
    if isinstance(indent, int) and not isinstance(indent, bool) and indent > 64:
        raise TemplateError(f"chat template: tojson indent {indent} is over the limit (64)")
    r = json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)
    _charge(len(r))
    return r


def _range(*args: Any) -> range:
    r = range(*args)
    _charge(len(r))
    return r


def _bounded_filter(name: str, f: Any) -> Any:
    """A filter whose arguments are checked where they size the result, and whose result is
    charged to the render's budget."""

    @functools.wraps(f)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        # Filters taking a context or environment get it first; the value follows.
        values = [a for a in args if not hasattr(a, "environment") and not hasattr(a, "filters")]
        if name in ("center", "indent", "wordwrap", "truncate", "batch", "slice"):
            _check_width(name, *values[1:], *kwargs.values())
        elif name == "format" and values:
            _check_format_string(values[0], [*values[1:], *kwargs.values()])
        elif name == "replace" and len(values) >= 3:
            _charge(_replace_size(values[0], values[1], values[2]))
        r = f(*args, **kwargs)
        _charge(_size(r))
        return r

    return wrapped


def _tracer(budget: _Budget) -> Any:
    """A trace function counting the lines that compiled templates execute (each loop
    iteration runs at least one), and nothing else."""

    def local(frame: Any, event: str, arg: Any) -> Any:
        if event == "line":
            budget.step()
        return local

    def calls(frame: Any, event: str, arg: Any) -> Any:
        return local if frame.f_code.co_filename == "<template>" else None

    return calls


@lru_cache(maxsize=32)
def _compile(source: str):
    if len(source) > MAX_COMPILE_CHARS:
        raise TemplateError(f"chat template is {len(source)} characters (limit {MAX_COMPILE_CHARS})")
    env = _BoundedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    for name, f in list(env.filters.items()):
        env.filters[name] = _bounded_filter(name, f)
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.globals["range"] = _range
    env.globals.pop("lipsum", None)  # lipsum(n) builds n paragraphs outside any bound
    try:
        return env.from_string(source)
    except JinjaTemplateError as e:
        raise TemplateError(f"invalid chat template: {e}") from None
    except (RecursionError, MemoryError, OverflowError, ValueError, TypeError) as e:
        raise TemplateError(f"invalid chat template: {type(e).__name__}: {e}") from None


def _render(tmpl: Any, **context: Any) -> str:
    """Render under the limits: steps and time (counted by a trace function on the template's
    own frames), memory (charged by every operation that builds a value) and output size."""
    budget = _Budget()
    previous_budget = getattr(_local, "budget", None)
    previous_trace = sys.gettrace()
    _local.budget = budget
    out: list[str] = []
    n = 0
    try:
        sys.settrace(_tracer(budget))
        for chunk in tmpl.generate(**context):
            n += len(chunk)
            if n > MAX_OUTPUT_CHARS:
                raise TemplateError(f"chat template output exceeds {MAX_OUTPUT_CHARS} characters")
            out.append(chunk)
    finally:
        sys.settrace(previous_trace)
        _local.budget = previous_budget
    return "".join(out)


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
    """Render `messages` with the jinja `template` source.

    Every failure is a ``TemplateError`` (an ``InvalidRequestError``): a syntax error, an error
    the template raises, one of Python's (division by zero, a type error, recursion too deep), or
    a template that exceeds the limits on work, time, memory or output size (MAX_* above)."""
    tmpl = _compile(template)
    msgs = normalize_messages(messages)
    try:
        return _render(tmpl, messages=msgs, add_generation_prompt=add_generation_prompt,
                       bos_token=bos_token, eos_token=eos_token, **extra)
    except TemplateError:
        raise
    except InvalidRequestError as e:
        raise TemplateError(str(e)) from None
    except JinjaTemplateError as e:
        raise TemplateError(f"chat template error: {e}") from None
    except RecursionError:
        raise TemplateError("chat template error: recursion too deep") from None
    except MemoryError:
        raise TemplateError("chat template error: out of memory") from None
    except Exception as e:  # noqa: BLE001 (the template's own bugs: ZeroDivisionError, TypeError, ...)
        raise TemplateError(f"chat template error: {type(e).__name__}: {e}") from None

"""The hostile cases: each is a function run alone in a child process (see test_hostile.py),
registered with the exception it must raise (a class name in the exception's MRO, and a regex its
message must match) or "ok" when it completes and checks its result itself.

`needs` marks a case whose fix is wired elsewhere (the engine or Model's constructor): it is an
expected failure until then, and passes as soon as the wiring lands.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLASSES = {
    "template": "chat templates: unbounded work, memory, output; Python errors of hostile templates",
    "path": "model paths that are not regular GGUF files (FIFO, directory, device, garbage)",
    "prompt": "prompt forms: llama.cpp's single-prompt forms accepted, the rest refused before generating",
    "json_schema": "json_schema bounds of 16 and more digits, and out-of-range bounds",
    "grammar": "grammars that can never be satisfied, and other hostile grammars",
    "temperature": "tiny and huge temperatures",
    "gguf_metadata": "GGUF metadata that would give NaN logits or mismatched vocabularies",
    "n_probs": "the n_probs cap",
    "ranges": "out-of-range integers and numbers in options and constructor arguments",
    "unicode": "lone surrogates in text arguments",
    "cli": "the command line: one line and a non-zero exit for bad flags and files",
    "tokenizer": "bytes without a token, out-of-range ids",
    "engine": "the engine's allocations and inputs (fixed in the engine rewrite)",
}


@dataclass
class Case:
    cls: str
    fn: Callable[[], Any]
    expect: str
    match: str | None
    timeout: float
    mem_gb: int
    needs: str | None


CASES: dict[str, Case] = {}


def case(cls: str, expect: str = "ok", match: str | None = None, timeout: float = 60, mem_gb: int = 4,
         needs: str | None = None, name: str | None = None):
    assert cls in CLASSES, cls

    def register(fn):
        key = name or fn.__name__
        assert key not in CASES, key
        CASES[key] = Case(cls, fn, expect, match, timeout, mem_gb, needs)
        return fn

    return register


def many(cls: str, items: dict[str, Callable[[], Any]], expect: str = "ok", match: str | None = None, **kw):
    for key, fn in items.items():
        case(cls, expect, match, name=key, **kw)(fn)


# Shared helpers --------------------------------------------------------------------------------
NEEDS_MODEL_ARGS = "lead: Model.__init__ calls rllama.validate.model_args(...) first"
NEEDS_PERPLEXITY = "lead: Model.perplexity calls rllama.validate.perplexity_args(n_ctx, n_chunks)"
NEEDS_PROMPT = "lead: Model._final reports req.prompt (normalized), not the raw prompt argument"
NEEDS_ENGINE = "lead: engine rewrite (KV allocation budget, embed([]))"


def smollm2() -> Path:
    import rllama

    return rllama.models.resolve("smollm2")


def model(**kw: Any):
    import rllama

    return rllama.Model("smollm2", n_ctx=kw.pop("n_ctx", 256), n_threads=kw.pop("n_threads", 2), **kw)


def tmpdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="rllama-hostile-"))


MSG = [{"role": "user", "content": "hi"}]


def render(src: str, messages: Any = None) -> str:
    from rllama.chat import apply_template

    return apply_template(src, MSG if messages is None else messages)


# Templates ---------------------------------------------------------------------------------------
_TEMPLATES = {
    "nested_range_loops": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "nested_loops_loop_var": "{% for i in range(100000) %}{% for j in range(100000) %}"
                             "{{ loop.index if false }}{% endfor %}{% endfor %}",
    "triple_nested_loops": "{% for a in range(1000) %}{% for b in range(1000) %}{% for c in range(1000) %}"
                           "{% endfor %}{% endfor %}{% endfor %}",
    "loop_over_messages_repeated": "{% for i in range(100000) %}{% for m in messages * 100 %}{% endfor %}{% endfor %}",
    "string_doubling_tilde": "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
                             "{% endfor %}{{ ns.s|length }}",
    "string_doubling_plus": "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}"
                            "{% endfor %}",
    "list_doubling": "{% set ns = namespace(l=[1]) %}{% for i in range(64) %}{% set ns.l = ns.l + ns.l %}{% endfor %}",
    "string_times_huge": "{{ 'x' * 10**9 }}",
    "list_times_huge": "{{ ([1] * 10**9)|length }}",
    "int_power_huge": "{{ 2 ** (10 ** 10) }}",
    "int_power_chain": "{{ 9 ** 9 ** 9 ** 9 ** 9 }}",
    "int_times_huge": "{% set ns = namespace(n=10) %}{% for i in range(40) %}{% set ns.n = ns.n * ns.n %}{% endfor %}",
    "center_filter": "{{ 'x'|center(10**9) }}",
    "indent_filter": "{{ 'x\ny'|indent(10**9) }}",
    "ljust_method": "{{ 'x'.ljust(10**9) }}",
    "zfill_method": "{{ 'x'.zfill(10**10) }}",
    "expandtabs_method": "{{ ('\t' * 1000).expandtabs(10**6) }}",
    "format_filter_width": "{{ '%999999999s'|format('x') }}",
    "format_filter_star": "{{ '%*s'|format(10**9, 'x') }}",
    "percent_width": "{{ '%.999999999f' % 1.0 }}",
    "percent_star": "{{ '%*s' % (10**9, 'x') }}",
    "str_format_width": "{{ '{:>999999999}'.format('x') }}",
    "str_format_nested_width": "{{ '{:>{}}'.format('x', 10**9) }}",
    "replace_amplifies": "{{ ('x' * 100000)|replace('x', 'y' * 100000) }}",
    "replace_method_amplifies": "{{ ('x' * 100000).replace('x', 'y' * 100000) }}",
    "map_center_join": "{{ range(100000)|map('center', 10000)|join }}",
    "batch_fill": "{{ [1]|batch(10**9, 0)|list|length }}",
    "slice_fill": "{{ [1]|slice(10**8, 0)|list|length }}",
    "tojson_indent": "{{ messages|tojson(indent=10**9) }}",
    "output_flood": "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}",
    "lipsum_huge": "{{ lipsum(10**7) }}",
}
many("template", {k: (lambda s=s: render(s)) for k, s in _TEMPLATES.items()}, "TemplateError",
     r"limit|over the|exceed|undefined|more than")

_TEMPLATE_PY_ERRORS = {
    "macro_recursion": ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "recursion"),
    "zero_division": ("{{ 1 / 0 }}", "ZeroDivisionError"),
    "zero_floordiv": ("{{ 1 // 0 }}", "ZeroDivisionError"),
    "modulo_zero": ("{{ 1 % 0 }}", "ZeroDivisionError"),
    "type_error": ("{{ 1 + 'a' }}", "TypeError"),
    "overflow_float_to_int": ("{{ (1e308 * 10)|round|int }}", "OverflowError"),
    "overflow_float_pow": ("{{ 10.0 ** 400 }}", "OverflowError"),
    "raise_exception": ("{{ raise_exception('bad role') }}", "bad role"),
    "syntax_error": ("{% for %}", "invalid chat template"),
    "deep_expression": ("{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}", "invalid chat template"),
    "unclosed_block": ("{% if true %}", "invalid chat template"),
    "sandbox_escape": ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "unsafe|not safely|access"),
    "sandbox_format_escape": ("{{ '{0.__class__.__init__.__globals__}'.format('') }}", "unsafe|access"),
    "undefined_call": ("{{ nothing() }}", "undefined"),
    "huge_source": ("{{ 'a' }}" * 400_000, "characters"),
}
many("template", {k: (lambda s=s: render(s)) for k, (s, _) in _TEMPLATE_PY_ERRORS.items()}, "TemplateError")
for _k, (_s, _m) in _TEMPLATE_PY_ERRORS.items():
    CASES[_k].match = _m


@case("template")
def builtin_templates_handle_many_messages():
    from rllama.chat import BUILTIN_TEMPLATES

    msgs = [{"role": ("user", "assistant")[i % 2], "content": f"message {i} " * 20} for i in range(3000)]
    for name, src in BUILTIN_TEMPLATES.items():
        out = render(src, msgs)
        assert "message 2999" in out, name


@case("template")
def template_error_is_invalid_request():
    import rllama

    assert issubclass(rllama.TemplateError, rllama.InvalidRequestError)
    assert issubclass(rllama.TemplateError, rllama.RllamaError)


@case("template", "TemplateError", "limit")
def hostile_template_through_model():
    m = model(chat_template="{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}")
    m.apply_chat_template(MSG)


@case("template", "TemplateError", "limit")
def template_limits_hold_in_a_thread():
    import threading

    err: list[BaseException] = []

    def run() -> None:
        try:
            render(_TEMPLATES["nested_range_loops"])
        except BaseException as e:  # noqa: BLE001
            err.append(e)

    t = threading.Thread(target=run)
    t.start()
    t.join(60)
    raise err[0]


@case("template")
def tracing_is_restored_after_a_render():
    import sys

    def mine(frame, event, arg):
        return None

    sys.settrace(mine)
    try:
        with contextlib.suppress(Exception):
            render(_TEMPLATES["nested_range_loops"])
        assert sys.gettrace() is mine
    finally:
        sys.settrace(None)


# Paths -------------------------------------------------------------------------------------------
def _fifo() -> str:
    p = tmpdir() / "model.gguf"
    os.mkfifo(p)
    return str(p)


def _open_with(kind: str, path: str) -> None:
    import rllama
    from rllama import _core

    if kind == "reader":
        rllama.gguf.read(path)
    elif kind == "tokenizer":
        rllama.Tokenizer.from_gguf(path)
    elif kind == "core":
        _core.GgufFile(path)
    elif kind == "core_model":
        _core.Model(path)
    elif kind == "model":
        rllama.Model(path, n_ctx=64)


for _kind in ("reader", "tokenizer", "core", "core_model", "model"):
    case("path", "ModelLoadError", "not a regular file", timeout=20, name=f"fifo_{_kind}")(
        lambda k=_kind: _open_with(k, _fifo()))
    case("path", "ModelLoadError", "directory", timeout=20, name=f"directory_{_kind}")(
        lambda k=_kind: _open_with(k, str(tmpdir())))
    case("path", "ModelLoadError", "not a regular file", timeout=20, name=f"char_device_{_kind}")(
        lambda k=_kind: _open_with(k, "/dev/zero"))


def _file(data: bytes, name: str = "m.gguf") -> str:
    p = tmpdir() / name
    p.write_bytes(data)
    return str(p)


many("path", {
    "missing_file": lambda: _open_with("reader", "/nonexistent/model.gguf"),
    "nul_in_path": lambda: _open_with("reader", "model\0.gguf"),
    "empty_file": lambda: _open_with("reader", _file(b"")),
    "garbage_file": lambda: _open_with("reader", _file(os.urandom(4096))),
    "gguf_magic_only": lambda: _open_with("reader", _file(b"GGUF")),
    "huge_counts": lambda: _open_with("reader", _file(b"GGUF" + struct.pack("<IQQ", 3, 2**62, 2**62))),
    "truncated_real_model": lambda: _open_with("tokenizer", _file(smollm2().read_bytes()[:200_000])),
    "symlink_loop": lambda: _open_with("reader", _symlink_loop()),
    "symlink_to_directory": lambda: _open_with("model", _symlink_to_dir()),
}, "ModelLoadError")


def _symlink_loop() -> str:
    d = tmpdir()
    os.symlink(d / "b", d / "a")
    os.symlink(d / "a", d / "b")
    return str(d / "a")


def _symlink_to_dir() -> str:
    d = tmpdir()
    os.symlink(d, d / "m.gguf")
    return str(d / "m.gguf")


# Prompts -----------------------------------------------------------------------------------------
def _tok(text: str, add_special: bool) -> list[int]:
    return ([1000] if add_special else []) + [ord(c) for c in text]


def _parse_prompt(p: Any) -> Any:
    from rllama.params import parse_prompt

    return parse_prompt(p, _tok)


def _accepts(p: Any, want: Any) -> Callable[[], None]:
    def run() -> None:
        got = _parse_prompt(p)
        assert got == want, (got, want)

    return run


many("prompt", {
    "prompt_string": _accepts("hi", "hi"),
    "prompt_token_ids": _accepts([1, 2, 3], [1, 2, 3]),
    "prompt_one_string_in_list": _accepts(["hi"], "hi"),
    "prompt_one_id_list_in_list": _accepts([[1, 2, 3]], [1, 2, 3]),
    "prompt_mixed": _accepts(["ab", 7, "c", 8], [1000, 97, 98, 7, 99, 8]),
    "prompt_mixed_id_first": _accepts([7, "ab"], [7, 97, 98]),
    "prompt_mixed_in_list": _accepts([["ab", 7]], [1000, 97, 98, 7]),
    "prompt_prompt_string": _accepts({"prompt_string": "hi"}, "hi"),
    "prompt_prompt_string_mixed": _accepts({"prompt_string": [5, "a"]}, [5, 97]),
    "prompt_tuple_ids": _accepts((4, 5), [4, 5]),
})
many("prompt", {
    "prompt_several_strings": lambda: _parse_prompt(["a", "b"]),
    "prompt_several_id_lists": lambda: _parse_prompt([[1], [2]]),
    "prompt_string_and_list": lambda: _parse_prompt(["a", [1, 2]]),
}, "InvalidRequestError", "prompts")
many("prompt", {
    "prompt_empty_list": lambda: _parse_prompt([]),
    "prompt_empty_inner_list": lambda: _parse_prompt([[]]),
    "prompt_float_ids": lambda: _parse_prompt([1.5, 2]),
    "prompt_integral_float_ids": lambda: _parse_prompt([1.0]),
    "prompt_bool_ids": lambda: _parse_prompt([True, False]),
    "prompt_none_in_ids": lambda: _parse_prompt([1, None]),
    "prompt_nested_list_in_ids": lambda: _parse_prompt([1, [2]]),
    "prompt_dict_in_ids": lambda: _parse_prompt([1, {"a": 1}]),
    "prompt_deeper_nesting": lambda: _parse_prompt([[["a"]]]),
    "prompt_none": lambda: _parse_prompt(None),
    "prompt_number": lambda: _parse_prompt(5),
    "prompt_object_without_string": lambda: _parse_prompt({"x": 1}),
    "prompt_multimodal": lambda: _parse_prompt({"prompt_string": "x", "multimodal_data": ["AAAA"]}),
    "prompt_id_2_64": lambda: _parse_prompt([2**64]),
    "prompt_id_negative": lambda: _parse_prompt([-1]),
    "prompt_mixed_id_2_64": lambda: _parse_prompt(["a", 2**64]),
    "prompt_bytes": lambda: _parse_prompt(b"hello"),
}, "InvalidRequestError", r"prompt")


@case("prompt", "InvalidRequestError", "prompts")
def prompt_several_refused_before_generating():
    model().complete(["Hello", "World"], n_predict=4)


@case("prompt", "InvalidRequestError", "out of range")
def prompt_id_beyond_vocab_through_model():
    model().complete([10**6], n_predict=2)


def _complete_forms(stream: bool) -> None:
    m = model()
    hello = m.tokenize("Hello")
    for p in (["Hello"], [hello], ["Hello", hello[0]], [hello[0], " world"], {"prompt_string": "Hello"}):
        out = m.complete(p, n_predict=2, temperature=0, stream=stream)
        final = list(out)[-1] if stream else out
        assert final["stop"] is True and isinstance(final["prompt"], str), (p, final)
        assert final["tokens_predicted"] >= 1, (p, final)


case("prompt", timeout=120, name="prompt_forms_complete")(lambda: _complete_forms(False))
case("prompt", timeout=120, name="prompt_forms_stream")(lambda: _complete_forms(True))


# json_schema -------------------------------------------------------------------------------------
def _schema_case(schema: dict, inside: list[Any], outside: list[Any]) -> Callable[[], None]:
    def run() -> None:
        from rllama.sampling import Grammar, resolve_grammar

        g = Grammar(resolve_grammar({"json_schema": schema}))
        for v in inside:
            assert g.matches(str(v)), (schema, v)
        for v in outside:
            assert not g.matches(str(v)), (schema, v)

    return run


many("json_schema", {
    "int_min_15_digits": _schema_case({"type": "integer", "minimum": 10**14}, [10**14, 10**15 + 3], [10**14 - 1]),
    "int_min_16_digits": _schema_case({"type": "integer", "minimum": 10**15}, [10**15, 10**16 - 1, 10**16],
                                      [10**15 - 1, -5]),
    "int_min_20_digits": _schema_case({"type": "integer", "minimum": 10**19 + 7}, [10**19 + 7, 10**20],
                                      [10**19 + 6, 0]),
    "int_exclusive_min_17": _schema_case({"type": "integer", "exclusiveMinimum": 10**16}, [10**16 + 1],
                                         [10**16]),
    "int_max_negative_18": _schema_case({"type": "integer", "maximum": -(10**17)}, [-(10**17), -(10**17) - 9],
                                        [-(10**17) + 1, 0]),
    "int_range_19_digits": _schema_case({"type": "integer", "minimum": -(10**18), "maximum": 10**18},
                                        [0, 10**18, -(10**18), 123456789012345678], [10**18 + 1]),
    "int_min_float_1e17": _schema_case({"type": "integer", "minimum": 1e17}, [10**17], [10**17 - 1]),
    "number_min_17_digits": _schema_case({"type": "number", "minimum": 10**16}, [10**16, "10000000000000000.5"],
                                         [10**16 - 1]),
    "int_min_99_digits": _schema_case({"type": "integer", "minimum": 10**98}, [10**98], [10**98 - 1]),
})
many("json_schema", {
    "int_min_10_500": lambda: _schema_case({"type": "integer", "minimum": 10**500}, [], [])(),
    "int_min_1e300": lambda: _schema_case({"type": "integer", "minimum": 1e300}, [], [])(),
    "number_max_10_500": lambda: _schema_case({"type": "number", "maximum": -(10**500)}, [], [])(),
}, "InvalidRequestError", r"minimum|maximum")
many("json_schema", {
    "int_min_inf": lambda: _schema_case({"type": "integer", "minimum": math.inf}, [], [])(),
    "int_min_nan": lambda: _schema_case({"type": "integer", "minimum": math.nan}, [], [])(),
    "int_min_string": lambda: _schema_case({"type": "integer", "minimum": "5"}, [], [])(),
    "int_empty_range": lambda: _schema_case({"type": "integer", "minimum": 10**17, "maximum": 10**16}, [], [])(),
}, "InvalidRequestError", r"minimum|number|empty")


@case("json_schema", "InvalidRequestError")
def schema_deep_nesting():
    from rllama.sampling import resolve_grammar

    s: dict = {"type": "string"}
    for _ in range(5000):
        s = {"type": "array", "items": s}
    resolve_grammar({"json_schema": s})


@case("json_schema")
def schema_recursive_ref_terminates():
    from rllama.errors import InvalidRequestError
    from rllama.sampling import resolve_grammar

    with contextlib.suppress(InvalidRequestError):
        resolve_grammar({"json_schema": {"$ref": "#"}})
    with contextlib.suppress(InvalidRequestError):
        resolve_grammar({"json_schema": {"type": "object", "properties": {"a": {"$ref": "#"}}}})


# Grammars ----------------------------------------------------------------------------------------
def _grammar(text: str) -> Callable[[], None]:
    def run() -> None:
        from rllama.sampling import from_request

        from_request({"grammar": text})

    return run


many("grammar", {
    "grammar_reversed_range": _grammar("root ::= [z-a]"),
    "grammar_empty_class": _grammar("root ::= []"),
    "grammar_reversed_after_literal": _grammar('root ::= "ab" [z-a]'),
    "grammar_reversed_in_class": _grammar("root ::= [a-cz-a]"),
    "grammar_negated_everything": _grammar('root ::= "x" | [^\\x00-\\U0010FFFF]'),
    "grammar_never_ends": _grammar('root ::= "a" root'),
    "grammar_mutual_never_ends": _grammar('root ::= x\nx ::= "a" y\ny ::= "b" x'),
    "grammar_reversed_in_subrule": _grammar('root ::= x\nx ::= [9-0]+'),
    "grammar_deep_nesting": _grammar("root ::= " + "(" * 100_000 + '"a"' + ")" * 100_000),
    "grammar_huge_repetition": _grammar('root ::= "a"{2000}{2000}{2000}'),
    "grammar_left_recursion": _grammar('root ::= root "a" | "b"'),
    "grammar_undefined_rule": _grammar("root ::= nothing"),
    "grammar_no_root": _grammar('x ::= "a"'),
    "grammar_bad_escape": _grammar('root ::= "\\q"'),
    "grammar_bad_hex": _grammar('root ::= "\\xZZ"'),
    "grammar_nul_byte": _grammar('root ::= "a\0"\0'),
}, "GrammarError")
CASES["grammar_reversed_after_literal"].match = "column 16"
CASES["grammar_never_ends"].match = "never be completed"


@case("grammar")
def grammar_satisfiable_recursion_is_fine():
    from rllama.sampling import Grammar

    g = Grammar('root ::= "a" root | "b"')
    assert g.matches("aaab") and not g.matches("aaa")
    assert Grammar("root ::= [^\\x00-\\x10] [a-a]").matches("za")


@case("grammar", "InvalidRequestError", "surrogate")
def grammar_lone_surrogate():
    _grammar('root ::= "\ud800"')()


@case("grammar", "InvalidRequestError", "both")
def grammar_and_schema_together():
    from rllama.sampling import from_request

    from_request({"grammar": 'root ::= "a"', "json_schema": {"type": "string"}})


# Temperature -------------------------------------------------------------------------------------
def _greedy_at(temp: float, logits_kind: str = "random") -> Callable[[], None]:
    def run() -> None:
        import numpy as np
        from rllama.sampling import Sampler, SamplerVocab, SamplingParams

        vocab = SamplerVocab([f"t{i}".encode() for i in range(256)], [0])
        rng = np.random.default_rng(7)
        for trial in range(20):
            logits = rng.normal(size=256).astype(np.float32) * 3
            if logits_kind == "negative":
                logits -= 1000
            elif logits_kind == "large":
                logits *= 1e30
            params = {"temperature": temp, "seed": trial}
            if logits_kind == "bias":
                params["logit_bias"] = [(i, None) for i in range(0, 256, 3)]
                logits[::3] = -np.inf
            s = Sampler(SamplingParams(**params), vocab)
            got = s.sample_n(logits.tobytes(), 50)
            best = int(np.nanargmax(logits))
            assert got == [best] * 50, (temp, logits_kind, trial, sorted(set(got))[:10], best)

    return run


many("temperature", {
    "temperature_1e_39": _greedy_at(1e-39),
    "temperature_1e_30": _greedy_at(1e-30),
    "temperature_smallest_subnormal": _greedy_at(1.4e-45),
    "temperature_below_float32": _greedy_at(1e-300),
    "temperature_1e_39_negative_logits": _greedy_at(1e-39, "negative"),
    "temperature_1e_39_large_logits": _greedy_at(1e-39, "large"),
    "temperature_1e_39_with_banned_tokens": _greedy_at(1e-39, "bias"),
    "temperature_1e_20": _greedy_at(1e-20),
})


@case("temperature")
def temperature_tiny_through_model():
    m = model()
    greedy = m.complete("The capital of France is", n_predict=8, temperature=0, ignore_eos=True)["content"]
    tiny = m.complete("The capital of France is", n_predict=8, temperature=1e-39, ignore_eos=True, seed=3)
    assert tiny["content"] == greedy, (tiny["content"], greedy)


many("temperature", {
    "temperature_huge_int": lambda: __import__("rllama.sampling").sampling.from_request({"temperature": 10**400}),
    "temperature_inf": lambda: __import__("rllama.sampling").sampling.from_request({"temperature": math.inf}),
    "temperature_above_float32": lambda: __import__("rllama.sampling").sampling.from_request({"temperature": 1e39}),
    "dynatemp_range_huge": lambda: __import__("rllama.sampling").sampling.from_request({"dynatemp_range": 1e300}),
}, "InvalidRequestError", r"temperature|dynatemp.*finite")


# GGUF metadata -----------------------------------------------------------------------------------
N_VOCAB, N_EMBD, N_FF, N_HEAD, N_KV, N_LAYER = 32, 32, 48, 4, 2, 1


def _write_synthetic(path: Path, *, rope_base: float = 10000.0, rope_base_swa: float | None = None,
                     eps: float = 1e-5, vocab_key: int | None = N_VOCAB, tokens: int | None = None,
                     embd_rows: int = N_VOCAB, arch: str = "llama", ctx_len: int = 128,
                     spm: bool = False) -> None:
    import gguf
    import numpy as np

    rng = np.random.default_rng(0)

    def mat(rows, cols):
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    hd = N_EMBD // N_HEAD
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(N_LAYER)
    w.add_context_length(ctx_len)
    w.add_embedding_length(N_EMBD)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_KV)
    w.add_layer_norm_rms_eps(eps)
    w.add_rope_freq_base(rope_base)
    if rope_base_swa is not None:
        w.add_float32(f"{arch}.rope.freq_base_swa", rope_base_swa)
    if vocab_key is not None:
        w.add_vocab_size(vocab_key)
    if tokens is not None and spm:  # a SentencePiece vocabulary: byte pieces, no merges needed
        w.add_tokenizer_model("llama")
        w.add_token_list(["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(tokens - 3)])
        w.add_token_scores([0.0] * tokens)
        w.add_token_types([2, 3, 3] + [6] * (tokens - 3))
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
    elif tokens is not None:
        w.add_tokenizer_model("gpt2")
        w.add_token_list([f"t{i}" for i in range(tokens)])
        w.add_token_types([1] * tokens)
        w.add_token_merges([])
    w.add_tensor("token_embd.weight", mat(embd_rows, N_EMBD))
    w.add_tensor("output_norm.weight", np.ones(N_EMBD, np.float32))
    w.add_tensor("output.weight", mat(embd_rows, N_EMBD))
    for i in range(N_LAYER):
        b = f"blk.{i}."
        for name, shape in (("attn_q", (N_HEAD * hd, N_EMBD)), ("attn_k", (N_KV * hd, N_EMBD)),
                            ("attn_v", (N_KV * hd, N_EMBD)), ("attn_output", (N_EMBD, N_HEAD * hd)),
                            ("ffn_gate", (N_FF, N_EMBD)), ("ffn_up", (N_FF, N_EMBD)), ("ffn_down", (N_EMBD, N_FF))):
            w.add_tensor(b + name + ".weight", mat(*shape))
        w.add_tensor(b + "attn_norm.weight", np.ones(N_EMBD, np.float32))
        w.add_tensor(b + "ffn_norm.weight", np.ones(N_EMBD, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _load_synthetic(**kw: Any) -> Callable[[], None]:
    def run() -> None:
        from rllama import _core

        p = tmpdir() / "m.gguf"
        _write_synthetic(p, **kw)
        _core.Model(str(p), n_threads=1)

    return run


many("gguf_metadata", {
    "rope_freq_base_zero": _load_synthetic(rope_base=0.0),
    "rope_freq_base_nan": _load_synthetic(rope_base=math.nan),
    "rope_freq_base_negative": _load_synthetic(rope_base=-10000.0),
    "rope_freq_base_inf": _load_synthetic(rope_base=math.inf),
    "rope_freq_base_swa_zero": _load_synthetic(rope_base_swa=0.0),
}, "ModelLoadError", "freq_base")
many("gguf_metadata", {
    "rms_eps_nan": _load_synthetic(eps=math.nan),
    "rms_eps_negative": _load_synthetic(eps=-1e-5),
    "rms_eps_inf": _load_synthetic(eps=math.inf),
}, "ModelLoadError", "epsilon")
many("gguf_metadata", {
    "vocab_size_differs_from_tokens": _load_synthetic(tokens=N_VOCAB - 4),
    "embedding_rows_differ_from_tokens": _load_synthetic(vocab_key=None, tokens=N_VOCAB + 8),
    "embedding_rows_differ_from_vocab_size": _load_synthetic(vocab_key=N_VOCAB + 1),
}, "ModelLoadError", "tokens|rows|shape")


@case("gguf_metadata")
def synthetic_model_loads():
    from rllama import _core

    p = tmpdir() / "m.gguf"
    _write_synthetic(p, tokens=N_VOCAB)
    assert _core.Model(str(p), n_threads=1).n_vocab == N_VOCAB


@case("gguf_metadata", "InvalidRequestError", "frequency base")
def rope_freq_base_override_zero():
    from rllama import _core

    p = tmpdir() / "m.gguf"
    _write_synthetic(p)
    _core.Model(str(p), rope_freq_base=0.0)


# n_probs -----------------------------------------------------------------------------------------
def _n_probs(v: Any, **kw: Any) -> int:
    from rllama.sampling import from_request

    return from_request({"n_probs": v}, **kw).to_dict()["n_probs"]


many("n_probs", {
    "n_probs_clamped": lambda: _check(_n_probs(10**9) == 100),
    "n_probs_int32_max_clamped": lambda: _check(_n_probs(2**31 - 1) == 100),
    "n_probs_negative_is_zero": lambda: _check(_n_probs(-5) == 0),
    "n_probs_custom_cap": lambda: _check(_n_probs(10**6, n_probs_max=1000) == 1000),
    "n_probs_under_cap_kept": lambda: _check(_n_probs(7) == 7),
})


def _check(ok: bool) -> None:
    assert ok


@case("n_probs", "InvalidRequestError", r"n_probs.*2147483647")
def n_probs_2_64():
    _n_probs(2**64)


@case("n_probs", timeout=120)
def n_probs_huge_through_model():
    out = model().complete("Hello", n_predict=3, temperature=0, n_probs=10**8)
    probs = out["completion_probabilities"]
    assert probs and all(len(p["probs"]) <= 100 for p in probs), [len(p["probs"]) for p in probs]


@case("n_probs")
def n_probs_cap_through_params():
    from rllama import params

    r = params.parse({"prompt": "x", "n_probs": 5000}, tokenize=None, n_vocab=50000, n_ctx=64, n_probs_max=300)
    assert r.n_probs == 300


# Ranges ------------------------------------------------------------------------------------------
def _parse(**opts: Any) -> Any:
    from rllama import params

    return params.parse({"prompt": "x", **opts}, tokenize=lambda s: [1], n_vocab=100, n_ctx=64)


_RANGE_ERRORS = {
    "n_predict_2_63": ({"n_predict": 2**63}, "n_predict"),
    "n_predict_minus_2_63": ({"n_predict": -(2**63)}, "n_predict"),
    "max_tokens_2_64": ({"max_tokens": 2**64}, "max_tokens"),
    "n_keep_2_63": ({"n_keep": 2**63}, "n_keep"),
    "min_keep_2_64": ({"min_keep": 2**64}, "min_keep"),
    "repeat_last_n_2_64": ({"repeat_last_n": 2**64}, "repeat_last_n"),
    "mirostat_tau_huge": ({"mirostat_tau": 10**400}, "mirostat_tau"),
    "top_p_inf": ({"top_p": math.inf}, "top_p"),
    "repeat_penalty_nan": ({"repeat_penalty": math.nan}, "repeat_penalty"),
    "presence_penalty_huge": ({"presence_penalty": -(10**50)}, "presence_penalty"),
    "penalty_prompt_id_2_64": ({"penalty_prompt": [2**64]}, "penalty_prompt"),
    "n_predict_float": ({"n_predict": 1.5}, "n_predict"),
    "n_predict_string": ({"n_predict": "10"}, "n_predict"),
    "n_predict_float_huge": ({"n_predict": 1e300}, "n_predict"),
}
many("ranges", {k: (lambda o=o: _parse(**o)) for k, (o, _) in _RANGE_ERRORS.items()}, "InvalidRequestError")
for _k, (_o, _m) in _RANGE_ERRORS.items():
    CASES[_k].match = _m

many("ranges", {
    "seed_2_100_is_masked": lambda: _parse(seed=2**100),
    "top_k_2_64_is_clamped": lambda: _parse(top_k=2**64),
    "logit_bias_id_2_64_is_skipped": lambda: _parse(logit_bias=[[2**64, 1.0]]),
    "logit_bias_huge_bias": lambda: _parse(logit_bias=[[1, 10**400], [2, math.inf]]),
    "mirostat_2_64_is_clamped": lambda: _parse(mirostat=2**64),
})


@case("ranges", "InvalidRequestError", "n_predict")
def n_predict_2_63_through_model():
    model().complete("Hi", n_predict=2**63)


def _validate_model(**kw: Any) -> None:
    from rllama import validate

    validate.model_args(**kw)


many("ranges", {
    "validate_n_threads_negative": lambda: _validate_model(n_threads=-1),
    "validate_n_threads_zero": lambda: _validate_model(n_threads_batch=0),
    "validate_n_ctx_2_64": lambda: _validate_model(n_ctx=2**64),
    "validate_n_ctx_negative": lambda: _validate_model(n_ctx=-1),
    "validate_n_batch_zero": lambda: _validate_model(n_batch=0),
    "validate_rope_freq_base_nan": lambda: _validate_model(rope_freq_base=math.nan),
    "validate_chat_template_surrogate": lambda: _validate_model(chat_template="{{ '\ud800' }}"),
}, "InvalidRequestError", r"n_|rope|chat_template")


@case("ranges")
def validate_model_defaults_pass():
    _validate_model(n_ctx=0, n_threads=None, n_threads_batch=4, n_batch=2048, n_ubatch=512, rope_freq_base=None,
                    chat_template="chatml", flash_attn="auto")


many("ranges", {
    "model_n_threads_negative": lambda: model(n_threads=-1),
    "model_n_ctx_2_64": lambda: model(n_ctx=2**64),
    "model_n_threads_2_64": lambda: model(n_threads=2**64),
    "model_n_ubatch_zero": lambda: model(n_ubatch=0),
}, "InvalidRequestError", r"n_threads|n_ctx|n_ubatch")


def _perplexity(n_ctx: int) -> None:
    model().perplexity("Hello world. " * 200, n_ctx=n_ctx)


many("ranges", {
    "perplexity_n_ctx_0": lambda: _perplexity(0),
    "perplexity_n_ctx_1": lambda: _perplexity(1),
    "perplexity_n_ctx_negative": lambda: _perplexity(-4),
}, "InvalidRequestError", "n_ctx")


@case("ranges", "InvalidRequestError", "n_ctx")
def validate_perplexity_n_ctx_1():
    from rllama import validate

    validate.perplexity_args(1)


# Unicode -----------------------------------------------------------------------------------------
def _tokenizer():
    import rllama

    return rllama.Tokenizer.from_gguf(smollm2())


many("unicode", {
    "tokenize_lone_surrogate": lambda: _tokenizer().tokenize("a\ud800b"),
    "complete_lone_surrogate": lambda: model().complete("\udfff", n_predict=1),
    "stop_lone_surrogate": lambda: _parse(stop=["\ud800"]),
    "penalty_prompt_lone_surrogate": lambda: _parse(penalty_prompt="\ud800"),
    "logit_bias_text_lone_surrogate": lambda: _parse(logit_bias=[["\ud800", 1.0]]),
    "json_schema_const_lone_surrogate": lambda: _parse(json_schema={"const": "\ud800"}),
    "mixed_prompt_lone_surrogate": lambda: _parse_prompt([1, "\ud800"]),
    "chat_lone_surrogate": lambda: model().chat([{"role": "user", "content": "\ud800"}], n_predict=1),
}, "InvalidRequestError", "surrogate")


# CLI ---------------------------------------------------------------------------------------------
def _cli(*argv: str) -> Callable[[], None]:
    def run() -> None:
        from rllama import cli

        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                rc = cli.main(list(argv))
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else 1
        text = err.getvalue().strip()
        assert rc != 0, f"exit status 0 for {argv}"
        assert "Traceback" not in text, text
        assert len(text.splitlines()) == 1, f"{len(text.splitlines())} lines: {text}"

    return run


def _binary_file() -> str:
    return _file(b"\xff\xfe\x00\x01binary\x80", "prompt.bin")


many("cli", {
    "cli_run_threads_negative": _cli("run", "-t", "-1", "-p", "hi"),
    "cli_run_threads_zero": _cli("run", "-t", "0", "-p", "hi"),
    "cli_run_threads_batch_negative": _cli("run", "-tb", "-3", "-p", "hi"),
    "cli_run_ctx_huge": _cli("run", "-c", str(2**64), "-p", "hi"),
    "cli_run_n_predict_huge": _cli("run", "-n", str(2**63), "-p", "hi"),
    "cli_run_ctx_not_a_number": _cli("run", "-c", "lots", "-p", "hi"),
    "cli_run_missing_file": _cli("run", "-f", "/nonexistent/prompt.txt"),
    "cli_run_directory_file": lambda: _cli("run", "-f", str(tmpdir()))(),
    "cli_run_binary_file": lambda: _cli("run", "-f", _binary_file())(),
    "cli_run_model_directory": lambda: _cli("run", "-m", str(tmpdir()), "-p", "hi")(),
    "cli_run_model_fifo": lambda: _cli("run", "-m", _fifo(), "-p", "hi")(),
    "cli_run_bad_grammar": _cli("run", "-p", "hi", "-n", "1", "--grammar", "root ::= [z-a]"),
    "cli_perplexity_ctx_0": lambda: _cli("perplexity", "-c", "0", "-f", _file(b"text " * 100, "t.txt"))(),
    "cli_perplexity_ctx_1": lambda: _cli("perplexity", "-c", "1", "-f", _file(b"text " * 100, "t.txt"))(),
    "cli_perplexity_ctx_negative": lambda: _cli("perplexity", "-c", "-5", "-f", _file(b"t", "t.txt"))(),
    "cli_perplexity_binary_file": lambda: _cli("perplexity", "-f", _binary_file())(),
    "cli_perplexity_missing_file": _cli("perplexity", "-f", "/nonexistent.txt"),
    "cli_bench_repetitions_0": _cli("bench", "-r", "0"),
    "cli_bench_threads_0": _cli("bench", "-t", "0"),
    "cli_bench_prompt_list_garbage": _cli("bench", "-p", "1,x"),
    "cli_bench_kernels_repetitions_0": _cli("bench", "kernels", "-r", "0"),
    "cli_bench_kernels_threads_garbage": _cli("bench", "kernels", "-t", "1,,zero"),
    "cli_bench_tokenizer_mb_negative": _cli("bench", "tokenizer", "--mb", "-1"),
    "cli_bench_tokenizer_repeat_0": _cli("bench", "tokenizer", "--repeat", "0"),
    "cli_inspect_directory": lambda: _cli("inspect", str(tmpdir()))(),
    "cli_unknown_command": _cli("frobnicate"),
}, timeout=90)


# Tokenizer ---------------------------------------------------------------------------------------
@case("tokenizer")
def bytes_without_token_are_dropped_like_llama_cpp():
    t = _tokenizer()
    assert t.detokenize(t.tokenize("a\x04b")) == "ab"
    assert t.tokenize("\x04\x06\x13") == []
    # U+40000: lead byte 0xF1 has no token; its three continuation bytes remain.
    assert t.detokenize(t.tokenize("x\U00040000y")) == "x\ufffd\ufffd\ufffdy"


@case("tokenizer")
def every_byte_and_plane_tokenizes():
    t = _tokenizer()
    for cp in list(range(0x110000))[::997] + list(range(256)):
        if 0xD800 <= cp < 0xE000:
            continue
        ids = t.tokenize(chr(cp) * 3)
        assert all(0 <= i < t.vocab_size for i in ids)
        t.detokenize(ids)


many("tokenizer", {
    "detokenize_id_2_64": lambda: _tokenizer().detokenize([2**64]),
    "detokenize_negative_id": lambda: _tokenizer().detokenize([-1]),
    "detokenize_id_vocab_size": lambda: _tokenizer().detokenize([49152]),
    "token_to_piece_2_64": lambda: _tokenizer().token_to_piece(2**64),
    "detokenize_bool_id": lambda: _tokenizer().detokenize([True]),
    "detokenize_string_id": lambda: _tokenizer().detokenize(["1"]),
}, "InvalidRequestError", "token id")


@case("tokenizer", "InvalidRequestError", "str")
def tokenize_bytes_argument():
    _tokenizer().tokenize(b"bytes")


# Engine (fixed in the engine rewrite; tested here) -----------------------------------------------
@case("engine", "ModelLoadError", "memory|context|bytes", timeout=60)
def n_ctx_4_000_000():
    model(n_ctx=4_000_000).complete("Hi", n_predict=1)


@case("engine", timeout=60)
def n_ctx_0_on_a_2_31_context_model_picks_what_fits():
    import rllama

    p = tmpdir() / "long.gguf"
    _write_synthetic(p, tokens=N_VOCAB, ctx_len=2**31, spm=True)
    m = rllama.Model(str(p), n_ctx=0, n_threads=1)
    # Half of what the 4 GiB address-space limit leaves, in multiples of 256.
    _check(256 <= m.n_ctx < 2**31 and m.n_ctx % 256 == 0)
    _check(m.complete([1, 5, 6], n_predict=2, ignore_eos=True)["tokens_predicted"] == 2)


@case("engine", timeout=90)
def stream_never_read_stays_bounded_and_others_run():
    import time

    m = model(n_ctx=4096, n_parallel=2, stream_timeout=2.0)
    it = m.complete("Once upon a time", n_predict=1500, ignore_eos=True, stream=True, n_probs=2)
    next(it)
    held, before = 0, -1
    for _ in range(160):  # unread: held once its buffer fills (its decoded count stops moving)
        time.sleep(0.5)
        held = max(s["next_token"]["n_decoded"] for s in m.slots())
        if held == before:
            break
        before = held
    _check(0 < held < 400)
    _check(m.complete("Hi", n_predict=4)["tokens_predicted"] == 4)
    time.sleep(3)  # then cancelled by the timeout
    rest = list(it)
    _check(rest[-1]["stop_type"] == "none" and rest[-1]["tokens_predicted"] < 400)


@case("engine", "InvalidRequestError", "empty")
def embed_empty_list():
    model().embed([])

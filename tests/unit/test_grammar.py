"""GBNF grammars: parsing (errors with line and column, hostile inputs), matching, and
grammar-constrained sampling with the real smollm2 vocabulary and random logits: every finished
output is in the grammar's language, every unfinished one is a valid prefix."""

from __future__ import annotations

import time

import numpy as np
import pytest
import rllama
from hypothesis import given, settings
from hypothesis import strategies as st
from rllama.sampling import Grammar, Sampler, SamplingParams
from test_sampling_vocab import smollm2_pieces, smollm2_vocab

GRAMMARS = {
    "arith": r"""
root  ::= expr
expr  ::= term (("+" | "-") term)*
term  ::= factor (("*" | "/") factor)*
factor ::= [0-9]+ | "(" expr ")"
""",
    "list": r"""
root ::= item ("\n" item){0,4}
item ::= "- " [a-z ]{1,12}
""",
    "json-ish": r"""
root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null")
object ::= "{" ws ( string ":" ws value ("," ws string ":" ws value)* )? "}"
array  ::= "[" ws ( value ("," ws value)* )? "]"
string ::= "\"" ( [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4}) )* "\"" ws
number ::= "-"? ([0-9] | [1-9] [0-9]{0,8}) ("." [0-9]{1,6})? ws
ws ::= | " " | "\n" [ \t]{0,8}
""",
    "unicode": r"""
root ::= "「" [ぁ-ゖ]{1,6} "」" ([é-ü] | "€" | [😀-😏])? "."
""",
    "anychar": r"""
root ::= "<" [^>\n]* ">"   # comments are allowed
""",
    "yes-no": 'root ::= ("yes" | "no") "!"?\n',
}


def pieces_text(ids: list[int]) -> bytes:
    pieces, eog = smollm2_pieces()
    return b"".join(pieces[t] for t in ids if t not in eog)


def run(grammar: str, seed: int, n_tokens: int = 48, eog_bias: float = 2.0, **params):
    pieces, eog = smollm2_pieces()
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n_tokens, len(pieces))).astype(np.float32) * 3.0
    logits[:, eog] += eog_bias
    s = Sampler(SamplingParams(grammar=grammar, seed=seed, **params), smollm2_vocab())
    ids, _secs = s.generate(logits.tobytes(), len(pieces))
    return ids, s


@pytest.mark.parametrize("name", list(GRAMMARS))
def test_random_logits_outputs_are_in_the_language(name):
    g = Grammar(GRAMMARS[name])
    _, eog = smollm2_pieces()
    finished = 0
    for seed in range(25):
        params = {} if seed % 3 else {"temperature": 1.5, "top_k": 0, "top_p": 1.0, "min_p": 0.0}
        ids, _s = run(GRAMMARS[name], seed, **params)
        text = pieces_text(ids)
        if ids and ids[-1] in eog:
            finished += 1
            assert g.matches(text), (seed, text)
        else:
            assert g.allows_prefix(text), (seed, text)
    assert finished > 0


def test_greedy_under_grammar_picks_best_allowed():
    pieces, eog = smollm2_pieces()
    rng = np.random.default_rng(0)
    logits = rng.normal(size=len(pieces)).astype(np.float32)
    s = Sampler(SamplingParams(grammar='root ::= [0-9]+ "x"\n', temperature=0, seed=1), smollm2_vocab())
    t = s.sample(logits.tobytes())
    allowed = [i for i, p in enumerate(pieces) if p and p.isdigit() and i not in eog]
    assert t == max(allowed, key=lambda i: logits[i])


@pytest.mark.parametrize("samplers", [["top_k", "temperature"], ["temperature", "top_p"], ["min_p", "temperature"]])
def test_redraw_equals_grammar_first_distribution(samplers):
    """When the unconstrained draw is rejected, the redraw must be 'grammar on the whole
    vocabulary, then the chain': compare the fast path with a reference computed in numpy."""
    pieces, eog = smollm2_pieces()
    rng = np.random.default_rng(1)
    logits = rng.normal(size=len(pieces)).astype(np.float32) * 2
    allowed = np.array([bool(p) and p.strip(b"0123456789") == b"" and i not in eog for i, p in enumerate(pieces)])
    # Make the unconstrained best tokens disallowed so the redraw path is taken.
    logits[~allowed] += 6.0
    params = {"top_k": 5, "top_p": 0.8, "min_p": 0.1, "temperature": 0.7, "samplers": samplers}
    counts = {}
    for seed in range(600):
        s = Sampler(SamplingParams(grammar="root ::= [0-9]+\n", seed=seed, **params), smollm2_vocab())
        t = s.sample(logits.tobytes())
        assert allowed[t]
        counts[t] = counts.get(t, 0) + 1
    # numpy reference on the allowed tokens only
    from test_sampling import ref_min_p, ref_top_k, ref_top_p

    ref = np.where(allowed, logits.astype(np.float64), -np.inf)
    for name in samplers:
        ref = {"top_k": lambda x: ref_top_k(x, 5), "top_p": lambda x: ref_top_p(x, 0.8),
               "min_p": lambda x: ref_min_p(x, 0.1), "temperature": lambda x: x / 0.7}[name](ref)
    p = np.exp(ref - ref.max())
    p /= p.sum()
    support = set(np.nonzero(p > 1e-9)[0].tolist())
    assert set(counts) <= support
    top = int(np.argmax(p))
    assert abs(counts.get(top, 0) / 600 - p[top]) < 0.07


def test_eos_only_where_grammar_may_end_and_grammar_done():
    pieces, eog = smollm2_pieces()
    logits = np.zeros(len(pieces), dtype=np.float32)
    logits[eog] = 30.0
    s = Sampler(SamplingParams(grammar='root ::= "ab" "c"?\n', temperature=0, seed=1), smollm2_vocab())
    t = s.sample(logits.tobytes())
    assert t not in eog
    s.accept(pieces.index(b"ab"))
    assert not s.grammar_done() and s.grammar_can_end()
    assert s.sample(logits.tobytes()) in eog
    s.accept(pieces.index(b"c"))
    assert s.grammar_done()


def test_token_ending_mid_character():
    pieces, _eog = smollm2_pieces()
    # tokens that are a lone UTF-8 lead byte or continuation fragments exist in byte-level vocabularies
    lead = [i for i, p in enumerate(pieces) if len(p) == 1 and 0xC0 <= p[0] <= 0xF4]
    assert lead
    s = Sampler(SamplingParams(grammar='root ::= "é"\n', temperature=0, seed=1), smollm2_vocab())
    logits = np.zeros(len(pieces), dtype=np.float32)
    c3 = pieces.index(b"\xc3")
    logits[c3] = 10.0
    assert s.sample(logits.tobytes()) == c3
    s.accept(c3)
    logits[:] = 0
    a9 = pieces.index(b"\xa9")
    logits[a9] = 1.0
    assert s.sample(logits.tobytes()) == a9
    s.accept(a9)
    assert s.grammar_done()


# -- parser ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,where",
    [
        ('root ::= "a"\nfoo ::= "b" ]\n', "line 2, column 13"),
        ('root ::= [a-z\n', "unterminated character class at line 1, column 10"),
        ('x ::= "a"\nroot ::= "abc\n', "unterminated string literal at line 2, column 10"),
        ('root ::= "\\q"\n', "line 1, column 11"),
        ("root ::= undefined-rule\n", "undefined rule identifier 'undefined-rule'"),
        ('root ::= ("a"\n', "expecting ')'"),
        ('root := "a"\n', "expecting ::="),
        ('other ::= "a"\n', "root"),
        ('root ::= "a"{2001}\n', "limit"),
        ('root ::= "a"{3,2}\n', "smaller"),
        ('root ::= *\n', "expecting preceding item"),
        ("root ::= root \"a\" | \"b\"\n", "left recursion"),
        ("root ::= a\na ::= b\nb ::= a \"x\"\n", "left recursion"),
        ("root ::= e* \"x\"\ne ::= \"\"\n", "left recursion"),
        ('root ::= "\\x4"\n', "hex"),
    ],
)
def test_parse_errors(text, where):
    with pytest.raises(rllama.GrammarError, match="Failed to parse grammar") as e:
        Grammar(text)
    assert where in str(e.value)


def test_syntax_features():
    g = Grammar(
        r"""# leading comment
root ::= greeting ( ", " name )? punct   # trailing comment
greeting ::= "hello" | "hi"
name ::= [A-Z] [a-z]* | "\u00e9t\xe9" | "\U0001F600"
punct ::= [!.?]{1,3}
"""
    )
    for ok in ["hello!", "hi, Bob...", "hello, été?", "hi, 😀!"]:
        assert g.matches(ok), ok
    for bad in ["hello", "hey!", "hi, bob!", "hello!!!!"]:
        assert not g.matches(bad), bad
    assert Grammar('root ::= [^a-c]\n').matches("d")
    assert not Grammar('root ::= [^a-c]\n').matches("b")
    assert Grammar('root ::= ""\n').matches("")
    assert Grammar('root ::= "a"{0,}\n').matches("aaaa")
    assert Grammar('root ::= ("ab"){2}\n').matches("abab")
    assert Grammar('root ::= ( "x"\n | "y" )\n').matches("y")
    assert Grammar('root ::= [\\]\\-\\[]+\n').matches("]-[")


# -- hostile grammars: errors or bounded work, never hangs or crashes ---------------------------------


def timed(f):
    t0 = time.perf_counter()
    try:
        f()
        err = None
    except rllama.GrammarError as e:
        err = e
    return time.perf_counter() - t0, err


def test_deep_nesting_is_an_error_not_a_stack_overflow():
    dt, err = timed(lambda: Grammar("root ::= " + "(" * 50000 + '"a"' + ")" * 50000 + "\n"))
    assert err is not None and dt < 5


def test_long_reference_chain_is_fine():
    n = 20000
    text = "root ::= r0\n" + "".join(f'r{i} ::= r{i + 1} "a"\n' for i in range(n)) + f'r{n} ::= "b"\n'
    g = Grammar(text)
    assert g.matches("b" + "a" * n)


def test_huge_repetitions_are_errors_or_bounded():
    dt, err = timed(lambda: Grammar('root ::= "a"{2000000000}\n'))
    assert err is not None and dt < 5
    dt, err = timed(lambda: Grammar('root ::= ("abcdefghij"{2000}){2000}\n'))  # nested: refs, small
    assert dt < 10
    dt, err = timed(lambda: Grammar('root ::= "' + "x" * 5000 + '"{2000}\n'))
    assert err is not None and dt < 10
    dt, err = timed(lambda: Grammar('root ::= "a"{99999999999999999999999999}\n'))
    assert err is not None


def test_ambiguous_grammar_is_bounded():
    # exponentially many parses of the same text; dedup of stacks keeps this small
    g = Grammar('root ::= ("a" | "a" | "aa")* "b"\n')
    dt, _ = timed(lambda: g.matches("a" * 3000 + "b"))
    assert dt < 5


def test_nullable_repetition_of_nullable_is_rejected():
    with pytest.raises(rllama.GrammarError):
        Grammar('root ::= x*\nx ::= "a"*\n')


def test_empty_and_undefined_rules():
    with pytest.raises(rllama.GrammarError):
        Grammar("")
    with pytest.raises(rllama.GrammarError):
        Grammar("root ::= a\n")
    assert Grammar('root ::= a\na ::= ""\n').matches("")


def test_sampling_with_grammar_that_only_allows_end():
    pieces, eog = smollm2_pieces()
    s = Sampler(SamplingParams(grammar='root ::= ""\n', seed=1), smollm2_vocab())
    assert s.grammar_done()
    assert s.sample(np.zeros(len(pieces), dtype=np.float32).tobytes()) in eog
    s = Sampler(SamplingParams(grammar='root ::= ""\n', seed=1, ignore_eos=True), smollm2_vocab())
    assert s.sample(np.zeros(len(pieces), dtype=np.float32).tobytes()) in eog  # nothing else is allowed


def test_accepting_a_disallowed_token_is_an_error():
    pieces, _ = smollm2_pieces()
    s = Sampler(SamplingParams(grammar='root ::= "a"\n', seed=1), smollm2_vocab())
    with pytest.raises(rllama.GrammarError):
        s.accept(pieces.index(b"b"))


@pytest.mark.parametrize(
    "grammar,prefixes",
    [
        (GRAMMARS["json-ish"], [b"", b"{", b'{"a', b'{"a": [1', b'{"a": "\\', b'{"a": "\\u00']),
        (GRAMMARS["unicode"], ["「".encode(), "「ぁ".encode(), "「ぁ」".encode(), "「ぁ」é".encode(), "「ぁ".encode()[:-1]]),
        (GRAMMARS["arith"], [b"", b"1", b"(2*", b"(2*3)"]),
        ('root ::= [^"]{0,5} "x"\n', [b"", b"ab", "éé".encode()[:-1]]),
    ],
)
def test_vocabulary_walk_agrees_with_per_token_checks(grammar, prefixes):
    """The trie/DFA walk that filters the whole vocabulary must allow exactly the tokens that,
    appended to the text so far, still form a valid prefix."""
    pieces, eog = smollm2_pieces()
    g = Grammar(grammar)
    eog_set = set(eog)
    for prefix in prefixes:
        walked = set(g.allowed_tokens(smollm2_vocab(), prefix))
        checked = {i for i, p in enumerate(pieces) if p and i not in eog_set and g.allows_prefix(prefix + p)}
        assert walked == checked, (prefix, sorted(walked ^ checked)[:10])


@pytest.mark.parametrize(
    "grammar",
    [
        'root ::= x{0,2000}\nx ::= "a"?\n',  # bounded repetition of something that can match nothing
        'root ::= (x x){0,1000}\nx ::= "a"? "b"?\n',
        'root ::= (("a"{0,2000}){0,2000}){0,2000}\n',
    ],
)
def test_pathological_ambiguity_fails_fast(grammar):
    """Grammars whose matching work explodes are refused quickly (a GrammarError at the first
    operation that exceeds the work budget), never seconds per token."""
    pieces, _ = smollm2_pieces()
    t0 = time.perf_counter()
    with pytest.raises(rllama.GrammarError, match="too ambiguous"):
        s = Sampler(SamplingParams(grammar=grammar, seed=1), smollm2_vocab())
        logits = np.random.default_rng(0).normal(size=(20, len(pieces))).astype(np.float32)
        s.generate(logits.tobytes(), len(pieces))
        Grammar(grammar).matches("a" * 500)
    assert time.perf_counter() - t0 < 10


GBNF_ALPHABET = st.sampled_from(
    ['root', ' ::= ', '::=', 'a', 'x1', '-', '"', '"a"', '"\\n"', '\\', '\\x4', '\\u00e9', '[', ']', '[^', 'a-z',
     '(', ')', '|', '*', '+', '?', '{', '}', '{2,3}', '{0,}', ',', '.', '#c', '\n', ' ', '\t', 'é', '😀', '\r\n']
)


@settings(max_examples=400, deadline=None)
@given(st.lists(GBNF_ALPHABET, max_size=40).map("".join), st.text(max_size=12))
def test_fuzzed_grammars_parse_or_fail_cleanly(text, sample):
    """Arbitrary grammar text either parses or raises GrammarError (never crashes or hangs), and
    matching arbitrary text afterwards is an answer or a GrammarError."""
    try:
        g = Grammar(text)
    except rllama.GrammarError as e:
        assert str(e).startswith("Failed to parse grammar")
        return
    try:
        g.matches(sample)
        g.allows_prefix(sample.encode()[:5])
    except rllama.GrammarError:
        pass

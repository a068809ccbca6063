"""Differential test against llama.cpp itself (skipped unless a built libllama is given).

    RLLAMA_LLAMA_CPP_SRC=/path/to/llama.cpp  RLLAMA_LLAMA_CPP_LIB=/path/to/build/bin  pytest ...

A small C program (compiled here against llama.h) loads a GGUF vocabulary-only and answers
tokenize / detokenize requests; random texts (special-token text, white space runs, contractions,
CJK, emoji, unassigned and private-use code points, controls) must give the same ids and the
same detokenized bytes in both. Besides the two real models, SmolLM2's vocabulary is re-labelled
with each supported ``tokenizer.ggml.pre`` and Gemma 3's with ``add_space_prefix``.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from rllama import Tokenizer

SRC = os.environ.get("RLLAMA_LLAMA_CPP_SRC")
LIB = os.environ.get("RLLAMA_LLAMA_CPP_LIB")
pytestmark = pytest.mark.skipif(
    not (SRC and LIB and shutil.which("gcc")), reason="set RLLAMA_LLAMA_CPP_SRC and RLLAMA_LLAMA_CPP_LIB"
)

ORACLE_C = r"""
#include "llama.h"
#include <stdio.h>
#include <stdlib.h>
static void hex(const char *s, int n) { for (int i = 0; i < n; i++) printf("%02x", (unsigned char)s[i]); printf("\n"); }
int main(int argc, char **argv) {
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    mp.vocab_only = true;
    struct llama_model *m = llama_model_load_from_file(argv[1], mp);
    if (!m) return 1;
    const struct llama_vocab *v = llama_model_get_vocab(m);
    int add, ps; long n;
    while (scanf("%d %d %ld", &add, &ps, &n) == 3) {
        getchar();
        char *buf = malloc(n + 1);
        if (fread(buf, 1, n, stdin) != (size_t)n) return 2;
        int cap = n * 2 + 16;
        llama_token *t = malloc(sizeof(llama_token) * cap);
        int k = llama_tokenize(v, buf, n, t, cap, add, ps);
        for (int i = 0; i < k; i++) printf(i ? " %d" : "%d", t[i]);
        printf("\n");
        int dcap = n * 4 + 64;
        char *out = malloc(dcap);
        hex(out, llama_detokenize(v, t, k, out, dcap, 0, 1));
        hex(out, llama_detokenize(v, t, k, out, dcap, 1, 0));
        fflush(stdout);
        free(buf); free(t); free(out);
    }
    return 0;
}
"""

PRES = [
    "default", "gpt-2", "llama-bpe", "qwen2", "deepseek-llm", "deepseek-coder", "falcon", "starcoder",
    "refact", "command-r", "gpt-4o", "tekken", "olmo", "dbrx", "chatglm-bpe", "poro-chat", "viking",
    "jais", "bloom", "stablelm2", "mpt",
]  # fmt: skip

SPECIALS = [
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<bos>",
    "<eos>",
]
WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "don't",
    "I'm",
    "we've",
    "they'll",
    "HELLO",
    "World's",
    "naïve",
    "café",
    "東京",
    "日本語",
    "Привет",
    "١٢٣",
    "12345",
    "3.14",
    "$x",
    "+=",
    "y;",
    "fn(){}",
    "<div>",
    "</div>",
    "▁",
    "▁▁",
]
ALPHA = (
    [chr(c) for c in range(32, 127)]
    + list(
        "\n\t\r\x00\x1c\x85\xa0\u1680\u2003\u2028\u3000\u3001éñüßøΩжя中文한글😀🎉\u0301\u200b\ufeff▁\ufffd"
    )
    + [chr(0x40000), chr(0xE000)]
)


def _texts(n: int, seed: int):
    rng = random.Random(seed)
    for _ in range(n):
        k = rng.random()
        if k < 0.35:
            s = "".join(rng.choice(ALPHA) for _ in range(rng.randint(0, 80)))
        elif k < 0.5:
            s = "".join(chr(rng.randint(1, 0x2FFFF)) for _ in range(rng.randint(0, 12)))
            s = s.encode("utf-8", "ignore").decode("utf-8", "ignore")
        else:
            parts = []
            for _ in range(rng.randint(0, 20)):
                r = rng.random()
                if r < 0.1:
                    parts.append(rng.choice(SPECIALS))
                elif r < 0.25:
                    parts.append(" " * rng.randint(0, 5) + "\n" * rng.randint(0, 3))
                else:
                    parts.append(rng.choice(WORDS))
                parts.append(rng.choice(["", " ", "  ", "\n", ".", ",", "'", "'s"]))
            s = "".join(parts)
        yield s, rng.random() < 0.5, rng.random() < 0.7


@pytest.fixture(scope="module")
def oracle(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("oracle")
    (d / "oracle.c").write_text(ORACLE_C)
    exe = d / "oracle"
    inc = [f"-I{SRC}/include", f"-I{SRC}/ggml/include"]
    cmd = [
        "gcc",
        "-O2",
        "-o",
        str(exe),
        str(d / "oracle.c"),
        *inc,
        f"-L{LIB}",
        "-lllama",
        f"-Wl,-rpath,{LIB}",
    ]
    subprocess.run(cmd, check=True)
    return exe


def _relabel(src: Path, dst: Path, **over) -> Path:
    gguf = pytest.importorskip("gguf")
    r = gguf.GGUFReader(str(src))
    w = gguf.GGUFWriter(str(dst), r.fields["general.architecture"].contents())
    for k, f in r.fields.items():
        if k.startswith("GGUF.") or k == "general.architecture" or k in over:
            continue
        vt = f.types[0]
        if vt == gguf.GGUFValueType.ARRAY:
            w.add_key_value(k, f.contents(), vt, sub_type=f.types[-1])
        else:
            w.add_key_value(k, f.contents(), vt)
    for k, v in over.items():
        if isinstance(v, bool):
            w.add_bool(k, v)
        else:
            w.add_string(k, v)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


def _compare(oracle: Path, path: Path, n: int, seed: int) -> None:
    tok = Tokenizer.from_gguf(path)
    p = subprocess.Popen([str(oracle), str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert p.stdin and p.stdout
    try:
        for s, add, ps in _texts(n, seed):
            b = s.encode()
            p.stdin.write(f"{int(add)} {int(ps)} {len(b)}\n".encode() + b)
            p.stdin.flush()
            ref = [int(x) for x in p.stdout.readline().split()]
            det = bytes.fromhex(p.stdout.readline().strip().decode())
            det2 = bytes.fromhex(p.stdout.readline().strip().decode())
            assert tok.tokenize(s, add_special=add, parse_special=ps) == ref, (path.name, s, add, ps)
            assert tok.detokenize_bytes(ref) == det, (path.name, s)
            assert tok.detokenize_bytes(ref, remove_special=True, unparse_special=False) == det2, (
                path.name,
                s,
            )
    finally:
        p.stdin.close()
        p.wait()


@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
def test_real_models_agree_with_llama_cpp(oracle, model, smollm2_path, gemma3_path):
    _compare(oracle, smollm2_path if model == "smollm2" else gemma3_path, 1500, 1)


@pytest.mark.parametrize("pre", PRES)
def test_every_pre_tokenizer_agrees_with_llama_cpp(oracle, pre, smollm2_path, tmp_path):
    path = _relabel(smollm2_path, tmp_path / f"smollm2-{pre}.gguf", **{"tokenizer.ggml.pre": pre})
    _compare(oracle, path, 400, 2)


def test_spm_space_prefix_agrees_with_llama_cpp(oracle, gemma3_path, tmp_path):
    path = _relabel(gemma3_path, tmp_path / "gemma3-asp.gguf", **{"tokenizer.ggml.add_space_prefix": True})
    _compare(oracle, path, 800, 3)

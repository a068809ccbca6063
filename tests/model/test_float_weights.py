"""Float weight matrices (F16, BF16) summed as llama.cpp sums them.

SmolLM2 is converted with the gguf package (every matrix dequantized and stored as F16 or BF16,
norms kept F32) and its final hidden states compared with llama-server's for the same files:
`data/llamacpp_float_hidden.npz`, recorded with `--embedding --pooling none -t 2 -c 512` from the
llama.cpp tree in the llama-cpp-python 0.3.36 sdist, built natively on an AMD EPYC (AVX-512 with
AVX512_BF16). One token takes ggml's vec_dot order, seven take tinyBLAS's tiles. Where this
machine's order is that build's, the states must be its bits; elsewhere (AVX2, AVX-512 without
BF16 instructions, no SIMD) they must still be close, as another llama.cpp build's would be."""

from pathlib import Path

import numpy as np
import pytest
from rllama import _core
from rllama.model import Model

DATA = Path(__file__).parent / "data" / "llamacpp_float_hidden.npz"
FILE_TYPE = {"F16": 1, "BF16": 32}  # llama.cpp's LLAMA_FTYPE_MOSTLY_*


def convert(src: str, dst: Path, ty_name: str) -> Path:
    gguf = pytest.importorskip("gguf")
    from gguf.quants import dequantize, quantize

    ty = getattr(gguf.GGMLQuantizationType, ty_name)
    r = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(str(dst), r.fields["general.architecture"].contents())
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        vt = f.types[0]
        value = FILE_TYPE[ty_name] if name == "general.file_type" else f.contents()
        w.add_key_value(name, value, vt, sub_type=f.types[1] if vt == gguf.GGUFValueType.ARRAY else None)
    for t in r.tensors:
        a = dequantize(t.data, t.tensor_type).astype(np.float32)
        if t.tensor_type != gguf.GGMLQuantizationType.F32 and a.ndim == 2:
            q = quantize(a, ty)
            w.add_tensor(t.name, q, raw_shape=q.shape, raw_dtype=ty)
        else:
            w.add_tensor(t.name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


def llamacpp_order(ty: str) -> bool:
    """Whether this process sums `ty` matrices in the order of the build that made the data."""
    if _core.simd() != "avx512":
        return False
    if ty == "BF16":
        flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
        return "avx512_bf16" in flags
    return True


@pytest.fixture(scope="module")
def reference():
    return np.load(DATA)


@pytest.mark.parametrize("ty", ["F16", "BF16"])
def test_hidden_states_are_llama_cpps(ty, smollm2_path, tmp_path_factory, reference):
    path = convert(str(smollm2_path), tmp_path_factory.mktemp("float") / f"smollm2-{ty}.gguf", ty)
    m = Model(str(path), n_ctx=512, n_threads=2)
    texts = [str(t) for t in reference["texts"]]
    got = m.embed(texts, pooling="none", normalize=False)
    for i, g in enumerate(got):
        want = reference[f"{ty}_{i}"]
        assert g.shape == want.shape
        scale = float(np.abs(want).max())
        err = float(np.abs(g - want).max()) / scale
        if llamacpp_order(ty):
            assert err < 1e-6, f"{ty} text {i}: max relative difference {err:.2e}"
        else:
            assert err < 1e-2, f"{ty} text {i}: max relative difference {err:.2e}"
    # And the model generates with them (greedy; the F16 and BF16 files agree on the answer).
    out = m.complete("The capital of France is", n_predict=4, temperature=0)
    assert "Paris" in out["content"]

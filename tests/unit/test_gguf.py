"""GGUF reader: files written by the `gguf` package read back equal; both real models read;
corrupt and hostile files give one clear error (rllama.ModelLoadError with a byte offset)."""

from __future__ import annotations

import struct
import subprocess
import sys

import gguf
import numpy as np
import pytest
import rllama.gguf
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize, quantize
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rllama import ModelLoadError

METADATA = {
    "t.u8": (7, gguf.GGUFValueType.UINT8),
    "t.i8": (-7, gguf.GGUFValueType.INT8),
    "t.u16": (65000, gguf.GGUFValueType.UINT16),
    "t.i16": (-32000, gguf.GGUFValueType.INT16),
    "t.u32": (4_000_000_000, gguf.GGUFValueType.UINT32),
    "t.i32": (-2_000_000_000, gguf.GGUFValueType.INT32),
    "t.u64": (2**63 + 5, gguf.GGUFValueType.UINT64),
    "t.i64": (-(2**62), gguf.GGUFValueType.INT64),
    "t.f32": (1.5, gguf.GGUFValueType.FLOAT32),
    "t.f64": (-2.25e300, gguf.GGUFValueType.FLOAT64),
    "t.bool": (True, gguf.GGUFValueType.BOOL),
    "t.str": ("héllo ▁wörld 🙂", gguf.GGUFValueType.STRING),
}

TENSOR_TYPES = [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1]


def write_sample(path, *, tensor_types=TENSOR_TYPES, alignment=None, seed=0):
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    if alignment:
        w.add_custom_alignment(alignment)
    for k, (v, t) in METADATA.items():
        w.add_key_value(k, v, t)
    w.add_array("t.strs", ["a", "", "ünï", "<0x0A>"])
    w.add_array("t.ints", [1, 2, 3])
    w.add_array("t.nested", [[1, 2], [3]])
    expected = {}
    for i, qt in enumerate(tensor_types):
        data = rng.standard_normal((3, 64)).astype(np.float32)
        if qt == Q.F32:
            raw = data
        elif qt == Q.F16:
            raw = data.astype(np.float16)
        else:
            raw = quantize(data, qt)
        w.add_tensor(f"w{i}.{qt.name}", raw, raw_shape=raw.shape, raw_dtype=qt)
        expected[f"w{i}.{qt.name}"] = (qt, raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expected


@pytest.fixture
def sample(tmp_path):
    p = tmp_path / "sample.gguf"
    return p, write_sample(p)


def test_reads_back_metadata_and_tensors(sample):
    path, expected = sample
    f = rllama.gguf.read(path)
    assert f.version == 3 and f.alignment == 32
    for k, (v, _) in METADATA.items():
        got = f.metadata[k]
        assert got == pytest.approx(v) if isinstance(v, float) else got == v, k
    assert f.metadata["t.strs"] == ["a", "", "ünï", "<0x0A>"]
    assert f.metadata["t.ints"] == [1, 2, 3]
    assert f.metadata["t.nested"] == [[1, 2], [3]]
    assert f.metadata_types["t.u64"] == "u64" and f.metadata_types["t.nested"] == "array"
    assert [t.name for t in f.tensors] == list(expected)
    for name, (qt, raw) in expected.items():
        t = f.tensor(name)
        assert t.type_name == qt.name and t.shape == (64, 3)
        ref = dequantize(raw, qt) if qt not in (Q.F32, Q.F16) else raw.astype(np.float32)
        np.testing.assert_array_equal(t.dequantize(), ref.reshape(3, 64))
        assert t.raw() == raw.tobytes()


@pytest.mark.parametrize("no_mmap", [False, True])
def test_no_mmap_and_mlock(sample, no_mmap):
    path, expected = sample
    f = rllama.gguf.read(path, no_mmap=no_mmap, mlock=True)
    name = next(iter(expected))
    assert f.tensor(name).dequantize().shape == (3, 64)
    assert all(w.startswith("warning") for w in f.warnings)  # mlock may be refused: a warning only


def test_custom_alignment(tmp_path):
    p = tmp_path / "a.gguf"
    expected = write_sample(p, alignment=64)
    f = rllama.gguf.read(p)
    assert f.alignment == 64 and f.data_offset % 64 == 0
    assert all(t.offset % 64 == 0 for t in f.tensors)
    assert len(f.tensors) == len(expected)


def test_version2_file(sample, tmp_path):
    path, _ = sample
    b = bytearray(path.read_bytes())
    b[4:8] = struct.pack("<I", 2)
    p2 = tmp_path / "v2.gguf"
    p2.write_bytes(bytes(b))
    assert rllama.gguf.read(p2).version == 2


def test_real_models(smollm2_path, gemma3_path):
    s = rllama.gguf.read(smollm2_path)
    assert s.metadata["general.architecture"] == "llama" and len(s.tensors) == 272
    assert s.metadata["llama.block_count"] == 30 and len(s.metadata["tokenizer.ggml.tokens"]) == 49152
    g = rllama.gguf.read(gemma3_path)
    assert g.metadata["general.architecture"] == "gemma3" and len(g.tensors) == 236
    assert {t.type_name for t in g.tensors} >= {"Q4_K", "Q6_K", "Q5_0", "Q8_0", "F32"}


def boundaries(path):
    """Byte offsets where each section of the sample file ends: header, each kv, tensor infos, data."""
    data = path.read_bytes()
    r = gguf.GGUFReader(str(path))
    cuts = {4, 8, 16, 24}
    for field in r.fields.values():
        end = int(field.offset) + sum(int(p.nbytes) for p in field.parts)
        cuts.add(end)
    cuts.add(int(r.data_offset))
    cuts.update(int(t.data_offset) for t in r.tensors)
    cuts.update(int(t.data_offset) + int(t.n_bytes) - 1 for t in r.tensors)  # inside each tensor's data
    return sorted(c for c in cuts if 0 < c < len(data))


def test_truncation_at_every_section_boundary(sample):
    path, _ = sample
    data = path.read_bytes()
    for cut in boundaries(path) + [0, 1, 3]:
        p = path.with_name(f"cut{cut}.gguf")
        p.write_bytes(data[:cut])
        with pytest.raises(ModelLoadError, match="offset"):
            rllama.gguf.read(p)


def test_hostile_headers(sample, tmp_path):
    path, _ = sample
    good = path.read_bytes()

    def patched(off, fmt, val):
        b = bytearray(good)
        struct.pack_into(fmt, b, off, val)
        p = tmp_path / "h.gguf"
        p.write_bytes(bytes(b))
        return p

    cases = [
        (0, "<I", 0x46554747 ^ 1, "magic"),
        (4, "<I", 99, "version"),
        (8, "<Q", 2**62, "tensor count"),
        (16, "<Q", 2**40, "metadata count"),
        (24, "<Q", 2**60, "length"),
    ]
    for off, fmt, val, needle in cases:
        with pytest.raises(ModelLoadError, match=needle):
            rllama.gguf.read(patched(off, fmt, val))
    with pytest.raises(ModelLoadError, match="(?i)no such file"):
        rllama.gguf.read(tmp_path / "missing.gguf")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=6))
def test_random_byte_flips_never_crash(tmp_path, flips):
    p = tmp_path / "orig.gguf"
    if not p.exists():
        write_sample(p)
    b = bytearray(p.read_bytes())
    hdr = gguf.GGUFReader(str(p)).data_offset
    for i, v in flips:
        b[i % hdr] = v  # flip header bytes, where the parser makes its decisions
    q = tmp_path / "flipped.gguf"
    q.write_bytes(bytes(b))
    try:
        f = rllama.gguf.read(q)
    except ModelLoadError as e:
        assert "offset" in str(e) or "UTF-8" in str(e)
        return
    for t in f.tensors:  # whatever parsed must be safe to touch
        try:
            t.dequantize()
        except (rllama.InvalidRequestError, ModelLoadError) as e:  # unsupported type: a clean error
            assert "supported" in str(e)


def test_parser_crash_free_in_subprocess(sample, tmp_path):
    """Many corruptions in one child process: a crash (signal) would show as a bad exit status."""
    path, _ = sample
    code = f"""
import random, rllama.gguf
from rllama import ModelLoadError
data = open({str(path)!r}, 'rb').read()
rng = random.Random(1)
for i in range(3000):
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        b[rng.randrange(len(b))] = rng.randrange(256)
    if rng.random() < 0.3:
        b = b[:rng.randrange(len(b))]
    open({str(tmp_path / 'x.gguf')!r}, 'wb').write(b)
    try:
        rllama.gguf.read({str(tmp_path / 'x.gguf')!r})
    except ModelLoadError:
        pass
print('ok')
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]

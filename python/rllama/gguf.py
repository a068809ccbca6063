"""Read GGUF files: metadata as plain Python values, tensor infos, tensors as numpy arrays."""

from __future__ import annotations

import functools
import os
import stat
from dataclasses import dataclass
from typing import Any

import numpy as np

from rllama import _core
from rllama.errors import ModelLoadError


def check_model_file(path: str | os.PathLike[str]) -> str:
    """`path` as a string if it names a regular file; a ModelLoadError otherwise, before any open
    (opening a FIFO blocks until a writer comes, a directory fails with an errno that names no
    cause). The core checks again what it opens."""
    p = os.fspath(path)
    if isinstance(p, bytes):
        p = os.fsdecode(p)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise ModelLoadError(f"{p}: no such file") from None
    except (OSError, ValueError) as e:  # ValueError: an embedded NUL
        raise ModelLoadError(f"{p}: cannot open: {e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ModelLoadError(f"{p}: is a directory, not a GGUF model file")
    if not stat.S_ISREG(st.st_mode):
        raise ModelLoadError(f"{p}: is not a regular file (a FIFO, socket or device), not a GGUF model file")
    return p


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type_name: str
    shape: tuple[int, ...]  # ggml order: shape[0] is the contiguous (row) dimension
    offset: int  # from the start of the data section
    nbytes: int
    _file: _core.GgufFile

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def raw(self) -> bytes:
        return self._file.tensor_bytes(self.name)

    def dequantize(self) -> np.ndarray:
        """The tensor as float32, shaped numpy-style (row dimension last), like gguf's reader."""
        data = np.frombuffer(self._file.dequantize(self.name), dtype=np.float32)
        return data.reshape(tuple(reversed(self.shape)))


class GgufReader:
    """A validated GGUF file. Corrupt files raise rllama.ModelLoadError naming the byte offset."""

    def __init__(self, path: str | os.PathLike[str], *, no_mmap: bool = False, mlock: bool = False):
        self.path = check_model_file(path)
        self._file = _core.GgufFile(self.path, no_mmap=no_mmap, mlock=mlock)
        self.version: int = self._file.version
        self.alignment: int = self._file.alignment
        self.data_offset: int = self._file.data_offset
        self.file_size: int = self._file.file_size
        self.warnings: list[str] = self._file.warnings
        self.tensors: list[TensorInfo] = [
            TensorInfo(name, ty, tuple(dims), off, nb, self._file)
            for name, ty, dims, off, nb in self._file.tensor_infos()
        ]
        self._by_name = {t.name: t for t in self.tensors}

    @functools.cached_property
    def metadata(self) -> dict[str, Any]:
        """Every key as plain Python values (built on first use: a large vocabulary costs tens of
        MB as Python objects)."""
        return self._file.metadata()

    @functools.cached_property
    def metadata_types(self) -> dict[str, str]:
        return dict(self._file.metadata_types())

    def get(self, key: str, default: Any = None) -> Any:
        """One metadata value, without building the whole dict."""
        v = self._file.get(key)
        return default if v is None else v

    def tensor(self, name: str) -> TensorInfo:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no tensor named {name!r} in {self.path}") from None


def read(path: str | os.PathLike[str], *, no_mmap: bool = False, mlock: bool = False) -> GgufReader:
    return GgufReader(path, no_mmap=no_mmap, mlock=mlock)


def quantize(values: np.ndarray, type_name: str) -> bytes:
    """Quantize f32 values (whole blocks) to GGUF blocks of `type_name` (F32, F16, BF16, Q8_0,
    Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL), rounding like ggml's reference quantizers."""
    x = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    return _core.quantize(type_name.upper(), x.tobytes())

"""A GGUF model's tokenizer without its weights, token-exact with llama.cpp.

``Tokenizer.from_gguf(path)`` reads only the ``tokenizer.ggml.*`` metadata. ``tokenize`` follows
``llama_tokenize`` (``parse_special`` defaults to True, like the server's ``/tokenize``);
``detokenize`` follows ``llama_detokenize`` with special tokens rendered, which for models without
space clean-up equals the concatenation of ``token_to_piece`` (the server's ``/detokenize``).

Bytes that no token covers: a byte-level BPE vocabulary may lack a token for some bytes
(smollm2's has none for the control bytes 0x04, 0x06, 0x13, 0x14, 0x16, 0x1D and for the UTF-8
lead bytes 0xC0, 0xC1, 0xF1-0xFF). Like llama.cpp (``llm_tokenizer_bpe_session::tokenize``: a
piece without a token falls back to one token per byte, and a byte without a token is skipped),
such bytes are dropped from the token ids, silently. So "a\x04b" tokenizes as "ab", and a
character in U+40000-U+BFFFF (lead byte 0xF1 or 0xF2) keeps only its three continuation bytes,
which detokenize to three U+FFFD replacement characters.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

from rllama import _core, validate
from rllama.errors import InvalidRequestError
from rllama.gguf import check_model_file

__all__ = ["IncrementalDecoder", "Tokenizer"]

IncrementalDecoder = _core.IncrementalDecoder


class Tokenizer:
    """Vocabulary, special ids and the tokenizer of one GGUF file."""

    def __init__(self, native: _core.Tokenizer) -> None:
        self._t = native
        ids = dict(native.special_ids())
        self._ids = {k: (v if v >= 0 else None) for k, v in ids.items()}

    @classmethod
    def from_gguf(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Load the tokenizer of a GGUF file (``ModelLoadError`` for an unknown tokenizer)."""
        return cls(_core.Tokenizer.from_gguf(check_model_file(path)))

    def tokenize(self, text: str, add_special: bool = False, parse_special: bool = True) -> list[int]:
        """Token ids of `text` (InvalidRequestError for text that is not valid Unicode: a lone
        surrogate). Bytes that no token covers: see docs of `detokenize`."""
        if not isinstance(text, str):
            raise InvalidRequestError(f"text to tokenize must be a str, got {type(text).__name__}")
        return self._t.tokenize(validate.text(text, "text"), add_special, parse_special)

    def _checked_ids(self, ids: Iterable[int]) -> list[int]:
        out = list(ids)
        for t in out:
            if isinstance(t, bool) or not isinstance(t, int):
                raise InvalidRequestError(f"token ids must be integers, got {type(t).__name__}")
            if not 0 <= t < self.vocab_size:
                shown = t if abs(t) < 10**30 else f"an integer of {len(str(abs(t)))} digits"
                raise InvalidRequestError(f"token id {shown} out of range (0 to {self.vocab_size - 1})")
        return out

    def detokenize(
        self, ids: Iterable[int], remove_special: bool = False, unparse_special: bool = True
    ) -> str:
        return self._t.detokenize(self._checked_ids(ids), remove_special, unparse_special)

    def detokenize_bytes(
        self, ids: Iterable[int], remove_special: bool = False, unparse_special: bool = True
    ) -> bytes:
        return self._t.detokenize_bytes(self._checked_ids(ids), remove_special, unparse_special)

    def token_to_piece(self, id: int, special: bool = True) -> bytes:
        return self._t.token_to_piece(self._checked_ids([id])[0], special)

    def token_text(self, id: int) -> str | None:
        """The token's text as stored in the vocabulary."""
        return self._t.token_text(id)

    def is_eog(self, id: int) -> bool:
        return self._t.is_eog(id)

    def decoder(self, special: bool = True) -> IncrementalDecoder:
        """An incremental decoder: ``push(id) -> str`` of complete characters, ``flush() -> str``."""
        return self._t.decoder(special)

    def stream(self, ids: Iterable[int], special: bool = True) -> Iterator[str]:
        """Yield the text of ``ids`` as it completes, never half a UTF-8 character."""
        d = self.decoder(special)
        for i in ids:
            s = d.push(i)
            if s:
                yield s
        s = d.flush()
        if s:
            yield s

    @property
    def vocab_size(self) -> int:
        return self._t.vocab_size

    @property
    def model(self) -> str:
        """``tokenizer.ggml.model``: "llama" (SentencePiece) or "gpt2" (byte-level BPE)."""
        return self._t.model

    @property
    def pre(self) -> str:
        return self._t.pre

    @property
    def add_bos(self) -> bool:
        return self._t.add_bos

    @property
    def add_eos(self) -> bool:
        return self._t.add_eos

    @property
    def eog_ids(self) -> list[int]:
        return self._t.eog_ids

    @property
    def special_ids(self) -> dict[str, int | None]:
        return dict(self._ids)

    @property
    def bos_id(self) -> int | None:
        return self._ids["bos"]

    @property
    def eos_id(self) -> int | None:
        return self._ids["eos"]

    @property
    def eot_id(self) -> int | None:
        return self._ids["eot"]

    @property
    def unk_id(self) -> int | None:
        return self._ids["unk"]

    @property
    def pad_id(self) -> int | None:
        return self._ids["pad"]

    @property
    def sep_id(self) -> int | None:
        return self._ids["sep"]

    @property
    def mask_id(self) -> int | None:
        return self._ids["mask"]

    @property
    def nl_id(self) -> int | None:
        return self._ids["nl"]

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"Tokenizer(model={self.model!r}, pre={self.pre!r}, vocab_size={self.vocab_size})"

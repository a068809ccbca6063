"""In-process generation: `Model(path_or_name).complete(prompt, **options)` returns what the
/completion endpoint returns, computed by the same engine the server uses."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rllama import _core, params
from rllama.chat import apply_template, resolve_template
from rllama.errors import InvalidRequestError
from rllama.gguf import GgufReader
from rllama.models import resolve
from rllama.tokenizer import Tokenizer


class Model:
    """A GGUF model loaded for generation.

    `path_or_name` is a file, a URL or a built-in name (see `rllama.models`). `n_ctx` is the
    context size (0: the model's training context), `n_threads` the compute threads for generation,
    `n_threads_batch` those for prompts (default: `n_threads`; one pool of the larger size).
    `flash_attn` ("on", "off", "auto") picks the attention path like llama.cpp's `--flash-attn`.
    """

    def __init__(self, path_or_name: str | os.PathLike[str] | None = None, *, n_ctx: int = 4096,
                 n_threads: int | None = None, n_threads_batch: int | None = None, n_batch: int = 2048,
                 n_ubatch: int = 512,
                 no_mmap: bool = False, mlock: bool = False, chat_template: str | None = None,
                 alias: str | None = None, cache_type_k: str = "f16", cache_type_v: str = "f16",
                 rope_scaling: str | None = None, rope_freq_base: float | None = None,
                 rope_freq_scale: float | None = None, yarn_orig_ctx: int | None = None,
                 yarn_ext_factor: float | None = None, yarn_attn_factor: float | None = None,
                 yarn_beta_fast: float | None = None, yarn_beta_slow: float | None = None,
                 flash_attn: str = "auto"):
        self.path = Path(resolve(path_or_name))
        self._gguf = GgufReader(self.path, no_mmap=no_mmap, mlock=mlock)
        self.n_threads = n_threads or min(os.cpu_count() or 1, 8)
        # One parsed file shared by the reader, the weights and the tokenizer.
        self.n_threads_batch = n_threads_batch or self.n_threads
        self._core = _core.Model(str(self.path), n_threads=self.n_threads, n_threads_batch=self.n_threads_batch,
                                 cache_type_k=cache_type_k,
                                 cache_type_v=cache_type_v, file=self._gguf._file,
                                 rope_scaling=rope_scaling, rope_freq_base=rope_freq_base,
                                 rope_freq_scale=rope_freq_scale, yarn_orig_ctx=yarn_orig_ctx,
                                 yarn_ext_factor=yarn_ext_factor, yarn_attn_factor=yarn_attn_factor,
                                 yarn_beta_fast=yarn_beta_fast, yarn_beta_slow=yarn_beta_slow,
                                 flash_attn=flash_attn)
        self.cache_type_k, self.cache_type_v = cache_type_k.lower(), cache_type_v.lower()
        self.tokenizer = Tokenizer(_core.Tokenizer.from_file(self._gguf._file))
        self.n_ctx = n_ctx if n_ctx > 0 else self._core.n_ctx_train
        self.n_batch = n_batch
        self.n_ubatch = max(1, min(n_ubatch, n_batch))
        self.alias = alias or str(self.path)
        self._template = resolve_template(chat_template, self._gguf.get("tokenizer.chat_template"))
        self._vocab = _core.SamplerVocab.from_tokenizer(self.tokenizer._t)

    # Vocabulary ---------------------------------------------------------------------------
    @property
    def n_vocab(self) -> int:
        return self._core.n_vocab

    @property
    def n_embd(self) -> int:
        return self._core.n_embd

    @property
    def metadata(self) -> dict[str, Any]:
        """The GGUF's metadata as plain Python values (built on first use)."""
        return self._gguf.metadata

    @property
    def chat_template(self) -> str | None:
        """The GGUF's own chat template (None when it has none)."""
        return self._gguf.get("tokenizer.chat_template")

    def tokenize(self, text: str, add_special: bool = False, parse_special: bool = True) -> list[int]:
        return self.tokenizer.tokenize(text, add_special=add_special, parse_special=parse_special)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.detokenize(list(ids))

    def token_to_piece(self, token: int) -> bytes:
        return self.tokenizer.token_to_piece(token)

    def apply_chat_template(self, messages: Any, add_generation_prompt: bool = True) -> str:
        bos = self.tokenizer.token_to_piece(self.tokenizer.bos_id).decode("utf-8", "replace") \
            if self.tokenizer.bos_id is not None else ""
        eos = self.tokenizer.token_to_piece(self.tokenizer.eos_id).decode("utf-8", "replace") \
            if self.tokenizer.eos_id is not None else ""
        return apply_template(self._template, messages, add_generation_prompt=add_generation_prompt,
                              bos_token=bos, eos_token=eos)

    # Generation ---------------------------------------------------------------------------
    def _prompt_ids(self, req: params.CompletionRequest) -> list[int]:
        if isinstance(req.prompt, str):
            return self.tokenize(req.prompt, add_special=req.add_special, parse_special=True)
        bad = [t for t in req.prompt if not 0 <= t < self.n_vocab]
        if bad:
            raise InvalidRequestError(f"prompt token id {bad[0]} out of range (vocab {self.n_vocab})")
        return list(req.prompt)

    def complete(self, prompt: str | list[int], **options: Any) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """llama.cpp's /completion: options as keyword arguments, the response as a dict.

        With `stream=True`, an iterator of partial results (`content` is the new text, `stop`
        false), ending with the full final object (`stop` true)."""
        req = params.parse({"prompt": prompt, **options}, tokenize=lambda s: self.tokenize(s),
                           n_vocab=self.n_vocab, n_ctx=self.n_ctx)
        ids = self._prompt_ids(req)
        gen = self._core.generate(ids, self._vocab, req.sampling, self.n_ctx, n_predict=req.n_predict,
                                  stop=req.stop, n_batch=self.n_ubatch, cache_prompt=req.cache_prompt,
                                  n_keep=req.n_keep, post_sampling_probs=req.post_sampling_probs)
        events = self._events(gen, req, prompt)
        if req.stream:
            return events
        final: dict[str, Any] = {}
        for ev in events:
            final = ev
        return final

    def _probs_entry(self, token: int, logprob: float, top: list[tuple[int, float]]) -> dict[str, Any]:
        def piece(t: int) -> str:
            return self.tokenizer.token_to_piece(t).decode("utf-8", "replace")

        return {
            "content": piece(token),
            "probs": [{"tok_str": piece(t), "prob": float(np.exp(lp))} for t, lp in top],
        }

    def _events(self, gen: Any, req: params.CompletionRequest, prompt: Any) -> Iterator[dict[str, Any]]:
        probs: list[dict[str, Any]] = []
        try:
            for kind, *rest in gen:
                if kind == "token":
                    token, text, logprob, top = rest
                    entry = None
                    if req.n_probs > 0 and token != 0xFFFFFFFF:
                        entry = self._probs_entry(token, logprob, top)
                        probs.append(entry)
                    if req.stream:
                        chunk: dict[str, Any] = {"content": text, "stop": False}
                        if entry is not None:
                            chunk["completion_probabilities"] = [entry]
                        if req.return_tokens and token != 0xFFFFFFFF:
                            chunk["tokens"] = [token]
                        yield chunk
                else:
                    yield self._final(rest[0], req, prompt, probs)
        finally:
            gen.cancel()

    def _final(self, d: dict[str, Any], req: params.CompletionRequest, prompt: Any,
               probs: list[dict[str, Any]]) -> dict[str, Any]:
        n_gen = len(d["tokens"])
        prompt_ms, gen_ms = d["prompt_ms"], d["gen_ms"]
        n_eval = d["n_prompt_evaluated"]
        out: dict[str, Any] = {
            "content": "" if req.stream else d["content"],
            "id_slot": 0,
            "stop": True,
            "model": self.alias,
            "tokens_predicted": n_gen,
            "tokens_evaluated": d["n_prompt"],
            "generation_settings": params.generation_settings(req, n_ctx=self.n_ctx, model=self.alias,
                                                              seed=d["seed"]),
            "prompt": prompt if isinstance(prompt, str) else self.detokenize(prompt),
            "has_new_line": "\n" in d["content"],
            "truncated": d["truncated"],
            "stop_type": {"eos": "eos", "limit": "limit", "word": "word"}.get(d["stop_type"], "none"),
            "stopped_eos": d["stop_type"] == "eos",
            "stopped_limit": d["stop_type"] == "limit",
            "stopped_word": d["stop_type"] == "word",
            "stopping_word": d["stopping_word"],
            "tokens_cached": d["n_cached"],
            "timings": {
                "prompt_n": n_eval,
                "prompt_ms": prompt_ms,
                "prompt_per_token_ms": prompt_ms / n_eval if n_eval else 0.0,
                "prompt_per_second": 1e3 * n_eval / prompt_ms if prompt_ms > 0 else 0.0,
                "predicted_n": n_gen,
                "predicted_ms": gen_ms,
                "predicted_per_token_ms": gen_ms / n_gen if n_gen else 0.0,
                "predicted_per_second": 1e3 * n_gen / gen_ms if gen_ms > 0 else 0.0,
            },
        }
        if req.n_probs > 0 and not req.stream:
            out["completion_probabilities"] = probs
        if req.return_tokens:
            out["tokens"] = list(d["tokens"])
        return out

    def chat(self, messages: Any, **options: Any) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """Render `messages` with the chat template and complete the prompt."""
        return self.complete(self.apply_chat_template(messages), **options)

    def create_chat_completion(self, messages: Any, **options: Any) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """OpenAI's chat completion object (or its chunks with stream=True), as /v1/chat/completions."""
        from rllama import openai

        return openai.create_chat_completion(self, messages, **options)

    def create_completion(self, prompt: str | list[int], **options: Any) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """OpenAI's text completion object (or its chunks with stream=True), as /v1/completions."""
        from rllama import openai

        return openai.create_completion(self, prompt, **options)

    # Embeddings and perplexity ---------------------------------------------------------------
    def logits(self, ids: Sequence[int], all_positions: bool = False, first: int = 0) -> np.ndarray:
        """Logits for `ids` evaluated from position 0: the last position, or every position from
        `first` on (rows in position order)."""
        raw = self._core.eval(list(ids), max(self.n_ctx, len(ids)), n_batch=self.n_ubatch,
                              all_logits=all_positions, logits_from=first)
        out = np.frombuffer(raw, dtype=np.float32)
        return out.reshape(-1, self.n_vocab) if all_positions else out

    def embed(self, texts: str | Sequence[str], pooling: str = "mean", normalize: bool = True) -> np.ndarray:
        """Embeddings of `texts` from the final-normed hidden states.

        pooling: "mean", "cls" (first token), "last", or "none" (every token; returns a list of
        arrays). Vectors are L2-normalized like llama.cpp's server unless `normalize` is False."""
        if pooling not in ("mean", "cls", "last", "none"):
            raise InvalidRequestError(f"unknown pooling {pooling!r} (mean, cls, last, none)")
        single = isinstance(texts, str)
        out = []
        for text in [texts] if single else list(texts):
            ids = self.tokenize(text, add_special=True, parse_special=True)
            if not ids:
                raise InvalidRequestError("cannot embed an empty input")
            if len(ids) > self.n_ctx:
                raise InvalidRequestError(f"input is {len(ids)} tokens, more than the context size {self.n_ctx}")
            h = np.frombuffer(self._core.hidden(ids, n_batch=self.n_ubatch), dtype=np.float32).reshape(len(ids), -1)
            v = h.mean(0) if pooling == "mean" else h[0] if pooling == "cls" else h[-1] if pooling == "last" else h
            if normalize:
                norm = np.linalg.norm(v, axis=-1, keepdims=True)
                v = v / np.where(norm > 0, norm, 1.0)
            out.append(v.astype(np.float32))
        if pooling == "none":
            return out[0] if single else out
        return out[0] if single else np.stack(out)

    def perplexity(self, text: str, n_ctx: int = 512, n_chunks: int = -1,
                   progress: Any = None) -> dict[str, Any]:
        """llama.cpp's perplexity: split the tokenized text into chunks of `n_ctx` tokens, score the
        second half of each chunk (first token replaced by BOS when the model adds one)."""
        tokens = self.tokenize(text, add_special=True, parse_special=False)
        if len(tokens) < 2 * n_ctx:
            raise InvalidRequestError(f"need at least {2 * n_ctx} tokens for a context of {n_ctx}, got {len(tokens)}")
        n_chunk = len(tokens) // n_ctx
        if n_chunks >= 0:
            n_chunk = min(n_chunk, n_chunks)
        add_bos = self.tokenizer.add_bos and self.tokenizer.bos_id is not None
        first = n_ctx // 2
        nll, count, running = 0.0, 0, []
        for i in range(n_chunk):
            chunk = list(tokens[i * n_ctx:(i + 1) * n_ctx])
            if add_bos:
                chunk[0] = self.tokenizer.bos_id
            lg = self.logits(chunk, all_positions=True, first=first).astype(np.float64)[:n_ctx - 1 - first]
            lg -= lg.max(-1, keepdims=True)
            lse = np.log(np.exp(lg).sum(-1))
            targets = np.array(tokens[i * n_ctx + first + 1:(i + 1) * n_ctx])
            nll += float((lse - lg[np.arange(len(targets)), targets]).sum())
            count += len(targets)
            running.append(float(np.exp(nll / count)))
            if progress:
                progress(i + 1, n_chunk, running[-1])
        return {"ppl": running[-1], "chunks": running, "n_ctx": n_ctx, "n_tokens": len(tokens)}

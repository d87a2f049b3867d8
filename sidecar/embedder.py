"""One GGUF model run by llama.cpp as a sentence embedder (sidecar process only).

``llama_cpp`` is imported when an :class:`Embedder` is built, never at module import, so
the gateway can import the sidecar package without loading the native library.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from routegate.sidecar.window import instruction_view

__all__ = ["Embedder"]

FloatArray = npt.NDArray[np.float32]
# Share of a truncated input's tokens kept from the head; the rest come from the tail,
# where instructions that follow a long passage ("Summarize the text above") sit.
_HEAD_SHARE = 0.4


class Embedder:
    """Mean-pooled, L2-normalised embeddings from a GGUF model. Not thread-safe: the
    server runs every call on one worker thread (llama.cpp inference is serialized)."""

    def __init__(
        self, model_path: str | Path, *, threads: int = 2, context: int = 512, gpu_layers: int = 0
    ) -> None:
        from llama_cpp import Llama

        self.path = Path(model_path)
        self._llm: Any = Llama(
            model_path=str(model_path),
            embedding=True,
            n_ctx=context,
            n_batch=context,
            n_ubatch=context,
            n_threads=threads,
            n_threads_batch=threads,
            n_gpu_layers=gpu_layers,
            verbose=False,
        )
        self.context = context
        meta: dict[str, str] = dict(self._llm.metadata or {})
        self.name = meta.get("general.name", self.path.stem)
        self.dim = int(self._llm.n_embd())
        # Cost model, ms = overhead + per_token * tokens; refined by calibrate().
        self.overhead_ms = 2.0
        self.per_token_ms = 0.35

    @property
    def prefill_tok_per_s(self) -> float:
        return 1000.0 / self.per_token_ms if self.per_token_ms > 0 else 0.0

    def tokenize(self, text: str) -> list[int]:
        tokens: list[int] = self._llm.tokenize(text.encode("utf-8", "replace"), add_bos=True)
        return tokens

    def fit(self, text: str, max_tokens: int) -> tuple[str, int]:
        """The text's instruction view (``window.instruction_view``: pasted material cut to
        its edge sentences) cut to at most ``max_tokens`` tokens (head + tail), and its
        token count."""
        text = instruction_view(text).text
        tokens = self.tokenize(text)
        limit = max(4, min(max_tokens, self.context))
        if len(tokens) <= limit:
            return text, len(tokens)
        body = tokens[1:-1] if len(tokens) > 2 else tokens
        keep = limit - 3  # [CLS], [SEP] and a separator token between head and tail
        head = max(1, int(keep * _HEAD_SHARE))
        tail = max(1, keep - head)
        detok = self._llm.detokenize
        head_text = detok(body[:head]).decode("utf-8", "replace")
        tail_text = detok(body[-tail:]).decode("utf-8", "replace")
        return f"{head_text.strip()} … {tail_text.strip()}", limit

    def embed(self, texts: list[str]) -> FloatArray:
        """(N, dim) unit vectors. Inputs must already fit the context (see :meth:`fit`)."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        raw = self._llm.embed(texts, normalize=True, truncate=True)
        return np.asarray(raw, dtype=np.float32).reshape(len(texts), self.dim)

    def estimate_ms(self, tokens: int) -> float:
        return self.overhead_ms + self.per_token_ms * tokens

    def observe(self, tokens: int, elapsed_ms: float) -> None:
        """Follow the machine's current speed (other load shares these cores): an
        exponential average of the per-token cost implied by each real call."""
        if tokens <= 0:
            return
        implied = max(0.01, (elapsed_ms - self.overhead_ms) / tokens)
        self.per_token_ms = 0.9 * self.per_token_ms + 0.1 * min(implied, 10 * self.per_token_ms)

    def calibrate(self, rounds: int = 3) -> None:
        """Measure this machine's cost per token (warms the model up as well)."""
        short = "hello " * 12
        long = "the quick brown fox jumps over the lazy dog " * 12
        samples: list[tuple[int, float]] = []
        for text in (short, long):
            fitted, count = self.fit(text, 128)
            self.embed([fitted])  # warm-up
            best = float("inf")
            for _ in range(rounds):
                started = time.perf_counter()
                self.embed([fitted])
                best = min(best, (time.perf_counter() - started) * 1000.0)
            samples.append((count, best))
        (n1, t1), (n2, t2) = samples
        if n2 > n1 and t2 > t1:
            self.per_token_ms = (t2 - t1) / (n2 - n1)
            self.overhead_ms = max(0.2, t1 - self.per_token_ms * n1)

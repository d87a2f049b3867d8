"""The generative classifier stage: an instruct model scores the route names (sidecar only).

One prompt (the model's chat template) lists the routes with their descriptions and asks
which one fits the request. Nothing is generated: every route is scored by the
log-probability of its name as the answer's first tokens, from one prefill of the request
plus one batched decode, and a softmax over the routes gives the category and a real
confidence.

- A name whose first token no other name starts with is scored by that token alone: the
  rest of it is determined once it starts. Names that share a first token ("code",
  "code_review") are scored over their full token sequence plus the end-of-turn token (so a
  name that is a prefix of another is not credited with its mass): each gets its own
  sequence, a copy of the prompt's KV cells (``llama_memory_seq_cp``, metadata only in a
  unified cache), and all their tokens go through one ``llama_decode``.
- **Prefix cache:** the instruction and route list come first and are evaluated once, when
  the routes are set (``set_routes``); each request trims the KV cache back to that prefix
  (``llama_memory_seq_rm``) and prefills only its own tokens and the short suffix that
  closes the user turn. ``prefix_cache=False`` prefills the whole prompt every time (the
  bench's baseline; the answers are the same).
- **Calibrated:** a small model leans to some names whatever the request (the first listed,
  the shortest); the route probabilities for an empty request are measured once per route
  set and divided out ("calibrate before use", Zhao et al. 2021): +8 to +17 points of
  accuracy with SmolLM2-135M on a 60-row sample of the development data.

llama.cpp is driven through llama-cpp-python's low-level bindings (``llama_cpp.llama_*``):
the high-level ``Llama`` allows one sequence per context. Not thread-safe: the sidecar runs
every call on its one model thread.
"""

from __future__ import annotations

import ctypes
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from routegate.sidecar.protocol import ClassifyRequest, ClassifyResult, Expired, RouteSpec
from routegate.sidecar.window import instruction_view

__all__ = ["LlmAnswer", "LlmStage", "answer_request", "render_prompt"]

FloatArray = npt.NDArray[np.float32]
_SENTINEL = "\u2063REQUEST\u2063"  # where the request goes in the rendered template
_INSTRUCTION = (
    "You are a request router. Read the user's request and answer with the name of the one "
    "route below that fits it best, exactly as written, and nothing else.\n\nRoutes:\n")
_QUESTION = "Which route fits this request?\n\nRequest: "
_HEAD_SHARE = 0.4  # of a cut request's tokens from its head; the rest from its tail
_EXAMPLE_CHARS = 120
_MAX_SEQUENCES = 64  # label sequences per decode (names sharing a first token), plus one


@dataclass(frozen=True)
class LlmAnswer:
    """A probability per route (in ``categories`` order) and what computing it cost."""

    probs: FloatArray
    logprobs: npt.NDArray[np.float64]  # per route: log P(its label tokens), before calibration
    prefilled: int  # prompt tokens evaluated for this request (the prefix too without cache)
    label_tokens: int  # tokens of the batched label decode
    model_ms: float


def render_prompt(routes: Sequence[RouteSpec], template: bytes | None) -> tuple[str, str, str]:
    """(prefix, suffix, end): the text before and after the request, and what follows the
    answer (the template's end of turn). Without a chat template llama.cpp knows, a plain
    "Route:" prompt with answers ending at a newline."""
    lines = []
    for spec in routes:
        about = spec.description
        if spec.examples:  # one example each: measured +8 points with SmolLM2-135M
            example = " ".join(spec.examples[0].split())[:_EXAMPLE_CHARS]
            about = f"{about} Example: {example}".strip()
        lines.append(f"- {spec.name}: {about}" if about else f"- {spec.name}")
    system = _INSTRUCTION + "\n".join(lines)
    if template:
        import llama_cpp

        turns = [(b"system", system), (b"user", _QUESTION + _SENTINEL), (b"assistant", _SENTINEL)]
        rendered = []
        for count, generation in ((2, True), (3, False)):
            messages = (llama_cpp.llama_chat_message * count)(*(
                llama_cpp.llama_chat_message(role, text.encode()) for role, text in turns[:count]))
            size = 4 * (len(system) + 256)
            buffer = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_chat_apply_template(template, messages, count, generation,
                                                   buffer, size)
            rendered.append(buffer.raw[:n].decode("utf-8") if 0 < n <= size else "")
        prefix, _, suffix = rendered[0].partition(_SENTINEL)
        end = rendered[1].rpartition(_SENTINEL)[2]
        if suffix and end:
            return prefix, suffix, end
    return f"{system}\n\n{_QUESTION}", "\nRoute:", "\n"


class LlmStage:
    """An instruct GGUF (any llama.cpp architecture) scoring route names for requests."""

    def __init__(
        self, model_path: str | Path, *, threads: int = 1, gpu_layers: int = 0,
        context: int = 2048, max_tokens: int = 128, prefix_cache: bool = True,
    ) -> None:
        import llama_cpp

        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # llama.cpp's chatter
        llama_cpp.llama_backend_init()
        self._c: Any = llama_cpp
        self.path = Path(model_path)
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = gpu_layers
        self._model = llama_cpp.llama_model_load_from_file(str(model_path).encode(), params)
        if not self._model:
            raise ValueError(f"cannot load the LLM stage model {model_path}")
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = cparams.n_batch = context
        cparams.n_ubatch = min(context, 512)
        cparams.n_seq_max = _MAX_SEQUENCES
        cparams.kv_unified = True  # copied sequences share the prompt's cells
        # Off: with flash attention (F16 accumulation) label log-probs moved by ~0.2 nats
        # between a cached and an uncached prefill; without it they are identical.
        cparams.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        cparams.n_threads = cparams.n_threads_batch = threads
        self._ctx = llama_cpp.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            llama_cpp.llama_model_free(self._model)
            raise ValueError(f"cannot create a llama.cpp context for {model_path}")
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self._n_vocab = int(llama_cpp.llama_vocab_n_tokens(self._vocab))
        self._batch = llama_cpp.llama_batch_init(context, 0, 1)
        self.context = context
        self.max_tokens = max_tokens
        self.prefix_cache = prefix_cache
        name = ctypes.create_string_buffer(256)
        got = llama_cpp.llama_model_meta_val_str(self._model, b"general.name", name, 256)
        self.name = name.value.decode("utf-8", "replace") if got > 0 else self.path.stem
        self._template: bytes | None = llama_cpp.llama_model_chat_template(self._model, None)
        self.categories: tuple[str, ...] = ()
        self._prefix: list[int] = []
        self._suffix: list[int] = []
        self._labels: list[list[int]] = []  # per route: its first token alone, or all + end
        self._cached = 0  # prefix tokens currently in the KV cache as sequence 0
        self._prior: npt.NDArray[np.float64] | None = None  # log-probs for an empty request
        self._separator = self.tokenize(" … ")
        self.prefilled = 0  # prompt tokens evaluated since start (prefixes included)
        # Cost model, ms = overhead + per_token * tokens (prefill + label decode).
        self.overhead_ms = 5.0
        self.per_token_ms = 10.0

    def close(self) -> None:
        c = self._c
        if self._ctx:
            c.llama_batch_free(self._batch)
            c.llama_free(self._ctx)
            c.llama_model_free(self._model)
            self._ctx = self._model = None

    # --- tokens ---------------------------------------------------------------------------

    def tokenize(self, text: str, *, special: bool = False, bos: bool = False) -> list[int]:
        """Token ids; ``special``: parse the template's special tokens (never in requests)."""
        raw = text.encode("utf-8", "replace")
        size = len(raw) + 16
        buffer = (self._c.llama_token * size)()
        n = self._c.llama_tokenize(self._vocab, raw, len(raw), buffer, size, bos, special)
        if n < 0:
            size = -n
            buffer = (self._c.llama_token * size)()
            n = self._c.llama_tokenize(self._vocab, raw, len(raw), buffer, size, bos, special)
        return list(buffer[:n])

    def fit(self, text: str, max_tokens: int) -> list[int]:
        """The request's instruction view, cut to ``max_tokens`` tokens (head + tail)."""
        tokens = self.tokenize(instruction_view(text).text)
        limit = max(4, min(max_tokens, self.max_tokens))
        if len(tokens) <= limit:
            return tokens
        keep = limit - len(self._separator)
        head = max(1, int(keep * _HEAD_SHARE))
        return tokens[:head] + self._separator + tokens[-max(1, keep - head):]

    # --- routes ---------------------------------------------------------------------------

    def set_routes(self, routes: Sequence[RouteSpec]) -> None:
        """Build the prompt and the label tokens for these routes; evaluate the prefix."""
        prefix, suffix, end_text = render_prompt(routes, self._template)
        chat = end_text != "\n"
        names = [spec.name if chat else f" {spec.name}" for spec in routes]
        end = self.tokenize(end_text, special=True)[0]
        tokenized = [self.tokenize(name) or [end] for name in names]
        firsts = Counter(tokens[0] for tokens in tokenized)
        labels = [tokens[:1] if firsts[tokens[0]] == 1 else [*tokens, end]
                  for tokens in tokenized]
        shared = sum(len(label) > 1 for label in labels)
        if shared >= _MAX_SEQUENCES:
            raise ValueError(f"LLM stage: {shared} route names share a first token "
                             f"(at most {_MAX_SEQUENCES - 1})")
        head = self.tokenize(prefix, special=True, bos=True)
        tail = self.tokenize(suffix, special=True)
        longest = max((len(label) for label in labels), default=0)
        if len(head) + self.max_tokens + len(tail) + longest > self.context:
            raise ValueError(f"LLM stage: the route list takes {len(head)} tokens; "
                             f"llm_context_size {self.context} leaves no room for requests")
        self._prefix, self._suffix, self._labels = head, tail, labels
        self.categories = tuple(spec.name for spec in routes)
        self._c.llama_memory_clear(self._c.llama_get_memory(self._ctx), True)
        self._cached = 0
        self._prior = None
        if self.prefix_cache:
            self._decode(self._prefix, 0, seq=0, logits=False)
            self.prefilled += len(self._prefix)
            self._cached = len(self._prefix)
        self._prior = np.log(np.maximum(self.classify("").probs.astype(np.float64), 1e-12))

    @property
    def prefix_tokens(self) -> int:
        return len(self._prefix)

    @property
    def label_tokens(self) -> int:
        """Tokens of the batched label decode per request (names sharing a first token)."""
        return sum(len(label) for label in self._labels if len(label) > 1)

    # --- scoring ----------------------------------------------------------------------------

    def _decode(self, tokens: Sequence[int], start: int, *, seq: int, logits: bool) -> None:
        """One sequence's tokens at positions start.. (logits for the last one only)."""
        batch = self._batch
        for i, token in enumerate(tokens):
            batch.token[i], batch.pos[i] = token, start + i
            batch.n_seq_id[i], batch.seq_id[i][0] = 1, seq
            batch.logits[i] = 0
        batch.logits[len(tokens) - 1] = 1 if logits else 0
        batch.n_tokens = len(tokens)
        self._check(self._c.llama_decode(self._ctx, batch))

    def _check(self, status: int) -> None:
        if status != 0:
            raise RuntimeError(f"llama_decode failed with status {status}")

    def _logprobs(self, index: int) -> FloatArray:
        row = np.ctypeslib.as_array(self._c.llama_get_logits_ith(self._ctx, index),
                                    shape=(self._n_vocab,)).astype(np.float32)
        row -= row.max()
        return row - np.float32(np.log(np.exp(row).sum()))

    def classify(self, text: str, max_tokens: int | None = None) -> LlmAnswer:
        """Score every route for ``text`` (cut to ``max_tokens``, default the stage's)."""
        if not self._labels:
            raise RuntimeError("LLM stage has no routes")
        started = time.perf_counter()
        c = self._c
        memory = c.llama_get_memory(self._ctx)
        request = [*self.fit(text, max_tokens or self.max_tokens), *self._suffix]
        if self._cached:
            c.llama_memory_seq_rm(memory, -1, self._cached, -1)  # back to the bare prefix
            prompt, start = request, self._cached
        else:
            c.llama_memory_clear(memory, True)
            prompt, start = [*self._prefix, *request], 0
        self._decode(prompt, start, seq=0, logits=True)
        first = self._logprobs(len(prompt) - 1)
        end = start + len(prompt)
        scores = np.array([first[label[0]] for label in self._labels], dtype=np.float64)
        # Names sharing a first token: one sequence each, all decoded in one batch. (Against
        # a single-sequence reference, log-probs differ by up to ~0.2 nats with Q4_1 on CPU:
        # llama.cpp picks its kernels by batch shape; decoding each label alone differs too.)
        batch, n = self._batch, 0
        rows: list[tuple[int, int]] = []  # (route, index of its first batch token)
        for route, label in enumerate(self._labels):
            if len(label) == 1:
                continue
            seq = len(rows) + 1
            c.llama_memory_seq_cp(memory, 0, seq, -1, -1)
            rows.append((route, n))
            for i, token in enumerate(label[:-1]):
                batch.token[n], batch.pos[n] = token, end + i
                batch.n_seq_id[n], batch.seq_id[n][0], batch.logits[n] = 1, seq, 1
                n += 1
        if n:
            batch.n_tokens = n
            self._check(c.llama_decode(self._ctx, batch))
            for route, offset in rows:
                label = self._labels[route]
                scores[route] += sum(float(self._logprobs(offset + i)[token])
                                     for i, token in enumerate(label[1:]))
            for seq in range(1, len(rows) + 1):
                c.llama_memory_seq_rm(memory, seq, -1, -1)
        calibrated = scores - self._prior if self._prior is not None else scores
        probs = np.exp(calibrated - calibrated.max())
        self.prefilled += len(prompt)
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        self.observe(len(request) + n, elapsed_ms)
        return LlmAnswer((probs / probs.sum()).astype(np.float32), scores, len(prompt), n,
                         elapsed_ms)

    # --- cost -------------------------------------------------------------------------------

    def token_allowance(self, remaining_ms: float) -> int:
        """Request tokens that fit ``remaining_ms`` at the measured speed (may be < 1)."""
        fixed = self.overhead_ms + self.per_token_ms * (len(self._suffix) + self.label_tokens)
        if not self._cached:
            fixed += self.per_token_ms * len(self._prefix)
        return min(self.max_tokens, int((remaining_ms - fixed) / max(self.per_token_ms, 1e-3)))

    def observe(self, tokens: int, elapsed_ms: float) -> None:
        """Follow the machine's current speed: an exponential average per token."""
        if tokens <= 0:
            return
        implied = max(0.01, (elapsed_ms - self.overhead_ms) / tokens)
        self.per_token_ms = 0.8 * self.per_token_ms + 0.2 * min(implied, 10 * self.per_token_ms)

    def calibrate(self, rounds: int = 2) -> None:
        """Measure this machine's cost per token with a short and a long request."""
        samples: list[tuple[int, float]] = []
        for text in ("hello " * 4, "the quick brown fox jumps over the lazy dog " * 8):
            best = float("inf")
            tokens = 0
            for _ in range(rounds):
                answer = self.classify(text)
                tokens = answer.prefilled + answer.label_tokens
                best = min(best, answer.model_ms)
            samples.append((tokens, best))
        (n1, t1), (n2, t2) = samples
        if n2 > n1 and t2 > t1:
            self.per_token_ms = (t2 - t1) / (n2 - n1)
            self.overhead_ms = max(0.2, t1 - self.per_token_ms * n1)


_MIN_TOKENS = 8  # a request cut shorter than this says too little to be worth the wait


def answer_request(
    stage: LlmStage, request: ClassifyRequest, received: float, deadline: float
) -> ClassifyResult | Expired:
    """The sidecar's reply to a ``stage="llm"`` request: computed only if the request (cut
    to what fits) can finish before ``deadline`` (perf_counter seconds) at the measured
    speed; otherwise ``Expired`` at once, so the gateway answers from its fast stages."""
    now = time.perf_counter()
    allowance = stage.token_allowance((deadline - now) * 1000.0 - 1.0)
    if allowance < _MIN_TOKENS:
        return Expired(id=request.id, reason="budget")
    answer = stage.classify(request.text, allowance)
    return ClassifyResult(
        id=request.id, categories=stage.categories,
        probs=tuple(round(float(p), 5) for p in answer.probs), tokens=answer.prefilled,
        model_ms=round(answer.model_ms, 3), queue_ms=round((now - received) * 1000.0, 3))

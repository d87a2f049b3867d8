"""The gateway's classifier: cache, fast lexical stage, sidecar model, fallback — in budget.

``SidecarClassifier.classify`` answers within ``budget_ms`` whatever the sidecar does:

1. **cache** — an LRU of recent answers, keyed by a digest of the text;
2. **lexical** — the in-process n-gram model (``lexical.py``, well under 2 ms); a confident
   answer is final;
3. **model** — otherwise the text goes to the sidecar over its Unix socket with the budget
   that is left; the sidecar's route probabilities are mixed with the lexical ones;
3b. **llm** — with a generative stage in the sidecar (``llm_mode``): ``"escalate"`` sends a
   model-stage answer under ``llm_escalate_below`` to it, ``"always"`` every request before
   the other stages; its answer replaces theirs when it fits the budget left, else theirs
   stands (the sidecar refuses at once what it cannot finish in time);
4. **fallback** — when the sidecar is down, not ready, too busy (too many requests already
   in flight) or the budget runs out, the lexical answer (or the configured fallback
   classifier, e.g. :class:`HeuristicClassifier`, when the lexical model does not know the
   configured routes) is returned, marked ``method="fallback"``.

One connection multiplexes every request (ids match replies to waiters). A background task
keeps it connected (with backoff), teaches the sidecar the configured routes on every
(re)connect and pings it; :attr:`ready` is true only while the last ping was answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from routegate.middleware.contracts import Classification, Classifier, Method
from routegate.sidecar.confidence import disagreement_confidence, doubtful_confidence
from routegate.sidecar.heuristic import HeuristicClassifier, complexity_of
from routegate.sidecar.lexical import LexicalModel, weight_files
from routegate.sidecar.protocol import (
    ClassifyRequest,
    ClassifyResult,
    Configure,
    Configured,
    FrameError,
    Ping,
    Pong,
    Reply,
    Request,
    RouteSpec,
    Stage,
    decode_reply,
    encode_frame,
    read_frame,
)
from routegate.sidecar.routes import route_specs
from routegate.sidecar.semantic import mix_known

__all__ = ["DEFAULT_CATEGORIES", "SidecarClassifier"]

log = logging.getLogger("routegate.sidecar.client")

DEFAULT_CATEGORIES: tuple[str, ...] = (
    "code", "math", "reasoning", "creative_writing", "summarization",
    "translation", "extraction", "classification", "factual_qa", "chat",
)
_SEND_CHARS = 2000  # head and tail sent to the sidecar; it embeds far fewer tokens anyway


class SidecarClassifier:
    """Implements the ``Classifier`` protocol with a cascade and a hard time budget."""

    def __init__(
        self,
        socket_path: str | Path,
        *,
        budget_ms: float = 50.0,
        categories: Sequence[str] = DEFAULT_CATEGORIES,
        default_category: str = "chat",
        fallback: Classifier | None = None,
        routes: Sequence[RouteSpec] | None = None,
        lexical: LexicalModel | None = None,
        use_lexical: bool = True,
        weights: str = "default",
        accept_confidence: float | None = None,
        lexical_weight: float | None = None,
        cache_size: int = 4096,
        max_in_flight: int = 4,
        min_model_ms: float = 8.0,
        reserve_ms: float = 6.0,
        ping_interval_s: float = 0.5,
        llm_mode: Literal["off", "escalate", "always"] = "off",
        llm_escalate_below: float = 0.5,
        doubtful_below: float | None = None,
    ) -> None:
        self.socket_path = Path(socket_path)
        self.budget_ms = budget_ms
        self.categories = tuple(categories)
        self.default_category = default_category
        self.fallback: Classifier = fallback or HeuristicClassifier(
            self.categories, default_category, method="fallback")
        self.routes = tuple(routes) if routes is not None else route_specs(
            categories=self.categories)
        lexical_file = weight_files(weights)[0]
        if lexical is None and use_lexical and lexical_file.exists():
            lexical = LexicalModel.load(lexical_file)
        self.lexical = lexical if use_lexical else None
        self.accept_confidence = (
            accept_confidence if accept_confidence is not None
            else (self.lexical.accept_confidence if self.lexical else 1.0))
        self.lexical_weight = (
            lexical_weight if lexical_weight is not None
            else (self.lexical.mix_weight if self.lexical else 1.0))
        self.cache_size = cache_size
        self.max_in_flight = max_in_flight
        self.min_model_ms = min_model_ms
        # Kept back from the budget for the fallback path and event-loop lag on a busy host:
        # the model's deadline is budget - reserve, so the answer lands inside the budget.
        self.reserve_ms = reserve_ms
        self.ping_interval_s = ping_interval_s
        self.llm_mode = llm_mode
        self.llm_escalate_below = llm_escalate_below
        # Doubtful answers get a confidence under this (the router's escalate_below), so
        # they escalate (confidence.py); None: only the disagreement factor applies.
        self.doubtful_below = doubtful_below
        self.llm_model = ""  # the sidecar's generative stage, from its last Pong
        self._lex_cols: list[tuple[int, int]] = []
        self._lex_complete = False
        self._index_lexical()
        self._cache: OrderedDict[bytes, Classification] = OrderedDict()
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Reply]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._connected = False
        self._configured = False
        self._last_pong = 0.0
        self._in_flight = 0
        self._closing = False
        self._runner: asyncio.Task[None] | None = None
        self.stats: dict[str, int] = dict.fromkeys(("cache", "lexical", "model", "llm", "fallback"), 0)

    def _index_lexical(self) -> None:
        """Which configured categories the lexical model knows (its output columns)."""
        self._lex_cols = []
        if self.lexical is not None:
            known = {name: j for j, name in enumerate(self.lexical.categories)}
            self._lex_cols = [(i, known[c]) for i, c in enumerate(self.categories) if c in known]
        self._lex_complete = len(self._lex_cols) == len(self.categories)

    # --- lifecycle ------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """The sidecar is connected, has our routes and answered the last ping in time."""
        fresh = time.monotonic() - self._last_pong < max(2.5 * self.ping_interval_s, 1.0)
        return self._connected and self._configured and fresh

    async def start(self) -> None:
        """Start connecting in the background (returns at once; see :meth:`wait_ready`)."""
        if self._runner is None:
            self._closing = False
            self._runner = asyncio.create_task(self._run(), name="sidecar-client")

    async def wait_ready(self, timeout_s: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while not self.ready:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    async def close(self) -> None:
        self._closing = True
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
            self._runner = None
        self._drop_connection()

    async def reconfigure(self, routes: Sequence[RouteSpec]) -> None:
        """New routes (config reload): re-teach the sidecar; the cache is emptied."""
        self.routes = tuple(routes)
        self.categories = tuple(spec.name for spec in self.routes)
        self._index_lexical()
        self._cache.clear()
        if self._connected:
            self._configured = False
            await self._configure(timeout_s=120.0)

    # --- the cascade ----------------------------------------------------------------------------

    async def classify(self, text: str) -> Classification:
        started = time.perf_counter()
        key = hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=16).digest()
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return self._answer(cached.category, cached.confidence, "cache", text, started)
        lex, weak = self._lexical_probs(text)
        if self.llm_mode == "always" and (answer := await self._llm(text, started)) is not None:
            return self._remember(key, answer)
        if lex is not None and self._lex_complete and float(lex.max()) >= self.accept_confidence:
            return self._remember(key, self._from_probs(lex, "lexical", text, started, weak))
        reply = await self._ask_in_budget(text, started, "embed")
        if reply is None:
            return await self._fallback(text, lex, started, weak)
        probs = self._align(reply)
        disagree = False
        if lex is not None:
            # A route the lexical model does not know cannot be agreed with: no penalty.
            top = int(np.argmax(probs))
            disagree = top != int(np.argmax(lex)) and any(i == top for i, _ in self._lex_cols)
            # Only over the routes the lexical model knows: a route it has never seen keeps
            # the model's probability (its zero here means "no opinion", not "no").
            known = [i for i, _ in self._lex_cols]
            probs = mix_known(self.categories, probs,
                              tuple(self.categories[i] for i in known), lex[known],
                              1.0, self.lexical_weight)
        best = int(np.argmax(probs))
        confidence = float(probs[best])
        if disagree and self.lexical is not None:
            confidence = disagreement_confidence(confidence, self.lexical.disagree_scale)
        confidence = doubtful_confidence(confidence, disagree or weak, self.doubtful_below)
        if (self.llm_mode == "escalate" and confidence < self.llm_escalate_below
                and (answer := await self._llm(text, started)) is not None):
            return self._remember(key, answer)
        return self._remember(
            key, self._answer(self.categories[best], confidence, "model", text, started))

    async def _llm(self, text: str, started: float) -> Classification | None:
        """The generative stage's answer, or None if it is absent, busy or out of time."""
        reply = await self._ask_in_budget(text, started, "llm") if self.llm_model else None
        return None if reply is None else self._from_probs(self._align(reply), "llm", text,
                                                           started)

    async def _ask_in_budget(self, text: str, started: float,
                             stage: Stage) -> ClassifyResult | None:
        """The sidecar's answer for ``stage`` with the budget left, or None when it is down,
        busy, out of time or refuses."""
        remaining = self.budget_ms - (time.perf_counter() - started) * 1000.0 - self.reserve_ms
        if (not self.ready or self._in_flight >= self.max_in_flight
                or remaining < self.min_model_ms):
            return None
        try:
            reply = await self._ask(text, remaining, stage)
        except (TimeoutError, ConnectionError, OSError, FrameError):
            return None
        return reply if isinstance(reply, ClassifyResult) else None

    def _lexical_probs(self, text: str) -> tuple[npt.NDArray[np.float32] | None, bool]:
        """Lexical probabilities over the configured categories (0 for ones it does not
        know), and whether the prompt is a document under a weak instruction."""
        if self.lexical is None or not self._lex_cols:
            return None, False
        raw, weak = self.lexical.predict(text)
        out = np.zeros(len(self.categories), dtype=np.float32)
        for i, j in self._lex_cols:
            out[i] = raw[j]
        total = float(out.sum())
        return (out / total if total > 0 else None), weak

    def _align(self, reply: ClassifyResult) -> npt.NDArray[np.float32]:
        given = dict(zip(reply.categories, reply.probs, strict=False))
        out = np.array([given.get(c, 0.0) for c in self.categories], dtype=np.float32)
        total = float(out.sum())
        return out / total if total > 0 else np.full(len(out), 1.0 / len(out), dtype=np.float32)

    async def _fallback(self, text: str, lex: npt.NDArray[np.float32] | None, started: float,
                        weak: bool) -> Classification:
        if lex is not None:
            return self._from_probs(lex, "fallback", text, started, weak)
        answer = await self.fallback.classify(text)
        return self._answer(answer.category, answer.confidence, "fallback", text, started)

    def _from_probs(self, probs: npt.NDArray[np.float32], method: Method, text: str,
                    started: float, weak: bool = False) -> Classification:
        best = int(np.argmax(probs))
        confidence = doubtful_confidence(float(probs[best]), weak, self.doubtful_below)
        return self._answer(self.categories[best], confidence, method, text, started)

    def _answer(self, category: str, confidence: float, method: Method, text: str,
                started: float) -> Classification:
        self.stats[method] += 1
        return Classification(
            category=category,
            complexity=complexity_of(text, category),
            confidence=round(confidence, 4),
            method=method,
            latency_ms=(time.perf_counter() - started) * 1000.0,
        )

    def _remember(self, key: bytes, answer: Classification) -> Classification:
        self._cache[key] = answer
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return answer

    # --- the connection -------------------------------------------------------------------------

    async def _ask(self, text: str, remaining_ms: float, stage: Stage = "embed") -> Reply:
        if len(text) > 2 * _SEND_CHARS:
            text = text[:_SEND_CHARS] + " … " + text[-_SEND_CHARS:]
        request = ClassifyRequest(id=next(self._ids), text=text, budget_ms=remaining_ms - 0.5,
                                  stage=stage)
        self._in_flight += 1
        try:
            async with asyncio.timeout(remaining_ms / 1000.0):
                return await self._call(request)
        finally:
            self._in_flight -= 1

    async def _call(self, request: Request) -> Reply:
        writer = self._writer
        if writer is None or not self._connected:
            raise ConnectionError("sidecar not connected")
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[request.id] = future
        try:
            writer.write(encode_frame(request))
            return await future
        finally:
            self._pending.pop(request.id, None)

    async def _run(self) -> None:
        """Connect, configure, read replies and ping; reconnect with backoff when it drops."""
        delay = 0.05
        while not self._closing:
            try:
                reader, writer = await asyncio.open_unix_connection(str(self.socket_path))
            except OSError:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            delay = 0.05
            self._writer, self._connected = writer, True
            reading = asyncio.create_task(self._read(reader, writer))
            pinging = asyncio.create_task(self._ping_loop())
            try:
                await self._configure(timeout_s=120.0)
                await reading
            except (TimeoutError, ConnectionError, OSError, FrameError) as exc:
                log.info("sidecar connection lost: %s", exc)
            finally:
                pinging.cancel()
                reading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pinging
                with contextlib.suppress(asyncio.CancelledError):
                    await reading
                self._drop_connection()

    async def _configure(self, timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            reply = await self._call(Configure(id=next(self._ids), routes=self.routes))
        if isinstance(reply, Configured):
            self._configured, self.llm_model = True, reply.llm_model
            self._last_pong = time.monotonic()
        else:
            log.warning("sidecar refused the routes: %s", reply)

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                reply = decode_reply(await read_frame(reader))
                if isinstance(reply, Pong):
                    self._last_pong = time.monotonic()
                    self.llm_model = reply.llm_model
                future = self._pending.get(reply.id)
                if future is not None and not future.done():
                    future.set_result(reply)
        except (asyncio.IncompleteReadError, ConnectionError, OSError, FrameError) as exc:
            log.info("sidecar closed the connection: %s", exc)
        finally:
            # Fail every waiter now (a Configure included), not when its timeout expires:
            # a connection accepted by a dying sidecar is reset right after the connect.
            if self._writer is writer:
                self._drop_connection()

    async def _ping_loop(self) -> None:
        while True:
            await asyncio.sleep(self.ping_interval_s)
            with contextlib.suppress(TimeoutError, ConnectionError, OSError):
                async with asyncio.timeout(max(2 * self.ping_interval_s, 1.0)):
                    await self._call(Ping(id=next(self._ids)))

    def _drop_connection(self) -> None:
        self._connected = False
        self._configured = False
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionError("sidecar connection closed"))
        self._pending.clear()

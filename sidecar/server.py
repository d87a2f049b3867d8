"""The sidecar process: one embedding model, serialized inference, a Unix socket.

Run as ``python -m routegate.sidecar.server --socket PATH`` (or ``routegate sidecar``).
It loads the model once, measures its cost per token, learns the routes (shipped defaults
until a client sends ``Configure``), then listens. Ping is answered at once even while the
model is busy (inference runs on one worker thread, the event loop stays free). Classify
requests queue for the model; each carries its remaining budget, and a request whose budget
cannot cover a useful input by the time the model is free is answered ``Expired`` instead of
being computed for nobody.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from routegate.sidecar.embedder import Embedder
from routegate.sidecar.lexical import WEIGHT_VARIANTS, weight_files
from routegate.sidecar.llm_stage import LlmStage, answer_request
from routegate.sidecar.protocol import (
    ClassifyRequest,
    ClassifyResult,
    Configure,
    Configured,
    ErrorReply,
    Expired,
    FrameError,
    Ping,
    Pong,
    Reply,
    RouteSpec,
    decode_request,
    encode_frame,
    read_frame,
)
from routegate.sidecar.routes import load_routes, route_specs
from routegate.sidecar.semantic import EmbeddingHead, RouteIndex

__all__ = ["SidecarServer", "build_parser", "main"]

log = logging.getLogger("routegate.sidecar")

_MIN_TOKENS = 8  # below this an embedding says too little to be worth the wait
_MAX_BATCH = 8


@dataclass
class _Job:
    request: ClassifyRequest
    writer: asyncio.StreamWriter
    received: float
    deadline: float  # perf_counter seconds
    tokens: int = 0
    text: str = ""
    started: float = 0.0


class SidecarServer:
    """Owns the embedder, the route index and the listening socket."""

    def __init__(
        self,
        embedder: Embedder,
        socket_path: str | Path,
        *,
        head: EmbeddingHead | None = None,
        routes: Sequence[RouteSpec] = (),
        max_tokens: int = 64,
        queue_limit: int = 64,
        llm: LlmStage | None = None,
    ) -> None:
        self.embedder = embedder
        self.llm = llm  # the generative stage (``stage="llm"`` requests), if configured
        self.socket_path = Path(socket_path)
        self.head = head
        self.max_tokens = max_tokens
        self.queue_limit = queue_limit
        self._initial_routes = tuple(routes) or route_specs()
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama")
        self._model_lock = asyncio.Lock()
        self._example_cache: dict[str, np.ndarray] = {}
        self._index: RouteIndex | None = None
        self._server: asyncio.AbstractServer | None = None
        self._worker: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def categories(self) -> tuple[str, ...]:
        return self._index.categories if self._index is not None else ()

    # --- routes ---------------------------------------------------------------------------

    def _build_index(self, routes: Sequence[RouteSpec]) -> RouteIndex:
        """Embed every example (cached by text) and build the index. Worker thread only."""
        categories = tuple(spec.name for spec in routes)
        texts: list[str] = []
        labels: list[int] = []
        for label, spec in enumerate(routes):
            for text in (*spec.examples, spec.description):
                if text:
                    texts.append(text)
                    labels.append(label)
        missing = [t for t in dict.fromkeys(texts) if t not in self._example_cache]
        for start in range(0, len(missing), 16):
            chunk = [self.embedder.fit(t, self.max_tokens)[0] for t in missing[start : start + 16]]
            for text, vector in zip(missing[start : start + 16], self.embedder.embed(chunk),
                                    strict=True):
                self._example_cache[text] = vector
        dim = self.embedder.dim
        vectors = (
            np.stack([self._example_cache[t] for t in texts])
            if texts
            else np.zeros((0, dim), dtype=np.float32)
        )
        return RouteIndex(
            categories, vectors.astype(np.float32), np.asarray(labels, dtype=np.int64), self.head
        )

    async def configure(self, routes: Sequence[RouteSpec]) -> RouteIndex:
        loop = asyncio.get_running_loop()
        async with self._model_lock:
            index = await loop.run_in_executor(self._executor, self._build_index, tuple(routes))
            if self.llm is not None:  # a new prompt prefix, evaluated once
                await loop.run_in_executor(self._executor, self.llm.set_routes, tuple(routes))
        self._index = index
        log.info("routes: %s (%d examples)", ", ".join(index.categories), len(index.labels))
        return index

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        async with self._model_lock:
            await loop.run_in_executor(self._executor, self.embedder.calibrate)
        await self.configure(self._initial_routes)
        if self.llm is not None:
            async with self._model_lock:
                await loop.run_in_executor(self._executor, self.llm.calibrate)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()  # a stale socket from a crashed predecessor
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        self._server = await asyncio.start_unix_server(self._handle, path=str(self.socket_path))
        os.chmod(self.socket_path, 0o600)
        self._worker = asyncio.create_task(self._work())
        log.info(
            "listening on %s: model %s, prefill %.0f tok/s (%.2f ms + %.3f ms/token)",
            self.socket_path, self.embedder.name, self.embedder.prefill_tok_per_s,
            self.embedder.overhead_ms, self.embedder.per_token_ms,
        )

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        for task in list(self._tasks):
            task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    # --- connections ------------------------------------------------------------------------

    def _send(self, writer: asyncio.StreamWriter, reply: Reply) -> None:
        if not writer.is_closing():
            writer.write(encode_frame(reply))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                body = await read_frame(reader)
                request = decode_request(body)
                now = time.perf_counter()
                if isinstance(request, Ping):
                    self._send(writer, Pong(
                        id=request.id, pid=os.getpid(), model=self.embedder.name,
                        categories=self.categories, queue_depth=self._queue.qsize(),
                        prefill_tok_per_s=round(self.embedder.prefill_tok_per_s, 1),
                        llm_model=self.llm.name if self.llm is not None else "",
                    ))
                elif isinstance(request, Configure):
                    task = asyncio.create_task(self._configure_reply(request, writer))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                elif self._queue.qsize() >= self.queue_limit:
                    self._send(writer, Expired(id=request.id, reason="queue full"))
                else:
                    deadline = now + request.budget_ms / 1000.0
                    self._queue.put_nowait(_Job(request, writer, now, deadline))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except FrameError as exc:
            log.warning("closing connection: %s", exc)
        finally:
            writer.close()

    async def _configure_reply(self, request: Configure, writer: asyncio.StreamWriter) -> None:
        try:
            index = await self.configure(request.routes)
        except (ValueError, RuntimeError) as exc:
            self._send(writer, ErrorReply(id=request.id, message=str(exc)))
            return
        self._send(writer, Configured(
            id=request.id, categories=index.categories, examples=len(index.labels),
            llm_model=self.llm.name if self.llm is not None else "",
        ))

    # --- the model worker -----------------------------------------------------------------------

    def _token_allowance(self, job: _Job, now: float, batch_tokens: int) -> int:
        remaining_ms = (job.deadline - now) * 1000.0 - 1.0  # reply and decode slack
        spare = remaining_ms - self.embedder.estimate_ms(batch_tokens)
        return min(self.max_tokens, int(spare / max(self.embedder.per_token_ms, 1e-3)))

    def _run_batch(
        self, candidates: list[_Job], index: RouteIndex
    ) -> tuple[list[_Job], list[_Job], np.ndarray, float]:
        """Fit each input to its remaining budget, embed the batch, score the routes.

        Runs on the model thread, so every llama.cpp call (tokenizer included) stays on one
        thread. Returns (expired jobs, computed jobs, probabilities, inference ms).
        """
        now = time.perf_counter()
        batch: list[_Job] = []
        expired: list[_Job] = []
        tokens = 0
        for job in candidates:
            job.started = now
            allowance = self._token_allowance(job, now, tokens)
            if allowance < _MIN_TOKENS:
                expired.append(job)
                continue
            job.text, job.tokens = self.embedder.fit(job.request.text, allowance)
            tokens += job.tokens
            batch.append(job)
        if not batch:
            return expired, batch, np.zeros((0, len(index.categories)), dtype=np.float32), 0.0
        started = time.perf_counter()
        vectors = self.embedder.embed([job.text for job in batch])
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        self.embedder.observe(tokens, elapsed_ms)
        return expired, batch, index.predict_proba(vectors), elapsed_ms

    async def _work(self) -> None:
        while True:
            candidates = [await self._queue.get()]
            while len(candidates) < _MAX_BATCH and not self._queue.empty():
                candidates.append(self._queue.get_nowait())
            # Embeddings first (milliseconds), then the LLM requests one at a time.
            await self._embed_jobs([job for job in candidates if job.request.stage != "llm"])
            for job in candidates:
                if job.request.stage == "llm":
                    await self._llm_job(job)

    async def _llm_job(self, job: _Job) -> None:
        loop = asyncio.get_running_loop()
        reply: Reply = ErrorReply(id=job.request.id, message="no LLM stage")
        async with self._model_lock:
            try:
                if self.llm is not None:
                    reply = await loop.run_in_executor(self._executor, answer_request, self.llm,
                                                       job.request, job.received, job.deadline)
            except (RuntimeError, ValueError) as exc:
                reply = ErrorReply(id=job.request.id, message=str(exc))
        self._send(job.writer, reply)

    async def _embed_jobs(self, candidates: list[_Job]) -> None:
        loop = asyncio.get_running_loop()
        if candidates:
            async with self._model_lock:
                index = self._index
                if index is None:
                    return
                try:
                    expired, batch, probs, model_ms = await loop.run_in_executor(
                        self._executor, self._run_batch, candidates, index
                    )
                except (RuntimeError, ValueError) as exc:
                    for job in candidates:
                        self._send(job.writer, ErrorReply(id=job.request.id, message=str(exc)))
                    return
            for job in expired:
                self._send(job.writer, Expired(id=job.request.id, reason="budget"))
            for job, row in zip(batch, probs, strict=True):
                self._send(job.writer, ClassifyResult(
                    id=job.request.id,
                    categories=index.categories,
                    probs=tuple(round(float(p), 5) for p in row),
                    tokens=job.tokens,
                    model_ms=round(model_ms, 3),
                    queue_ms=round((job.started - job.received) * 1000.0, 3),
                ))


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="routegate sidecar", description=__doc__)
    parser.add_argument("--socket", required=True, help="Unix socket path to listen on")
    parser.add_argument("--model", default="", help="GGUF path (default: all-MiniLM-L6-v2)")
    parser.add_argument("--threads", type=int, default=1,
                        help="1 is steadier on a 2-core machine shared with the gateway")
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--gpu-layers", type=int, default=0)
    parser.add_argument("--max-tokens", type=int, default=64,
                        help="longest input embedded (head + tail of longer ones)")
    parser.add_argument("--head", default="", help="trained head .npz ('none' to disable)")
    parser.add_argument("--weights", default="default", choices=WEIGHT_VARIANTS,
                        help="shipped head variant when --head is not given")
    parser.add_argument("--routes", default="",
                        help="TOML file with [routes.NAME] tables (gateway.toml works)")
    parser.add_argument("--llm-model", default="",
                        help="instruct GGUF for the generative stage (default: none)")
    parser.add_argument("--llm-gpu-layers", type=int, default=0)
    parser.add_argument("--llm-context", type=int, default=2048)
    parser.add_argument("--llm-max-tokens", type=int, default=128,
                        help="longest request the generative stage reads")
    parser.add_argument("--log-level", default="info")
    return parser


async def _serve(args: argparse.Namespace) -> int:
    from routegate.sidecar.convert import ensure_default_model

    model = Path(args.model) if args.model else ensure_default_model()
    head: EmbeddingHead | None = None
    if args.head != "none":
        head_path = Path(args.head) if args.head else weight_files(args.weights)[1]
        if head_path.exists():
            head = EmbeddingHead.load(head_path)
    routes = route_specs(load_routes(args.routes)) if args.routes else route_specs()
    embedder = Embedder(model, threads=args.threads, context=args.context,
                        gpu_layers=args.gpu_layers)
    if head is not None and (head.model != embedder.name or head.dim != embedder.dim):
        log.info("trained head is for %s, model is %s: examples only", head.model, embedder.name)
        head = None
    llm = LlmStage(args.llm_model, threads=args.threads, gpu_layers=args.llm_gpu_layers,
                   context=args.llm_context, max_tokens=args.llm_max_tokens) if args.llm_model else None
    server = SidecarServer(embedder, args.socket, head=head, routes=routes,
                           max_tokens=args.max_tokens, llm=llm)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    print(f"routegate sidecar ready on {args.socket}", file=sys.stderr, flush=True)
    try:
        await stop.wait()
    finally:
        await server.close()
    return 0


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=str(args.log_level).upper(), stream=sys.stderr,
        format="%(asctime)s sidecar[%(process)d] %(levelname)s %(message)s",
    )
    return asyncio.run(_serve(args))


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

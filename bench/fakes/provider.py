"""FakeProvider: a pure ASGI app that speaks one provider's wire format, with injectable faults.

The app runs on uvicorn's loop (often another thread than the test's), so everything a test
reads or writes (faults, recorded requests, stream records) goes through one lock.
"""

from __future__ import annotations

import itertools
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import msgspec
from starlette.types import Receive, Scope, Send

from bench.fakes._asgi import Watcher, body_message, read_body, respond
from bench.fakes._common import DEFAULT_MODELS, BadRequest, Call, Kind, Script, Wire
from bench.fakes.anthropic_fake import AnthropicWire
from bench.fakes.faults import (
    EndWithoutDoneFault,
    ErrorMidStreamFault,
    Fault,
    FaultAbort,
    HangAfterHeadersFault,
    HangFault,
    MalformedFault,
    ResetMidStreamFault,
    SlowChunksFault,
    StallMidStreamFault,
    StatusFault,
)
from bench.fakes.gemini_fake import GeminiWire
from bench.fakes.openai_fake import OpenAIWire
from bench.fakes.records import RecordedRequest, StreamRecord

__all__ = ["FakeProvider", "RecordedRequest", "StreamRecord"]

_MALFORMED_JSON = b'{"id": "broken", "choices": [{not json'


@dataclass(slots=True)
class _Queued:
    fault: Fault
    model: str | None
    remaining: int


def _make_wire(kind: Kind, script: Script) -> Wire:
    if kind == "openai":
        return OpenAIWire(script)
    if kind == "anthropic":
        return AnthropicWire(script)
    if kind == "gemini":
        return GeminiWire(script)
    raise ValueError(f"unknown provider kind {kind!r}")


class FakeProvider:
    """A fake OpenAI / Anthropic / Gemini endpoint (an ASGI app) with injectable faults.

    Without a fault every completion answers ``reply_text``: whole when not streaming, else
    split into ``chunks`` pieces of near-equal length (one content event each, preceded by
    ``chunk_delay_s``). Usage is deterministic: prompt tokens = whitespace-separated words
    over all message texts (system included), completion tokens = number of pieces. When
    the request carries tools and its last user message contains ``CALL_TOOL``, the answer
    is a call of the first tool with arguments ``{"city": "Paris"}`` (streamed as argument
    fragments where the format does). ``model_echo=False`` answers with a dated snapshot
    name (``{model}-2025-01-01``) instead of the requested model. ``models`` is what the
    model-list route returns. ``record=False`` (benchmarks) keeps no requests or streams.
    Auth is checked, not validated: any non-empty key passes.
    """

    def __init__(
        self,
        kind: Kind,
        *,
        reply_text: str = "Hello from the fake provider.",
        chunks: int = 5,
        chunk_delay_s: float = 0.0,
        model_echo: bool = True,
        models: Sequence[str] | None = None,
        record: bool = True,
    ) -> None:
        if chunks < 1:
            raise ValueError("chunks must be >= 1")
        if chunk_delay_s < 0:
            raise ValueError("chunk_delay_s must be >= 0")
        self.kind: Kind = kind
        self.chunk_delay_s = chunk_delay_s
        self._script = Script.build(
            reply_text, chunks, model_echo, DEFAULT_MODELS[kind] if models is None else models
        )
        self._wire = _make_wire(kind, self._script)
        self._record = record
        self._cond = threading.Condition(threading.Lock())
        self._queue: list[_Queued] = []
        self._default: Fault | None = None
        self._requests: list[RecordedRequest] = []
        self._streams: list[StreamRecord] = []
        self._ids = itertools.count(1)
        self._id_prefix = secrets.token_hex(4).encode()
        #: Set whenever a stream record closes; cleared by :meth:`reset`.
        self.stream_closed = threading.Event()

    # -- test controls (any thread) ---------------------------------------------------------
    def inject(self, fault: Fault, *, model: str | None = None, times: int = 1) -> None:
        """Apply ``fault`` to the next ``times`` completion requests (for ``model`` only, if
        given). Queued faults are consumed in order, before the default fault."""
        if times < 1:
            raise ValueError("times must be >= 1")
        with self._cond:
            self._queue.append(_Queued(fault, model, times))

    def set_default(self, fault: Fault | None) -> None:
        """Apply ``fault`` to every completion request without a queued fault (None clears)."""
        with self._cond:
            self._default = fault

    def reset(self) -> None:
        """Clear faults, recorded requests and stream records."""
        with self._cond:
            self._queue.clear()
            self._default = None
            self._requests.clear()
            self._streams.clear()
            self.stream_closed.clear()

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of the requests received so far (empty if ``record=False``)."""
        with self._cond:
            return list(self._requests)

    @property
    def streams(self) -> list[StreamRecord]:
        """Snapshots of the stream records so far."""
        with self._cond:
            return [replace(s) for s in self._streams]

    @property
    def pending_faults(self) -> int:
        """Requests still to be hit by queued faults."""
        with self._cond:
            return sum(q.remaining for q in self._queue)

    def wait_for_stream_close(self, timeout: float = 5.0, index: int = -1) -> StreamRecord:
        """Wait until ``streams[index]`` (default: the latest) exists and has closed."""

        def closed() -> bool:
            try:
                return self._streams[index].closed_at is not None
            except IndexError:
                return False

        with self._cond:
            if not self._cond.wait_for(closed, timeout):
                raise TimeoutError(f"no closed stream at index {index} after {timeout}s: {self._streams!r}")
            return replace(self._streams[index])

    # -- bookkeeping (server thread) --------------------------------------------------------
    def _take_fault(self, model: str) -> Fault | None:
        with self._cond:
            for i, queued in enumerate(self._queue):
                if queued.model is None or queued.model == model:
                    queued.remaining -= 1
                    if queued.remaining == 0:
                        del self._queue[i]
                    return queued.fault
            return self._default

    def _open_record(self, path: str, call: Call, fault: Fault | None) -> StreamRecord:
        rec = StreamRecord(path, call.model, type(fault).__name__ if fault else None, time.monotonic())
        if self._record:
            with self._cond:
                self._streams.append(rec)
        return rec

    def _close_record(self, rec: StreamRecord, disconnected: bool) -> None:
        if not self._record:
            return
        with self._cond:
            rec.closed_at = time.monotonic()
            rec.client_disconnected = disconnected and not rec.completed
            self._cond.notify_all()
        self.stream_closed.set()

    # -- ASGI -------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        received_at = time.monotonic()
        wire = self._wire
        method: str = scope["method"]
        path: str = scope["path"]
        query = scope.get("query_string", b"").decode("latin-1")
        raw = await read_body(receive)
        if raw is None:
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        route = wire.route(method, path, query)
        body: Any = None
        bad_json = False
        if raw:
            try:
                body = msgspec.json.decode(raw)
            except msgspec.DecodeError:
                bad_json = True
        model = route.model if route is not None and not isinstance(route, BadRequest) else None
        if model is None and isinstance(body, dict) and isinstance(body.get("model"), str):
            model = body["model"]
        if self._record:
            rec = RecordedRequest(method, path, query, headers, body, raw, model, received_at)
            with self._cond:
                self._requests.append(rec)

        def error(status: int, message: str) -> bytes:
            return wire.error_body(status, None, message, model or "")

        if route is None:
            await respond(send, 404, wire.json_headers, error(404, f"Not found: {method} {path}"))
            return
        if isinstance(route, BadRequest):
            await respond(send, 400, wire.json_headers, error(400, str(route)))
            return
        denied = wire.auth_error(headers, query)
        if denied is not None:
            await respond(send, denied[0], wire.json_headers, denied[1])
            return
        if route.op == "models":
            await respond(send, 200, wire.json_headers, wire.models_body())
            return
        if bad_json:
            await respond(send, 400, wire.json_headers, error(400, "Request body is not JSON."))
            return
        try:
            call = wire.parse_call(body, route)
        except BadRequest as exc:
            await respond(send, 400, wire.json_headers, error(400, str(exc)))
            return
        fault = self._take_fault(call.model)
        if isinstance(fault, StatusFault | ErrorMidStreamFault) and fault.echo_headers:
            # credentials first, as "invalid key ..." messages do: truncation keeps them
            order = sorted(headers.items(), key=lambda kv: not ("auth" in kv[0] or "key" in kv[0]))
            echo = "; ".join(f"{k}: {v}" for k, v in order)
            fault = replace(fault, message=(
                f"Invalid request (headers received: {echo}; query: {query})"))
        rid = b"%s%08x" % (self._id_prefix, next(self._ids))
        if isinstance(fault, StatusFault):
            await self._status(send, call, fault)
        elif isinstance(fault, ErrorMidStreamFault) and not call.stream:
            err = StatusFault(fault.http_status, None, (), fault.code, fault.message)
            await self._status(send, call, err)
        elif isinstance(fault, HangFault):
            await self._hang(receive, path, call, fault)
        elif call.stream:
            await self._stream(receive, send, path, call, rid, fault)
        else:
            await self._unary(receive, send, call, rid, fault)

    async def _status(self, send: Send, call: Call, fault: StatusFault) -> None:
        wire = self._wire
        body = fault.body
        if body is None:
            body = wire.error_body(fault.http_status, fault.code, fault.message, call.model)
        extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in fault.headers]
        names = {k for k, _ in extra}
        headers = [h for h in wire.json_headers if h[0] not in names] + extra
        await respond(send, fault.http_status, headers, body)

    async def _hang(self, receive: Receive, path: str, call: Call, fault: HangFault) -> None:
        rec = self._open_record(path, call, fault)
        watcher = Watcher(receive)
        left = False
        try:
            left = await watcher.pause(fault.seconds)
        finally:
            watcher.close()
            self._close_record(rec, left or watcher.disconnected)
        if not left:
            # ASGI cannot close a socket before the response starts; uvicorn answers 500.
            raise FaultAbort("hang: giving up on the request")

    async def _unary(self, receive: Receive, send: Send, call: Call, rid: bytes, fault: Fault | None) -> None:
        wire = self._wire
        if isinstance(fault, MalformedFault):
            await respond(send, 200, wire.json_headers, _MALFORMED_JSON)
            return
        body = wire.render_json(call, rid)
        pause = 0.0
        if isinstance(fault, SlowChunksFault):
            pause = fault.delay_s
        elif isinstance(fault, StallMidStreamFault):
            pause = fault.seconds
        if isinstance(fault, HangAfterHeadersFault | ResetMidStreamFault):
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [*wire.json_headers, (b"content-length", b"%d" % len(body))],
                }
            )
            if isinstance(fault, ResetMidStreamFault):
                await send(body_message(body[: len(body) // 2], True))
                raise FaultAbort("reset_mid_stream: dropping the connection")
            pause = fault.seconds
        if pause > 0:
            watcher = Watcher(receive)
            try:
                if await watcher.pause(pause):
                    return
            finally:
                watcher.close()
        if isinstance(fault, HangAfterHeadersFault):
            await send(body_message(body, False))
        else:
            await respond(send, 200, wire.json_headers, body)

    async def _stream(
        self, receive: Receive, send: Send, path: str, call: Call, rid: bytes, fault: Fault | None
    ) -> None:
        rec = self._open_record(path, call, fault)
        watcher = Watcher(receive)
        try:
            await self._stream_body(send, watcher, call, rid, fault, rec)
        finally:
            watcher.close()
            self._close_record(rec, watcher.disconnected)

    async def _stream_body(
        self,
        send: Send,
        watcher: Watcher,
        call: Call,
        rid: bytes,
        fault: Fault | None,
        rec: StreamRecord,
    ) -> None:
        wire = self._wire
        parts = wire.render_stream(call, rid)
        await send({"type": "http.response.start", "status": 200, "headers": wire.sse_headers})
        if isinstance(fault, HangAfterHeadersFault) and await watcher.pause(fault.seconds):
            return
        if isinstance(fault, MalformedFault):
            await send(body_message(wire.malformed_event(), True))
        delay = fault.delay_s if isinstance(fault, SlowChunksFault) else self.chunk_delay_s
        chunks = parts.chunks
        limit = len(chunks)
        if isinstance(fault, ResetMidStreamFault | EndWithoutDoneFault | ErrorMidStreamFault):
            limit = min(fault.after_chunks, limit)
        stall_at, stall_s = -1, 0.0
        if isinstance(fault, StallMidStreamFault):
            stall_at, stall_s = fault.after_chunks, fault.seconds
        head = parts.preamble  # travels with the first content chunk
        for i in range(limit):
            if i == stall_at and await watcher.pause(stall_s):
                return
            if delay > 0 and await watcher.pause(delay):
                return
            data = chunks[i]
            if head:
                data, head = head + data, b""
            # Counted before the write: whoever holds chunk k must see chunks_sent >= k.
            rec.chunks_sent += 1
            await send(body_message(data, True))
            if watcher.disconnected:
                return
        if stall_at >= limit and await watcher.pause(stall_s):
            return
        if isinstance(fault, ResetMidStreamFault):
            if head:
                await send(body_message(head, True))
            raise FaultAbort("reset_mid_stream: dropping the connection")
        if isinstance(fault, EndWithoutDoneFault):
            tail = head + (parts.finish if fault.with_finish_reason else b"")
        elif isinstance(fault, ErrorMidStreamFault):
            tail = head + wire.error_event(fault.http_status, fault.code, call.model,
                                           fault.message)
        else:
            tail = head + parts.finish + parts.terminal
        await send(body_message(tail, False))
        rec.completed = True

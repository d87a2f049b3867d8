"""One attempt: a request to one pool model, and its answer relayed to the client.

The whole answer is read and checked before its headers go out; a stream counts as started at
its first content event, then is forwarded event by event with idle and total timeouts while
the client is watched. Whatever fails before the first byte comes back as an
:class:`UpstreamFailure` for :mod:`routegate.middleware.request.relay` to decide on; a failure
after it ends the stream in-band (or is left to the relay's mid-stream recovery).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import msgspec

from routegate.middleware.asgi_types import Send
from routegate.middleware.config import RecoveryConfig
from routegate.middleware.contracts import AttemptInfo, RequestContext, UpstreamFailure, Usage
from routegate.middleware.providers.base import ClientRequest, MalformedUpstream, StreamTranslator
from routegate.middleware.request.disconnect import DisconnectWatch, uncancel
from routegate.middleware.request.model_pool import PoolModel, cost_usd
from routegate.middleware.request.observers import Observers
from routegate.middleware.request.scrub import Scrubber
from routegate.middleware.request.tokens import TokenEstimator, with_estimated_usage
from routegate.middleware.upstream.origins import ResponseTooLarge
from routegate.middleware.upstream.transport import raw_chunks, send_upstream

__all__ = ["AttemptRunner", "sse_error"]

_ERROR_BODY_LIMIT = 64 * 1024
_RESET_ERRORS = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
_CONNECT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# what the transport raises before an answer starts (ResponseTooLarge is a RemoteProtocolError)
_TRANSPORT_ERRORS = (*_CONNECT_ERRORS, *_RESET_ERRORS, httpx.TimeoutException)


class AttemptRunner:
    """Runs attempts for one config; holds no per-request state."""

    def __init__(self, client: httpx.AsyncClient, observers: Observers, scrubber: Scrubber,
                 recovery: RecoveryConfig, tokens: TokenEstimator | None) -> None:
        self._client = client
        self._observers = observers
        self._scrubber = scrubber
        self._recovery = recovery
        self._tokens = tokens

    async def run(self, ctx: RequestContext, attempt: AttemptInfo, pool_model: PoolModel,
                  request: ClientRequest, remaining: float, send: Send,
                  watch: DisconnectWatch) -> UpstreamFailure | None:
        """One attempt within ``remaining`` seconds: None once the answer went to ``send``,
        else the failure (secret-free) before anything was sent."""
        upstream = pool_model.adapter.build_request(self._client, request, pool_model.config,
                                                    pool_model.upstream_model)
        timeouts = pool_model.provider.timeouts
        total = timeouts.total_s  # httpx.Timeout(total, connect=...).as_dict(), built directly
        upstream.extensions["timeout"] = {"connect": min(timeouts.connect_s, remaining),
                                          "read": total, "write": total, "pool": total}
        if self._observers:
            self._observers.on_attempt_start(ctx, attempt, upstream)
        if request.stream:
            failure = await self._stream(ctx, attempt, pool_model, request, upstream,
                                         min(timeouts.first_token_s, remaining), send, watch)
        else:
            failure = await self._whole(ctx, attempt, pool_model, request, upstream,
                                        min(timeouts.total_s, remaining), send, watch)
        # upstream text (error bodies, codes, messages) -> secret-free before anyone sees it
        return None if failure is None else self._scrubber.failure(failure)

    async def _whole(self, ctx: RequestContext, attempt: AttemptInfo, pool_model: PoolModel,
                     request: ClientRequest, upstream: httpx.Request, limit: float,
                     send: Send, watch: DisconnectWatch) -> UpstreamFailure | None:
        try:
            async with asyncio.timeout(limit):
                response = await send_upstream(self._client, upstream)
        except TimeoutError:
            return UpstreamFailure("timeout", f"no answer within {limit:.3g}s")
        except _TRANSPORT_ERRORS as exc:
            return _transport_failure(exc, "answer")
        if response.status_code != 200:
            return pool_model.adapter.judge_error(response.status_code,
                                                  response.content[:_ERROR_BODY_LIMIT],
                                                  response.headers)
        try:
            answer = pool_model.adapter.parse_answer(response.content)
        except MalformedUpstream as exc:
            return UpstreamFailure("malformed", f"malformed answer ({exc})"[:200])
        attempt.first_token_at = time.perf_counter()
        body, usage = answer.body, answer.usage
        if usage is None and self._tokens is not None:
            filled = await with_estimated_usage(self._tokens, request, body)
            if filled is not None:
                body, usage = filled
        self._settle(attempt, pool_model, usage, answer.response_model, answer.finish_reasons)
        attempt.committed = True
        watch.stop()  # before the answer goes out: see DisconnectWatch
        await send({"type": "http.response.start", "status": 200,
                    "headers": self._headers(ctx, pool_model, b"application/json",
                                             len(body), attempt.cost_usd)})
        await send({"type": "http.response.body", "body": body, "more_body": False})
        return None

    def _settle(self, attempt: AttemptInfo, pool_model: PoolModel, usage: Usage | None,
                response_model: str, finish_reasons: tuple[str, ...]) -> None:
        attempt.usage = usage
        attempt.response_model = response_model or pool_model.upstream_model
        attempt.finish_reasons = finish_reasons
        attempt.cost_usd = cost_usd(pool_model.config, usage)

    def _headers(self, ctx: RequestContext, pool_model: PoolModel, content_type: bytes,
                 length: int | None, cost: float | None = None) -> list[tuple[bytes, bytes]]:
        headers = [(b"content-type", content_type), *pool_model.identity_headers,
                   (b"x-request-id", ctx.request_id.encode())]
        if ctx.category:
            headers.append((b"x-routegate-category", ctx.category.encode()))
        if length is not None:
            headers.append((b"content-length", str(length).encode()))
            if cost is not None:  # a whole answer's usage, hence cost, precedes its headers
                headers.append((b"x-routegate-cost-usd", f"{cost:.10f}".encode()))
        else:
            headers.append((b"cache-control", b"no-cache"))
        headers.extend(ctx.response_headers)
        return headers

    async def _stream(self, ctx: RequestContext, attempt: AttemptInfo, pool_model: PoolModel,
                      request: ClientRequest, upstream: httpx.Request, first_token_limit: float,
                      send: Send, watch: DisconnectWatch) -> UpstreamFailure | None:
        translator = pool_model.adapter.stream_translator(request)
        response: httpx.Response | None = None
        chunks: AsyncIterator[bytes] | None = None
        first = b""
        failure: UpstreamFailure | None = None
        try:
            async with asyncio.timeout(first_token_limit):
                response = await send_upstream(self._client, upstream, stream=True)
                if response.status_code != 200:
                    body = await _read_limited(response)
                    failure = pool_model.adapter.judge_error(response.status_code, body,
                                                             response.headers)
                else:
                    chunks = raw_chunks(response)
                    while not translator.started:
                        first += translator.feed(await anext(chunks))
        except TimeoutError:
            failure = UpstreamFailure("timeout", f"no first token within {first_token_limit:.3g}s")
        except _TRANSPORT_ERRORS as exc:
            failure = _transport_failure(exc, "stream")
        except StopAsyncIteration:
            failure = UpstreamFailure("malformed", "stream ended before its first event")
        except MalformedUpstream as exc:
            failure = UpstreamFailure("malformed", f"malformed stream ({exc})"[:200])
        except asyncio.CancelledError:  # the client left (or the server stops): close upstream
            if response is not None:
                await response.aclose()
            raise
        if failure is not None or response is None or chunks is None:
            if response is not None:
                await response.aclose()
            return failure or UpstreamFailure("malformed", "no response")
        attempt.first_token_at = time.perf_counter()
        attempt.committed = True
        await send({"type": "http.response.start", "status": 200,
                    "headers": self._headers(ctx, pool_model, b"text/event-stream", None)})
        await self._relay_stream(attempt, pool_model, translator, response, chunks, first,
                                 send, watch)
        return None

    async def _relay_stream(self, attempt: AttemptInfo, pool_model: PoolModel,
                            translator: StreamTranslator, response: httpx.Response,
                            chunks: AsyncIterator[bytes], first: bytes, send: Send,
                            watch: DisconnectWatch) -> None:
        """Forward each event as it completes; watch the client so a disconnect stops paying."""
        timeouts = pool_model.provider.timeouts
        loop = asyncio.get_running_loop()
        stream_end = loop.time() + timeouts.total_s - (time.perf_counter() - attempt.started_at)
        watch.start()
        error: str | None = None
        try:
            try:
                await send({"type": "http.response.body", "body": first, "more_body": True})
                async with asyncio.timeout_at(min(loop.time() + timeouts.idle_s, stream_end)) as idle:
                    async for data in chunks:
                        out = translator.feed(data)
                        if out:
                            await send({"type": "http.response.body", "body": out,
                                        "more_body": True})
                        idle.reschedule(min(loop.time() + timeouts.idle_s, stream_end))
            except TimeoutError:
                error = f"upstream stalled for more than {timeouts.idle_s:g}s mid-stream"
            except (*_RESET_ERRORS, httpx.TimeoutException) as exc:
                error = f"upstream connection broke mid-stream ({type(exc).__name__})"
            finally:
                watch.stop()
                await response.aclose()
        except asyncio.CancelledError:
            if not watch.disconnected:
                raise
            uncancel()
            attempt.client_disconnected = True
            await response.aclose()
        self._settle(attempt, pool_model, translator.usage, translator.response_model,
                     tuple(translator.finish_reasons))
        if attempt.client_disconnected:
            return
        tail = b"" if error else translator.close()
        if error is None and not translator.done:
            error = "upstream stream ended before the answer was complete"
        if error is not None:
            attempt.error_after_first_byte = error
            if self._recovery.mode == "continue":
                return  # run() continues the answer elsewhere, or ends it with the error
            tail = sse_error(error)
        await send({"type": "http.response.body", "body": tail, "more_body": False})


async def _read_limited(response: httpx.Response) -> bytes:
    body = b""
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) >= _ERROR_BODY_LIMIT:
            break
    return body[:_ERROR_BODY_LIMIT]


_sse_error_encoder = msgspec.json.Encoder()


def sse_error(message: str) -> bytes:
    payload = _sse_error_encoder.encode(
        {"error": {"message": message, "type": "upstream_error", "code": "stream_interrupted"}})
    return b"data: " + payload + b"\n\n"


def _transport_failure(exc: Exception, what: str) -> UpstreamFailure:
    """A transport error before the answer started, as the failure the relay decides on."""
    if isinstance(exc, _CONNECT_ERRORS):
        return UpstreamFailure("connect", f"connect error ({type(exc).__name__})")
    if isinstance(exc, ResponseTooLarge):  # over the head or body cap: a malformed answer
        return UpstreamFailure("malformed", f"malformed {what} ({exc})"[:200])
    return UpstreamFailure("reset", f"connection broken ({type(exc).__name__})")

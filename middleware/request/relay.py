"""The attempt loop: try the plan's models in order, stream the first that answers.

Before the first byte reaches the client every failure is private: the loop retries the same
model or moves on (what to do is :mod:`routegate.middleware.request.failover`'s call) inside one deadline.
After the first byte the answer belongs to the client: a failure ends the stream with an
in-band SSE error event, never a silent truncation that looks like success.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import httpx
import msgspec

from routegate.middleware.asgi_types import Receive, Send
from routegate.middleware.config import GatewayConfig
from routegate.middleware.contracts import AttemptInfo, RequestContext, RequestOutcome, UpstreamFailure, Usage
from routegate.middleware.providers.base import ClientRequest, MalformedUpstream, StreamTranslator
from routegate.middleware.request.disconnect import DisconnectWatch, uncancel
from routegate.middleware.request.errors import AllAttemptsFailed, GatewayError, UpstreamRejected
from routegate.middleware.request.failover import Failover
from routegate.middleware.request.model_pool import PoolModel, cost_usd
from routegate.middleware.request.observers import Observers
from routegate.middleware.request.recovery import OutputTape, Splicer, continuation_request
from routegate.middleware.request.scrub import Scrubber
from routegate.middleware.request.tokens import TokenEstimator, UsageFiller, with_estimated_usage
from routegate.middleware.upstream.origins import ResponseTooLarge
from routegate.middleware.upstream.transport import raw_chunks, send_upstream

__all__ = ["Relay"]

log = logging.getLogger("routegate")
_ERROR_BODY_LIMIT = 64 * 1024
_RESET_ERRORS = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
_CONNECT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# what the transport raises before an answer starts (ResponseTooLarge is a RemoteProtocolError)
_TRANSPORT_ERRORS = (*_CONNECT_ERRORS, *_RESET_ERRORS, httpx.TimeoutException)


class Relay:
    def __init__(self, config: GatewayConfig, client: httpx.AsyncClient,
                 pool: dict[str, PoolModel], observers: Observers, scrubber: Scrubber) -> None:
        self._config = config
        self._scrubber = scrubber
        self._client = client
        self._pool = pool
        self._observers = observers
        self._recovery = config.recovery
        # Counts tokens for answers that come without usage (tokenizer loaded on first need).
        self._tokens = TokenEstimator(config.usage) if config.usage.estimate else None

    async def run(self, ctx: RequestContext, request: ClientRequest, models: tuple[str, ...],
                  send: Send, receive: Receive) -> RequestOutcome:
        """Answer the request from the first model that works; raise GatewayError otherwise.
        A client that leaves while it waits closes the upstream request at once (499)."""
        watch = DisconnectWatch(receive)
        watch.start_later()
        try:
            return await self._run(ctx, request, models, send, watch)
        except asyncio.CancelledError:
            if not watch.disconnected:
                raise
            uncancel()
            return self._client_left(ctx)
        finally:
            watch.stop()

    def _client_left(self, ctx: RequestContext) -> RequestOutcome:
        attempt = ctx.attempts[-1] if ctx.attempts else None
        if attempt is not None and not attempt.ended_at:  # cut short while waiting for it
            attempt.ended_at = time.perf_counter()
            attempt.client_disconnected = True
            self._observers.on_attempt_end(ctx, attempt)
        log.info("client left request %s before its answer", ctx.request_id)
        return RequestOutcome(499, "disconnected", attempt.model if attempt else None)

    async def _run(self, ctx: RequestContext, request: ClientRequest, models: tuple[str, ...],
                   send: Send, watch: DisconnectWatch) -> RequestOutcome:
        retry = self._config.retry
        deadline = ctx.started_at + self._config.server.request_timeout_s
        failover: Failover | None = None  # made at the first failure: success pays nothing
        position = 0
        # A stream's bytes (kept, not parsed) for token estimates and mid-stream recovery;
        # with estimates on, it also shows the client estimated usage where none came. (A
        # whole answer is in hand before its headers go out: _whole fills it directly.)
        tape: OutputTape | None = None
        if request.stream and self._tokens is not None:
            tape = UsageFiller(send, request, self._tokens)
        elif self._recovering(request):
            tape = OutputTape(send)
        send = tape or send
        # max_attempts bounds the models tried; same-model retries come on top (bounded apiece)
        while position < len(models) and len(ctx.attempts) - (
                failover.retries if failover else 0) < retry.max_attempts:
            pool_model = self._pool[models[position]]
            if failover is not None and failover.skip(pool_model.name, pool_model.config):
                position += 1
                continue
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            attempt = AttemptInfo(index=len(ctx.attempts), model=pool_model.name,
                                  provider=pool_model.provider_name,
                                  provider_type=pool_model.provider.type,
                                  upstream_model=pool_model.upstream_model,
                                  started_at=time.perf_counter())
            ctx.attempts.append(attempt)
            mark = tape.mark() if tape is not None else 0
            failure = await self._attempt(ctx, attempt, pool_model, request, remaining, send, watch)
            attempt.ended_at = time.perf_counter()
            if failure is None:
                await self._estimate_usage(attempt, pool_model, request, tape, mark)
                self._observers.on_attempt_end(ctx, attempt)
                if (attempt.error_after_first_byte and not attempt.client_disconnected
                        and self._recovering(request) and tape is not None):
                    return await self._recover(ctx, request, models[position + 1:], attempt,
                                               tape, send, watch)
                if attempt.client_disconnected:
                    return RequestOutcome(499, "disconnected", pool_model.name)
                if attempt.error_after_first_byte:
                    return RequestOutcome(200, "error", pool_model.name, "stream_interrupted")
                return RequestOutcome(200, "success", pool_model.name)
            attempt.failure = failure
            failover = failover or Failover(retry)
            same, wait = failover.after(pool_model.name, pool_model.config, failure,
                                        probe=pool_model.name in ctx.probes)
            out_of_time = wait > 0 and deadline - time.perf_counter() <= wait
            attempt.retried = same and not out_of_time
            self._observers.on_attempt_end(ctx, attempt)
            log.info("attempt %d on %s failed: %s", attempt.index + 1, pool_model.name, failure.detail)
            if failure.client_fault:
                raise UpstreamRejected(failure.detail, status=failure.status or 400,
                                       code=failure.code, raw_body=failure.client_body)
            if out_of_time:
                break
            position += 0 if same else 1
            if wait:
                await asyncio.sleep(wait)
        failover = failover or Failover(retry)
        raise self._all_failed(failover.failures, failover.context_failure, bool(models))

    def _recovering(self, request: ClientRequest) -> bool:
        return request.stream and self._recovery.mode == "continue"

    async def _estimate_usage(self, attempt: AttemptInfo, pool_model: PoolModel,
                              request: ClientRequest, tape: OutputTape | None, mark: int) -> None:
        """Usage for an answer whose provider reported none, counted from what was sent."""
        if attempt.usage is not None or not attempt.committed or tape is None:
            return
        if self._tokens is None:
            return
        output = tape.output(mark)
        attempt.usage = await self._tokens.estimate(request, output.text + output.tool_text)
        attempt.cost_usd = cost_usd(pool_model.config, attempt.usage)

    async def _recover(self, ctx: RequestContext, request: ClientRequest,
                       candidates: tuple[str, ...], broken: AttemptInfo, tape: OutputTape,
                       send: Send, watch: DisconnectWatch) -> RequestOutcome:
        """Finish a stream that broke after content started on the next candidates, spliced
        into the same client stream; the in-band error if that is not possible."""
        failed = RequestOutcome(200, "error", broken.model, "stream_interrupted")
        output = tape.output()
        error = broken.error_after_first_byte or "stream interrupted"
        if output.tool_calls or output.finished or ctx.recoveries >= self._recovery.max_splices:
            watch.stop()  # before the last message: see DisconnectWatch
            await send({"type": "http.response.body", "body": _sse_error(error), "more_body": False})
            return failed
        ctx.recoveries += 1
        continuation = continuation_request(request, output.text, self._recovery.instruction)
        for position, name in enumerate(candidates):
            pool_model = self._pool[name]
            attempt = AttemptInfo(index=len(ctx.attempts), model=name,
                                  provider=pool_model.provider_name,
                                  provider_type=pool_model.provider.type,
                                  upstream_model=pool_model.upstream_model,
                                  started_at=time.perf_counter(), continuation_of=broken.index)
            ctx.attempts.append(attempt)
            mark = tape.mark()
            splicer = Splicer(send, output.text)
            watch.start()  # the client waits for the continuation: a stream, so watch now
            timeouts = pool_model.provider.timeouts
            failure = await self._attempt(ctx, attempt, pool_model, continuation,
                                          timeouts.first_token_s, splicer, watch)
            attempt.ended_at = time.perf_counter()
            attempt.failure = failure
            if failure is None:
                await self._estimate_usage(attempt, pool_model, continuation, tape, mark)
            self._observers.on_attempt_end(ctx, attempt)
            if failure is not None:
                log.info("continuation on %s failed: %s", name, failure.detail)
                continue
            log.info("stream of %s broke (%s); continued on %s", broken.model, error, name)
            if attempt.client_disconnected:
                return RequestOutcome(499, "disconnected", name)
            if attempt.error_after_first_byte:
                await splicer.release()
                return await self._recover(ctx, request, candidates[position + 1:], attempt,
                                           tape, send, watch)
            return RequestOutcome(200, "success", name)
        watch.stop()
        await send({"type": "http.response.body", "body": _sse_error(error), "more_body": False})
        return failed

    @staticmethod
    def _all_failed(failures: list[tuple[str, UpstreamFailure]],
                    context_failure: UpstreamFailure | None, had_models: bool) -> GatewayError:
        if context_failure is not None and all(f.context_exceeded for _, f in failures):
            return UpstreamRejected("This request exceeds the context window of every available "
                                    "model", status=400, code="context_length_exceeded",
                                    raw_body=None)
        if not had_models:
            return AllAttemptsFailed("No model is available for this request: no provider that "
                                     "could serve it is configured with a key", status=503,
                                     code="no_available_model")
        listing = "; ".join(f"{name}: {failure.detail}" for name, failure in failures)
        if not failures:
            return AllAttemptsFailed("The request deadline passed before any attempt", status=504,
                                     code="deadline_exceeded")
        status = 504 if all(f.kind == "timeout" for _, f in failures) else 502
        return AllAttemptsFailed(f"All {len(failures)} attempts failed: {listing}", status=status)

    async def _attempt(self, ctx: RequestContext, attempt: AttemptInfo, pool_model: PoolModel,
                       request: ClientRequest, remaining: float, send: Send,
                       watch: DisconnectWatch) -> UpstreamFailure | None:
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
            tail = _sse_error(error)
        await send({"type": "http.response.body", "body": tail, "more_body": False})


async def _read_limited(response: httpx.Response) -> bytes:
    body = b""
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) >= _ERROR_BODY_LIMIT:
            break
    return body[:_ERROR_BODY_LIMIT]


_sse_error_encoder = msgspec.json.Encoder()


def _sse_error(message: str) -> bytes:
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

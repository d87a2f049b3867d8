"""The attempt loop: try the plan's models in order, stream the first that answers.

Before the first byte reaches the client every failure is private: the loop retries the same
model or moves on (what to do is :mod:`routegate.middleware.request.failover`'s call) inside one deadline.
After the first byte the answer belongs to the client: a failure ends the stream with an
in-band SSE error event, never a silent truncation that looks like success. One attempt (the
upstream request, the whole answer or the stream relayed) is
:mod:`routegate.middleware.request.attempt`'s.
"""

from __future__ import annotations

import asyncio
import logging
import time

import httpx

from routegate.middleware.asgi_types import Receive, Send
from routegate.middleware.config import GatewayConfig
from routegate.middleware.contracts import AttemptInfo, RequestContext, RequestOutcome, UpstreamFailure
from routegate.middleware.providers.base import ClientRequest
from routegate.middleware.request.attempt import AttemptRunner, sse_error
from routegate.middleware.request.disconnect import DisconnectWatch, uncancel
from routegate.middleware.request.errors import AllAttemptsFailed, GatewayError, UpstreamRejected
from routegate.middleware.request.failover import Failover
from routegate.middleware.request.model_pool import PoolModel, cost_usd
from routegate.middleware.request.observers import Observers
from routegate.middleware.request.recovery import OutputTape, Splicer, continuation_request
from routegate.middleware.request.scrub import Scrubber
from routegate.middleware.request.tokens import TokenEstimator, UsageFiller

__all__ = ["Relay"]

log = logging.getLogger("routegate")


class Relay:
    def __init__(self, config: GatewayConfig, client: httpx.AsyncClient,
                 pool: dict[str, PoolModel], observers: Observers, scrubber: Scrubber) -> None:
        self._config = config
        self._pool = pool
        self._observers = observers
        self._recovery = config.recovery
        # Counts tokens for answers that come without usage (tokenizer loaded on first need).
        self._tokens = TokenEstimator(config.usage) if config.usage.estimate else None
        self._attempts = AttemptRunner(client, observers, scrubber, config.recovery, self._tokens)

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
            failure = await self._attempts.run(ctx, attempt, pool_model, request, remaining,
                                               send, watch)
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
            await send({"type": "http.response.body", "body": sse_error(error), "more_body": False})
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
            failure = await self._attempts.run(ctx, attempt, pool_model, continuation,
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
        await send({"type": "http.response.body", "body": sse_error(error), "more_body": False})
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

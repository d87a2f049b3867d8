"""Noticing that the client went away, so the gateway stops paying the provider for it.

ASGI tells an app about a disconnect only through ``receive()``, which nobody calls while a
request waits for its provider. :class:`DisconnectWatch` calls it in a task of its own and
cancels the request's task when ``http.disconnect`` arrives; the relay tells that
cancellation apart from any other through ``disconnected`` and closes the upstream request.

The task costs a few microseconds, so it starts only once a request has waited
:data:`WATCH_AFTER_S` (answers faster than that are paid for anyway) and at once when a stream
starts relaying. It must be stopped before the last response message goes out: from then on
the server answers ``receive()`` with ``http.disconnect`` for a client that is still there.
"""

from __future__ import annotations

import asyncio

from routegate.middleware.asgi_types import Receive

__all__ = ["WATCH_AFTER_S", "DisconnectWatch", "uncancel"]

WATCH_AFTER_S = 1.0


class DisconnectWatch:
    __slots__ = ("_receive", "_target", "_task", "_timer", "disconnected")

    def __init__(self, receive: Receive) -> None:
        self.disconnected = False
        self._receive = receive
        self._target = asyncio.current_task()
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def start_later(self, delay: float = WATCH_AFTER_S) -> None:
        if self._timer is None and self._task is None:
            self._timer = asyncio.get_running_loop().call_later(delay, self.start)

    def start(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is None and not self.disconnected:
            self._task = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                if self._target is not None:
                    self._target.cancel()
                return

    def stop(self) -> None:
        """No more watching (a later :meth:`start` watches again)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            self._task.cancel()
            self._task = None


def uncancel() -> None:
    """Take back the cancellation a watch delivered, so the request can still be finished."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()

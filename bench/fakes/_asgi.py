"""Small pure-ASGI helpers: body reading, one-shot responses, disconnect watching."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from starlette.types import Message, Receive, Send

__all__ = ["Watcher", "body_message", "read_body", "respond"]


class Watcher:
    """Watches ``receive()`` for ``http.disconnect`` while the response is being written."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._left = False
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        # uvicorn also reports http.disconnect once the response is complete; callers tell
        # the two apart by whether they finished sending.
        self._left = True

    @property
    def disconnected(self) -> bool:
        return self._left

    async def pause(self, seconds: float) -> bool:
        """Sleep ``seconds`` unless the client leaves first; True if it left."""
        if seconds > 0 and not self._task.done():
            await asyncio.wait((self._task,), timeout=seconds)
        return self._task.done()

    def close(self) -> None:
        self._task.cancel()


async def read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None if the client left while sending it."""
    parts: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


async def respond(send: Send, status: int, headers: Sequence[tuple[bytes, bytes]], body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})


def body_message(data: bytes, more: bool) -> Message:
    return {"type": "http.response.body", "body": data, "more_body": more}

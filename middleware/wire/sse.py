"""Server-sent events framing, shared by every stream translator.

Upstream bytes arrive in arbitrary pieces; :class:`SSEFramer` keeps the incomplete tail and
hands back only whole events, each still ending in a blank line, so a passthrough relay can
forward them unchanged. CRLF framing (Gemini) is normalised to LF.
"""

from __future__ import annotations

__all__ = ["SSEFramer", "event_data", "split_events"]


class SSEFramer:
    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> bytes:
        """The complete events received so far (ending in ``\\n\\n``), or ``b""``."""
        buffer = self._pending + data if self._pending else data
        if b"\r\n" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n")
        end = buffer.rfind(b"\n\n")
        if end < 0:
            self._pending = buffer
            return b""
        self._pending = buffer[end + 2:]
        return buffer[: end + 2]

    @property
    def pending(self) -> bytes:
        """An unterminated last event (a stream that ended without its blank line)."""
        return self._pending


def split_events(complete: bytes) -> list[bytes]:
    """The events of a block returned by :meth:`SSEFramer.feed`, without their blank lines."""
    return [event for event in complete[:-2].split(b"\n\n") if event]


def event_data(event: bytes) -> bytes:
    """The joined ``data:`` lines of one event (``b""`` for comments and keep-alives)."""
    return b"\n".join(line[5:].lstrip(b" ") for line in event.split(b"\n")
                      if line.startswith(b"data:"))

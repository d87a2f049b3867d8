"""What the fake saw: recorded requests and long-lived responses (read from any thread)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["RecordedRequest", "StreamRecord"]


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the fake received it."""

    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-case names
    body: Any  # parsed JSON, or None when empty or not JSON
    raw: bytes
    model: str | None  # from the body, or the path for Gemini
    received_at: float  # time.monotonic()


@dataclass(slots=True)
class StreamRecord:
    """One long-lived response: every streaming response, and every ``hang`` fault."""

    path: str
    model: str
    fault: str | None  # class name of the fault applied, if any
    started_at: float  # time.monotonic()
    closed_at: float | None = None  # when the fake finished or noticed the client leave
    chunks_sent: int = 0  # content chunks written
    client_disconnected: bool = False  # the client left before the response was complete
    completed: bool = False  # the last body message went out

"""What a classifier answers, and the wire between the gateway and the sidecar process.

No llama_cpp (and no numpy) import here: the gateway imports this module on its hot path.

Wire format: every message is one frame, a 4-byte big-endian length followed by that many
bytes of msgpack. Messages are msgspec Structs in two tagged unions (``Request`` from the
gateway, ``Reply`` from the sidecar), tagged by the ``type`` field, so one decoder per
direction validates and dispatches in a single C call. Requests carry an ``id``; replies echo
it, so one connection multiplexes many in-flight requests.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Literal

import msgspec

from routegate.middleware.contracts import Classification, Classifier, Complexity, Method

__all__ = [
    "MAX_FRAME_BYTES",
    "Classification",
    "Classifier",
    "ClassifyRequest",
    "ClassifyResult",
    "Complexity",
    "Configure",
    "Configured",
    "ErrorReply",
    "Expired",
    "FrameError",
    "Method",
    "Ping",
    "Pong",
    "Reply",
    "Request",
    "RouteSpec",
    "Stage",
    "decode_reply",
    "decode_request",
    "encode_frame",
    "read_frame",
]

# Which sidecar stage a ClassifyRequest asks: the embedding model or the instruct model.
Stage = Literal["embed", "llm"]


# --- wire messages -------------------------------------------------------------------------


class RouteSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One route (category) as the classifier learns it: a name, a description, examples."""

    name: str
    description: str = ""
    examples: tuple[str, ...] = ()


class Ping(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="ping"):
    id: int


class Configure(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="configure"):
    """Replace the sidecar's routes (sent on connect and on config reload)."""

    id: int
    routes: tuple[RouteSpec, ...]


class ClassifyRequest(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="classify"):
    id: int
    text: str
    # Time the sidecar may still spend, counted from when it reads the frame. A request that
    # cannot finish in time is answered with Expired instead of occupying the model.
    budget_ms: float
    stage: Stage = "embed"


class Pong(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="pong"):
    id: int
    pid: int
    model: str
    categories: tuple[str, ...]
    queue_depth: int
    prefill_tok_per_s: float
    llm_model: str = ""  # the generative stage's model; empty: the sidecar has none


class Configured(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="configured"):
    id: int
    categories: tuple[str, ...]
    examples: int
    llm_model: str = ""  # as in Pong: the generative stage's model, if there is one


class ClassifyResult(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="result"):
    """The model stage's opinion: a probability per category, aligned with ``categories``."""

    id: int
    categories: tuple[str, ...]
    probs: tuple[float, ...]
    tokens: int  # tokens actually embedded (llm stage: prompt tokens prefilled)
    model_ms: float  # inference time
    queue_ms: float  # time spent waiting for the model


class Expired(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="expired"):
    """The budget ran out before the model could start (or could not fit a useful input)."""

    id: int
    reason: str


class ErrorReply(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="error"):
    id: int
    message: str


Request = Ping | Configure | ClassifyRequest
Reply = Pong | Configured | ClassifyResult | Expired | ErrorReply

MAX_FRAME_BYTES = 4 * 1024 * 1024
_HEADER = struct.Struct(">I")
_ENCODER = msgspec.msgpack.Encoder()
_REQUEST_DECODER: msgspec.msgpack.Decoder[Request] = msgspec.msgpack.Decoder(Request)
_REPLY_DECODER: msgspec.msgpack.Decoder[Reply] = msgspec.msgpack.Decoder(Reply)


class FrameError(ValueError):
    """A frame that is too large or does not decode: the connection is unusable."""


def encode_frame(message: Request | Reply) -> bytes:
    body = _ENCODER.encode(message)
    if len(body) > MAX_FRAME_BYTES:
        raise FrameError(f"frame of {len(body)} bytes exceeds {MAX_FRAME_BYTES}")
    return _HEADER.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    """One frame's body. Raises ``asyncio.IncompleteReadError`` at a clean end of stream."""
    header = await reader.readexactly(_HEADER.size)
    (size,) = _HEADER.unpack(header)
    if size > MAX_FRAME_BYTES:
        raise FrameError(f"frame of {size} bytes exceeds {MAX_FRAME_BYTES}")
    return await reader.readexactly(size)


def decode_request(body: bytes) -> Request:
    try:
        return _REQUEST_DECODER.decode(body)
    except msgspec.DecodeError as exc:
        raise FrameError(f"bad request frame: {exc}") from exc


def decode_reply(body: bytes) -> Reply:
    try:
        return _REPLY_DECODER.decode(body)
    except msgspec.DecodeError as exc:
        raise FrameError(f"bad reply frame: {exc}") from exc

"""Wire format: framing and the tagged unions, without a process."""

from __future__ import annotations

import asyncio
import struct

import pytest

from routegate.sidecar.protocol import (
    MAX_FRAME_BYTES,
    ClassifyRequest,
    ClassifyResult,
    Configure,
    FrameError,
    Ping,
    Pong,
    Reply,
    Request,
    RouteSpec,
    decode_reply,
    decode_request,
    encode_frame,
    read_frame,
)


async def _through_stream(frame: bytes) -> bytes:
    reader = asyncio.StreamReader()
    reader.feed_data(frame)
    reader.feed_eof()
    return await read_frame(reader)


async def test_requests_round_trip_through_frames() -> None:
    messages: list[Request] = [
        Ping(id=1),
        ClassifyRequest(id=2, text="héllo 世界", budget_ms=41.5),
        Configure(id=3, routes=(RouteSpec(name="billing", description="d", examples=("a",)),)),
    ]
    for message in messages:
        assert decode_request(await _through_stream(encode_frame(message))) == message


async def test_replies_round_trip_through_frames() -> None:
    messages: list[Reply] = [
        Pong(id=1, pid=7, model="m", categories=("a", "b"), queue_depth=0,
             prefill_tok_per_s=1000.0),
        ClassifyResult(id=2, categories=("a", "b"), probs=(0.25, 0.75), tokens=9, model_ms=3.0,
                       queue_ms=0.1),
    ]
    for message in messages:
        assert decode_reply(await _through_stream(encode_frame(message))) == message


async def test_oversized_and_garbage_frames_are_rejected() -> None:
    with pytest.raises(FrameError):
        await _through_stream(struct.pack(">I", MAX_FRAME_BYTES + 1))
    with pytest.raises(FrameError):
        decode_request(b"\x92\x01\x02")
    with pytest.raises(FrameError):
        decode_reply(encode_frame(Ping(id=1))[4:])  # a request is not a reply


async def test_truncated_stream_is_a_clean_end() -> None:
    frame = encode_frame(Ping(id=1))
    with pytest.raises(asyncio.IncompleteReadError):
        await _through_stream(frame[:-1])

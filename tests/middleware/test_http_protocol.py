"""The HTTP protocol of ``routegate serve``: a response's head travels with its first body
part (one write), and is never held past the event-loop step that produced it. (Every test
that uses ``running_gateway`` serves through this protocol too.)"""

from __future__ import annotations

import asyncio

from routegate.middleware.standalone.http_protocol import _HeadHoldingTransport

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


class _Socket(asyncio.Transport):
    """The real transport's side: records each write (one write is one send())."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: object = None) -> object:
        return "peer" if name == "peername" else default


async def test_head_and_body_go_out_in_one_write() -> None:
    sock = _Socket()
    transport = _HeadHoldingTransport(sock, asyncio.get_running_loop())
    transport.write(HEAD)
    assert sock.writes == []
    transport.write(b"{}")
    transport.write(b"more")
    assert sock.writes == [HEAD + b"{}", b"more"]
    assert transport.get_extra_info("peername") == "peer"  # the rest is the real transport's


async def test_a_head_without_a_body_leaves_at_the_end_of_the_loop_step() -> None:
    sock = _Socket()
    transport = _HeadHoldingTransport(sock, asyncio.get_running_loop())
    transport.write(HEAD)
    await asyncio.sleep(0)  # one loop step
    assert sock.writes == [HEAD]
    transport.write(b"data: 1\n\n")
    assert sock.writes == [HEAD, b"data: 1\n\n"]


async def test_close_sends_a_held_head_first() -> None:
    sock = _Socket()
    transport = _HeadHoldingTransport(sock, asyncio.get_running_loop())
    transport.write(HEAD)
    transport.close()
    assert sock.writes == [HEAD] and sock.closed
    await asyncio.sleep(0)
    assert sock.writes == [HEAD]  # the scheduled flush finds nothing left

"""What the client limits cost per request: uvicorn's protocol with and without them.

Each protocol gets keep-alive requests fed straight into ``data_received`` on one event loop
(no sockets: a transport that only counts bytes) and an ASGI app that answers at once, so
the numbers are the protocol's own per-request CPU time, not the gateway's. Rounds alternate the
two protocols; the medians and their ratio are printed (one machine, one run: read the ratio).

    python -m bench.protocol_bench [--requests 20000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from routegate.middleware.config import ServerConfig
from routegate.middleware.standalone.http_protocol import CoalescingHttpToolsProtocol, protocol_class

REQUEST = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
           b"content-type: application/json\r\ncontent-length: 64\r\n\r\n" + b"x" * 64)
HEAD_THEN_BODY = (REQUEST[:-64], REQUEST[-64:])  # httpx writes the head and body apart


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = 0

    def write(self, data: Any) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name in ("peername", "sockname") else default


async def _app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await receive()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}"})


async def _round(cls: type[asyncio.Protocol], requests: int, split: bool) -> float:
    config = uvicorn.Config(_app, http=cls, log_config=None)
    config.load()
    loop = asyncio.get_running_loop()
    protocol: Any = cls(config, ServerState(), {}, loop)  # type: ignore[call-arg]
    protocol.connection_made(_Transport())
    start = time.process_time()
    for _ in range(requests):
        if split:
            protocol.data_received(HEAD_THEN_BODY[0])
            protocol.data_received(HEAD_THEN_BODY[1])
        else:
            protocol.data_received(REQUEST)
        while not protocol.cycle.response_complete:  # noqa: ASYNC110 (the app runs in a task)
            await asyncio.sleep(0)
    elapsed = time.process_time() - start
    protocol.connection_lost(None)
    return elapsed / requests * 1e6


async def main(requests: int, rounds: int) -> None:
    guarded = protocol_class(ServerConfig())
    for split in (False, True):
        times: dict[str, list[float]] = {"coalescing": [], "guarded": []}
        for i in range(rounds):  # alternate which goes first: no order bias
            order = [("coalescing", CoalescingHttpToolsProtocol), ("guarded", guarded)]
            for name, cls in order if i % 2 else order[::-1]:
                times[name].append(await _round(cls, requests, split))
        base, new = (statistics.median(times[k]) for k in ("coalescing", "guarded"))
        shape = "head and body in two reads" if split else "request in one read"
        print(f"{shape:28s} coalescing {base:6.2f} µs/request, with limits {new:6.2f} "
              f"µs/request, ratio {new / base:.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    import uvloop

    uvloop.run(main(args.requests, args.rounds))

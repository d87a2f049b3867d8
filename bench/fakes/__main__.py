"""Run one fake provider as a standalone server (for benchmarks).

    python -m bench.fakes --kind openai --port 9101 [--chunks 20] [--chunk-delay 0]

Fast path: uvloop + httptools, no access log, log level warning, no request recording
(pass ``--record`` to keep them, e.g. when poking at it by hand).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import get_args

import uvicorn

from bench.fakes._common import Kind
from bench.fakes.faults import Fault
from bench.fakes.provider import FakeProvider
from bench.fakes.server import quiet_fault_logs


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.fakes", description=__doc__.split("\n")[0])
    p.add_argument("--kind", choices=get_args(Kind), required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9101)
    p.add_argument("--chunks", type=int, default=5, help="content chunks per streamed reply")
    p.add_argument("--chunk-delay", type=float, default=0.0, help="seconds before each chunk")
    p.add_argument("--reply-text", default="Hello from the fake provider.")
    p.add_argument(
        "--fault",
        help="default fault for every request, e.g. status:503, slow_chunks:0.05, hang:5",
    )
    p.add_argument("--record", action="store_true", help="keep every request in memory")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    fake = FakeProvider(
        args.kind,
        reply_text=args.reply_text,
        chunks=args.chunks,
        chunk_delay_s=args.chunk_delay,
        record=args.record,
    )
    if args.fault:
        fake.set_default(Fault.parse(args.fault))
    config = uvicorn.Config(
        fake,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        interface="asgi3",
        lifespan="off",
        log_level="warning",
        access_log=False,
        proxy_headers=False,
        server_header=False,
        backlog=4096,
        timeout_graceful_shutdown=1,
    )
    quiet_fault_logs()  # after Config: it (re)configures uvicorn's loggers
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()

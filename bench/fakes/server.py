"""Run any ASGI app on a real uvicorn server in a background thread (for tests).

Streaming, timing and disconnect behaviour only shows over a real socket: httpx's
ASGITransport and Starlette's TestClient buffer the body.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import uvicorn
from starlette.types import ASGIApp

from bench.fakes.faults import FaultAbort

__all__ = ["quiet_fault_logs", "serve_in_thread"]


class _DropFaultAborts(logging.Filter):
    """Drops uvicorn's "Exception in ASGI application" records for injected aborts."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, FaultAbort)


def quiet_fault_logs() -> None:
    """Keep injected connection drops out of uvicorn's error log (idempotent)."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DropFaultAborts) for f in logger.filters):
        logger.addFilter(_DropFaultAborts())


@contextmanager
def serve_in_thread(
    app: ASGIApp,
    host: str = "127.0.0.1",
    *,
    port: int = 0,
    lifespan: Literal["auto", "on", "off"] = "auto",
    startup_timeout: float = 10.0,
    shutdown_timeout: float = 5.0,
    graceful_shutdown_s: int = 1,
    log_level: str = "warning",
    http: type[asyncio.Protocol] | Literal["auto", "h11", "httptools"] = "auto",
) -> Iterator[str]:
    """Serve ``app`` with uvicorn on ``host`` in a daemon thread; yield its base URL.

    The socket is bound before the thread starts (``port=0``: a free port), and the URL is
    yielded once uvicorn has finished startup (lifespan included) and accepts connections.
    On exit the server is asked to stop; requests still running after
    ``graceful_shutdown_s`` are cancelled, and the thread is joined with
    ``shutdown_timeout``. uvicorn's logging config is left alone (``log_config=None``), so
    its records reach pytest's log capture; the access log is off. ``http`` picks uvicorn's
    HTTP protocol (a name, or a protocol class such as the one ``routegate serve`` uses).
    """
    quiet_fault_logs()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        bound_port: int = sock.getsockname()[1]
        config = uvicorn.Config(
            app,
            http=http,
            lifespan=lifespan,
            log_config=None,
            log_level=log_level,
            access_log=False,
            timeout_graceful_shutdown=graceful_shutdown_s,
        )
        server = uvicorn.Server(config)
    except BaseException:
        sock.close()
        raise
    failures: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        # Reported in the caller's thread below; uvicorn raises SystemExit on a failed
        # lifespan startup, which must not vanish with the thread.
        except BaseException as exc:  # noqa: BLE001
            failures.append(exc)

    thread = threading.Thread(target=run, name=f"uvicorn-{host}:{bound_port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    try:
        while not server.started:
            if not thread.is_alive():
                cause = failures[0] if failures else None
                raise RuntimeError(f"uvicorn failed to start: {cause!r}") from cause
            if time.monotonic() > deadline:
                raise TimeoutError(f"uvicorn did not start within {startup_timeout}s")
            time.sleep(0.002)
        url_host = f"[{host}]" if family == socket.AF_INET6 else host
        yield f"http://{url_host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(shutdown_timeout)
        if thread.is_alive():
            server.force_exit = True
            thread.join(shutdown_timeout)
        sock.close()
        if thread.is_alive():
            warnings.warn(
                f"uvicorn thread for {host}:{bound_port} did not stop within {2 * shutdown_timeout}s",
                RuntimeWarning,
                stacklevel=3,
            )

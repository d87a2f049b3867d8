"""A real ``redis-server`` (Debian package ``redis-server``) on a free 127.0.0.1 port, for tests
of the shared state backend: no persistence, its own temp dir, stopped afterwards. It can also
be killed, frozen (SIGSTOP: a Redis that accepts connections but never answers) and restarted
on the same port, for the "Redis down / slow / restarted mid-run" tests.

    with running_redis() as server:
        client = redis.asyncio.Redis.from_url(server.url)
        server.kill(); server.start()         # same port, empty data

As a pytest fixture: ``with running_redis() as server: yield server`` (tests/test_redis_harness.py).

Without ``redis-server`` on PATH the test is skipped, except in CI (env ``CI`` set), where a
missing server is a failure: ``.ci/run`` installs it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

__all__ = ["RedisServer", "free_port", "running_redis"]

BINARY = "redis-server"
START_TIMEOUT_S = 10.0


def free_port() -> int:
    """A loopback port nobody listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.25) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith((b"+PONG", b"-NOAUTH"))  # up (with a password)
    except OSError:
        return False


class RedisServer:
    """One redis-server process at a time on a fixed port; ``start`` after ``kill`` or
    ``stop`` brings a fresh (empty) one up on the same port. ``extra_args`` are appended to
    the command line (e.g. ``--requirepass``)."""

    def __init__(self, binary: str, port: int, workdir: Path, extra_args: Sequence[str] = ()) -> None:
        self.binary = binary
        self.port = port
        self.workdir = workdir
        self.extra_args = tuple(extra_args)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log(self) -> Path:
        return self.workdir / "redis.log"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start redis-server and return once it answers PING (at most START_TIMEOUT_S)."""
        assert not self.running, "already running"
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
                "--logfile", str(self.log), "--daemonize", "no", *self.extra_args]
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers_ping(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self._terminate(signal.SIGKILL)
                tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
                raise RuntimeError(f"redis-server on port {self.port} did not answer PING:\n{tail}")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: Redis vanishes mid-run, connections reset, its data is gone."""
        self._terminate(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within 5 s."""
        self._terminate(signal.SIGTERM)

    def restart(self) -> None:
        """Kill and start again on the same port (empty, as after a crash without persistence)."""
        self.kill()
        self.start()

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """SIGSTOP for the block: connections are accepted by the kernel but nothing answers,
        the way a stalled Redis looks to a client (command timeouts)."""
        assert self.process is not None and self.running
        self.process.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            if self.running:
                self.process.send_signal(signal.SIGCONT)

    def _terminate(self, sig: signal.Signals) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        if sig != signal.SIGKILL:
            process.send_signal(signal.SIGCONT)  # a frozen server cannot handle SIGTERM
        try:
            process.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5.0)


def _binary() -> str:
    """redis-server's path; skips the test without it (fails in CI, where it must exist)."""
    found = shutil.which(BINARY)
    if found:
        return found
    reason = f"{BINARY} is not installed (Debian package redis-server; .ci/run installs it)"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}, and CI is set: it must be there")
    pytest.skip(reason)


@contextmanager
def running_redis(extra_args: Sequence[str] = ()) -> Iterator[RedisServer]:
    """A started redis-server on a free loopback port, in its own temp dir; stopped after."""
    binary = _binary()
    with tempfile.TemporaryDirectory(prefix="routegate-redis-") as workdir:
        for attempt in range(3):  # another process may take the free port before Redis binds it
            server = RedisServer(binary, free_port(), Path(workdir), extra_args)
            try:
                server.start()
                break
            except RuntimeError:
                if attempt == 2:
                    raise
        try:
            yield server
        finally:
            server.stop()

"""Spawn the sidecar as a child process, watch it, restart it with backoff.

``SidecarSupervisor`` runs ``python -m routegate.sidecar.server`` with the given options,
waits until it answers a ping, and restarts it when it exits (0.25 s, doubling to 30 s; the
delay resets once a child has stayed up for a minute). With ``spawn=False`` it only watches
an external, already-running sidecar: :attr:`alive` then reports whether its socket answers.

The gateway keeps serving while the sidecar is down: the client falls back to its fast
stage and reconnects on its own once the new child listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from routegate.sidecar.protocol import (
    FrameError,
    Ping,
    Pong,
    decode_reply,
    encode_frame,
    read_frame,
)

__all__ = ["SidecarSupervisor", "ping"]

log = logging.getLogger("routegate.sidecar.supervisor")


async def ping(socket_path: str | Path, timeout_s: float = 1.0) -> Pong | None:
    """One ping on a fresh connection: the sidecar's Pong, or None if it does not answer."""
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_unix_connection(str(socket_path))
            try:
                writer.write(encode_frame(Ping(id=0)))
                reply = decode_reply(await read_frame(reader))
            finally:
                writer.close()
    except (TimeoutError, OSError, asyncio.IncompleteReadError, FrameError):
        return None
    return reply if isinstance(reply, Pong) else None


class SidecarSupervisor:
    """Owns the sidecar child process (or watches an external one)."""

    def __init__(
        self,
        socket_path: str | Path,
        *,
        spawn: bool = True,
        model_path: str = "",
        threads: int = 1,
        context: int = 512,
        gpu_layers: int = 0,
        max_tokens: int = 64,
        routes_file: str = "",
        weights: str = "default",
        extra_args: Sequence[str] = (),
        startup_timeout_s: float = 120.0,
        backoff_initial_s: float = 0.25,
        backoff_max_s: float = 30.0,
        python: str = sys.executable,
    ) -> None:
        self.socket_path = Path(socket_path)
        self.spawn = spawn
        self.startup_timeout_s = startup_timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        args = [python, "-m", "routegate.sidecar.server", "--socket", str(self.socket_path),
                "--threads", str(threads), "--context", str(context),
                "--gpu-layers", str(gpu_layers), "--max-tokens", str(max_tokens),
                "--weights", weights]
        if model_path:
            args += ["--model", model_path]
        if routes_file:
            args += ["--routes", routes_file]
        self.command: list[str] = [*args, *extra_args]
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self._alive = False
        self._stopping = False
        self._monitor: asyncio.Task[None] | None = None
        self._started = asyncio.Event()

    @property
    def alive(self) -> bool:
        """The child runs (or the external socket answered) and its last ping was answered."""
        if self.spawn and (self.process is None or self.process.returncode is not None):
            return False
        return self._alive

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    async def start(self, wait: bool = True) -> bool:
        """Start (or start watching) the sidecar; with ``wait``, until it answers a ping or
        the startup timeout passes. Returns whether it is alive; never raises for a sidecar
        that fails to come up (the gateway serves degraded meanwhile)."""
        self._stopping = False
        self._started.clear()
        self._monitor = asyncio.create_task(self._supervise(), name="sidecar-supervisor")
        if wait:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.startup_timeout_s):
                    await self._started.wait()
        return self.alive

    async def stop(self, timeout_s: float = 5.0) -> None:
        self._stopping = True
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
            self._monitor = None
        await self._terminate(timeout_s)
        self._alive = False

    async def wait_restarted(self, previous_pid: int | None, timeout_s: float = 60.0) -> bool:
        """Wait until a child other than ``previous_pid`` answers pings (tests, tools)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.alive and self.pid != previous_pid:
                return True
            await asyncio.sleep(0.05)
        return False

    async def _terminate(self, timeout_s: float) -> None:
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(timeout_s):
                await process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    async def _wait_ping(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.returncode is not None:
                return False
            if await ping(self.socket_path, timeout_s=1.0) is not None:
                return True
            await asyncio.sleep(0.1)
        return False

    async def _supervise(self) -> None:
        if not self.spawn:
            await self._watch_external()
            return
        delay = self.backoff_initial_s
        while not self._stopping:
            started_at = time.monotonic()
            env = dict(os.environ)
            self.process = await asyncio.create_subprocess_exec(
                *self.command, stdin=asyncio.subprocess.DEVNULL, env=env
            )
            log.info("sidecar started (pid %d)", self.process.pid)
            self._alive = await self._wait_ping(self.startup_timeout_s)
            if self._alive:
                self._started.set()
            pinger = asyncio.create_task(self._ping_loop())
            code = await self.process.wait()
            pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pinger
            self._alive = False
            if self._stopping:
                return
            if time.monotonic() - started_at > 60.0:
                delay = self.backoff_initial_s
            log.warning("sidecar exited with %s; restarting in %.2f s", code, delay)
            self.restarts += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff_max_s)

    async def _ping_loop(self) -> None:
        failures = 0
        while True:
            await asyncio.sleep(1.0)
            ok = await ping(self.socket_path, timeout_s=2.0) is not None
            failures = 0 if ok else failures + 1
            self._alive = ok or failures < 3

    async def _watch_external(self) -> None:
        while not self._stopping:
            self._alive = await ping(self.socket_path, timeout_s=1.0) is not None
            if self._alive:
                self._started.set()
            await asyncio.sleep(1.0 if self._alive else 0.2)

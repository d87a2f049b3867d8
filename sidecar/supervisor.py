"""Child processes that must stay up: spawn, wait until ready, watch, restart, stop.

:class:`ChildSupervisor` is the one policy for routegate's llama.cpp children (the classifier
sidecar here, the local chat model server in ``middleware/providers/local_model.py``):

- spawn the command (``python -m ...``) and poll its readiness probe every 0.1 s; a child
  that exits first, or is not ready within ``startup_timeout_s``, counts as a crash (a hung
  one is stopped first);
- once ready, optionally keep probing every second (``heartbeat``): three failed probes in a
  row report it not alive (it may be stuck) without restarting it;
- after a crash, restart after 0.25 s, doubling to 30 s; the delay resets once a child has
  stayed up for a minute, so a child that dies right after starting cannot spin;
- stop: SIGTERM, then SIGKILL after a grace period.

With ``command=None`` it only watches an external, already-running service through the probe.
:class:`SidecarSupervisor` runs ``python -m routegate.sidecar.server`` under this policy.

The gateway keeps serving while a child is down: the sidecar client falls back to its fast
stage, local-model requests fall back to the next model of the plan.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from routegate.sidecar.protocol import (
    FrameError,
    Ping,
    Pong,
    decode_reply,
    encode_frame,
    read_frame,
)

__all__ = ["ChildSupervisor", "SidecarSupervisor", "ping"]

log = logging.getLogger("routegate.supervisor")

# Is the child ready / alive? Given the seconds it may take (1 at startup, 2 as heartbeat).
Probe = Callable[[float], Awaitable[bool]]


class ChildSupervisor:
    """Owns one child process (or watches an external service) under the policy above."""

    def __init__(
        self,
        name: str,
        command: Sequence[str] | None,
        probe: Probe,
        *,
        startup_timeout_s: float = 120.0,
        heartbeat: bool = True,
        backoff_initial_s: float = 0.25,
        backoff_max_s: float = 30.0,
        stable_after_s: float = 60.0,
        grace_s: float = 5.0,
    ) -> None:
        self.name = name
        self.command: list[str] | None = None if command is None else list(command)
        self.spawn = command is not None
        self.startup_timeout_s = startup_timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.stable_after_s = stable_after_s
        self.grace_s = grace_s
        self.heartbeat = heartbeat
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.failure: str | None = None  # why the last child did not come up, if it did not
        self._probe = probe
        self._alive = False
        self._stopping = False
        self._monitor: asyncio.Task[None] | None = None
        self._first_attempt = asyncio.Event()

    @property
    def alive(self) -> bool:
        """The child runs and is ready (with ``heartbeat``: its last probes answered); for an
        external service: its last probe answered."""
        if self.spawn and (self.process is None or self.process.returncode is not None):
            return False
        return self._alive

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    async def start(self, wait: bool = True) -> bool:
        """Start supervising; with ``wait``, until the first child is ready, has failed to
        come up (see :attr:`failure`) or the startup timeout passed. Returns :attr:`alive`.
        Never raises for a child that fails: supervision goes on (restarts) until :meth:`stop`."""
        self._stopping = False
        self._first_attempt.clear()
        self._monitor = asyncio.create_task(self._supervise(), name=f"{self.name}-supervisor")
        if wait:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.startup_timeout_s + self.grace_s + 1.0):
                    await self._first_attempt.wait()
        return self.alive

    async def stop(self) -> None:
        """Stop supervising and the child: SIGTERM, SIGKILL after ``grace_s``."""
        self._stopping = True
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
            self._monitor = None
        await self._terminate()
        self._alive = False

    async def wait_restarted(self, previous_pid: int | None, timeout_s: float = 60.0) -> bool:
        """Wait until a child other than ``previous_pid`` is alive (tests, tools)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.alive and self.pid != previous_pid:
                return True
            await asyncio.sleep(0.05)
        return False

    async def _terminate(self) -> None:
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(self.grace_s):
                await process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    async def _wait_ready(self, process: asyncio.subprocess.Process) -> bool:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if process.returncode is not None:
                self.failure = (f"{self.name} process exited with code {process.returncode} "
                                f"during startup")
                return False
            if await self._probe(1.0):
                self.failure = None
                return True
            await asyncio.sleep(0.1)
        self.failure = f"{self.name} did not start within {self.startup_timeout_s}s"
        return False

    async def _supervise(self) -> None:
        if self.command is None:
            await self._watch_external()
            return
        delay = self.backoff_initial_s
        while not self._stopping:
            process = self.process = await asyncio.create_subprocess_exec(
                *self.command, stdin=asyncio.subprocess.DEVNULL)
            log.info("%s started (pid %d)", self.name, process.pid)
            self._alive = await self._wait_ready(process)
            self._first_attempt.set()
            ready_at = time.monotonic()
            if self._alive:
                await self._watch(process)
            else:
                log.error("%s", self.failure)
                await self._terminate()
            self._alive = False
            if self._stopping:
                return
            if self.failure is None and time.monotonic() - ready_at >= self.stable_after_s:
                delay = self.backoff_initial_s
            log.warning("%s exited with %s; restarting in %.2f s", self.name, process.returncode,
                        delay)
            self.restarts += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff_max_s)

    async def _watch(self, process: asyncio.subprocess.Process) -> None:
        """Until the child exits; with ``heartbeat``, probing it every second meanwhile."""
        if not self.heartbeat:
            await process.wait()
            return
        pinger = asyncio.create_task(self._heartbeat())
        try:
            await process.wait()
        finally:
            pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pinger

    async def _heartbeat(self) -> None:
        failures = 0
        while True:
            await asyncio.sleep(1.0)
            ok = await self._probe(2.0)
            failures = 0 if ok else failures + 1
            self._alive = ok or failures < 3

    async def _watch_external(self) -> None:
        while not self._stopping:
            self._alive = await self._probe(1.0)
            if self._alive:
                self._first_attempt.set()
            await asyncio.sleep(1.0 if self._alive else 0.2)


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


class SidecarSupervisor(ChildSupervisor):
    """Owns the classifier sidecar process (or, with ``spawn=False``, watches an external
    one): ready and alive when its socket answers a ping."""

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
        llm_model_path: str = "",
        llm_gpu_layers: int = 0,
        llm_context: int = 2048,
        llm_max_tokens: int = 128,
        extra_args: Sequence[str] = (),
        startup_timeout_s: float = 120.0,
        backoff_initial_s: float = 0.25,
        backoff_max_s: float = 30.0,
        python: str = sys.executable,
    ) -> None:
        self.socket_path = Path(socket_path)
        args = [python, "-m", "routegate.sidecar.server", "--socket", str(self.socket_path),
                "--threads", str(threads), "--context", str(context),
                "--gpu-layers", str(gpu_layers), "--max-tokens", str(max_tokens),
                "--weights", weights]
        if model_path:
            args += ["--model", model_path]
        if routes_file:
            args += ["--routes", routes_file]
        if llm_model_path:
            args += ["--llm-model", llm_model_path, "--llm-gpu-layers", str(llm_gpu_layers),
                     "--llm-context", str(llm_context), "--llm-max-tokens", str(llm_max_tokens)]
        super().__init__(
            "sidecar", [*args, *extra_args] if spawn else None, self._ping,
            startup_timeout_s=startup_timeout_s, backoff_initial_s=backoff_initial_s,
            backoff_max_s=backoff_max_s)

    async def _ping(self, timeout_s: float) -> bool:
        return await ping(self.socket_path, timeout_s=timeout_s) is not None

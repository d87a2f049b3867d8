"""The one supervisor of routegate's child processes, with tiny real children.

A child is a ``python -c`` script that listens on a Unix socket (ready = the socket accepts);
the restart policy is read from the supervisor's own log lines, never from timings.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from routegate.sidecar.supervisor import ChildSupervisor

CHILD = """
import os, signal, socket, sys, time
path, mode = sys.argv[1], sys.argv[2]
if mode == "crash":
    sys.exit(3)
if mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if mode != "hang":
    if os.path.exists(path):
        os.unlink(path)
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen()
    while True:
        server.accept()[0].close()
time.sleep(600)
"""


def _probe(path: Path) -> Callable[[float], Awaitable[bool]]:
    async def accepts(timeout_s: float) -> bool:
        try:
            async with asyncio.timeout(timeout_s):
                _, writer = await asyncio.open_unix_connection(str(path))
        except (OSError, TimeoutError):
            return False
        writer.close()
        return True
    return accepts


@pytest.fixture
async def make(tmp_path: Path, caplog: pytest.LogCaptureFixture
               ) -> AsyncIterator[Callable[..., ChildSupervisor]]:
    """Builds supervisors of a CHILD in the given mode; stops them all at the end."""
    caplog.set_level(logging.WARNING, logger="routegate.supervisor")
    built: list[ChildSupervisor] = []

    def build(mode: str, **kwargs: Any) -> ChildSupervisor:
        path = tmp_path / "c.sock"
        built.append(ChildSupervisor("child", [sys.executable, "-c", CHILD, str(path), mode],
                                     _probe(path), **kwargs))
        return built[-1]
    yield build
    for supervisor in built:
        await supervisor.stop()


def _delays(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage().rsplit("restarting in ", 1)[1] for r in caplog.records
            if "restarting in" in r.getMessage()]


async def _until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_restarts_a_killed_child_and_resets_the_backoff_once_it_was_stable(
        make: Callable[..., ChildSupervisor], caplog: pytest.LogCaptureFixture) -> None:
    supervisor = make("serve", backoff_initial_s=0.05, stable_after_s=3600.0)
    assert await supervisor.start()
    for round_ in range(1, 4):
        pid = supervisor.pid
        assert pid is not None
        supervisor.process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        assert await supervisor.wait_restarted(pid, timeout_s=30.0)
        assert supervisor.restarts == round_ and supervisor.failure is None
    # Each child died before it had been up for stable_after_s: the delay doubled.
    assert _delays(caplog) == ["0.05 s", "0.10 s", "0.20 s"]

    caplog.clear()
    supervisor.stable_after_s = 0.0  # now every child counts as having been stable
    for _ in range(2):
        pid = supervisor.pid
        supervisor.process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        assert await supervisor.wait_restarted(pid, timeout_s=30.0)
    assert _delays(caplog) == ["0.05 s", "0.05 s"]


async def test_a_crashing_child_is_restarted_with_doubling_capped_backoff(
        make: Callable[..., ChildSupervisor], caplog: pytest.LogCaptureFixture) -> None:
    supervisor = make("crash", backoff_initial_s=0.05, backoff_max_s=0.2)
    assert not await supervisor.start()  # returns at the first child's failure
    assert supervisor.failure == "child process exited with code 3 during startup"
    await _until(lambda: supervisor.restarts >= 5)
    assert _delays(caplog)[:5] == ["0.05 s", "0.10 s", "0.20 s", "0.20 s", "0.20 s"]
    assert not supervisor.alive


async def test_a_child_that_never_gets_ready_is_stopped_and_replaced(
        make: Callable[..., ChildSupervisor]) -> None:
    supervisor = make("hang", startup_timeout_s=0.5, backoff_initial_s=0.05)
    assert not await supervisor.start(wait=False)
    await _until(lambda: supervisor.process is not None)
    first = supervisor.process
    assert first is not None
    await _until(lambda: supervisor.restarts >= 1)
    assert supervisor.failure == "child did not start within 0.5s"
    assert first.returncode == -signal.SIGTERM  # the hung one was ended, not left behind


async def test_stop_kills_a_child_that_ignores_sigterm(
        make: Callable[..., ChildSupervisor]) -> None:
    supervisor = make("stubborn", grace_s=0.3)
    assert await supervisor.start()
    process = supervisor.process
    assert process is not None
    await supervisor.stop()
    assert process.returncode == -signal.SIGKILL
    assert not supervisor.alive and supervisor.process is None


async def test_stop_ends_a_cooperative_child_with_sigterm(
        make: Callable[..., ChildSupervisor]) -> None:
    supervisor = make("serve")
    assert await supervisor.start()
    process = supervisor.process
    assert process is not None
    await supervisor.stop()
    assert process.returncode == -signal.SIGTERM
    assert supervisor.restarts == 0  # a stop is not a crash


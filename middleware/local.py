"""Starts, watches and stops the local llama.cpp chat server (provider type ``local``).

The model runs in a child process so that generation (CPU-bound, seconds long) never blocks
the gateway's event loop. If the child dies it is restarted with exponential backoff on the
same port, so the adapter's base URL stays valid; meanwhile requests fall back as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
import time

import httpx

from routegate.middleware.config import LocalConfig

__all__ = ["LocalModelServer"]

log = logging.getLogger("routegate")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LocalModelServer:
    def __init__(self, config: LocalConfig, port: int | None = None) -> None:
        self._config = config
        self.port = port or _free_port()
        self._process: asyncio.subprocess.Process | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self.restarts = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.returncode is None

    def _command(self) -> list[str]:
        config = self._config
        return [sys.executable, "-m", "routegate.sidecar.local_llm", "--port", str(self.port),
                "--model", config.model_path, "--threads", str(config.threads),
                "--context-size", str(config.context_size), "--gpu-layers", str(config.gpu_layers),
                "--max-tokens", str(config.max_tokens)]

    async def start(self) -> None:
        """Spawn the child and wait until it answers /health (or fail with its reason)."""
        await self._spawn()
        self._supervisor = asyncio.create_task(self._supervise())

    async def _spawn(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            *self._command(), stdin=asyncio.subprocess.DEVNULL)
        deadline = time.monotonic() + self._config.startup_timeout_s
        async with httpx.AsyncClient(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self._process.returncode is not None:
                    raise RuntimeError(f"local model process exited with code "
                                       f"{self._process.returncode} during startup")
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(f"http://127.0.0.1:{self.port}/health")).status_code == 200:
                        log.info("local model serving on %s", self.base_url)
                        return
                await asyncio.sleep(0.1)
        await self._terminate()
        raise RuntimeError(f"local model did not start within {self._config.startup_timeout_s}s")

    async def _supervise(self) -> None:
        backoff = 0.5
        while not self._stopping:
            assert self._process is not None
            code = await self._process.wait()
            if self._stopping:
                return
            log.warning("local model process exited with code %s; restarting in %.1fs", code, backoff)
            await asyncio.sleep(backoff)
            try:
                await self._spawn()
                self.restarts += 1
                backoff = 0.5
            except RuntimeError as exc:
                log.error("local model restart failed: %s", exc)
                backoff = min(backoff * 2, 30.0)

    async def _terminate(self) -> None:
        process = self._process
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 5.0)
        except TimeoutError:
            process.kill()
            await process.wait()

    async def stop(self) -> None:
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        await self._terminate()

"""Starts, watches and stops the local llama.cpp chat server (provider type ``local``).

The model runs in a child process so that generation (CPU-bound, seconds long) never blocks
the gateway's event loop. The child runs under the sidecar's :class:`ChildSupervisor` (one
restart policy for both llama.cpp children): if it dies it is restarted with backoff on the
same port, so the adapter's base URL stays valid; meanwhile requests fall back as usual.
"""

from __future__ import annotations

import logging
import socket
import sys

import httpx

from routegate.middleware.config import LocalConfig
from routegate.sidecar.supervisor import ChildSupervisor

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
        # No heartbeat: the server answers /health between generations only, and a long
        # generation must not make the gateway look unready.
        self.supervisor = ChildSupervisor(
            "local model", self._command(), self._healthy,
            startup_timeout_s=config.startup_timeout_s, heartbeat=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def alive(self) -> bool:
        return self.supervisor.alive

    @property
    def restarts(self) -> int:
        return self.supervisor.restarts

    def _command(self) -> list[str]:
        config = self._config
        return [sys.executable, "-m", "routegate.sidecar.local_llm", "--port", str(self.port),
                "--model", config.model_path, "--threads", str(config.threads),
                "--context-size", str(config.context_size), "--gpu-layers", str(config.gpu_layers),
                "--max-tokens", str(config.max_tokens)]

    async def _healthy(self, timeout_s: float) -> bool:
        try:
            async with httpx.AsyncClient(timeout=timeout_s) as client:
                response = await client.get(f"http://127.0.0.1:{self.port}/health")
        except httpx.TransportError:
            return False
        return response.status_code == 200

    async def start(self) -> None:
        """Spawn the child and wait until it answers /health (or fail with its reason)."""
        if not await self.supervisor.start():
            reason = self.supervisor.failure or "local model did not start"
            await self.supervisor.stop()
            raise RuntimeError(reason)
        log.info("local model serving on %s", self.base_url)

    async def stop(self) -> None:
        await self.supervisor.stop()

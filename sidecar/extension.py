"""Runs the classifier sidecar for a gateway (``[classifier] mode = "sidecar"``).

Started before the other extensions: it spawns and supervises the sidecar process, then puts a
:class:`SidecarClassifier` in the gateway's classifier slot. The gateway never waits on it past
``startup_wait_s``: until the sidecar answers, requests are classified by the fast stage and
marked ``method="fallback"``; /readyz shows its state.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from routegate.middleware.config import ClassifierConfig
from routegate.sidecar.client import SidecarClassifier
from routegate.sidecar.heuristic import HeuristicClassifier
from routegate.sidecar.routes import route_specs
from routegate.sidecar.supervisor import SidecarSupervisor

if TYPE_CHECKING:
    from routegate.middleware.gateway import Gateway

__all__ = ["SidecarExtension"]


class SidecarExtension:
    def __init__(self, config: ClassifierConfig) -> None:
        self._config = config
        self._tempdir: str | None = None
        self.supervisor: SidecarSupervisor | None = None
        self.client: SidecarClassifier | None = None

    async def start(self, gateway: Gateway) -> None:
        config = self._config
        socket_path = config.socket_path
        if not socket_path:
            self._tempdir = tempfile.mkdtemp(prefix="routegate-")
            socket_path = str(Path(self._tempdir) / "sidecar.sock")
        self.supervisor = SidecarSupervisor(
            socket_path, spawn=config.spawn, model_path=config.model_path, weights=config.weights,
            threads=config.threads, context=config.context_size, gpu_layers=config.gpu_layers,
            max_tokens=config.max_tokens, startup_timeout_s=config.startup_timeout_s,
            llm_model_path=config.llm_model_path, llm_gpu_layers=config.llm_gpu_layers,
            llm_context=config.llm_context_size, llm_max_tokens=config.llm_max_tokens)
        await self.supervisor.start(wait=False)
        categories = gateway.config.categories
        self.client = SidecarClassifier(
            socket_path, budget_ms=config.budget_ms, categories=categories,
            default_category=config.default_category,
            fallback=HeuristicClassifier(categories, config.default_category, method="fallback"),
            routes=route_specs(gateway.config.routes, categories), weights=config.weights,
            cache_size=config.cache_size, max_in_flight=config.max_in_flight,
            llm_mode=config.llm_mode if config.llm_model_path else "off",
            llm_escalate_below=config.llm_escalate_below)
        await self.client.start()
        await self.client.wait_ready(config.startup_wait_s)
        gateway.classifier = self.client
        gateway.status["classifier"] = self.status

    def status(self) -> dict[str, object]:
        return {"mode": "sidecar",
                "ready": self.client is not None and self.client.ready,
                "llm_model": "" if self.client is None else self.client.llm_model,
                "sidecar_alive": self.supervisor is not None and self.supervisor.alive,
                "restarts": 0 if self.supervisor is None else self.supervisor.restarts}

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.close()
        if self.supervisor is not None:
            await self.supervisor.stop()
        if self._tempdir is not None:
            shutil.rmtree(self._tempdir, ignore_errors=True)

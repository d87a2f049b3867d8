"""Runs the classifier sidecar for a gateway (``[classifier] mode = "sidecar"``).

Started before the other extensions: it spawns and supervises the sidecar process, then puts a
:class:`SidecarClassifier` in the gateway's classifier slot. The gateway never waits on it past
``startup_wait_s``: until the sidecar answers, requests are classified by the fast stage and
marked ``method="fallback"``; /readyz shows its state.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol

from routegate.middleware.contracts import ExtensionHost
from routegate.sidecar.client import SidecarClassifier
from routegate.sidecar.heuristic import HeuristicClassifier
from routegate.sidecar.protocol import RouteSpec
from routegate.sidecar.supervisor import SidecarSupervisor

__all__ = ["ClassifierSettings", "SidecarExtension"]


class ClassifierSettings(Protocol):
    """The ``[classifier]`` section (``middleware.config.ClassifierConfig`` has this shape)."""

    @property
    def budget_ms(self) -> float: ...
    @property
    def default_category(self) -> str: ...
    @property
    def escalate_below(self) -> float: ...
    @property
    def escalate_doubtful(self) -> bool: ...
    @property
    def socket_path(self) -> str: ...
    @property
    def spawn(self) -> bool: ...
    @property
    def model_path(self) -> str: ...
    @property
    def weights(self) -> Literal["default", "ncfree"]: ...
    @property
    def threads(self) -> int: ...
    @property
    def context_size(self) -> int: ...
    @property
    def gpu_layers(self) -> int: ...
    @property
    def max_tokens(self) -> int: ...
    @property
    def cache_size(self) -> int: ...
    @property
    def max_in_flight(self) -> int: ...
    @property
    def startup_wait_s(self) -> float: ...
    @property
    def startup_timeout_s(self) -> float: ...
    @property
    def llm_model_path(self) -> str: ...
    @property
    def llm_gpu_layers(self) -> int: ...
    @property
    def llm_context_size(self) -> int: ...
    @property
    def llm_max_tokens(self) -> int: ...
    @property
    def llm_mode(self) -> Literal["escalate", "always"]: ...
    @property
    def llm_escalate_below(self) -> float: ...


class SidecarExtension:
    """``categories`` and ``routes`` (the specs the sidecar learns) come from the gateway's
    config; the gateway's wiring (``middleware/extensions.py``) passes them."""

    def __init__(self, config: ClassifierSettings, *, categories: Sequence[str],
                 routes: tuple[RouteSpec, ...]) -> None:
        self._config = config
        self._categories = tuple(categories)
        self._routes = routes
        self._tempdir: str | None = None
        self.supervisor: SidecarSupervisor | None = None
        self.client: SidecarClassifier | None = None

    async def start(self, gateway: ExtensionHost) -> None:
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
        categories = self._categories
        self.client = SidecarClassifier(
            socket_path, budget_ms=config.budget_ms, categories=categories,
            default_category=config.default_category,
            fallback=HeuristicClassifier(categories, config.default_category, method="fallback"),
            routes=self._routes, weights=config.weights,
            cache_size=config.cache_size, max_in_flight=config.max_in_flight,
            llm_mode=config.llm_mode if config.llm_model_path else "off",
            llm_escalate_below=config.llm_escalate_below,
            doubtful_below=config.escalate_below if config.escalate_doubtful else None)
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

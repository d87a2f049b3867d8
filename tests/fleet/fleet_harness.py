"""Several real ``routegate serve`` processes sharing one real redis-server, in front of one
fake provider: the replicas of a production deployment, on 127.0.0.1.

    with running_fleet(tmp_path, redis_server, fake_url, extra={...}) as fleet:
        fleet.client(0, key)        # an openai.AsyncOpenAI pointed at replica 0
        fleet.admin(2, "GET", "/admin/stats")
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
import openai

from tests.conftest import pool_raw
from tests.redis_harness import RedisServer, free_port

__all__ = ["ADMIN_TOKEN", "Fleet", "client_entry", "running_fleet"]

ADMIN_TOKEN = "fleet-admin-token-secret"
START_TIMEOUT_S = 60.0


def client_entry(key: str, **limits: float) -> dict[str, Any]:
    """A ``[clients.NAME]`` table for ``key``."""
    return {"key_sha256": hashlib.sha256(key.encode()).hexdigest(), **limits}


@dataclass
class Fleet:
    urls: list[str]
    processes: list[subprocess.Popen[bytes]]
    config_path: Path
    env: dict[str, str]
    logs: list[Path] = field(default_factory=list)

    def client(self, replica: int, key: str = "none") -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.urls[replica] + "/v1", api_key=key,
                                  max_retries=0, timeout=30.0)

    def admin(self, replica: int, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, self.urls[replica] + path, timeout=10.0,
                             headers={"authorization": f"Bearer {ADMIN_TOKEN}"}, **kwargs)

    def readyz(self, replica: int) -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(self.urls[replica] + "/readyz", timeout=5.0).json()
        return body

    def wait_until(self, check: Any, what: str, timeout_s: float = 10.0) -> Any:
        """Poll ``check()`` until it returns something truthy (bounded); its value."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {timeout_s} s: {what} (last: {value!r})")
            time.sleep(0.05)

    def log_text(self) -> str:
        return "\n".join(log.read_text(errors="replace") for log in self.logs if log.exists())


@contextmanager
def running_fleet(tmp_path: Path, redis_server: RedisServer, provider_urls: dict[str, str], *,
                  replicas: int = 3, extra: dict[str, Any] | None = None,
                  models: dict[str, dict[str, Any]] | None = None,
                  state: dict[str, Any] | None = None) -> Iterator[Fleet]:
    """Start ``replicas`` gateways on one config with ``[state] backend = "redis"``."""
    raw = pool_raw(provider_urls, models=models, extra={
        "admin": {"token_env": "ROUTEGATE_FLEET_ADMIN_TOKEN"},
        "state": {"backend": "redis", "url_env": "ROUTEGATE_FLEET_REDIS_URL",
                  "key_prefix": f"rg-test-{os.getpid()}:", "flush_interval_s": 0.05,
                  "resync_interval_s": 0.5, "heartbeat_ttl_s": 2.0,
                  # 2 cores run three replicas and the test: loop lag, not Redis, is slow
                  "command_timeout_s": 2.0, **(state or {})},
        **(extra or {})})
    config_path = tmp_path / "gateway.toml"
    config_path.write_bytes(msgspec.toml.encode(raw))
    env = {**os.environ, "ROUTEGATE_FLEET_ADMIN_TOKEN": ADMIN_TOKEN,
           "ROUTEGATE_FLEET_REDIS_URL": redis_server.url}
    routegate = str(Path(sys.executable).parent / "routegate")
    fleet = Fleet([], [], config_path, env)
    try:
        for index in range(replicas):
            port = free_port()
            log = tmp_path / f"replica-{index}.log"
            fleet.logs.append(log)
            with log.open("wb") as out:
                fleet.processes.append(subprocess.Popen(
                    [routegate, "serve", "--config", str(config_path), "--port", str(port)],
                    env={**env, "ROUTEGATE_STATE_REPLICA_HINT": str(index)}, stdout=out,
                    stderr=subprocess.STDOUT))
            fleet.urls.append(f"http://127.0.0.1:{port}")
        for index, url in enumerate(fleet.urls):
            _wait_ready(url, fleet.processes[index], fleet)
        yield fleet
    finally:
        for process in fleet.processes:
            process.terminate()
        for process in fleet.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def _wait_ready(url: str, process: subprocess.Popen[bytes], fleet: Fleet) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"replica exited ({process.returncode}):\n{fleet.log_text()}")
        try:
            if httpx.get(url + "/readyz", timeout=1.0).json().get("status") == "ready":
                return
        except (httpx.TransportError, ValueError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"replica at {url} not ready:\n{fleet.log_text()}")

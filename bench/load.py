"""Load for bench/gateway_bench.py: wrk (or a bounded Python loop) against one URL, and the
CPU time a process spent per request, read from /proc (user + system)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

__all__ = ["Result", "cpu_seconds", "measure", "pinned"]

TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float | None = None
    errors: int = 0
    provider_cpu_us: float | None = None
    requests: int = 0


def pinned(cpus: frozenset[int] | None) -> Callable[[], None] | None:
    """A ``preexec_fn`` pinning the child (and so every thread it starts) to ``cpus``."""
    if cpus is None:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def _wrk(url: str, body: str, connections: int, seconds: float,
         cpus: frozenset[int] | None = None) -> Result:
    escaped = body.replace("\\", "\\\\").replace('"', '\\"')
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(f'wrk.method = "POST"\nwrk.body = "{escaped}"\n'
                     'wrk.headers["Content-Type"] = "application/json"\n'
                     'wrk.headers["Authorization"] = "Bearer bench"\n')
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
                          "-s", script.name, url], capture_output=True, text=True, check=True,
                         preexec_fn=pinned(cpus)).stdout
    os.unlink(script.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return Result("", rps, _wrk_ms(out, "50%"), _wrk_ms(out, "99%"),
                  errors=int(errors.group(1)) if errors else 0, requests=requests)


def _wrk_ms(out: str, percentile: str) -> float:
    value, unit = re.search(rf"{percentile}\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def _python_load(url: str, body: str, connections: int, seconds: float,
                 cpus: frozenset[int] | None = None) -> Result:
    """Bounded fallback when wrk is not installed: ``connections`` workers for ``seconds``.

    It runs in this process, which ``main`` already pinned to the load CPU, so ``cpus`` is unused.
    """

    async def run() -> Result:
        latencies: list[float] = []
        errors = 0
        limits = httpx.Limits(max_connections=connections)
        async with httpx.AsyncClient(limits=limits, timeout=30.0) as client:
            stop = time.monotonic() + seconds

            async def worker() -> None:
                nonlocal errors
                while time.monotonic() < stop:
                    started = time.perf_counter()
                    response = await client.post(url, content=body, headers={
                        "content-type": "application/json", "authorization": "Bearer bench"})
                    latencies.append(time.perf_counter() - started)
                    errors += response.status_code != 200

            began = time.monotonic()
            await asyncio.gather(*(worker() for _ in range(connections)))
            elapsed = time.monotonic() - began
        latencies.sort()
        return Result("", len(latencies) / elapsed, latencies[len(latencies) // 2] * 1000,
                      latencies[int(len(latencies) * 0.99)] * 1000, errors=errors,
                      requests=len(latencies))

    return asyncio.run(run())


def measure(name: str, url: str, body: str, connections: int, seconds: float,
            gateway_pid: int | None, provider_pid: int | None = None, *, warm_up: bool = True,
            load_cpus: frozenset[int] | None = None) -> Result:
    load = _wrk if shutil.which("wrk") else _python_load
    if warm_up:
        load(url, body, connections, 1.0, load_cpus)  # warm up connections and caches
    cpu_before = cpu_seconds(gateway_pid) if gateway_pid else 0.0
    provider_before = cpu_seconds(provider_pid) if provider_pid else 0.0
    result = load(url, body, connections, seconds, load_cpus)
    result.name = name
    requests = max(1.0, result.requests or result.rps * seconds)
    if gateway_pid:
        result.cpu_us = (cpu_seconds(gateway_pid) - cpu_before) / requests * 1e6
    if provider_pid:
        result.provider_cpu_us = (cpu_seconds(provider_pid) - provider_before) / requests * 1e6
    return result

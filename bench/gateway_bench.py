"""Gateway overhead: direct-to-provider against through-routegate, side by side, in one run.

A fast fake OpenAI provider and the gateway run as separate processes on 127.0.0.1; a load
generator (wrk when installed, else a bounded Python loop) drives each scenario for a few
seconds. Printed per scenario: requests/s, p50/p99 latency, the latency routegate adds, and
routegate's CPU-µs per request read from /proc (user + system time of the gateway process),
with ratios to the direct baseline measured in the same run. The fake provider's own CPU-µs
per request is printed too: it is a bare uvicorn app, so it shows what one HTTP exchange costs
on this machine (syscalls included), a floor to read the gateway's number against; ``gw/fake``
is their ratio, the steadiest number on a shared machine (both swell alike under contention).

    python -m bench.gateway_bench [--seconds 5] [--transports fast,aiohttp,httpx]

Transports: ``fast`` (routegate's own, middleware/transport.py, the default), ``aiohttp``
(httpx-aiohttp), ``httpx`` (httpx's default, httpcore).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

TICKS = os.sysconf("SC_CLK_TCK")


def _body(model: str, stream: bool) -> str:
    tail = ',"stream":true' if stream else ""
    return ('{"model":"' + model + '","messages":[{"role":"user","content":"Write one sentence '
            'about routing."}],"max_tokens":64' + tail + "}")


@dataclass
class Result:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float | None = None
    errors: int = 0
    provider_cpu_us: float | None = None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def _wait_http(url: str, process: subprocess.Popen[bytes], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


@contextmanager
def _process(command: list[str], probe: str) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_http(probe, process)
        yield process
    finally:
        process.terminate()
        process.wait(10)


def _config(fake_url: str, transport: str) -> str:
    return f"""
[server]
log_level = "warning"
upstream_transport = "{transport}"
[providers.fake]
type = "openai"
base_url = "{fake_url}/v1"
api_key_env = "ROUTEGATE_BENCH_KEY"
[models.bench]
provider = "fake"
upstream = "bench-up"
capabilities = {{ chat = 0.9 }}
"""


def _wrk(url: str, body: str, connections: int, seconds: float) -> Result:
    escaped = body.replace("\\", "\\\\").replace('"', '\\"')
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(f'wrk.method = "POST"\nwrk.body = "{escaped}"\n'
                     'wrk.headers["Content-Type"] = "application/json"\n'
                     'wrk.headers["Authorization"] = "Bearer bench"\n')
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
                          "-s", script.name, url], capture_output=True, text=True, check=True).stdout
    os.unlink(script.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return Result("", rps, _wrk_ms(out, "50%"), _wrk_ms(out, "99%"),
                  errors=int(errors.group(1)) if errors else 0)


def _wrk_ms(out: str, percentile: str) -> float:
    value, unit = re.search(rf"{percentile}\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def _python_load(url: str, body: str, connections: int, seconds: float) -> Result:
    """Bounded fallback when wrk is not installed: ``connections`` workers for ``seconds``."""

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
                      latencies[int(len(latencies) * 0.99)] * 1000, errors=errors)

    return asyncio.run(run())


def measure(name: str, url: str, body: str, connections: int, seconds: float,
            gateway_pid: int | None, provider_pid: int | None = None) -> Result:
    load = _wrk if shutil.which("wrk") else _python_load
    load(url, body, connections, 1.0)  # warm up connections and caches
    cpu_before = _cpu_seconds(gateway_pid) if gateway_pid else 0.0
    provider_before = _cpu_seconds(provider_pid) if provider_pid else 0.0
    result = load(url, body, connections, seconds)
    result.name = name
    requests = max(1.0, result.rps * seconds)
    if gateway_pid:
        result.cpu_us = (_cpu_seconds(gateway_pid) - cpu_before) / requests * 1e6
    if provider_pid:
        result.provider_cpu_us = (_cpu_seconds(provider_pid) - provider_before) / requests * 1e6
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--transports", default="fast,aiohttp,httpx")
    args = parser.parse_args(argv)
    os.environ["ROUTEGATE_BENCH_KEY"] = "bench"
    fake_port = _free_port()
    fake_url = f"http://127.0.0.1:{fake_port}"
    fake_cmd = [sys.executable, "-m", "bench.fakes", "--kind", "openai", "--port", str(fake_port),
                "--chunks", "20"]
    print(f"load generator: {'wrk' if shutil.which('wrk') else 'python loop'}; "
          f"{args.seconds:g}s per scenario; 2 cores shared by load, fake provider and gateway")
    results: list[Result] = []
    with _process(fake_cmd, fake_url + "/v1/models") as fake:
        direct = fake_url + "/v1/chat/completions"
        for connections in (16, 64):
            results.append(measure(f"direct  json  c{connections}", direct,
                                   _body("bench-up", False), connections,
                                   args.seconds, None, fake.pid))
        results.append(measure("direct  sse20 c16", direct, _body("bench-up", True), 16,
                               args.seconds, None, fake.pid))
        for transport in args.transports.split(","):
            config = Path(tempfile.mkdtemp()) / "gateway.toml"
            config.write_text(_config(fake_url, transport))
            port = _free_port()
            gateway_cmd = [sys.executable, "-m", "routegate.middleware.cli", "serve", "--config",
                           str(config), "--port", str(port)]
            with _process(gateway_cmd, f"http://127.0.0.1:{port}/healthz") as gateway:
                url = f"http://127.0.0.1:{port}/v1/chat/completions"
                for connections in (16, 64):
                    results.append(measure(f"{transport:7} json  c{connections}", url,
                                           _body("bench", False), connections,
                                           args.seconds, gateway.pid, fake.pid))
                results.append(measure(f"{transport:7} sse20 c16", url,
                                       _body("bench", True), 16, args.seconds, gateway.pid,
                                       fake.pid))
    _report(results)
    return 0


def _report(results: list[Result]) -> None:
    baseline = {r.name.split()[1] + r.name.split()[2]: r for r in results if r.name.startswith("direct")}
    print(f"\n{'scenario':22} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'added p50':>10} "
          f"{'rps/direct':>10} {'CPU-µs/req':>11} {'fake CPU-µs':>12} {'gw/fake':>8} {'non-2xx':>8}")
    for r in results:
        base = baseline[r.name.split()[1] + r.name.split()[2]]
        added = "" if r is base else f"{r.p50_ms - base.p50_ms:+.2f}"
        ratio = "" if r is base else f"{r.rps / base.rps:.2f}"
        cpu = "" if r.cpu_us is None else f"{r.cpu_us:.0f}"
        fake = "" if r.provider_cpu_us is None else f"{r.provider_cpu_us:.0f}"
        per_fake = ("" if r.cpu_us is None or not r.provider_cpu_us
                    else f"{r.cpu_us / r.provider_cpu_us:.2f}")
        print(f"{r.name:22} {r.rps:8.0f} {r.p50_ms:8.2f} {r.p99_ms:8.2f} {added:>10} {ratio:>10} "
              f"{cpu:>11} {fake:>12} {per_fake:>8} {r.errors:8d}")
    for transport in sorted({r.name.split()[0] for r in results} - {"direct"}):
        rows = {r.name.split()[1] + r.name.split()[2]: r for r in results
                if r.name.split()[0] == transport}
        if "jsonc16" in rows and "jsonc64" in rows:
            print(f"{transport}: req/s at 64 connections = "
                  f"{rows['jsonc64'].rps / rows['jsonc16'].rps:.0%} of 16 "
                  f"(target >= 90%); targets: <= 400 CPU-µs json, <= 900 sse20, >= 1500 req/s")


if __name__ == "__main__":
    sys.exit(main())

"""Telemetry overhead: gateway CPU per request with tracing and metrics on against off.

Gateway processes run side by side over one fake OpenAI provider (its own process):
"off" has no exporter configured (no observer is registered), "on" exports traces and
metrics over OTLP/HTTP to a receiver in this process (every span is encoded and sent; the
metric export interval is shortened from 60 s to 5 s so metric exports land inside the
run), and a third exports with traces sampled at 10%. Load alternates between them in
batches, so drift hits all alike; CPU is user + system time of each gateway process from
/proc, exporter threads included (the event loop thread is also shown alone).

"on" is what routegate builds: the SDK's TracerProvider + BatchSpanProcessor + the OTLP
exporter package (spans recorded by otel/light.py, encoded by otel/encode.py), and
otel/aggregate.py's metric aggregation exported by the package's OTLP metric exporter. "on,
plain SDK" (on by default, ``--no-plain-sdk`` skips it) exports the same over the SDK's own
pipeline installed as a host would (bench/otel_plain_sdk.py): its ratio to "on" is what the
hand-written parts buy, measured in the same run. Each ``--compare NAME=DIR`` adds an "on"
gateway run from another source tree in the same run: DIR holds
``routegate/{middleware,sidecar,otel}`` (e.g. links into an older commit's ``git archive``, or
a copy of otel/ with a hand-written part replaced by plain SDK code) and goes first on its
PYTHONPATH, so variants are measured side by side (its CLI module is found where that tree
has it: ``middleware/standalone/cli.py``, or ``middleware/cli.py`` before the sub-rooms).

    python -m bench.otel_bench [--requests 3000] [--concurrency 16] [--batch 250]
                               [--no-plain-sdk] [--compare NAME=DIR ...]

Target: "on" costs at most 25% more CPU per request than "off".
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

TICKS = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parents[1]
KEY_ENV = "ROUTEGATE_BENCH_KEY"
# A mix of what a gateway serves: named model, streamed, and classified (``auto``).
BODIES = [
    b'{"model":"cheap","messages":[{"role":"user","content":"Say hello in one sentence."}]}',
    b'{"model":"cheap","stream":true,"messages":[{"role":"user","content":"Count to five."}]}',
    b'{"model":"auto","messages":[{"role":"user","content":"How are you doing today?"}]}',
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _cpu_seconds(pid: int, tid: int | None = None) -> float:
    """User + system CPU of a process, or of one of its threads (the main one: tid == pid)."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


class _Receiver:
    """OTLP/HTTP sink: counts export requests and bytes, answers an empty success."""

    def __init__(self) -> None:
        self.requests: dict[str, int] = {}
        self.bytes = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with receiver._lock:
                    receiver.requests[self.path] = receiver.requests.get(self.path, 0) + 1
                    receiver.bytes += len(body)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> _Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not come up")


@contextmanager
def _process(args: list[str], env: dict[str, str], ready_url: str) -> Iterator[int]:
    proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    try:
        _wait_http(ready_url, proc)
        yield proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _config(directory: Path, provider_url: str) -> Path:
    path = directory / "gateway.toml"
    path.write_text(f"""
[server]
log_level = "warning"

[providers.fake]
type = "openai"
base_url = "{provider_url}/v1"
api_key_env = "{KEY_ENV}"

[models.cheap]
provider = "fake"
input_usd_per_mtok = 0.1
output_usd_per_mtok = 0.2
capabilities = {{ chat = 0.9, code = 0.9 }}

[models.big]
provider = "fake"
input_usd_per_mtok = 5.0
output_usd_per_mtok = 10.0
capabilities = {{ chat = 0.95, code = 0.95 }}
""")
    return path


@dataclass
class _Tally:
    cpu_s: float = 0.0
    loop_cpu_s: float = 0.0  # the event loop thread alone (exporters run on others)
    requests: int = 0

    @property
    def us_per_request(self) -> float:
        return 1e6 * self.cpu_s / max(1, self.requests)

    @property
    def loop_us_per_request(self) -> float:
        return 1e6 * self.loop_cpu_s / max(1, self.requests)


async def _batch(client: httpx.AsyncClient, url: str, count: int, concurrency: int,
                 offset: int) -> None:
    queue = iter(range(offset, offset + count))

    async def worker() -> None:
        for i in queue:
            response = await client.post(url, content=BODIES[i % len(BODIES)],
                                         headers={"content-type": "application/json"})
            await response.aread()
            if response.status_code != 200:
                raise RuntimeError(f"{response.status_code}: {response.text[:200]}")

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def _drive(gateways: dict[str, tuple[str, int]], requests: int, concurrency: int,
                 batch: int, warmup: int) -> dict[str, _Tally]:
    tallies = {name: _Tally() for name in gateways}
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2)
    async with httpx.AsyncClient(limits=limits, timeout=30.0) as client:
        for url, _ in gateways.values():
            await _batch(client, url, warmup, concurrency, 0)
        done = 0
        while done < requests:
            size = min(batch, requests - done)
            for name, (url, pid) in gateways.items():
                before, loop_before = _cpu_seconds(pid), _cpu_seconds(pid, pid)
                await _batch(client, url, size, concurrency, done)
                tallies[name].cpu_s += _cpu_seconds(pid) - before
                tallies[name].loop_cpu_s += _cpu_seconds(pid, pid) - loop_before
                tallies[name].requests += size
            done += size
    return tallies


def _cli_module(tree: Path) -> str:
    """The ``serve`` CLI's module in a routegate tree (it moved into standalone/ with the rooms)."""
    if (tree / "routegate" / "middleware" / "cli.py").exists():
        return "routegate.middleware.cli"
    return "routegate.middleware.standalone.cli"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.otel_bench",
                                     description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=3000, help="measured, per gateway")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--sampled", type=float, default=0.1,
                        help="ratio for a third gateway with sampled traces (0: skip it)")
    parser.add_argument("--on-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for the 'on' gateways")
    parser.add_argument("--plain-sdk", action=argparse.BooleanOptionalAction, default=True,
                        help="also run an 'on' gateway on the plain SDK pipeline (default: on)")
    parser.add_argument("--compare", action="append", default=[], metavar="NAME=DIR",
                        help="also run an 'on' gateway from the routegate tree under DIR")
    args = parser.parse_args(argv)

    base_env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    base_env[KEY_ENV] = "sk-bench"
    py = sys.executable
    fake_port = _free_port()
    fake_url = f"http://127.0.0.1:{fake_port}"
    with tempfile.TemporaryDirectory() as tmp, _Receiver() as receiver, _process(
            [py, "-m", "bench.fakes", "--kind", "openai", "--port", str(fake_port)],
            base_env, fake_url + "/v1/models"), ExitStack() as stack:
        config = str(_config(Path(tmp), fake_url))
        on_env = {**base_env, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
                  "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                  "OTEL_METRIC_EXPORT_INTERVAL": "5000",
                  **dict(item.split("=", 1) for item in args.on_env)}
        serve = "routegate.middleware.standalone.cli"
        variants = {"off": (base_env, serve), "on": (on_env, serve)}
        if args.plain_sdk:
            variants["on, plain SDK"] = (on_env, "bench.otel_plain_sdk")
        for item in args.compare:
            name, directory = item.split("=", 1)
            variants[f"on, {name}"] = ({**on_env, "PYTHONPATH": os.pathsep.join(
                p for p in (str(Path(directory).resolve()), on_env.get("PYTHONPATH")) if p)},
                _cli_module(Path(directory)))
        if args.sampled > 0:
            variants[f"on, {args.sampled:g} sampled"] = ({
                **on_env, "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": str(args.sampled)}, serve)
        gateways: dict[str, tuple[str, int]] = {}
        for name, (env, module) in variants.items():
            port = _free_port()
            url = f"http://127.0.0.1:{port}"
            pid = stack.enter_context(_process(
                [py, "-m", module, "serve", "--config", config, "--port", str(port)], env,
                url + "/healthz"))
            gateways[name] = (url + "/v1/chat/completions", pid)
        started = time.perf_counter()
        tallies = asyncio.run(_drive(gateways, args.requests, args.concurrency, args.batch,
                                     args.warmup))
        elapsed = time.perf_counter() - started
    exports = dict(receiver.requests)
    off = tallies["off"]
    print(f"requests per gateway: {off.requests} measured (+{args.warmup} warm-up), "
          f"concurrency {args.concurrency}, batches of {args.batch}, {elapsed:.1f}s; "
          f"mix: named, streamed, auto")
    worst = 1.0
    on = tallies["on"]
    for name, tally in tallies.items():
        ratio = tally.us_per_request / off.us_per_request
        if name == "on":
            worst = ratio
        against_on = "" if name in ("off", "on") else \
            f"  x{tally.us_per_request / on.us_per_request:.3f} of on"
        print(f"telemetry {name:16} {tally.us_per_request:8.1f} µs CPU/request  "
              f"(event loop {tally.loop_us_per_request:7.1f})  x{ratio:.3f} "
              f"({(ratio - 1) * 100:+.1f}%){against_on}")
    print("target: on <= +25% (traces and metrics over OTLP/HTTP to a local receiver)")
    print(f"receiver got: {exports.get('/v1/traces', 0)} trace exports, "
          f"{exports.get('/v1/metrics', 0)} metric exports, {receiver.bytes / 1e6:.2f} MB")
    return 0 if worst <= 1.25 else 1


if __name__ == "__main__":
    sys.exit(main())

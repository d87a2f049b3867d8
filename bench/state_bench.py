"""What sharing live state through Redis costs: ``[state] backend = "redis"`` against
``"memory"``, with budgets off and with a budgeted client key, side by side in one run.

Four gateways run at once (memory, redis) x (no client keys, one budgeted key) against one fake
provider and one redis-server; rounds of one window per gateway are interleaved, so each
ratio compares windows measured moments apart. Printed per variant: requests/s, p50/p99, the
gateway's CPU-µs per request (from /proc), Redis' CPU-µs per request, and the ratio of the
gateway's CPU to the memory variant with the same budgets. Then fleet throughput: three redis
replicas each driven by its own load generator at once, against one replica alone.

Placement as in bench/gateway_bench.py: the gateways on CPU 1; fake provider, redis-server
and the load generator on CPU 0. The fleet run is not pinned (three replicas share 2 cores:
it is CPU-bound, and says so).

    python -m bench.state_bench [--seconds 3] [--rounds 5] [--connections 16]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path

from bench.gateway_bench import Placement, _body, _config, _free_port, _process, _repin
from bench.load import Result, cpu_seconds, measure

BUDGET_KEY = "bench"  # what the load generator sends as its bearer key
VARIANTS = (("memory", False), ("redis", False), ("memory", True), ("redis", True))


def _state_config(fake_url: str, backend: str, budgets: bool, redis_url: str) -> str:
    text = _config(fake_url)
    if budgets:
        digest = hashlib.sha256(BUDGET_KEY.encode()).hexdigest()
        text += f'[clients.bench]\nkey_sha256 = "{digest}"\ndaily_usd = 1000000.0\n'
    if backend == "redis":
        text += (f'[state]\nbackend = "redis"\nurl = "{redis_url}"\n'
                 f'key_prefix = "bench-{os.getpid()}:"\n')
    return text


@contextmanager
def _redis(cpus: frozenset[int] | None) -> Iterator[tuple[str, int]]:
    port = _free_port()
    workdir = tempfile.mkdtemp(prefix="rg-bench-redis-")
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--dir", workdir]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if cpus is not None:
        _repin(process.pid, cpus)
    try:
        deadline = time.monotonic() + 10
        while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True,
                             text=True).stdout.strip() != "PONG":
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0", process.pid
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def _gateway(stack: ExitStack, config_text: str, cpus: frozenset[int] | None) -> tuple[str, int]:
    config = Path(tempfile.mkdtemp()) / "gateway.toml"
    config.write_text(config_text)
    port = _free_port()
    command = [sys.executable, "-m", "bench.gateway_server", "--config", str(config),
               "--port", str(port)]
    process = stack.enter_context(_process(command, f"http://127.0.0.1:{port}/healthz", cpus))
    return f"http://127.0.0.1:{port}/v1/chat/completions", process.pid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args(argv)
    os.environ["ROUTEGATE_BENCH_KEY"] = "bench"
    placement = Placement.detect()
    if placement.load is not None:
        os.sched_setaffinity(0, placement.load)
    fake_port = _free_port()
    fake_url = f"http://127.0.0.1:{fake_port}"
    fake_cmd = [sys.executable, "-m", "bench.fakes", "--kind", "openai", "--port", str(fake_port)]
    body = _body("bench", False)
    print(f"{args.seconds:g} s windows, {args.rounds} interleaved rounds, c{args.connections}, "
          f"medians; {placement.describe()}", flush=True)
    results: dict[str, list[tuple[Result, float]]] = {}
    with ExitStack() as stack:
        fake = stack.enter_context(_process(fake_cmd, fake_url + "/v1/models", placement.load))
        redis_url, redis_pid = stack.enter_context(_redis(placement.load))
        gateways = {f"{backend:6} budgets {'on ' if budgets else 'off'}": _gateway(
            stack, _state_config(fake_url, backend, budgets, redis_url), placement.sut)
            for backend, budgets in VARIANTS}
        for round_ in range(args.rounds):
            for name, (url, pid) in gateways.items():
                redis_before = cpu_seconds(redis_pid)
                result = measure(name, url, body, args.connections, args.seconds, pid, fake.pid,
                                 warm_up=round_ == 0, load_cpus=placement.load)
                redis_us = (cpu_seconds(redis_pid) - redis_before) / max(1, result.requests) * 1e6
                results.setdefault(name, []).append((result, redis_us))
                print(f"  round {round_ + 1} {name}: {result.rps:7.0f} req/s, CPU-µs "
                      f"{result.cpu_us or 0:.0f}, redis CPU-µs {redis_us:.0f}, errors "
                      f"{result.errors}", flush=True)
        _report(results)
        fleet(fake_url, redis_url, body, args)
    return 0


def _report(results: dict[str, list[tuple[Result, float]]]) -> None:
    print(f"\n{'variant':22} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'CPU-µs':>7} "
          f"{'redis µs':>8} {'CPU vs memory':>13}")
    cpu = {name: statistics.median(r.cpu_us or 0 for r, _ in runs) for name, runs in results.items()}
    for name, runs in results.items():
        base = name.replace("redis ", "memory")
        print(f"{name:22} {statistics.median(r.rps for r, _ in runs):8.0f} "
              f"{statistics.median(r.p50_ms for r, _ in runs):7.2f} "
              f"{statistics.median(r.p99_ms for r, _ in runs):7.2f} {cpu[name]:7.0f} "
              f"{statistics.median(u for _, u in runs):8.0f} {cpu[name] / cpu[base]:12.2f}x")


def fleet(fake_url: str, redis_url: str, body: str, args: argparse.Namespace) -> None:
    """Three redis replicas loaded at once against one alone (unpinned, CPU-bound)."""
    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    with ExitStack() as stack:
        urls = [_gateway(stack, _state_config(fake_url, "redis", True, redis_url), None)
                for _ in range(3)]
        alone = measure("one replica", urls[0][0], body, args.connections, args.seconds,
                        urls[0][1])
        with ThreadPoolExecutor(3) as pool:
            runs = list(pool.map(lambda target: measure(
                "fleet", target[0], body, args.connections, args.seconds, target[1]), urls))
    total = sum(r.rps for r in runs)
    print(f"\nfleet (redis, budgeted key, unpinned, CPU-bound on {os.cpu_count()} cores): "
          f"one replica {alone.rps:.0f} req/s; three replicas together {total:.0f} req/s "
          f"({total / alone.rps:.2f}x), errors {sum(r.errors for r in runs)}")


if __name__ == "__main__":
    sys.exit(main())

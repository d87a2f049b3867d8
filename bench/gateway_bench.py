"""Gateway overhead: direct-to-provider against through-routegate, side by side, in one run.

A fast fake OpenAI provider and the gateway run as separate processes on 127.0.0.1; a load
generator (bench/load.py: wrk when installed, else a bounded Python loop) drives each scenario
for a few seconds. Printed per scenario: requests/s, p50/p99 latency, the latency routegate
adds, and routegate's CPU-µs per request read from /proc (user + system time of the gateway
process), with ratios to the direct baseline measured in the same run. The fake provider's own
CPU-µs per request is printed too: it is a bare uvicorn app, so it shows what one HTTP exchange costs
on this machine (syscalls included), a floor to read the gateway's number against; ``gw/fake``
is their ratio, the steadiest number on a shared machine (both swell alike under contention).

Placement: the system under test owns CPU 1 and the load side CPU 0 (direct: fake on 1, wrk
on 0; gateway: gateway on 1, fake + wrk on 0; one fake process, re-pinned in between).
Rounds: this VM's CPU speed drifts ±15% between windows of a few seconds, so one window never
decides a number: each transport runs ``--rounds`` interleaved rounds of its three scenarios
and the table shows medians with the min–max spread. 3 s windows keep the default full run
(4 scenario groups x 3 scenarios x 5 rounds) near 3.5 minutes; more rounds beat longer windows.
The 64-connection ratio gets its own ``--pairs`` of 1 s windows (see ``_paired_scaling``);
with them the default full run takes about 5.5 minutes.

    python -m bench.gateway_bench [--seconds 3] [--rounds 5] [--pairs 15] [--pair-seconds 1]
                                  [--transports fast,aiohttp,httpx,pyreqwest]

Transports (bench/gateway_server.py): ``fast`` (routegate's own, middleware/upstream/transport.py,
the only one the gateway ships; ``fast@REV`` runs the gateway's code, and its
bench/gateway_server.py, at git revision REV, for a before/after in one run), ``aiohttp``
(httpx-aiohttp), ``httpx`` (httpx's default, httpcore), ``pyreqwest`` (Rust reqwest/hyper
behind its httpx transport). The results and why the default is what it is: bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.load import Result, measure, pinned

SCENARIOS = (("json  c16", False, 16), ("json  c64", False, 64), ("sse20 c16", True, 16))


def _body(model: str, stream: bool) -> str:
    tail = ',"stream":true' if stream else ""
    return ('{"model":"' + model + '","messages":[{"role":"user","content":"Write one sentence '
            'about routing."}],"max_tokens":64' + tail + "}")


@dataclass(frozen=True)
class Placement:
    """CPU sets for the load side and the system under test; ``None`` when not pinning."""

    load: frozenset[int] | None
    sut: frozenset[int] | None

    @classmethod
    def detect(cls) -> Placement:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            return cls(None, None)
        return cls(frozenset({cpus[0]}), frozenset({cpus[1]}))

    def describe(self) -> str:
        if self.load is None or self.sut is None:
            return f"no CPU pinning (only {len(os.sched_getaffinity(0))} CPU available)"
        load, sut = _cpus(self.load), _cpus(self.sut)
        return (f"placement: direct = fake on CPU {sut}, load on CPU {load}; "
                f"gateway = gateway on CPU {sut}, fake + load on CPU {load}")


def _cpus(cpus: frozenset[int]) -> str:
    return ",".join(str(cpu) for cpu in sorted(cpus))


def _repin(pid: int, cpus: frozenset[int] | None) -> None:
    """Move a running process to ``cpus``: affinity is per thread on Linux, so set every task."""
    if cpus is None:
        return
    for task in Path(f"/proc/{pid}/task").iterdir():
        with suppress(ProcessLookupError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(task.name), cpus)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
def _process(command: list[str], probe: str, cpus: frozenset[int] | None = None,
             env: dict[str, str] | None = None,
             cwd: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               preexec_fn=pinned(cpus), env=env, cwd=cwd)
    try:
        _wait_http(probe, process)
        yield process
    finally:
        process.terminate()
        process.wait(10)


def _config(fake_url: str) -> str:
    return f"""
[server]
log_level = "warning"
[providers.fake]
type = "openai"
base_url = "{fake_url}/v1"
api_key_env = "ROUTEGATE_BENCH_KEY"
[models.bench]
provider = "fake"
upstream = "bench-up"
capabilities = {{ chat = 0.9 }}
"""


def _rounds(group: str, url: str, model: str, args: argparse.Namespace, gateway_pid: int | None,
            provider_pid: int, placement: Placement) -> dict[str, list[Result]]:
    """``args.rounds`` rounds of c16 json, c64 json, sse20 c16, interleaved, so each scenario's
    windows are spread over the whole group and a round's c16 and c64 run back to back.

    Warm-up (1 s) only before a scenario's first round: later rounds find the processes, the
    upstream pool and the caches already warm, and wrk's own connects are a few ms of a window;
    a warm-up per round would add 1 s per window to the run for no measurable gain.
    """
    runs: dict[str, list[Result]] = {f"{group:7} {scenario}": [] for scenario, _, _ in SCENARIOS}
    for round_ in range(args.rounds):
        for scenario, stream, connections in SCENARIOS:
            name = f"{group:7} {scenario}"
            result = measure(name, url, _body(model, stream), connections, args.seconds, gateway_pid,
                             provider_pid, warm_up=round_ == 0, load_cpus=placement.load)
            runs[name].append(result)
            cpu = "" if result.cpu_us is None else f" CPU-µs {result.cpu_us:.0f}"
            fake = "" if result.provider_cpu_us is None else f" fake CPU-µs {result.provider_cpu_us:.0f}"
            print(f"  round {round_ + 1}/{args.rounds} {name:22} {result.rps:8.0f} req/s "
                  f"p50 {result.p50_ms:6.2f} ms p99 {result.p99_ms:7.2f} ms{cpu}{fake}", flush=True)
    return runs


def _paired_scaling(url: str, model: str, args: argparse.Namespace,
                    placement: Placement) -> list[tuple[float, float]]:
    """``args.pairs`` pairs of short json windows at 16 and 64 connections, back to back, the
    order alternating (16, 64 then 64, 16) so a slow spell does not always hit the same side.

    Why apart from the rounds: the slow spells here are bursts (a pure-Python loop pinned to
    one core ran at half speed for ~1.5 s, then within 2% of itself from one 100 ms slice to
    the next), so two 1 s windows land in the same spell far more often than two 3 s ones.
    Measured on the gateway: 20 pairs of 1 s gave an interquartile range of 88–94 %, 10 pairs
    of 3 s 83–108 %, around the same median.
    """
    body = _body(model, False)
    pairs: list[tuple[float, float]] = []
    for pair in range(args.pairs):
        rps = {connections: measure("", url, body, connections, args.pair_seconds, None,
                                    warm_up=False, load_cpus=placement.load).rps
               for connections in ((16, 64) if pair % 2 == 0 else (64, 16))}
        pairs.append((rps[16], rps[64]))
    return pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="length of one measured window (default 3; see the module docstring)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="interleaved rounds per scenario; medians are reported (default 5)")
    parser.add_argument("--pairs", type=int, default=15,
                        help="paired c16/c64 windows for the 64-connection ratio (default 15)")
    parser.add_argument("--pair-seconds", type=float, default=1.0,
                        help="length of one paired window (default 1)")
    parser.add_argument("--transports", default="fast,aiohttp,httpx,pyreqwest")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.pairs < 1:
        parser.error("--rounds and --pairs must be >= 1")
    os.environ["ROUTEGATE_BENCH_KEY"] = "bench"
    placement = Placement.detect()
    if placement.load is not None:
        os.sched_setaffinity(0, placement.load)  # this driver (and the Python load loop) is load side
    fake_port = _free_port()
    fake_url = f"http://127.0.0.1:{fake_port}"
    fake_cmd = [sys.executable, "-m", "bench.fakes", "--kind", "openai", "--port", str(fake_port),
                "--chunks", "20"]
    print(f"load generator: {'wrk' if shutil.which('wrk') else 'python loop'}; "
          f"{args.seconds:g}s per window, {args.rounds} interleaved rounds, medians reported; "
          f"{placement.describe()}", flush=True)
    started = time.monotonic()
    results: dict[str, list[Result]] = {}
    scaling: dict[str, list[tuple[float, float]]] = {}
    with _process(fake_cmd, fake_url + "/v1/models", placement.sut) as fake:
        direct_url = fake_url + "/v1/chat/completions"
        results |= _rounds("direct", direct_url, "bench-up", args, None, fake.pid, placement)
        scaling["direct"] = _paired_scaling(direct_url, "bench-up", args, placement)
        _repin(fake.pid, placement.load)  # from here on the gateway is the system under test
        for transport in args.transports.split(","):
            config = Path(tempfile.mkdtemp()) / "gateway.toml"
            config.write_text(_config(fake_url))
            port = _free_port()
            name, _, revision = transport.partition("@")
            gateway_cmd = [sys.executable, "-m", "bench.gateway_server", "--config", str(config),
                           "--port", str(port), "--transport", name]
            env = _code_at(revision, config.parent) if revision else None
            with _process(gateway_cmd, f"http://127.0.0.1:{port}/healthz", placement.sut,
                          env, config.parent if revision else None) as gateway:
                url = f"http://127.0.0.1:{port}/v1/chat/completions"
                results |= _rounds(transport, url, "bench", args, gateway.pid, fake.pid, placement)
                scaling[transport] = _paired_scaling(url, "bench", args, placement)
    _report(results, scaling, args.pair_seconds)
    print(f"run time {time.monotonic() - started:.0f} s")
    return 0


def _code_at(revision: str, folder: Path) -> dict[str, str]:
    """An environment whose ``routegate`` is the code at git ``revision`` (``fast@REV``:
    the gateway as it was, measured in the same run as the current one). The revision's own
    ``bench/gateway_server.py`` goes to ``folder`` too (the gateway runs with ``folder`` as
    its working directory), so it imports the modules where that revision had them."""
    target = folder / "routegate"
    target.mkdir()
    archive = subprocess.run(["git", "archive", revision, "middleware", "sidecar", "otel"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    server = subprocess.run(["git", "archive", revision, "bench/__init__.py",
                             "bench/gateway_server.py"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=server, check=True)
    return {**os.environ, "PYTHONPATH": str(folder)}


def _key(name: str) -> str:
    return name.split()[1] + name.split()[2]


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _report(results: dict[str, list[Result]],
            scaling: dict[str, list[tuple[float, float]]], pair_seconds: float) -> None:
    """Medians over rounds. ``gw/fake`` is the median of per-round ratios (both CPU times come
    from the same window); ``rps/direct`` and ``added p50`` compare medians, since the direct
    windows ran at other times."""
    baseline = {_key(name): runs for name, runs in results.items() if name.startswith("direct")}
    print(f"\n{'scenario':22} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'added p50':>10} "
          f"{'rps/direct':>10} {'CPU-µs/req':>11} {'fake CPU-µs':>12} {'gw/fake':>8} {'non-2xx':>8} "
          f"{'CPU-µs range':>13} {'req/s range':>12}")
    for name, runs in results.items():
        base = baseline[_key(name)]
        rps, p50 = _median([r.rps for r in runs]), _median([r.p50_ms for r in runs])
        p99 = _median([r.p99_ms for r in runs])
        base_rps, base_p50 = _median([r.rps for r in base]), _median([r.p50_ms for r in base])
        added = "" if runs is base else f"{p50 - base_p50:+.2f}"
        ratio = "" if runs is base else f"{rps / base_rps:.2f}"
        cpus = [r.cpu_us for r in runs if r.cpu_us is not None]
        fakes = [r.provider_cpu_us for r in runs if r.provider_cpu_us is not None]
        cpu = f"{_median(cpus):.0f}" if cpus else ""
        cpu_range = f"{min(cpus):.0f}–{max(cpus):.0f}" if cpus else ""
        fake = f"{_median(fakes):.0f}" if fakes else ""
        per_fake_rounds = [r.cpu_us / r.provider_cpu_us for r in runs
                           if r.cpu_us is not None and r.provider_cpu_us]
        per_fake = f"{_median(per_fake_rounds):.2f}" if per_fake_rounds else ""
        rps_range = f"{min(r.rps for r in runs):.0f}–{max(r.rps for r in runs):.0f}"
        errors = sum(r.errors for r in runs)
        print(f"{name:22} {rps:8.0f} {p50:8.2f} {p99:8.2f} {added:>10} {ratio:>10} "
              f"{cpu:>11} {fake:>12} {per_fake:>8} {errors:8d} {cpu_range:>13} {rps_range:>12}")
    for group, pairs in scaling.items():
        ratios = [c64 / c16 for c16, c64 in pairs]
        quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
        rows = {_key(name): runs for name, runs in results.items() if name.split()[0] == group}
        per_round = [hi.rps / lo.rps for lo, hi in zip(rows["jsonc16"], rows["jsonc64"], strict=True)]
        detail = (f"{group}: req/s at 64 connections = {_median(ratios):.0%} of 16 (median of "
                  f"{len(pairs)} paired {pair_seconds:g} s windows, interquartile "
                  f"{quartiles[0]:.0%}–{quartiles[2]:.0%}; the rounds above: median of per-round "
                  f"ratios {_median(per_round):.0%})")
        if group == "direct":
            print(detail + " (reference: the fake alone)")
        else:
            print(detail + " (target >= 90%); targets: <= 400 CPU-µs json, <= 900 sse20, "
                  ">= 1500 req/s")


if __name__ == "__main__":
    sys.exit(main())

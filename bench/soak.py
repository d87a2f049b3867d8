"""Soak: a long mixed load through ``routegate serve``, watching memory and counting every answer.

Two fake OpenAI providers run in this process (a flaky primary and a steady backup); the
gateway runs as its own ``routegate serve`` process with client keys, budgets, a per-minute
limit, an admin token and adaptive routing on. Paced workers send a mix of streaming and
non-streaming requests (``auto`` and named models) with a client key, check that every answer
is complete (a JSON body with a choice, or a stream ending in ``[DONE]`` without an error
event), and score a share of them through ``/v1/feedback``. Every few seconds a burst of
pre-first-byte faults (503s, connection resets, hangs past the first-token timeout) hits the
primary, so fallback and breakers run all the time. A second client key has a tiny daily
budget, so budget refusals (429 ``budget_exceeded``) run beside the served traffic.

Printed every ``--report-s``: requests by outcome and the gateway's RSS. At the end: RSS after
warm-up against the end (and the slope of a line fitted through the samples after warm-up),
lost requests (a request that got no complete answer and no deliberate refusal; must be 0), and
``reserved_usd`` of every client from ``/admin/stats`` (must be back to 0).

    python -m bench.soak [--minutes 30] [--rate 60] [--warmup-minutes 5]

The feedback memory is set to 20,000 request IDs so it fills during warm-up (at the default
rate in under six minutes): from then on a leak shows as growth, not as a memory filling up.
Exit status 1 when requests were lost, reservations stayed open, or RSS grew by more than
``--max-growth-mb`` after warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.fakes import FakeProvider, Fault, serve_in_thread
from bench.gateway_bench import _free_port, _wait_http

CLIENT_KEY = "rg-soak-client-key"
CAPPED_KEY = "rg-soak-capped-key"
ADMIN_TOKEN = "rg-soak-admin-token"
CATEGORIES = ("chat", "code", "math", "factual_qa", "summarization", "translation", "reasoning",
              "creative_writing", "extraction", "classification")
PROMPTS = (
    "What is the capital of France?",
    "Write a Python function that reverses a linked list.",
    "Summarise this paragraph: routers move packets between networks by looking at addresses.",
    "Translate 'good morning, how are you?' into German.",
    "If a train leaves at 3 pm going 60 km/h, how far has it gone by 5:30 pm?",
    "hey, how's it going?",
)


def _config(primary: str, backup: str) -> str:
    def sha(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()

    def caps(score: float) -> str:  # TOML inline tables must fit on one line
        return ", ".join(f"{category} = {score}" for category in CATEGORIES)

    return f"""
[server]
log_level = "warning"
request_timeout_s = 20.0
[retry]
max_attempts = 4
backoff_base_s = 0.01
backoff_max_s = 0.05
[classifier]
mode = "heuristic"
[adaptive]
feedback_memory = 20000
[adaptive.breaker]
cooldown_s = 5.0
[admin]
token_env = "ROUTEGATE_SOAK_ADMIN"
[clients.soak]
key_sha256 = "{sha(CLIENT_KEY)}"
daily_usd = 1000000.0
requests_per_minute = 1000000
[clients.capped]
key_sha256 = "{sha(CAPPED_KEY)}"
daily_usd = 0.002
[providers.primary]
type = "openai"
base_url = "{primary}/v1"
api_key_env = "ROUTEGATE_SOAK_PROVIDER_KEY"
timeouts = {{ connect_s = 1.0, first_token_s = 1.0, idle_s = 2.0, total_s = 10.0 }}
[providers.backup]
type = "openai"
base_url = "{backup}/v1"
api_key_env = "ROUTEGATE_SOAK_PROVIDER_KEY"
timeouts = {{ connect_s = 1.0, first_token_s = 2.0, idle_s = 2.0, total_s = 10.0 }}
[models.cheap]
provider = "primary"
upstream = "cheap-up"
input_usd_per_mtok = 0.15
output_usd_per_mtok = 0.6
context_window = 128000
capabilities = {{ {caps(0.9)} }}
fallbacks = ["strong"]
[models.strong]
provider = "backup"
upstream = "strong-up"
input_usd_per_mtok = 2.5
output_usd_per_mtok = 10.0
context_window = 128000
capabilities = {{ {caps(0.95)} }}
"""


@dataclass
class Tally:
    outcomes: Counter[str] = field(default_factory=Counter)
    lost_examples: list[str] = field(default_factory=list)
    faults: int = 0

    def lost(self, why: str) -> None:
        self.outcomes["lost"] += 1
        if len(self.lost_examples) < 10:
            self.lost_examples.append(why)


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def _one(client: httpx.AsyncClient, url: str, tally: Tally, rng: random.Random) -> None:
    capped = rng.random() < 0.02
    stream = rng.random() < 0.5
    body: dict[str, object] = {"model": rng.choice(("auto", "auto", "cheap", "strong")),
            "messages": [{"role": "user", "content": rng.choice(PROMPTS)}],
            "max_tokens": 64, "stream": stream}
    if stream and rng.random() < 0.5:
        body["stream_options"] = {"include_usage": True}
    headers = {"authorization": f"Bearer {CAPPED_KEY if capped else CLIENT_KEY}"}
    try:
        async with client.stream("POST", url + "/v1/chat/completions", json=body,
                                 headers=headers) as response:
            raw = await response.aread()
    except httpx.HTTPError as exc:
        tally.lost(f"{type(exc).__name__}: {exc}")
        return
    if response.status_code == 429 and capped:
        tally.outcomes["refused (budget, expected)"] += 1
        return
    if response.status_code != 200:
        tally.lost(f"status {response.status_code}: {raw[:200]!r}")
        return
    if stream:
        text = raw.decode()
        if '"error"' in text or not text.rstrip().endswith("data: [DONE]"):
            tally.lost(f"incomplete stream: {text[-200:]!r}")
            return
    elif not json.loads(raw).get("choices"):
        tally.lost(f"no choices: {raw[:200]!r}")
        return
    tally.outcomes["served stream" if stream else "served json"] += 1
    if not capped and rng.random() < 0.1:
        vote = {"request_id": response.headers["x-request-id"], "pass": rng.random() < 0.9}
        feedback = await client.post(url + "/v1/feedback", json=vote, headers=headers)
        tally.outcomes[f"feedback {feedback.status_code}"] += 1


async def _faults(primary: FakeProvider, stop: float, rng: random.Random, tally: Tally) -> None:
    """A burst of pre-first-byte faults on the primary every few seconds."""
    kinds = (Fault.status(503), Fault.status(500), Fault.hang(1.5), Fault.status(429))
    while time.monotonic() < stop:
        await asyncio.sleep(rng.uniform(2.0, 6.0))
        times = rng.randint(1, 4)
        primary.inject(rng.choice(kinds), times=times)
        tally.faults += times


async def _drive(url: str, args: argparse.Namespace, pid: int, primary: FakeProvider) -> int:
    rng = random.Random(20261204)
    tally = Tally()
    samples: list[tuple[float, float]] = []
    started = time.monotonic()
    stop = started + args.minutes * 60
    limits = httpx.Limits(max_connections=args.workers, max_keepalive_connections=args.workers)
    async with httpx.AsyncClient(timeout=30.0, limits=limits) as client:
        async def worker(index: int) -> None:
            interval = args.workers / args.rate  # each worker's share of the rate
            next_at = time.monotonic() + index * interval / args.workers
            while next_at < stop:
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                await _one(client, url, tally, rng)
                next_at += interval

        async def reporter() -> None:
            while time.monotonic() < stop:
                await asyncio.sleep(args.report_s)
                elapsed = time.monotonic() - started
                rss = _rss_mb(pid)
                samples.append((elapsed, rss))
                counts = ", ".join(f"{k} {v}" for k, v in sorted(tally.outcomes.items()))
                print(f"[{elapsed / 60:5.1f} min] RSS {rss:6.1f} MB | {counts}", flush=True)

        await asyncio.gather(*(worker(i) for i in range(args.workers)), reporter(),
                             _faults(primary, stop, rng, tally))
        stats = (await client.get(url + "/admin/stats",
                                  headers={"authorization": f"Bearer {ADMIN_TOKEN}"})).json()
    return _verdict(args, tally, samples, stats)


def _verdict(args: argparse.Namespace, tally: Tally, samples: list[tuple[float, float]],
             stats: dict[str, object]) -> int:
    warm = [(t, rss) for t, rss in samples if t >= args.warmup_minutes * 60]
    chats = sum(v for k, v in tally.outcomes.items() if not k.startswith("feedback"))
    print(f"\nchat requests: {chats}; "
          f"{', '.join(f'{k} {v}' for k, v in sorted(tally.outcomes.items()))}; "
          f"faults injected on the primary: {tally.faults}")
    for example in tally.lost_examples:
        print(f"  lost: {example}")
    failed = tally.outcomes["lost"] > 0
    if len(warm) >= 2:
        times, rss = [t / 60 for t, _ in warm], [r for _, r in warm]
        slope = statistics.linear_regression(times, rss).slope if len(set(times)) > 1 else 0.0
        growth = rss[-1] - rss[0]
        print(f"RSS after {args.warmup_minutes:g} min warm-up: {rss[0]:.1f} MB; at the end "
              f"{rss[-1]:.1f} MB (max {max(rss):.1f}); growth {growth:+.1f} MB, fitted slope "
              f"{slope * 10:+.2f} MB per 10 min")
        failed |= growth > args.max_growth_mb
    clients = stats.get("clients", {})
    reserved = {name: c.get("reserved_usd") for name, c in clients.items()} \
        if isinstance(clients, dict) else {}
    print(f"reserved_usd at the end: {reserved}")
    failed |= any(value not in (0, 0.0, None) for value in reserved.values())
    print("soak: FAILED" if failed else "soak: ok")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--warmup-minutes", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=60.0, help="requests per second, paced")
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--report-s", type=float, default=30.0)
    parser.add_argument("--max-growth-mb", type=float, default=20.0)
    args = parser.parse_args(argv)
    os.environ["ROUTEGATE_SOAK_PROVIDER_KEY"] = "sk-soak-provider"
    os.environ["ROUTEGATE_SOAK_ADMIN"] = ADMIN_TOKEN
    primary = FakeProvider(kind="openai", chunks=10, record=False)
    backup = FakeProvider(kind="openai", chunks=10, record=False)
    with ExitStack() as stack:
        primary_url = stack.enter_context(serve_in_thread(primary))
        backup_url = stack.enter_context(serve_in_thread(backup))
        config = Path(tempfile.mkdtemp()) / "soak.toml"
        config.write_text(_config(primary_url, backup_url))
        port = _free_port()
        gateway = subprocess.Popen([sys.executable, "-m", "routegate.middleware.standalone.cli", "serve",
                                    "--config", str(config), "--port", str(port)])
        stack.callback(gateway.wait, 10)
        stack.callback(gateway.terminate)
        url = f"http://127.0.0.1:{port}"
        _wait_http(url + "/healthz", gateway)
        print(f"soak: {args.minutes:g} min at {args.rate:g} req/s, {args.workers} workers; "
              f"gateway pid {gateway.pid}", flush=True)
        return asyncio.run(_drive(url, args, gateway.pid, primary))


if __name__ == "__main__":
    sys.exit(main())

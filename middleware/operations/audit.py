"""``routegate audit GOLDEN.jsonl``: every golden prompt through every path of its category.

A golden file has one JSON object per line::

    {"prompt": "What is 6*7? Answer with the number only.", "category": "math",
     "expected": "42", "check": "exact"}
    {"messages": [...], "expected": "Paris", "check": "contains", "ignore_case": true}
    {"prompt": "...", "expected": "\\b42\\b", "check": "regex"}
    {"prompt": "... as JSON", "expected": 42, "check": "json", "field": "result.value"}

``check`` is ``exact`` (after trimming whitespace; the default), ``contains``, ``regex``
(searched) or ``json`` (the answer parsed as JSON, optionally inside a ```json fence, and the
dotted ``field`` compared with ``expected``). Without ``category`` the line is classified by
the configured categories' heuristic classifier.

A *path* is one candidate pool model of a category: every model the router could send that
category to (``plan_route`` for the category, health left out). Each prompt is sent to each
path as an explicit model request; an answer from another model (a fallback) counts as an error
for the path. The audit runs against a gateway at ``--url``, or an in-process gateway built
from ``--config``. It prints accuracy, latency and cost per path, writes a JSON report
(``--report``), exits 1 when a path is under ``--min-accuracy``, and with ``--feed`` (``--url``
only) posts each verdict to ``/v1/feedback`` so the running gateway's quality windows learn
from it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

import httpx
import msgspec

from routegate.middleware.config import ConfigError, GatewayConfig, load_config, resolve_config_path
from routegate.middleware.contracts import Classification
from routegate.middleware.request.routing import plan_route

__all__ = ["GoldenItem", "audit", "check_answer", "load_golden", "register"]

Check = Literal["exact", "contains", "regex", "json"]


class GoldenItem(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    category: str | None = None
    expected: Any
    check: Check = "exact"
    field: str | None = None  # json: dotted path into the answer
    ignore_case: bool = False
    max_tokens: int | None = None
    id: str | None = None

    def chat_messages(self) -> list[dict[str, Any]]:
        if self.messages:
            return self.messages
        return [{"role": "user", "content": self.prompt or ""}]


def load_golden(path: Path) -> list[GoldenItem]:
    items: list[GoldenItem] = []
    decoder = msgspec.json.Decoder(GoldenItem)
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            item = decoder.decode(line)
        except msgspec.DecodeError as exc:
            raise ValueError(f"{path}:{number}: {exc}") from exc
        if not item.prompt and not item.messages:
            raise ValueError(f"{path}:{number}: needs `prompt` or `messages`")
        if item.check == "regex":
            try:
                re.compile(str(item.expected))
            except re.error as exc:
                raise ValueError(f"{path}:{number}: invalid regex: {exc}") from exc
        items.append(msgspec.structs.replace(item, id=item.id or str(number)))
    return items


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def check_answer(item: GoldenItem, answer: str) -> bool:
    """Whether ``answer`` matches the golden item's expectation."""
    if item.check == "json":
        fenced = _FENCE.search(answer)
        try:
            value: Any = json.loads(fenced.group(1) if fenced else answer)
        except ValueError:
            return False
        for part in (item.field or "").split(".") if item.field else ():
            if isinstance(value, dict) and part in value:
                value = value[part]
            elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            else:
                return False
        if item.ignore_case and isinstance(value, str) and isinstance(item.expected, str):
            return value.strip().lower() == item.expected.strip().lower()
        return bool(value == item.expected)
    expected, got = str(item.expected), answer
    if item.check == "regex":
        return re.search(expected, got, re.IGNORECASE if item.ignore_case else 0) is not None
    if item.ignore_case:
        expected, got = expected.lower(), got.lower()
    if item.check == "contains":
        return expected in got
    return got.strip() == expected.strip()


@dataclass(slots=True)
class PathResult:
    category: str
    model: str
    n: int = 0
    correct: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    cost_usd: float = 0.0
    cost_known: int = 0

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0

    def report(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        return {"category": self.category, "model": self.model, "n": self.n,
                "correct": self.correct, "accuracy": round(self.accuracy, 4),
                "errors": self.errors,
                "latency_p50_s": _quantile(lat, 0.5), "latency_p95_s": _quantile(lat, 0.95),
                "cost_usd_total": round(self.cost_usd, 8),
                "cost_per_answer_usd": (round(self.cost_usd / self.cost_known, 10)
                                        if self.cost_known else None)}


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))], 4)


class Progress:
    """``audit [#########-----------] 45/100`` on one stderr line."""

    def __init__(self, total: int, stream: TextIO | None, width: int = 30) -> None:
        self.total, self.done, self.stream, self.width = total, 0, stream, width

    def step(self) -> None:
        self.done += 1
        if self.stream is None:
            return
        filled = self.width * self.done // max(1, self.total)
        self.stream.write(f"\raudit [{'#' * filled}{'-' * (self.width - filled)}] "
                          f"{self.done}/{self.total}")
        if self.done == self.total:
            self.stream.write("\n")
        self.stream.flush()


def _answer_text(body: Any) -> str:
    try:
        content = body["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return ""
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content or "")


async def audit(items: list[GoldenItem], config: GatewayConfig, client: httpx.AsyncClient, *,
                available: frozenset[str], feed: bool = False, concurrency: int = 4,
                headers: dict[str, str] | None = None,
                progress: TextIO | None = None) -> dict[str, Any]:
    """Run the audit over ``client`` (a gateway's base URL) and return the JSON report."""
    from routegate.sidecar.heuristic import HeuristicClassifier

    classifier = HeuristicClassifier(config.categories, config.classifier.default_category)
    jobs: list[tuple[GoldenItem, str, str]] = []
    for item in items:
        category = item.category
        if category is None:
            text = " ".join(str(m.get("content", "")) for m in item.chat_messages())
            category = (await classifier.classify(text)).category
        if category not in config.categories:
            raise ValueError(f"golden item {item.id}: unknown category {category!r}")
        certain = Classification(category=category, complexity="simple", confidence=1.0,
                                 method="lexical", latency_ms=0.0)
        for model in plan_route("auto", certain, config, available).models:
            jobs.append((item, category, model))
    results: dict[tuple[str, str], PathResult] = {}
    for _, category, model in jobs:
        results.setdefault((category, model), PathResult(category, model))
    failures: list[dict[str, Any]] = []
    bar = Progress(len(jobs), progress)
    gate = asyncio.Semaphore(max(1, concurrency))
    run_id = f"{int(time.time())}"
    prefix = config.server.prefix

    async def one(index: int, item: GoldenItem, category: str, model: str) -> None:
        result = results[(category, model)]
        request_id = f"audit-{run_id}-{index}"
        body: dict[str, Any] = {"model": model, "messages": item.chat_messages(),
                                "temperature": 0}
        if item.max_tokens is not None:
            body["max_tokens"] = item.max_tokens
        async with gate:
            started = time.perf_counter()
            reason = ""
            answer = ""
            served = False
            try:
                response = await client.post(prefix + "/chat/completions", json=body,
                                             headers={**(headers or {}),
                                                      "x-request-id": request_id})
                elapsed = time.perf_counter() - started
                served_by = response.headers.get("x-routegate-model", "")
                if response.status_code != 200:
                    reason = f"HTTP {response.status_code}: {response.text[:200]}"
                elif served_by != model:
                    reason = f"answered by {served_by or 'another model'} (fallback)"
                else:
                    served = True
                    answer = _answer_text(response.json())
                    cost = response.headers.get("x-routegate-cost-usd")
                    if cost is not None:
                        result.cost_usd += float(cost)
                        result.cost_known += 1
                    result.latencies.append(elapsed)
            except httpx.HTTPError as exc:
                reason = f"{type(exc).__name__}: {exc}"
            result.n += 1
            correct = not reason and check_answer(item, answer)
            if reason:
                result.errors += 1
            elif correct:
                result.correct += 1
            else:
                reason = "wrong answer"
            if not correct:
                failures.append({"id": item.id, "category": category, "model": model,
                                 "check": item.check, "expected": item.expected,
                                 "answer": answer[:300], "reason": reason})
            if feed and served:
                with contextlib.suppress(httpx.HTTPError):  # the verdict is in the report
                    await client.post(prefix + "/feedback", headers=headers or {},
                                      json={"request_id": request_id, "pass": correct,
                                            "category": category})
        bar.step()

    await asyncio.gather(*(one(i, item, category, model)
                           for i, (item, category, model) in enumerate(jobs)))
    paths = [results[key].report() for key in sorted(results)]
    return {"items": len(items), "requests": len(jobs), "paths": paths,
            "failures": failures}


def _print_table(report: dict[str, Any], out: TextIO, threshold: float | None) -> None:
    header = f"{'category':<16} {'model':<24} {'accuracy':>8} {'n':>5} {'errors':>6} " \
             f"{'p50 s':>7} {'p95 s':>7} {'cost $':>10}"
    out.write(header + "\n")
    for path in report["paths"]:
        flag = "  BELOW" if threshold is not None and path["accuracy"] < threshold else ""
        p50 = "-" if path["latency_p50_s"] is None else f"{path['latency_p50_s']:.3f}"
        p95 = "-" if path["latency_p95_s"] is None else f"{path['latency_p95_s']:.3f}"
        out.write(f"{path['category']:<16} {path['model']:<24} {path['accuracy']:>8.1%} "
                  f"{path['n']:>5} {path['errors']:>6} {p50:>7} {p95:>7} "
                  f"{path['cost_usd_total']:>10.6f}{flag}\n")


async def _run(args: argparse.Namespace, config: GatewayConfig,
               items: list[GoldenItem]) -> dict[str, Any]:
    headers = {"authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    progress = None if args.no_progress else sys.stderr
    timeout = httpx.Timeout(args.timeout, connect=10.0)
    if args.url:
        async with httpx.AsyncClient(base_url=args.url.rstrip("/"), timeout=timeout) as client:
            listed = await client.get("/v1/models", headers=headers)
            listed.raise_for_status()
            available = frozenset(m["id"] for m in listed.json()["data"]) & set(config.models)
            report = await audit(items, config, client, available=available, feed=args.feed,
                                 concurrency=args.concurrency, headers=headers,
                                 progress=progress)
    else:
        from routegate.middleware.standalone.app import create_app

        app = create_app(config)
        await app.startup()
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://routegate",
                                         timeout=timeout) as client:
                report = await audit(items, config, client, available=app.gateway.available,
                                     concurrency=args.concurrency, headers=headers,
                                     progress=progress)
        finally:
            await app.shutdown()
    return report


def _main(args: argparse.Namespace) -> int:
    if args.feed and not args.url:
        print("routegate audit: --feed needs --url (a running gateway's quality windows)",
              file=sys.stderr)
        return 2
    try:
        config = load_config(resolve_config_path(args.config))
        items = load_golden(Path(args.golden))
        report = asyncio.run(_run(args, config, items))
    except (ConfigError, ValueError, OSError) as exc:
        print(f"routegate audit: {exc}", file=sys.stderr)
        return 2
    except httpx.HTTPError as exc:
        print(f"routegate audit: cannot reach the gateway: {exc}", file=sys.stderr)
        return 2
    threshold = args.min_accuracy
    below = [p for p in report["paths"] if threshold is not None and p["accuracy"] < threshold]
    report["min_accuracy"] = threshold
    report["passed"] = not below
    _print_table(report, sys.stdout, threshold)
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if below:
        names = ", ".join(f"{p['category']}/{p['model']} {p['accuracy']:.1%}" for p in below)
        print(f"routegate audit: {len(below)} path(s) below {threshold:.0%}: {names}",
              file=sys.stderr)
        return 1
    return 0


def register(subparsers: Any) -> None:
    """Add ``audit`` to the ``routegate`` command's subparsers."""
    parser = subparsers.add_parser("audit", help="run a golden set through every routing path",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("golden", help="GOLDEN.jsonl")
    parser.add_argument("--config", help="gateway.toml (default: $ROUTEGATE_CONFIG or ./gateway.toml)")
    parser.add_argument("--url", help="audit a running gateway (default: one in-process)")
    parser.add_argument("--api-key", help="client key, when the gateway requires one")
    parser.add_argument("--min-accuracy", type=float, default=None,
                        help="exit 1 when a path's accuracy is under this (0..1)")
    parser.add_argument("--report", help="write the JSON report here")
    parser.add_argument("--feed", action="store_true",
                        help="post verdicts to the gateway's /v1/feedback (needs --url)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.set_defaults(func=_main)

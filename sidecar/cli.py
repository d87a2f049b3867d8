"""``routegate classify`` and ``routegate sidecar``: subcommands for the gateway's CLI.

``register(subparsers)`` adds both; each sets ``func(args) -> int``.

* ``routegate classify "text"`` prints the answer (``--json`` for all of it);
  ``routegate classify --eval FILE.jsonl`` classifies every line's ``prompt`` one at a time
  and prints accuracy, macro-F1, per-category recall, a confusion matrix and latency
  percentiles (``--json``: the last line is one JSON object with at least ``accuracy``,
  ``macro_f1`` and ``latency_ms`` {``p50``, ``p99``}). Unless ``--socket`` names a running
  sidecar, one is started for the command and stopped after it (``--lexical-only`` skips
  the model stage altogether).
* ``routegate sidecar --socket PATH`` runs the sidecar process in the foreground.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from routegate.sidecar.client import DEFAULT_CATEGORIES, SidecarClassifier
from routegate.sidecar.protocol import Classification, RouteSpec
from routegate.sidecar.routes import route_specs
from routegate.sidecar.supervisor import SidecarSupervisor, ping

__all__ = ["evaluate", "main", "metrics", "read_rows", "register", "run_classify", "run_sidecar"]


def register(subparsers: Any) -> None:
    """Add the ``classify`` and ``sidecar`` subcommands to an argparse subparsers object."""
    classify = subparsers.add_parser("classify", help="classify a request (or --eval a file)")
    classify.add_argument("text", nargs="?", default=None, help="the request text ('-': stdin)")
    classify.add_argument("--eval", dest="eval_file", default=None, metavar="FILE.jsonl",
                          help="lines with prompt and category fields")
    classify.add_argument("--json", action="store_true", help="machine-readable output")
    classify.add_argument("--config", default=None, help="gateway.toml (routes, budget)")
    classify.add_argument("--socket", default=None, help="use a running sidecar at this socket")
    classify.add_argument("--model", default="", help="GGUF for a sidecar started here")
    classify.add_argument("--threads", type=int, default=1)
    classify.add_argument("--budget-ms", type=float, default=None)
    classify.add_argument("--lexical-only", action="store_true", help="no model stage")
    classify.add_argument("--weights", default="default", choices=("default", "ncfree"),
                          help="shipped weights: all dev sources, or without NC-licensed ones")
    classify.add_argument("--limit", type=int, default=0, help="evaluate the first N lines")
    classify.set_defaults(func=run_classify)

    sidecar = subparsers.add_parser("sidecar", help="run the classifier sidecar in the foreground")
    from routegate.sidecar.server import build_parser

    build_parser(sidecar)
    sidecar.add_argument("--config", default=None, help="gateway.toml whose routes to learn")
    sidecar.set_defaults(func=run_sidecar)


def run_sidecar(args: argparse.Namespace) -> int:
    from routegate.sidecar.server import run

    if getattr(args, "config", None) and not args.routes:
        args.routes = args.config
    return run(args)


# --- classify ---------------------------------------------------------------------------


def _settings(args: argparse.Namespace) -> tuple[tuple[str, ...], tuple[RouteSpec, ...], float, str]:
    """Categories, routes, budget and default category from --config (or the defaults)."""
    if args.config:
        from routegate.middleware.config import load_config

        config = load_config(args.config)
        categories = tuple(config.categories)
        routes = route_specs(config.routes, categories) if config.routes else route_specs(
            categories=categories)
        budget = config.classifier.budget_ms
        default = config.classifier.default_category
    else:
        categories, routes, budget, default = DEFAULT_CATEGORIES, route_specs(), 50.0, "chat"
    if args.budget_ms is not None:
        budget = args.budget_ms
    return categories, routes, budget, default


def run_classify(args: argparse.Namespace) -> int:
    if args.eval_file is None and args.text is None:
        print("routegate classify: give a text or --eval FILE.jsonl", file=sys.stderr)
        return 2
    return asyncio.run(_classify_main(args))


async def _classify_main(args: argparse.Namespace) -> int:
    categories, routes, budget, default = _settings(args)
    supervisor: SidecarSupervisor | None = None
    tmpdir: tempfile.TemporaryDirectory[str] | None = None
    socket = args.socket
    if socket is None and not args.lexical_only:
        tmpdir = tempfile.TemporaryDirectory(prefix="routegate-")
        socket = str(Path(tmpdir.name) / "sidecar.sock")
        supervisor = SidecarSupervisor(socket, model_path=args.model, threads=args.threads,
                                       weights=args.weights)
        if not await supervisor.start():
            print("warning: the sidecar did not start; lexical stage only", file=sys.stderr)
    elif socket is not None and await ping(socket) is None:
        print(f"warning: no sidecar answers at {socket}; lexical stage only", file=sys.stderr)
    classifier = SidecarClassifier(
        socket or "/nonexistent", budget_ms=budget, categories=categories,
        default_category=default, routes=routes, weights=args.weights,
    )
    try:
        if socket is not None and not args.lexical_only:
            await classifier.start()
            await classifier.wait_ready(120.0)
        if args.eval_file is not None:
            rows = read_rows(Path(args.eval_file), args.limit)
            report = await evaluate(classifier, rows, progress=True)
            _print_report(report, as_json=args.json)
        else:
            text = sys.stdin.read() if args.text == "-" else args.text
            answer = await classifier.classify(text)
            if args.json:
                print(json.dumps(_answer_dict(answer)))
            else:
                print(f"{answer.category}  (confidence {answer.confidence:.2f}, "
                      f"{answer.complexity}, by {answer.method}, {answer.latency_ms:.1f} ms)")
    finally:
        await classifier.close()
        if supervisor is not None:
            await supervisor.stop()
        if tmpdir is not None:
            tmpdir.cleanup()
    return 0


def _answer_dict(answer: Classification) -> dict[str, Any]:
    return {
        "category": answer.category,
        "complexity": answer.complexity,
        "confidence": answer.confidence,
        "method": answer.method,
        "latency_ms": round(answer.latency_ms, 3),
    }


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    rank = min(len(ordered) - 1, max(0, round(q / 100.0 * (len(ordered) - 1))))
    return ordered[rank]


def metrics(gold: Sequence[str], predicted: Sequence[str],
            categories: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 (over categories present in gold or predictions), recall, confusion."""
    names = list(categories) + sorted({*gold, *predicted} - set(categories))
    confusion = {g: dict.fromkeys(names, 0) for g in names}
    for g, p in zip(gold, predicted, strict=True):
        confusion[g][p] += 1
    f1s: list[float] = []
    recall: dict[str, float] = {}
    for c in names:
        tp = confusion[c][c]
        fn = sum(confusion[c].values()) - tp
        fp = sum(confusion[g][c] for g in names) - tp
        if tp + fn:
            recall[c] = tp / (tp + fn)
        if tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    correct = sum(g == p for g, p in zip(gold, predicted, strict=True))
    return {
        "n": len(gold),
        "accuracy": correct / len(gold) if gold else 0.0,
        "macro_f1": sum(f1s) / len(f1s) if f1s else 0.0,
        "recall": recall,
        "confusion": {g: {p: n for p, n in row.items() if n} for g, row in confusion.items()
                      if any(row.values())},
    }


def read_rows(path: Path, limit: int = 0) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]
    return rows[:limit] if limit else rows


async def evaluate(classifier: SidecarClassifier, rows: Sequence[dict[str, Any]], *,
                   progress: bool = False) -> dict[str, Any]:
    gold: list[str] = []
    predicted: list[str] = []
    latencies: list[float] = []
    methods: dict[str, int] = {}
    started = time.perf_counter()
    for i, row in enumerate(rows, 1):
        begin = time.perf_counter()
        answer = await classifier.classify(str(row["prompt"]))
        latencies.append((time.perf_counter() - begin) * 1000.0)
        gold.append(str(row["category"]))
        predicted.append(answer.category)
        methods[answer.method] = methods.get(answer.method, 0) + 1
        if progress and (i % 10 == 0 or i == len(rows)):
            done = int(30 * i / len(rows))
            print(f"\r[{'#' * done}{'.' * (30 - done)}] {i}/{len(rows)}", end="",
                  file=sys.stderr, flush=True)
    if progress:
        print(f"  {time.perf_counter() - started:.1f} s", file=sys.stderr)
    report = metrics(gold, predicted, classifier.categories)
    report["latency_ms"] = {
        "p50": round(_percentile(latencies, 50), 3),
        "p90": round(_percentile(latencies, 90), 3),
        "p99": round(_percentile(latencies, 99), 3),
        "max": round(max(latencies, default=0.0), 3),
    }
    report["methods"] = methods
    return report


def _print_report(report: dict[str, Any], *, as_json: bool) -> None:
    print(f"rows {report['n']}  accuracy {report['accuracy']:.3f}  "
          f"macro-F1 {report['macro_f1']:.3f}")
    lat = report["latency_ms"]
    print(f"latency ms  p50 {lat['p50']:.2f}  p90 {lat['p90']:.2f}  p99 {lat['p99']:.2f}  "
          f"max {lat['max']:.2f}")
    print("decided by  " + "  ".join(f"{k} {v}" for k, v in sorted(report["methods"].items())))
    print("recall per category:")
    for name, value in report["recall"].items():
        print(f"  {name:18s} {value:.3f}")
    names = list(report["confusion"])
    short = [n[:6] for n in names]
    print("confusion (rows: gold, columns: predicted):")
    print(" " * 18 + " ".join(f"{s:>6s}" for s in short))
    for gold in names:
        row = report["confusion"][gold]
        print(f"  {gold:16s}" + " ".join(f"{row.get(p, 0):6d}" for p in names))
    if as_json:
        print(json.dumps(report))


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m routegate.sidecar.cli classify ...``)."""
    parser = argparse.ArgumentParser(prog="routegate")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())

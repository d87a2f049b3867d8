"""``routegate classify`` and ``routegate sidecar``: subcommands for the gateway's CLI.

``register(subparsers, load_settings)`` adds both; each sets ``func(args) -> int``. The
gateway's CLI passes ``load_settings``, which reads ``--config`` (a gateway.toml) into
:class:`ClassifySettings`; without it, ``--config`` is refused.

* ``routegate classify "text"`` prints the answer (``--json`` for all of it);
  ``routegate classify --eval FILE.jsonl`` classifies every line's ``prompt`` one at a time
  and prints accuracy, macro-F1, per-category precision and recall, a confusion matrix,
  the calibration table (ECE, accuracy above/below ``escalate_below``) and latency
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
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from routegate.middleware.contracts import Classification
from routegate.sidecar.client import DEFAULT_CATEGORIES, SidecarClassifier
from routegate.sidecar.evaluation import evaluate, metrics, print_report, read_rows
from routegate.sidecar.protocol import RouteSpec
from routegate.sidecar.routes import route_specs
from routegate.sidecar.supervisor import SidecarSupervisor, ping

__all__ = ["ClassifySettings", "evaluate", "main", "metrics", "read_rows", "register", "run_classify",
           "run_sidecar"]


class ClassifySettings(NamedTuple):
    """What ``routegate classify`` takes from a gateway config."""

    categories: tuple[str, ...]
    routes: tuple[RouteSpec, ...]
    budget_ms: float
    default_category: str
    escalate_below: float
    escalate_doubtful: bool = True  # doubtful answers held under escalate_below (confidence.py)


SettingsLoader = Callable[[str], ClassifySettings]
DEFAULT_SETTINGS = ClassifySettings(DEFAULT_CATEGORIES, (), 50.0, "chat", 0.5)  # the config's


def register(subparsers: Any, load_settings: SettingsLoader | None = None) -> None:
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
    classify.set_defaults(func=run_classify, load_settings=load_settings)

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


def _settings(args: argparse.Namespace) -> ClassifySettings:
    """Categories, routes, budget, default category and the escalation threshold from
    --config (or the defaults); --budget-ms wins over both."""
    if args.config:
        settings: ClassifySettings = args.load_settings(args.config)
    else:
        settings = DEFAULT_SETTINGS._replace(routes=route_specs())
    if args.budget_ms is not None:
        settings = settings._replace(budget_ms=args.budget_ms)
    return settings


def run_classify(args: argparse.Namespace) -> int:
    if args.eval_file is None and args.text is None:
        print("routegate classify: give a text or --eval FILE.jsonl", file=sys.stderr)
        return 2
    if args.config and args.load_settings is None:
        print("routegate classify: --config needs the gateway's CLI (`routegate classify`)",
              file=sys.stderr)
        return 2
    return asyncio.run(_classify_main(args))


async def _classify_main(args: argparse.Namespace) -> int:
    categories, routes, budget, default, escalate, doubtful = _settings(args)
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
        doubtful_below=escalate if doubtful else None,
    )
    try:
        if socket is not None and not args.lexical_only:
            await classifier.start()
            await classifier.wait_ready(120.0)
        if args.eval_file is not None:
            rows = read_rows(Path(args.eval_file), args.limit)
            report = await evaluate(classifier, rows, progress=True, escalate_below=escalate)
            print_report(report, as_json=args.json)
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


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m routegate.sidecar.cli classify ...``)."""
    parser = argparse.ArgumentParser(prog="routegate")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())

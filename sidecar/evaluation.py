"""Scoring a classifier on labelled prompts: precision, recall, confusion, calibration.

Used by ``routegate classify --eval`` and ``bench/classify_bench.py``. Calibration matters
because the router escalates answers whose ``confidence`` is under
``classifier.escalate_below``: that is only as good as the confidence it reads, so the
report gives the expected calibration error, a per-bin table, and the accuracy of the
answers above and below the threshold.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from routegate.middleware.contracts import Classification

__all__ = ["calibration", "evaluate", "metrics", "print_report", "read_rows"]

_BINS = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)


class _Classifies(Protocol):
    categories: tuple[str, ...]

    async def classify(self, text: str) -> Classification: ...


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    rank = min(len(ordered) - 1, max(0, round(q / 100.0 * (len(ordered) - 1))))
    return ordered[rank]


def metrics(gold: Sequence[str], predicted: Sequence[str],
            categories: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 (over categories present in gold or predictions), per-category
    precision and recall, and the confusion matrix (gold -> predicted -> count)."""
    names = list(categories) + sorted({*gold, *predicted} - set(categories))
    confusion = {g: dict.fromkeys(names, 0) for g in names}
    for g, p in zip(gold, predicted, strict=True):
        confusion[g][p] += 1
    f1s: list[float] = []
    recall: dict[str, float] = {}
    precision: dict[str, float] = {}
    for c in names:
        tp = confusion[c][c]
        fn = sum(confusion[c].values()) - tp
        fp = sum(confusion[g][c] for g in names) - tp
        if tp + fn:
            recall[c] = tp / (tp + fn)
        if tp + fp:
            precision[c] = tp / (tp + fp)
        if tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    correct = sum(g == p for g, p in zip(gold, predicted, strict=True))
    return {
        "n": len(gold),
        "accuracy": correct / len(gold) if gold else 0.0,
        "macro_f1": sum(f1s) / len(f1s) if f1s else 0.0,
        "precision": precision,
        "recall": recall,
        "confusion": {g: {p: n for p, n in row.items() if n} for g, row in confusion.items()
                      if any(row.values())},
    }


def calibration(confidence: Sequence[float], correct: Sequence[bool],
                escalate_below: float = 0.5) -> dict[str, Any]:
    """Expected calibration error over fixed bins, the bins themselves, and the accuracy
    (and share) of the answers at or above ``escalate_below`` and under it."""
    n = len(confidence)
    bins: list[dict[str, float]] = []
    ece = 0.0
    for lo, hi in itertools.pairwise(_BINS):
        members = [i for i, c in enumerate(confidence)
                   if (lo < c <= hi) or (lo == 0.0 and c == 0.0)]
        if not members:
            continue
        acc = sum(correct[i] for i in members) / len(members)
        conf = sum(confidence[i] for i in members) / len(members)
        ece += len(members) / n * abs(acc - conf)
        bins.append({"lo": lo, "hi": hi, "n": len(members), "accuracy": round(acc, 4),
                     "confidence": round(conf, 4)})

    def side(keep: list[int]) -> dict[str, float]:
        return {"n": len(keep), "share": round(len(keep) / n, 4) if n else 0.0,
                "accuracy": round(sum(correct[i] for i in keep) / len(keep), 4) if keep else 0.0}

    above = [i for i, c in enumerate(confidence) if c >= escalate_below]
    below = [i for i, c in enumerate(confidence) if c < escalate_below]
    return {"ece": round(ece, 4), "escalate_below": escalate_below, "bins": bins,
            "above": side(above), "below": side(below)}


def read_rows(path: Path, limit: int = 0) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]
    return rows[:limit] if limit else rows


async def evaluate(classifier: _Classifies, rows: Sequence[dict[str, Any]], *,
                   progress: bool = False, escalate_below: float = 0.5) -> dict[str, Any]:
    """Classify every row's ``prompt`` one at a time and score against its ``category``."""
    gold: list[str] = []
    predicted: list[str] = []
    confidence: list[float] = []
    latencies: list[float] = []
    methods: dict[str, int] = {}
    started = time.perf_counter()
    for i, row in enumerate(rows, 1):
        begin = time.perf_counter()
        answer = await classifier.classify(str(row["prompt"]))
        latencies.append((time.perf_counter() - begin) * 1000.0)
        gold.append(str(row["category"]))
        predicted.append(answer.category)
        confidence.append(answer.confidence)
        methods[answer.method] = methods.get(answer.method, 0) + 1
        if progress and (i % 10 == 0 or i == len(rows)):
            done = int(30 * i / len(rows))
            print(f"\r[{'#' * done}{'.' * (30 - done)}] {i}/{len(rows)}", end="",
                  file=sys.stderr, flush=True)
    if progress:
        print(f"  {time.perf_counter() - started:.1f} s", file=sys.stderr)
    report = metrics(gold, predicted, classifier.categories)
    report["calibration"] = calibration(
        confidence, [g == p for g, p in zip(gold, predicted, strict=True)], escalate_below)
    report["latency_ms"] = {
        "p50": round(_percentile(latencies, 50), 3),
        "p90": round(_percentile(latencies, 90), 3),
        "p99": round(_percentile(latencies, 99), 3),
        "max": round(max(latencies, default=0.0), 3),
    }
    report["methods"] = methods
    return report


def print_report(report: dict[str, Any], *, as_json: bool = False) -> None:
    """The human-readable report (and, with ``as_json``, one JSON line after it)."""
    print(f"rows {report['n']}  accuracy {report['accuracy']:.3f}  "
          f"macro-F1 {report['macro_f1']:.3f}")
    lat = report["latency_ms"]
    print(f"latency ms  p50 {lat['p50']:.2f}  p90 {lat['p90']:.2f}  p99 {lat['p99']:.2f}  "
          f"max {lat['max']:.2f}")
    print("decided by  " + "  ".join(f"{k} {v}" for k, v in sorted(report["methods"].items())))
    print("per category:        precision  recall")
    for name in report["confusion"]:
        p, r = report["precision"].get(name), report["recall"].get(name)
        print(f"  {name:18s} {'' if p is None else f'{p:9.3f}':>9s}  "
              f"{'' if r is None else f'{r:6.3f}':>6s}")
    names = list(report["confusion"])
    print("confusion (rows: gold, columns: predicted):")
    print(" " * 18 + " ".join(f"{n[:6]:>6s}" for n in names))
    for gold in names:
        row = report["confusion"][gold]
        print(f"  {gold:16s}" + " ".join(f"{row.get(p, 0):6d}" for p in names))
    cal = report.get("calibration")
    if cal:
        print(f"calibration: ECE {cal['ece']:.3f}; confidence >= {cal['escalate_below']:g}: "
              f"{cal['above']['n']} answers, accuracy {cal['above']['accuracy']:.3f}; "
              f"below (escalated): {cal['below']['n']}, accuracy {cal['below']['accuracy']:.3f}")
        print("  confidence      n  accuracy  mean confidence")
        for b in cal["bins"]:
            print(f"  ({b['lo']:.2f}, {b['hi']:.2f}] {b['n']:5d}  {b['accuracy']:8.3f}  "
                  f"{b['confidence']:15.3f}")
    if as_json:
        print(json.dumps(report))

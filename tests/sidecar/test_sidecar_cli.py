"""``routegate classify`` through the subcommand functions (argparse as the CLI builds it)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from routegate.sidecar.cli import main, metrics, register


def test_register_adds_both_subcommands() -> None:
    parser = argparse.ArgumentParser(prog="routegate")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["classify", "hello", "--json"])
    assert callable(args.func) and args.text == "hello"
    args = parser.parse_args(["sidecar", "--socket", "/tmp/x.sock"])
    assert callable(args.func) and args.socket == "/tmp/x.sock"


def test_classify_one_text_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["classify", "--lexical-only", "--json", "Translate 'good morning' to French"]) == 0
    answer = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(answer) >= {"category", "complexity", "confidence", "method", "latency_ms"}
    assert answer["category"] == "translation"


def test_eval_with_the_model_prints_metrics(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "mini.jsonl"
    rows = [
        {"prompt": "how do you say cat in german", "category": "translation"},
        {"prompt": "Write a sonnet about winter mornings", "category": "creative_writing"},
        {"prompt": "who painted the mona lisa", "category": "factual_qa"},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["classify", "--eval", str(data), "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    report = json.loads(out[-1])
    assert report["n"] == 3 and 0.0 <= report["macro_f1"] <= 1.0
    assert set(report["latency_ms"]) >= {"p50", "p99"} and "accuracy" in report
    assert any(line.startswith("confusion") for line in out)
    assert any(line.startswith("per category:") and "precision" in line for line in out)
    assert any(line.startswith("calibration: ECE") for line in out)
    assert set(report["precision"]) <= set(report["recall"])
    cal = report["calibration"]
    assert cal["escalate_below"] == 0.5 and cal["above"]["n"] + cal["below"]["n"] == 3
    assert sum(b["n"] for b in cal["bins"]) == 3 and 0.0 <= cal["ece"] <= 1.0


def test_metrics_macro_f1() -> None:
    report = metrics(["a", "a", "b", "b"], ["a", "b", "b", "b"], ["a", "b"])
    assert report["accuracy"] == 0.75
    assert report["recall"] == {"a": 0.5, "b": 1.0}
    assert abs(report["macro_f1"] - (2 / 3 + 0.8) / 2) < 1e-9

"""`routegate audit`: per-path accuracy on a golden file with known answers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.fakes import FakeProvider, serve_in_thread
from routegate.middleware import create_app
from routegate.middleware.operations.audit import GoldenItem, check_answer
from routegate.middleware.standalone.cli import main
from tests.adaptive.adaptive_helpers import admin
from tests.adaptive.test_admin_api import toml_for

RIGHT = '{"answer": "42", "note": "The answer is 42."}'
GOLDEN = [
    {"prompt": "Hello there, what is six times seven?", "category": "chat", "expected": RIGHT},
    {"prompt": "Hi! Six times seven?", "category": "chat", "expected": "answer is 42",
     "check": "contains"},
    {"prompt": "Hey, 6*7?", "category": "chat", "expected": r"\b42\b", "check": "regex"},
    {"prompt": "Hello, 6*7 as JSON", "category": "chat", "expected": "42", "check": "json",
     "field": "answer"},
]


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[FakeProvider, FakeProvider, Path, Path]]:
    """cheap answers right (provider A); mid answers wrong (provider B)."""
    right = FakeProvider(kind="openai", reply_text=RIGHT)
    wrong = FakeProvider(kind="openai", reply_text="I am not sure, maybe 41.")
    with serve_in_thread(right) as url_a, serve_in_thread(wrong) as url_b:
        config = tmp_path / "gateway.toml"
        config.write_text(toml_for(url_a).replace(
            '[models.mid]\nprovider = "fake"',
            f'[providers.other]\ntype = "openai"\nbase_url = "{url_b}/v1"\n'
            'api_key_env = "ROUTEGATE_TEST_PROVIDER_KEY"\n[models.mid]\nprovider = "other"'))
        golden = tmp_path / "golden.jsonl"
        golden.write_text("\n".join(json.dumps(line) for line in GOLDEN) + "\n")
        yield right, wrong, config, golden


def test_audit_reports_accuracy_per_path_and_fails_below_threshold(
        setup: tuple[FakeProvider, FakeProvider, Path, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    right, wrong, config, golden = setup
    report_path = tmp_path / "report.json"
    code = main(["audit", str(golden), "--config", str(config), "--report", str(report_path),
                 "--min-accuracy", "0.9"])
    out, err = capsys.readouterr()
    assert code == 1
    assert "audit [" in err and "8/8" in err and "chat/mid 0.0%" in err
    assert "cheap" in out and "100.0%" in out and "BELOW" in out
    report = json.loads(report_path.read_text())
    paths = {p["model"]: p for p in report["paths"]}
    assert set(paths) == {"cheap", "mid"}
    assert paths["cheap"]["accuracy"] == 1.0 and paths["cheap"]["n"] == 4
    assert paths["mid"]["accuracy"] == 0.0 and paths["mid"]["errors"] == 0
    assert paths["cheap"]["cost_usd_total"] > 0 and paths["cheap"]["latency_p95_s"] is not None
    assert len(report["failures"]) == 4 and not report["passed"]
    assert len(right.requests) == 4 and len(wrong.requests) == 4
    assert main(["audit", str(golden), "--config", str(config), "--no-progress",
                 "--min-accuracy", "0.0"]) == 0


def test_audit_feeds_a_running_gateways_quality_windows(
        setup: tuple[FakeProvider, FakeProvider, Path, Path]) -> None:
    _, _, config, golden = setup
    with serve_in_thread(create_app(config_path=config), lifespan="on") as url:
        assert main(["audit", str(golden), "--config", str(config), "--url", url, "--feed",
                     "--no-progress"]) == 0
        models = admin(url, "GET", "/admin/stats").json()["models"]
        assert models["cheap"]["quality"]["chat"] == {"score": 1.0, "samples": 4}
        assert models["mid"]["quality"]["chat"] == {"score": 0.0, "samples": 4}
    assert main(["audit", str(golden), "--config", str(config), "--feed"]) == 2


@pytest.mark.parametrize(("check", "expected", "answer", "ok"), [
    ("exact", "42", " 42\n", True), ("exact", "42", "42.", False),
    ("contains", "Paris", "It is Paris.", True), ("contains", "paris", "Paris", False),
    ("regex", r"^\d+$", "42", True), ("regex", r"^\d+$", "forty", False),
    ("json", 42, '```json\n{"a": {"b": [1, 42]}}\n```', True),
    ("json", 41, '{"a": {"b": [1, 42]}}', False), ("json", 42, "not json", False),
])
def test_checks(check: str, expected: object, answer: str, ok: bool) -> None:
    item = GoldenItem(prompt="q", expected=expected, check=check,  # type: ignore[arg-type]
                      field="a.b.1" if check == "json" else None)
    assert check_answer(item, answer) is ok

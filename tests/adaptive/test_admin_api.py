"""The admin API: tokens, weights, enable/disable, reload, explain; and quality feedback."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.fakes import FakeProvider, serve_in_thread
from routegate.middleware import create_app
from tests.adaptive.adaptive_helpers import TOKEN_ENV, admin, chat
from tests.conftest import FAST_TIMEOUTS, pool_config, running_gateway


def toml_for(url: str, *, cheap_price: float = 0.1, extra: str = "") -> str:
    return f"""
[admin]
token_env = "{TOKEN_ENV}"
[server]
request_timeout_s = 10
[providers.fake]
type = "openai"
base_url = "{url}/v1"
api_key_env = "ROUTEGATE_TEST_PROVIDER_KEY"
timeouts = {json.dumps(FAST_TIMEOUTS).replace('":', '" =').replace('{"', '{ "')}
[models.cheap]
provider = "fake"
input_usd_per_mtok = {cheap_price}
capabilities = {{ chat = 0.8 }}
fallbacks = ["mid"]
[models.mid]
provider = "fake"
input_usd_per_mtok = 1.0
capabilities = {{ chat = 0.9 }}
[routes.chat]
min_capability = 0.7
{extra}
"""


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[FakeProvider, str, Path]]:
    fake = FakeProvider(kind="openai")
    with serve_in_thread(fake) as fake_url:
        path = tmp_path / "gateway.toml"
        path.write_text(toml_for(fake_url))
        with serve_in_thread(create_app(config_path=path), lifespan="on") as url:
            yield fake, url, path


def test_missing_and_wrong_tokens_are_refused(served: tuple[FakeProvider, str, Path]) -> None:
    _, url, _ = served
    for path in ("/admin/stats", "/admin/weights"):
        missing = admin(url, "GET", path, token=None)
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert missing.json()["error"]["type"] == "authentication_error"
        assert admin(url, "GET", path, token="admin-test-token-7f3b").status_code == 401
        bare = httpx.get(url + path, headers={"authorization": "Bearer"})
        assert bare.status_code == 401
    assert admin(url, "POST", "/admin/reload", token="nope").status_code == 401
    assert admin(url, "GET", "/admin/stats").status_code == 200
    assert admin(url, "GET", "/admin/nothing").status_code == 404


def test_no_token_configured_means_no_admin_api(fake_openai: tuple[FakeProvider, str]) -> None:
    _, fake_url = fake_openai
    with running_gateway(pool_config({"fake": fake_url})) as url:
        assert admin(url, "GET", "/admin/stats").status_code == 404
        assert httpx.get(url + "/admin/").status_code == 404
    unset = {"token_env": "ROUTEGATE_TEST_UNSET_TOKEN"}
    with running_gateway(pool_config({"fake": fake_url}, extra={"admin": unset})) as url:
        assert admin(url, "GET", "/admin/stats").status_code == 404


def test_weights_and_pins_change_the_next_plan(served: tuple[FakeProvider, str, Path]) -> None:
    _, url, _ = served
    assert chat(url).headers["x-routegate-model"] == "cheap"
    put = admin(url, "PUT", "/admin/weights", {"model": "mid", "category": "chat", "pin": True})
    assert put.status_code == 200, put.text
    assert put.json()["overrides"] == [{"model": "mid", "category": "chat", "weight": None,
                                        "pin": True, "expires_at": None}]
    assert chat(url).headers["x-routegate-model"] == "mid"
    explained = admin(url, "POST", "/admin/explain",
                      {"model": "auto", "messages": [{"role": "user", "content": "Hello there"}]})
    body = explained.json()
    assert body["plan"] == ["mid", "cheap"] and body["category"] == "chat"
    assert body["classification"]["category"] == "chat"
    assert "pinned by an operator" in body["candidates"][0]["reasons"]
    assert admin(url, "PUT", "/admin/weights", {"model": "mid", "category": "chat"}).json()[
        "overrides"] == []
    assert chat(url).headers["x-routegate-model"] == "cheap"
    admin(url, "PUT", "/admin/weights", {"model": "cheap", "weight": 0.1, "ttl_s": 3600})
    assert chat(url).headers["x-routegate-model"] == "mid"
    admin(url, "DELETE", "/admin/weights?model=cheap&category=*")
    assert chat(url).headers["x-routegate-model"] == "cheap"
    bad = admin(url, "PUT", "/admin/weights", {"model": "gpt-17", "weight": 1})
    assert bad.status_code == 404
    assert admin(url, "PUT", "/admin/weights", {"model": "mid", "weight": -1}).status_code == 400
    assert admin(url, "PUT", "/admin/weights", {"model": "mid", "categ": "x"}).status_code == 400


def test_disable_and_enable_a_model(served: tuple[FakeProvider, str, Path]) -> None:
    _, url, _ = served
    assert admin(url, "POST", "/admin/models/cheap/disable").json()["disabled"] == ["cheap"]
    assert chat(url).headers["x-routegate-model"] == "mid"
    assert chat(url, model="cheap").headers["x-routegate-model"] == "mid"  # its fallback
    assert admin(url, "GET", "/admin/stats").json()["models"]["cheap"]["disabled"] is True
    admin(url, "POST", "/admin/models/cheap/enable")
    assert chat(url).headers["x-routegate-model"] == "cheap"
    assert admin(url, "POST", "/admin/models/nope/disable").status_code == 404


def test_reload_swaps_a_valid_file_and_keeps_the_old_config_on_a_broken_one(
        served: tuple[FakeProvider, str, Path]) -> None:
    _, url, path = served
    good = path.read_text()
    fake_url = good.split('base_url = "')[1].split("/v1")[0]
    path.write_text(good + "\n[models.cheap.oops]\n")
    rejected = admin(url, "POST", "/admin/reload")
    assert rejected.status_code == 400
    assert "running config kept" in rejected.json()["error"]["message"]
    path.write_text(good.replace("[models.mid]", "[models.mid]\nfallbacks = [\"ghost\"]"))
    rejected = admin(url, "POST", "/admin/reload")
    assert rejected.status_code == 400 and "ghost" in rejected.json()["error"]["message"]
    path.write_text("this is [not toml")
    assert admin(url, "POST", "/admin/reload").status_code == 400
    assert chat(url).headers["x-routegate-model"] == "cheap"  # old config still serving

    # a valid file: cheap becomes the pricier one, so mid leads the chat route
    path.write_text(toml_for(fake_url, cheap_price=9.0))
    reloaded = admin(url, "POST", "/admin/reload")
    assert reloaded.status_code == 200, reloaded.text
    assert reloaded.json()["available"] == ["cheap", "mid"]
    assert chat(url).headers["x-routegate-model"] == "mid"
    stats = admin(url, "GET", "/admin/stats").json()
    assert stats["models"]["cheap"]["price_usd_per_mtok"]["input"] == 9.0
    assert stats["reloaded_at"] is not None


def test_feedback_feeds_the_quality_window_that_moves_the_category(tmp_path: Path) -> None:
    fake = FakeProvider(kind="openai")
    with serve_in_thread(fake) as fake_url:
        path = tmp_path / "gateway.toml"
        path.write_text(toml_for(fake_url, extra="[adaptive.slo]\nmin_quality = 0.9\n"
                                                 "min_quality_samples = 5\n"))
        with serve_in_thread(create_app(config_path=path), lifespan="on") as url:
            for i in range(5):
                response = chat(url)
                assert response.headers["x-routegate-model"] == "cheap"
                verdict: dict[str, Any] = {"pass": i == 0} if i % 2 else {"score": 0.5}
                sent = httpx.post(url + "/v1/feedback", json={
                    "request_id": response.headers["x-request-id"], **verdict})
                assert sent.status_code == 200, sent.text
                assert sent.json()["model"] == "cheap" and sent.json()["category"] == "chat"
            assert chat(url).headers["x-routegate-model"] == "mid"
            quality = admin(url, "GET", "/admin/stats").json()["models"]["cheap"]["quality"]
            assert quality["chat"]["samples"] == 5 and quality["chat"]["score"] < 0.9
            missing = httpx.post(url + "/v1/feedback", json={"request_id": "nope", "score": 1})
            assert missing.status_code == 404
            both = httpx.post(url + "/v1/feedback", json={"request_id": "x", "score": 1,
                                                          "pass": True})
            assert both.status_code == 400
            assert httpx.post(url + "/v1/feedback", json={"request_id": "x", "score": 2}
                              ).status_code == 400


def test_reload_picks_up_client_keys(served: tuple[FakeProvider, str, Path]) -> None:
    _, url, path = served
    from routegate.middleware.operations.budgets import hash_key

    assert chat(url).status_code == 200  # open: no client keys yet
    path.write_text(path.read_text() + f'\n[clients.team]\nkey_sha256 = "{hash_key("sk-team")}"\n')
    assert admin(url, "POST", "/admin/reload").status_code == 200
    assert chat(url).status_code == 401
    assert chat(url, headers={"authorization": "Bearer sk-team"}).status_code == 200
    path.write_text(path.read_text().replace(hash_key("sk-team"), "sk-team"))
    rejected = admin(url, "POST", "/admin/reload")
    assert rejected.status_code == 400 and "key_sha256" in rejected.json()["error"]["message"]
    assert chat(url, headers={"authorization": "Bearer sk-team"}).status_code == 200


CODE_PROMPT = "Fix the off-by-one error in this Python function: def last(xs): return xs[len(xs)]"


def test_without_routes_capabilities_still_count_and_explain_names_the_threshold(
        tmp_path: Path) -> None:
    fake = FakeProvider(kind="openai")
    with serve_in_thread(fake) as fake_url:
        path = tmp_path / "gateway.toml"
        no_routes = toml_for(fake_url).split("[routes.chat]")[0]
        path.write_text(no_routes.replace("capabilities = { chat = 0.8 }",
                                          "capabilities = { chat = 0.8, code = 0.2 }")
                                 .replace("capabilities = { chat = 0.9 }",
                                          "capabilities = { chat = 0.9, code = 0.9 }"))
        with serve_in_thread(create_app(config_path=path), lifespan="on") as url:
            body = {"model": "auto", "messages": [{"role": "user", "content": CODE_PROMPT}]}
            answer = httpx.post(url + "/v1/chat/completions", json=body, timeout=15.0)
            assert answer.status_code == 200, answer.text
            assert answer.headers["x-routegate-category"] == "code"
            assert answer.headers["x-routegate-model"] == "mid"  # not cheap, declared 0.2
            explained = admin(url, "POST", "/admin/explain", body).json()
    assert explained["category"] == "code" and explained["plan"][0] == "mid"
    assert explained["min_capability"] == 0.7 and explained["threshold_source"] == "default"


def _with_client(path: Path) -> str:
    from routegate.middleware.operations.budgets import hash_key

    text = path.read_text() + f'\n[clients.team]\nkey_sha256 = "{hash_key("sk-team")}"\n'
    path.write_text(text)
    return text


def test_a_reload_that_would_open_the_gateway_is_refused(
        served: tuple[FakeProvider, str, Path], caplog: pytest.LogCaptureFixture) -> None:
    _, url, path = served
    full = _with_client(path)
    assert admin(url, "POST", "/admin/reload").status_code == 200
    assert chat(url).status_code == 401
    caplog.set_level(logging.INFO, logger="routegate")
    for shrunk in (full.split("[clients.team]")[0], ""):  # truncated before [clients.*]; empty
        path.write_text(shrunk)
        refused = admin(url, "POST", "/admin/reload")
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert error["code"] == "invalid_config" and "allow_shrink=true" in error["message"]
        assert "client key" in error["message"]
        assert chat(url).status_code == 401  # still closed
    assert "every model" in error["message"] and "admin token" in error["message"]
    assert admin(url, "GET", "/admin/stats").status_code == 200  # the admin API stays

    path.write_text(full.split("[clients.team]")[0])
    allowed = admin(url, "POST", "/admin/reload?allow_shrink=true")
    assert allowed.status_code == 200, allowed.text
    assert chat(url).status_code == 200  # opened, on purpose
    reloads = [r.getMessage() for r in caplog.records if "config reloaded" in r.getMessage()]
    assert reloads and "clients -team" in reloads[-1]
    from routegate.middleware.operations.budgets import hash_key

    assert hash_key("sk-team") not in caplog.text and "sk-team" not in caplog.text


def test_reload_logs_what_it_added_removed_and_changed(
        served: tuple[FakeProvider, str, Path], caplog: pytest.LogCaptureFixture) -> None:
    _, url, path = served
    caplog.set_level(logging.INFO, logger="routegate")
    text = path.read_text().replace("[models.mid]", "[models.big]\nprovider = \"fake\"\n"
                                                    "[models.mid]")
    path.write_text(text.replace("input_usd_per_mtok = 1.0", "input_usd_per_mtok = 2.0")
                        .replace("[routes.chat]", "[routes.code]\n[routes.chat]"))
    assert admin(url, "POST", "/admin/reload").status_code == 200
    line = [r.getMessage() for r in caplog.records if "config reloaded" in r.getMessage()][-1]
    assert "models +big" in line and "models ~mid" in line and "routes +code" in line


@pytest.mark.parametrize(("change", "param"), [
    ({"ttl_s": 1e308}, "ttl_s"), ({"ttl_s": 0}, "ttl_s"), ({"ttl_s": 31 * 86400}, "ttl_s"),
    ({"expires_at": 1e308}, "expires_at"), ({"expires_at": 1.0}, "expires_at"),
    ({"weight": 1e308}, "weight"), ({"weight": -1}, "weight"),
])
def test_weight_changes_are_bounded(served: tuple[FakeProvider, str, Path],
                                    change: dict[str, float], param: str) -> None:
    _, url, _ = served
    body = {"model": "cheap", "weight": 0.5, **change}
    response = admin(url, "PUT", "/admin/weights", body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert admin(url, "GET", "/admin/weights").json()["overrides"] == []
    ok = admin(url, "PUT", "/admin/weights", {"model": "cheap", "weight": 0.5, "ttl_s": 3600})
    assert ok.status_code == 200 and ok.json()["overrides"][0]["expires_at"] is not None

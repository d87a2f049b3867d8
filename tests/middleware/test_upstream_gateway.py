"""The upstream matrix at the gateway's level: the new provider keys (``proxy``,
``ca_bundle``, response caps) validated at config load and applied per provider, a capped
answer failing over to the fallback model, CR/LF in configured headers and API keys refused
without showing the value, and the environment's proxy used by ``routegate serve``'s stack."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from bench.fakes import FakeProvider, Fault, serve_in_thread
from bench.fakes.forward_proxy import serve_forward_proxy
from routegate.middleware import GatewayConfig, parse_config
from routegate.middleware.config import ConfigError
from tests.conftest import pool_config, running_gateway

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hello there"}]


def with_provider(config: GatewayConfig, name: str, **keys: Any) -> GatewayConfig:
    """``config`` with provider ``name``'s keys changed (checked like a loaded file)."""
    raw = msgspec.to_builtins(config)
    raw["providers"][name].update(keys)
    return parse_config(raw)


@pytest.fixture
def two() -> Iterator[tuple[FakeProvider, FakeProvider, str, str]]:
    """cheap on provider a (falls back to mid), mid and big on provider b."""
    first, second = FakeProvider(kind="openai"), FakeProvider(kind="openai", reply_text="From B.")
    with serve_in_thread(first) as url_a, serve_in_thread(second) as url_b:
        yield first, second, url_a, url_b


def ask(url: str) -> httpx.Response:
    with httpx.Client(trust_env=False, timeout=15.0) as client:  # to the gateway: no proxy
        return client.post(url + "/v1/chat/completions",
                           json={"model": "cheap", "messages": MESSAGES})


def completion(text: str) -> dict[str, Any]:
    """A valid answer: without the caps the gateway would take it from provider a."""
    return {"id": "c1", "object": "chat.completion", "created": 0, "model": "cheap-up",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}


CAPPED = [
    ({"max_response_headers": 100}, {"max_response_headers": 200},
     Fault.status(200, body=completion("From A."), headers={f"x-h{i}": "v" for i in range(101)})),
    ({"max_response_header_bytes": 2048}, {"max_response_header_bytes": 8192},
     Fault.status(200, body=completion("From A."), headers={"x-big": "a" * 3000})),
    ({"max_response_body_bytes": 4096}, {"max_response_body_bytes": 8192},
     Fault.status(200, body=completion("From A." + " " * 5000))),
]


@pytest.mark.parametrize(("capped", "roomy", "fault"), CAPPED,
                         ids=["101 headers", "head over 2 KiB", "body over 4 KiB"])
def test_capped_answer_fails_the_attempt_and_falls_back(
        two: tuple[FakeProvider, FakeProvider, str, str], capped: dict[str, int],
        roomy: dict[str, int], fault: Fault) -> None:
    first, second, url_a, url_b = two
    first.set_default(fault)
    config = pool_config({"a": url_a, "b": url_b})
    with running_gateway(with_provider(config, "a", **roomy)) as url:
        answer = ask(url)  # the same answer within roomier caps: taken from a
    assert answer.status_code == 200 and answer.headers["x-routegate-model"] == "cheap"
    assert answer.json()["choices"][0]["message"]["content"].startswith("From A.")
    with running_gateway(with_provider(config, "a", **capped)) as url:
        response = ask(url)
    assert response.status_code == 200, response.text
    assert response.headers["x-routegate-model"] == "mid"
    assert len(first.requests) == 2 and second.requests[-1].body["model"] == "mid-up"
    second.set_default(fault)  # now every model's answer is over the cap: each is malformed
    with running_gateway(with_provider(with_provider(config, "a", **capped), "b", **capped)) as url:
        failed = ask(url)
    assert failed.status_code == 502
    assert failed.json()["error"]["message"].count("malformed") == 3, failed.text


def test_provider_proxy_key_routes_through_the_proxy(
        two: tuple[FakeProvider, FakeProvider, str, str]) -> None:
    first, _, url_a, url_b = two
    with serve_forward_proxy(credentials="u:p") as proxy:
        config = with_provider(pool_config({"a": url_a, "b": url_b}), "a",
                               proxy=proxy.url.replace("http://", "http://u:p@"))
        with running_gateway(config) as url:
            client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
            raw = client.chat.completions.with_raw_response.create(model="cheap",
                                                                   messages=MESSAGES)
    assert raw.headers["x-routegate-model"] == "cheap"
    assert proxy.seen == [f"POST {url_a}/v1/chat/completions"]
    assert len(first.requests) == 1


def test_environment_proxy_and_no_proxy(two: tuple[FakeProvider, FakeProvider, str, str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    first, second, url_a, url_b = two
    with serve_forward_proxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        port_b = url_b.rsplit(":", 1)[1]
        monkeypatch.setenv("NO_PROXY", f"127.0.0.1:{port_b}")  # b direct, a proxied
        with running_gateway(pool_config({"a": url_a, "b": url_b})) as url:
            assert ask(url).headers["x-routegate-model"] == "cheap"
            first.set_default(Fault.status(500))
            assert ask(url).headers["x-routegate-model"] == "mid"
    # a: the first answer, then the 500 and its same-model retry (retry.same_model_5xx = 1)
    assert proxy.seen == [f"POST {url_a}/v1/chat/completions"] * 3
    assert len(second.requests) == 1


def test_refused_proxy_fails_over(two: tuple[FakeProvider, FakeProvider, str, str]) -> None:
    """ProxyError is a connect error to the relay: the next candidate answers."""
    _, second, url_a, url_b = two
    config = with_provider(pool_config({"a": url_a, "b": url_b}), "a", proxy="http://127.0.0.1:9")
    with running_gateway(config) as url:
        response = ask(url)
    assert response.headers["x-routegate-model"] == "mid" and len(second.requests) == 1


def test_api_key_with_a_newline_skips_the_provider_without_showing_it(
        two: tuple[FakeProvider, FakeProvider, str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    first, _, url_a, url_b = two
    monkeypatch.setenv("ROUTEGATE_TEST_NEWLINE_KEY", "sk-secret-value\n")
    config = pool_config({"a": url_a, "b": url_b})
    config = with_provider(config, "a", api_key_env="ROUTEGATE_TEST_NEWLINE_KEY")
    with running_gateway(config) as url:
        ready = httpx.get(url + "/readyz", trust_env=False).json()
        response = ask(url)
    reason = ready["skipped_providers"]["a"]
    assert "ROUTEGATE_TEST_NEWLINE_KEY" in reason and "CR, LF or NUL" in reason
    assert "secret" not in reason
    assert response.headers["x-routegate-model"] == "mid" and not first.requests


# -- config load ---------------------------------------------------------------------------------

def _load(tmp_path: Path, provider_lines: str) -> GatewayConfig:
    path = tmp_path / "gateway.toml"
    path.write_text('[providers.p]\ntype = "openai"\nbase_url = "https://api.example.com/v1"\n'
                    + provider_lines)
    from routegate.middleware.config import load_config

    return load_config(path)


@pytest.mark.parametrize(("lines", "expected"), [
    ('headers = { x-team = "a\\nb-secret" }', "providers.p.headers.x-team: CR, LF or NUL"),
    ('headers = { "x-team\\r" = "v-secret" }', "providers.p.headers.?: CR, LF or NUL"),
    ('headers = { x-team = "a\\u0000b-secret" }', "providers.p.headers.x-team: CR, LF or NUL"),
    ('proxy = "socks5://secret@127.0.0.1:1"', "providers.p.proxy: an http:// or https:// URL"),
    ('ca_bundle = "/nonexistent/ca.pem"', "providers.p.ca_bundle: no such file"),
    ("max_response_headers = 100000", "providers.p.max_response_headers: must be within 8..1000"),
    ("max_response_header_bytes = 10", "providers.p.max_response_header_bytes: must be within"),
    ("max_response_body_bytes = 0", "providers.p.max_response_body_bytes: must be within"),
])
def test_bad_upstream_keys_are_refused_at_load(tmp_path: Path, lines: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, lines + "\n")
    assert expected in str(info.value)
    assert "secret" not in str(info.value)


def test_upstream_keys_load(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("")
    config = _load(tmp_path, f'proxy = "http://proxy.corp:3128"\nca_bundle = "{bundle}"\n'
                   "max_response_body_bytes = 1048576\n")
    provider = config.providers["p"]
    assert (provider.proxy, provider.ca_bundle) == ("http://proxy.corp:3128", str(bundle))
    assert (provider.max_response_headers, provider.max_response_body_bytes) == (100, 1048576)


def test_providers_sharing_an_origin_must_share_its_settings(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"providers.q: shares https://api.example.com with "
                                          r"providers.p but not its proxy"):
        _load(tmp_path, '[providers.q]\ntype = "openai"\nbase_url = "https://api.example.com/v2"\n'
                        'proxy = "direct"\n')
    config = _load(tmp_path, '[providers.q]\ntype = "openai"\n'
                             'base_url = "https://API.example.com/v2"\n')
    assert set(config.providers) == {"p", "q"}

"""Self-tests of the fake providers' injectable faults, over real HTTP: status codes and
provider error bodies, hangs, resets, streams ending early or erroring, malformed answers,
slow chunks, and noticing a client that leaves.

Part of ``make test``; alone: ``python -m pytest bench/fakes/selftest_faults.py``
"""

from __future__ import annotations

import json
import time
from typing import Any

import anthropic
import httpx
import openai
import pytest

from bench.fakes import Fault, Kind
from bench.fakes._testkit import (
    REPLY,
    Target,
    events,
    finished,
    read_stream,
    text_of,
)


def test_status_faults(t: Target, client: httpx.Client) -> None:
    t.fake.inject(Fault.status(429, headers={"retry-after": "1"}))
    r = t.post(client)
    assert r.status_code == 429 and r.headers["retry-after"] == "1" and "error" in r.json()
    t.fake.inject(Fault.status(503, body={"custom": True}))
    assert t.post(client).json() == {"custom": True}
    t.fake.inject(Fault.status(500), model="only-this", times=2)
    assert t.post(client, model="other").status_code == 200
    assert [t.post(client, model="only-this").status_code for _ in range(3)] == [500, 500, 200]
    t.fake.set_default(Fault.status(502))
    assert t.post(client).status_code == 502
    t.fake.reset()
    assert t.post(client).status_code == 200 and t.fake.pending_faults == 0


def test_provider_error_bodies(servers: dict[Kind, Target], client: httpx.Client) -> None:
    oai, ant, gem = servers["openai"], servers["anthropic"], servers["gemini"]
    oai.fake.inject(Fault.status(400, code="context_length_exceeded"))
    err = oai.post(client).json()["error"]
    assert (err["type"], err["param"], err["code"]) == (
        "invalid_request_error",
        "messages",
        "context_length_exceeded",
    )
    assert "maximum context length" in err["message"]
    oai.fake.inject(Fault.status(400, code="content_policy_violation"))
    err = oai.post(client).json()["error"]
    assert (err["type"], err["code"]) == ("invalid_request_error", "content_policy_violation")
    ant.fake.inject(Fault.status(529))
    sdk = anthropic.Anthropic(base_url=ant.url, api_key="x", max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as info:
        sdk.messages.create(model="c", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 529
    assert info.value.body == {
        "type": "error",
        "request_id": "req_fake",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }
    gem.fake.inject(Fault.status(503))
    assert gem.post(client).json()["error"] == {
        "code": 503,
        "status": "UNAVAILABLE",
        "message": "The model is overloaded. Please try again later.",
    }


def test_hang_then_client_gives_up(t: Target) -> None:
    t.fake.inject(Fault.hang(30))
    path, headers, body = t.request(stream=True)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(t.url + path, headers=headers, json=body, timeout=0.3)
    rec = t.fake.wait_for_stream_close(timeout=2.0)
    assert rec.client_disconnected and rec.fault == "HangFault" and rec.chunks_sent == 0


def test_hang_expires(t: Target, client: httpx.Client) -> None:
    t.fake.inject(Fault.hang(0.1))
    assert t.post(client).status_code == 500  # uvicorn's bare 500: nothing else is possible


def test_hang_after_headers(t: Target, client: httpx.Client) -> None:
    t.fake.inject(Fault.hang_after_headers(30))
    path, headers, body = t.request(stream=True)
    with client.stream(
        "POST", t.url + path, headers=headers, json=body, timeout=httpx.Timeout(5.0, read=0.3)
    ) as r:
        assert r.status_code == 200
        with pytest.raises(httpx.ReadTimeout):
            next(r.iter_raw())
    assert t.fake.wait_for_stream_close(timeout=2.0).client_disconnected
    t.fake.inject(Fault.hang_after_headers(0.05))
    assert t.post(client).json()  # then the normal body


def test_reset_mid_stream(t: Target, client: httpx.Client) -> None:
    t.fake.inject(Fault.reset_mid_stream(after_chunks=2))
    raw, err = read_stream(t, client)
    assert isinstance(err, httpx.RemoteProtocolError)
    assert "".join(text_of(t.kind, events(t.kind, raw))) == "Hello from t"  # two chunks
    assert t.fake.wait_for_stream_close(1.0).completed is False
    t.fake.inject(Fault.reset_mid_stream(0))
    with pytest.raises(httpx.RemoteProtocolError):
        t.post(client)  # non-streaming: half the body, then the drop


def test_reset_seen_by_openai_sdk(servers: dict[Kind, Target]) -> None:
    t = servers["openai"]
    t.fake.inject(Fault.reset_mid_stream(1))
    sdk = openai.OpenAI(base_url=t.url + "/v1", api_key="sk-test", max_retries=0)
    stream = sdk.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], stream=True)
    with pytest.raises(openai.APIConnectionError):
        list(stream)


@pytest.mark.parametrize("with_finish", [False, True])
def test_end_without_done(t: Target, client: httpx.Client, with_finish: bool) -> None:
    t.fake.inject(Fault.end_without_done(3, with_finish_reason=with_finish))
    raw, err = read_stream(t, client)
    assert err is None
    evs = events(t.kind, raw)
    assert len(text_of(t.kind, evs)) == 3
    assert any(finished(t.kind, e) for e in evs) is with_finish
    assert "[DONE]" not in evs and b"message_stop" not in raw


def test_error_mid_stream(t: Target, client: httpx.Client) -> None:
    t.fake.inject(Fault.error_mid_stream(2, 529))
    raw, err = read_stream(t, client)
    assert err is None
    last = events(t.kind, raw)[-1]
    assert last["error"]["type" if t.kind != "gemini" else "status"] in {
        "overloaded_error",
        "server_error",
        "INTERNAL",
    }
    t.fake.inject(Fault.error_mid_stream(2, 529))
    assert t.post(client).status_code == 529


def test_error_mid_stream_sdks(servers: dict[Kind, Target]) -> None:
    ant, oai = servers["anthropic"], servers["openai"]
    ant.fake.inject(Fault.error_mid_stream(1))
    sdk = anthropic.Anthropic(base_url=ant.url, api_key="x", max_retries=0)
    msgs: Any = [{"role": "user", "content": "x"}]
    with (
        pytest.raises(anthropic.APIStatusError),
        sdk.messages.stream(model="c", max_tokens=5, messages=msgs) as s,
    ):
        list(s.text_stream)
    oai.fake.inject(Fault.error_mid_stream(1, 500))
    osdk = openai.OpenAI(base_url=oai.url + "/v1", api_key="sk-test", max_retries=0)
    with pytest.raises(openai.APIError):
        list(osdk.chat.completions.create(model="m", messages=msgs, stream=True))


def test_malformed(t: Target, client: httpx.Client) -> None:
    t.fake.inject(Fault.malformed())
    r = t.post(client)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    with pytest.raises(json.JSONDecodeError):
        r.json()
    t.fake.inject(Fault.malformed())
    raw, _ = read_stream(t, client)
    first = next(line for line in raw.splitlines() if line.startswith(b"data: "))
    assert first == b"data: {not json"


def test_slow_chunks_and_stall(t: Target, client: httpx.Client) -> None:
    t.fake.inject(Fault.slow_chunks(0.05))
    started = time.monotonic()
    raw, err = read_stream(t, client)
    assert err is None and len(text_of(t.kind, events(t.kind, raw))) >= 1
    n = len(text_of(t.kind, events(t.kind, raw)))
    assert time.monotonic() - started >= 0.05 * n  # a lower bound never flakes
    t.fake.inject(Fault.stall_mid_stream(1, 0.3))
    started = time.monotonic()
    raw, err = read_stream(t, client)
    assert err is None and time.monotonic() - started >= 0.3
    assert "".join(text_of(t.kind, events(t.kind, raw))) == REPLY


def test_client_disconnect_detected(t: Target, client: httpx.Client) -> None:
    t.fake.inject(Fault.slow_chunks(0.4))  # a 2 s stream
    path, headers, body = t.request(stream=True)
    with client.stream("POST", t.url + path, headers=headers, json=body) as r:
        next(r.iter_raw())  # the first content chunk
    left_at = time.monotonic()  # closing an unfinished response closes the connection
    rec = t.fake.wait_for_stream_close(timeout=1.0)
    assert rec.client_disconnected and not rec.completed and rec.chunks_sent < 5
    assert rec.closed_at is not None and rec.closed_at - left_at < 1.0
    assert t.fake.stream_closed.is_set()


def test_fault_parse() -> None:
    assert Fault.parse("status:503") == Fault.status(503)
    assert Fault.parse("stall_mid_stream:2:1.5") == Fault.stall_mid_stream(2, 1.5)
    with pytest.raises(ValueError):
        Fault.parse("explode")

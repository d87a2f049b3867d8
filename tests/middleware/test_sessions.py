"""Conversations keep their model: sticky routing per conversation through the real gateway
(uvicorn) over a fake provider, with the official ``openai`` SDK as client.

The pool (tests/conftest.py): ``cheap`` (chat 0.8, code 0.5) < ``mid`` (0.9) < ``big``; chat
needs 0.7 and code 0.85, so a chat turn alone goes to ``cheap`` and a code turn to ``mid``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from bench.fakes import FakeProvider, Fault, serve_in_thread
from routegate.middleware import parse_config
from routegate.middleware.config import ConfigError, SessionsConfig
from routegate.middleware.providers.base import ClientRequest
from routegate.middleware.request.sessions import SessionStore, conversation_key
from routegate.middleware.wire.openai import ChatMessage, ChatRequest
from tests.conftest import NO_5XX_RETRY, pool_config, pool_raw, running_gateway

CODE = "Write a Python function that reverses a linked list."
CHAT = "Thanks! Tell me more."
SESSIONS = {"sessions": {"enabled": True, "ttl_s": 600}, "retry": NO_5XX_RETRY}


@pytest.fixture
def sticky() -> Iterator[tuple[FakeProvider, openai.OpenAI]]:
    fake = FakeProvider(kind="openai")
    with serve_in_thread(fake) as url, running_gateway(
            pool_config({"fake": url}, extra=SESSIONS)) as gateway_url:
        yield fake, openai.OpenAI(base_url=gateway_url + "/v1", api_key="unused", max_retries=0)


class Conversation:
    """A chat through the SDK that keeps its history, as a chat app does."""

    def __init__(self, client: openai.OpenAI, session: str | None = None,
                 system: str = "You are helpful.") -> None:
        self.client = client
        self.headers = {"x-routegate-session": session} if session else {}
        self.messages: list[Any] = [{"role": "system", "content": system}]

    def turn(self, text: str) -> tuple[str, str | None]:
        """Send a user turn; the pool model that answered and the session verdict."""
        self.messages.append({"role": "user", "content": text})
        raw = self.client.chat.completions.with_raw_response.create(
            model="auto", messages=self.messages, extra_headers=self.headers)
        reply = raw.parse()
        self.messages.append({"role": "assistant", "content": reply.choices[0].message.content})
        return raw.headers["x-routegate-model"], raw.headers.get("x-routegate-session")


def test_a_five_turn_conversation_stays_on_one_model(
        sticky: tuple[FakeProvider, openai.OpenAI]) -> None:
    _, client = sticky
    chat = Conversation(client, session="conv-five-turns")
    turns = [chat.turn(text) for text in (CODE, CHAT, CHAT, "Great, thanks.", CHAT)]
    assert turns == [("mid", "new")] + [("mid", "kept")] * 4
    # a conversation without the pin would have gone to cheap for the chat turns
    assert Conversation(client).turn(CHAT) == ("cheap", None)


def test_a_failing_pinned_model_falls_back_and_the_pin_moves(
        sticky: tuple[FakeProvider, openai.OpenAI]) -> None:
    fake, client = sticky
    chat = Conversation(client, session="conv-failing")
    assert chat.turn(CHAT) == ("cheap", "new")
    fake.inject(Fault.status(500), model="cheap-up", times=1)
    assert chat.turn(CHAT) == ("mid", "kept")  # cheap was tried first, failed, mid answered
    assert [r.body["model"] for r in fake.requests[-2:]] == ["cheap-up", "mid-up"]
    # cheap is healthy again, but the conversation now belongs to mid
    assert chat.turn(CHAT) == ("mid", "kept")
    assert chat.turn(CHAT) == ("mid", "kept")


def test_a_harder_turn_escalates_and_never_moves_down(
        sticky: tuple[FakeProvider, openai.OpenAI]) -> None:
    _, client = sticky
    chat = Conversation(client, session="conv-escalates")
    assert chat.turn(CHAT) == ("cheap", "new")
    assert chat.turn(CHAT) == ("cheap", "kept")
    assert chat.turn(CODE) == ("mid", "escalated")  # cheap's code capability is 0.5 < 0.85
    assert chat.turn(CHAT) == ("mid", "kept")  # cheap could answer; mid keeps it
    assert chat.turn("Can you explain that again?") == ("mid", "kept")


def test_a_derived_key_pins_from_the_second_user_turn(
        sticky: tuple[FakeProvider, openai.OpenAI]) -> None:
    _, client = sticky
    chat = Conversation(client, system="You review code.")
    assert chat.turn(CODE) == ("mid", None)  # one user turn: not a conversation yet
    first = chat.turn(CHAT)
    assert first[1] == "new"
    assert [chat.turn(CHAT) for _ in range(3)] == [(first[0], "kept")] * 3
    # another conversation that starts differently is routed on its own
    other = Conversation(client, system="You are a friendly assistant.")
    other.turn(CHAT)
    assert other.turn(CHAT) == ("cheap", "new")


def test_explicit_models_and_disabled_sessions_are_untouched(
        sticky: tuple[FakeProvider, openai.OpenAI], fake_openai: tuple[FakeProvider, str]) -> None:
    _, client = sticky
    raw = client.chat.completions.with_raw_response.create(
        model="big", messages=[{"role": "user", "content": CHAT}],
        extra_headers={"x-routegate-session": "conv-explicit"})
    assert raw.headers["x-routegate-model"] == "big"
    assert "x-routegate-session" not in raw.headers
    _, url = fake_openai
    with running_gateway(pool_config({"fake": url})) as gateway_url:
        plain = openai.OpenAI(base_url=gateway_url + "/v1", api_key="unused", max_retries=0)
        chat = Conversation(plain, session="conv-off")
        assert [chat.turn(text) for text in (CODE, CHAT)] == [("mid", None), ("cheap", None)]


def test_an_unsure_follow_up_is_classified_with_the_previous_turn(
        fake_openai: tuple[FakeProvider, str]) -> None:
    """"Can you explain that again?" alone is an unsure chat; after a code question it is code
    (sessions off: this is the classification, not the pin)."""
    _, url = fake_openai
    with running_gateway(pool_config({"fake": url})) as gateway_url:
        client = openai.OpenAI(base_url=gateway_url + "/v1", api_key="unused", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(model="auto", messages=[
            {"role": "user", "content": CODE}, {"role": "assistant", "content": "def f(): ..."},
            {"role": "user", "content": "Can you explain that again?"}])
        assert raw.headers["x-routegate-category"] == "code"
        # a clear last turn decides, whatever came before
        raw = client.chat.completions.with_raw_response.create(model="auto", messages=[
            {"role": "user", "content": "Hello there, how are you?"},
            {"role": "assistant", "content": "Fine."}, {"role": "user", "content": CODE}])
        assert raw.headers["x-routegate-category"] == "code"


def _request(*messages: tuple[str, str]) -> ClientRequest:
    chat = ChatRequest(model="auto", messages=[ChatMessage(role=r, content=c)  # type: ignore[arg-type]
                                               for r, c in messages])
    return ClientRequest({}, chat, False)


def test_conversation_keys_are_hashes_per_client() -> None:
    one = _request(("user", "hi"))
    two = _request(("system", "s"), ("user", "hi"), ("assistant", "hello"), ("user", "more"))
    assert conversation_key(one, {}, None, derive=True) is None  # a single turn
    derived = conversation_key(two, {}, None, derive=True)
    assert derived is not None and len(derived) == 32 and "hi" not in derived
    assert conversation_key(two, {}, None, derive=False) is None
    longer = _request(("system", "s"), ("user", "hi"), ("assistant", "hello"), ("user", "more"),
                      ("assistant", "x"), ("user", "again"))
    assert conversation_key(longer, {}, None, derive=True) == derived  # the same conversation
    header = {"x-routegate-session": "my-secret-session"}
    keyed = conversation_key(one, header, "alice", derive=False)
    assert keyed is not None and "secret" not in keyed
    assert keyed != conversation_key(one, header, "bob", derive=False)  # clients never share


def test_the_store_is_bounded_and_pins_expire() -> None:
    now = [1000.0]
    store = SessionStore(SessionsConfig(enabled=True, ttl_s=60, max_entries=2), lambda: now[0])
    heard: list[tuple[str, str]] = []
    store.announce = lambda key, model, _: heard.append((key, model))
    store.put("a", "cheap")
    store.put("b", "mid")
    store.put("c", "big")
    assert (store.pinned("a"), store.pinned("b"), store.pinned("c")) == (None, "mid", "big")
    now[0] += 61
    assert store.pinned("b") is None and len(store) == 1
    store.put("d", "cheap")
    assert len(store) == 1  # the expired one went as the new one came
    store.put("d", "cheap")  # a refresh right away is not worth an event
    assert heard == [("a", "cheap"), ("b", "mid"), ("c", "big"), ("d", "cheap")]
    store.apply("e", "mid", now[0] - 1)  # another replica's expired pin
    assert store.pinned("e") is None


def test_session_config_is_bounded() -> None:
    for bad in ({"ttl_s": 0}, {"max_entries": 0}, {"ttl_s": float("nan")}):
        with pytest.raises(ConfigError, match="sessions"):
            parse_config(pool_raw({"fake": "http://127.0.0.1:1"}, extra={"sessions": bad}))


def test_a_disabled_pinned_model_moves_the_pin(fake_openai: tuple[FakeProvider, str]) -> None:
    _, url = fake_openai
    token = "sessions-admin-token"
    os.environ["ROUTEGATE_SESSIONS_ADMIN"] = token
    extra = {**SESSIONS, "admin": {"token_env": "ROUTEGATE_SESSIONS_ADMIN"}}
    with running_gateway(pool_config({"fake": url}, extra=extra)) as gateway_url:
        client = openai.OpenAI(base_url=gateway_url + "/v1", api_key="unused", max_retries=0)
        admin = {"authorization": f"Bearer {token}"}
        chat = Conversation(client, session="conv-disabled")
        assert chat.turn(CODE) == ("mid", "new")
        assert httpx.post(gateway_url + "/admin/models/mid/disable", headers=admin,
                          timeout=10.0).status_code == 200
        assert chat.turn(CHAT) == ("cheap", "moved")
        assert httpx.post(gateway_url + "/admin/models/mid/enable", headers=admin,
                          timeout=10.0).status_code == 200
        assert chat.turn(CHAT) == ("cheap", "kept")  # the pin moved with the answer
        status = httpx.get(gateway_url + "/readyz", timeout=10.0).json()["sessions"]
        assert status == {"entries": 1, "new": 1, "kept": 1, "moved": 1, "escalated": 0}

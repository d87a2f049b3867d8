"""Conversations keep their model across replicas: three ``routegate serve`` processes on one
real redis-server; a conversation pinned on one replica is continued on the others."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import redis

from bench.fakes import FakeProvider, serve_in_thread
from tests.fleet.fleet_harness import Fleet, running_fleet
from tests.redis_harness import RedisServer

CODE = "Write a Python function that reverses a linked list."
CHAT = "Thanks! Tell me more."


def _turn(fleet: Fleet, replica: int, messages: list[Any], session: str | None) -> str:
    client = openai.OpenAI(base_url=fleet.urls[replica] + "/v1", api_key="none", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=messages,
        extra_headers={"x-routegate-session": session} if session else {})
    messages.append({"role": "assistant", "content": raw.parse().choices[0].message.content})
    return raw.headers["x-routegate-model"]


def _pins(fleet: Fleet, replica: int) -> int:
    entries: int = fleet.readyz(replica)["sessions"]["entries"]
    return entries


def test_a_conversation_continued_on_another_replica_keeps_its_model(
        tmp_path: Path, redis_server: RedisServer) -> None:
    fake = FakeProvider(kind="openai")
    with serve_in_thread(fake) as fake_url, running_fleet(
            tmp_path, redis_server, {"fake": fake_url},
            extra={"sessions": {"enabled": True, "ttl_s": 600}}) as fleet:
        messages: list[Any] = [{"role": "user", "content": CODE}]
        assert _turn(fleet, 0, messages, "fleet-conversation") == "mid"
        fleet.wait_until(lambda: _pins(fleet, 1) >= 1 and _pins(fleet, 2) >= 1,
                         "the pin made on replica 0 on the others")
        models = []
        for replica in (1, 2, 1, 2):
            messages.append({"role": "user", "content": CHAT})
            models.append(_turn(fleet, replica, messages, "fleet-conversation"))
        assert models == ["mid"] * 4  # alone, a chat turn goes to cheap
        fresh = [{"role": "user", "content": CHAT}]
        assert _turn(fleet, 2, fresh, "another-conversation") == "cheap"

        # a replica started later reads the pins written through to Redis
        stored = redis.Redis.from_url(redis_server.url, decode_responses=True)

        def index() -> str | None:  # pins are written through with the next flush
            keys = [str(k) for k in stored.keys("*") if str(k).endswith(":sess")]
            return keys[0] if keys and stored.zcard(keys[0]) == 2 else None

        fleet.wait_until(index, "both pins written through to Redis")
        names = [str(k) for k in stored.keys("*")]
        assert not any("fleet-conversation" in k for k in names)  # hashes only
    with serve_in_thread(fake) as fake_url, running_fleet(
            tmp_path, redis_server, {"fake": fake_url}, replicas=1,
            extra={"sessions": {"enabled": True, "ttl_s": 600}}) as later:
        later.wait_until(lambda: _pins(later, 0) >= 2, "the pins read at start")
        messages.append({"role": "user", "content": CHAT})
        assert _turn(later, 0, messages, "fleet-conversation") == "mid"

"""Operator state, reloads, feedback and stats are the fleet's: three ``routegate serve``
processes on one Redis; what is set through one replica's admin API (or feedback endpoint)
shows on the others within a bounded time."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import redis

from bench.fakes import FakeProvider, serve_in_thread
from tests.fleet.fleet_harness import Fleet, client_entry, running_fleet
from tests.redis_harness import RedisServer

ALICE, BOB = "sk-fleet-alice", "sk-fleet-bob"
HELLO = {"model": "auto", "messages": [{"role": "user", "content": "Hello there"}]}
PREFIX = f"rg-test-{os.getpid()}:"  # the harness's key prefix


@pytest.fixture
def fleet(tmp_path: Path, redis_server: RedisServer) -> Iterator[Fleet]:
    fake = FakeProvider(kind="openai")
    with serve_in_thread(fake) as fake_url, running_fleet(
            tmp_path, redis_server, {"fake": fake_url},
            extra={"clients": {"alice": client_entry(ALICE), "bob": client_entry(BOB)}}
    ) as running:
        yield running


def _plan(fleet: Fleet, replica: int) -> list[str]:
    explained = fleet.admin(replica, "POST", "/admin/explain", json=HELLO)
    assert explained.status_code == 200, explained.text
    plan: list[str] = explained.json()["plan"]
    return plan


def _stats(fleet: Fleet, replica: int) -> dict[str, Any]:
    stats: dict[str, Any] = fleet.admin(replica, "GET", "/admin/stats").json()
    return stats


def _replica_id(fleet: Fleet, replica: int) -> str:
    name: str = _stats(fleet, replica)["fleet"]["replica"]
    return name


def test_weights_pins_and_disabled_models_reach_every_replica(
        fleet: Fleet, redis_server: RedisServer) -> None:
    assert [_plan(fleet, i)[0] for i in range(3)] == ["cheap"] * 3
    put = fleet.admin(0, "PUT", "/admin/weights",
                      json={"model": "mid", "category": "chat", "pin": True, "ttl_s": 600})
    assert put.status_code == 200, put.text
    fleet.wait_until(lambda: _plan(fleet, 2)[0] == "mid", "the pin set on replica 0 on 2")
    pinned = fleet.admin(1, "GET", "/admin/weights").json()["overrides"]
    assert pinned == put.json()["overrides"]  # the same expiry everywhere
    assert pinned[0]["expires_at"] is not None

    # cleared through another replica, a weight of 0 through a third
    assert fleet.admin(1, "DELETE", "/admin/weights?model=mid&category=chat").json()["cleared"]
    fleet.wait_until(lambda: _plan(fleet, 0)[0] == "cheap", "the clear on replica 0")
    fleet.admin(2, "PUT", "/admin/weights", json={"model": "cheap", "weight": 0})
    fleet.wait_until(lambda: "cheap" not in _plan(fleet, 0), "weight 0 on replica 0")
    fleet.admin(0, "PUT", "/admin/weights", json={"model": "cheap"})  # cleared

    # disabled on one, enabled on another
    assert fleet.admin(0, "POST", "/admin/models/cheap/disable").status_code == 200
    fleet.wait_until(lambda: "cheap" not in _plan(fleet, 2), "the disable on replica 2")
    assert fleet.admin(1, "GET", "/admin/weights").json()["disabled"] == ["cheap"]
    fleet.admin(2, "POST", "/admin/models/cheap/enable")
    fleet.wait_until(lambda: _plan(fleet, 0)[0] == "cheap", "the enable on replica 0")

    # a change whose message got lost (written to the snapshot only) heals at the resync
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.hset(PREFIX + "operator", "d:cheap", "1")
        client.hincrby(PREFIX + "operator", "v", 1)
    finally:
        client.close()
    for replica in range(3):
        fleet.wait_until(lambda r=replica: "cheap" not in _plan(fleet, r),
                         f"the resync on replica {replica}")


def test_with_redis_down_fleet_wide_steps_say_503(fleet: Fleet,
                                                  redis_server: RedisServer) -> None:
    assert asyncio.run(_answered(fleet, 0, ALICE, "down-1")) == "cheap"
    redis_server.kill()
    refused = fleet.wait_until(
        lambda: (r := fleet.admin(1, "POST", "/admin/models/cheap/disable")).status_code
        != 200 and r, "a refused change while Redis is down")
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "state_unavailable"
    # nothing changed anywhere, and routing goes on
    assert fleet.admin(1, "GET", "/admin/weights").json()["disabled"] == []
    assert _plan(fleet, 1)[0] == "cheap"
    # a reload happens here, and says the others were not told
    reload = fleet.admin(2, "POST", "/admin/reload")
    assert reload.status_code == 503 and "this replica only" in reload.json()["error"]["message"]
    # feedback: the replica that answered needs no Redis; another one cannot look it up
    assert _vote(fleet, 0, ALICE, "down-1", 1.0).status_code == 200
    elsewhere = _vote(fleet, 1, ALICE, "down-1", 1.0)
    assert elsewhere.status_code == 503, elsewhere.text
    assert elsewhere.json()["error"]["code"] == "state_unavailable"


def test_reload_through_one_replica_reloads_them_all(fleet: Fleet,
                                                     redis_server: RedisServer) -> None:
    raw = msgspec.toml.decode(fleet.config_path.read_bytes())
    raw["models"]["spare"] = {**raw["models"]["cheap"], "upstream": "spare-up"}
    fleet.config_path.write_bytes(msgspec.toml.encode(raw))
    reloaded = fleet.admin(0, "POST", "/admin/reload")
    assert reloaded.status_code == 200, reloaded.text
    assert "spare" in reloaded.json()["models"]
    for replica in (1, 2):
        fleet.wait_until(lambda r=replica: "spare" in _stats(fleet, r)["models"],
                         f"the reload on replica {replica}")

    # a reload whose message got lost (only the generation counted) happens at the resync
    before = [_stats(fleet, i)["reloaded_at"] for i in range(3)]
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.hincrby(PREFIX + "operator", "r", 1)
    finally:
        client.close()
    for replica in range(3):
        fleet.wait_until(lambda r=replica: _stats(fleet, r)["reloaded_at"] != before[r],
                         f"the resync's reload on replica {replica}")


async def _answered(fleet: Fleet, replica: int, key: str, request_id: str) -> str:
    """Ask ``replica``; the pool model that answered."""
    client = fleet.client(replica, key)
    try:
        raw = await client.chat.completions.with_raw_response.create(
            model="auto", max_tokens=8, messages=[{"role": "user", "content": "Hello there"}],
            extra_headers={"x-request-id": request_id})
    finally:
        await client.close()
    assert raw.headers["x-request-id"] == request_id
    return raw.headers["x-routegate-model"]


def _vote(fleet: Fleet, replica: int, key: str, request_id: str, score: float) -> Any:
    return httpx.post(fleet.urls[replica] + "/v1/feedback", timeout=10.0,
                      headers={"authorization": f"Bearer {key}"},
                      json={"request_id": request_id, "score": score})


def _quality(fleet: Fleet, replica: int, model: str = "cheap") -> Any:
    return _stats(fleet, replica)["models"][model]["quality"].get("chat")


def test_feedback_reaches_the_replica_that_answered(fleet: Fleet) -> None:
    assert asyncio.run(_answered(fleet, 0, ALICE, "fleet-req-1")) == "cheap"
    first = fleet.wait_until(
        lambda: (r := _vote(fleet, 1, ALICE, "fleet-req-1", 0.0)).status_code != 404 and r,
        "the answered request known on replica 1")
    assert first.status_code == 200, first.text
    assert first.json()["model"] == "cheap" and first.json()["recorded"] is True
    fleet.wait_until(lambda: _quality(fleet, 0) == {"score": 0.0, "samples": 1},
                     "the vote recorded on replica 0")

    # a second vote, through a third replica, replaces the first: still one sample
    assert _vote(fleet, 2, ALICE, "fleet-req-1", 1.0).status_code == 200
    fleet.wait_until(lambda: _quality(fleet, 0) == {"score": 1.0, "samples": 1},
                     "the second vote replacing the first on replica 0")
    # another client cannot vote on it, on any replica
    for replica in range(3):
        refused = _vote(fleet, replica, BOB, "fleet-req-1", 0.0)
        assert refused.status_code == 404, refused.text
        assert refused.json()["error"]["code"] == "request_not_found"
    assert _quality(fleet, 1) is None and _quality(fleet, 2) is None
    assert _quality(fleet, 0) == {"score": 1.0, "samples": 1}

    # the answering replica goes away: the next vote is held by the one that received it,
    # and a vote after that (through another replica) replaces it there
    holder = _replica_id(fleet, 1)
    fleet.processes[0].terminate()
    fleet.processes[0].wait(10)
    third = fleet.wait_until(
        lambda: (r := _vote(fleet, 1, ALICE, "fleet-req-1", 0.0)).json().get("replica") == holder
        and r, "replica 1 taking the vote over")
    assert third.json()["recorded"] is True
    assert _quality(fleet, 1) == {"score": 0.0, "samples": 1}
    assert _vote(fleet, 2, ALICE, "fleet-req-1", 1.0).json()["replica"] == holder
    fleet.wait_until(lambda: _quality(fleet, 1) == {"score": 1.0, "samples": 1},
                     "the vote through replica 2 replacing replica 1's")


def test_stats_show_every_replica_and_the_sums(fleet: Fleet) -> None:
    async def traffic() -> None:
        await asyncio.gather(*(_answered(fleet, replica, ALICE, f"stats-{n}")
                               for n, replica in enumerate([0, 0, 1, 2, 2, 2])))

    asyncio.run(traffic())
    names = sorted(_replica_id(fleet, i) for i in range(3))
    for replica in range(3):
        def summed(r: int = replica) -> Any:
            fleet_stats = _stats(fleet, r)["fleet"]
            return (fleet_stats["alive"] == names
                    and fleet_stats["summed"]["requests"].get("cheap") == 6 and fleet_stats)

        stats = fleet.wait_until(summed, f"the fleet's sums on replica {replica}")
        assert stats["summed"]["requests_total"] == 6
        per_replica = sorted(stats["replicas"][name]["requests"]["cheap"] for name in names)
        assert per_replica == [1, 2, 3]

"""The real sidecar process with the real default model (all-MiniLM-L6-v2 via llama.cpp).

No timing asserts: "slow" and "down" are made deterministic with SIGSTOP and SIGKILL.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from routegate.middleware.config import load_config
from routegate.sidecar.client import SidecarClassifier
from routegate.sidecar.convert import ensure_default_model
from routegate.sidecar.lexical import HASH_BITS, LexicalModel
from routegate.sidecar.protocol import (
    ClassifyRequest,
    ClassifyResult,
    Configure,
    Configured,
    Expired,
    Ping,
    Pong,
    RouteSpec,
    decode_reply,
    encode_frame,
    read_frame,
)
from routegate.sidecar.routes import route_specs
from routegate.sidecar.supervisor import SidecarSupervisor

MODEL = str(ensure_default_model())


@pytest.fixture
async def sidecar(tmp_path: Path) -> AsyncIterator[SidecarSupervisor]:
    supervisor = SidecarSupervisor(tmp_path / "s.sock", model_path=MODEL, threads=1,
                                   backoff_initial_s=0.05)
    assert await supervisor.start()
    yield supervisor
    await supervisor.stop()


async def _client(supervisor: SidecarSupervisor, **kwargs: object) -> SidecarClassifier:
    client = SidecarClassifier(supervisor.socket_path, **kwargs)  # type: ignore[arg-type]
    await client.start()
    assert await client.wait_ready(60.0)
    return client


async def test_protocol_round_trips(sidecar: SidecarSupervisor) -> None:
    reader, writer = await asyncio.open_unix_connection(str(sidecar.socket_path))
    try:
        writer.write(encode_frame(Ping(id=1)))
        pong = decode_reply(await read_frame(reader))
        assert isinstance(pong, Pong) and pong.id == 1 and pong.pid == sidecar.pid
        assert "translation" in pong.categories and pong.model == "all-MiniLM-L6-v2"

        writer.write(encode_frame(ClassifyRequest(
            id=2, text="how do you say hotel in finnish", budget_ms=10_000)))
        result = decode_reply(await read_frame(reader))
        assert isinstance(result, ClassifyResult) and result.id == 2
        assert abs(sum(result.probs) - 1.0) < 1e-3 and result.tokens > 0
        assert result.categories[result.probs.index(max(result.probs))] == "translation"

        # A budget too small for any useful input is refused, not computed for nobody.
        writer.write(encode_frame(ClassifyRequest(id=3, text="hello", budget_ms=0.01)))
        expired = decode_reply(await read_frame(reader))
        assert isinstance(expired, Expired) and expired.id == 3

        routes = (RouteSpec(name="yes", examples=("yes please",)),
                  RouteSpec(name="no", examples=("no thanks",)))
        writer.write(encode_frame(Configure(id=4, routes=routes)))
        configured = decode_reply(await read_frame(reader))
        assert isinstance(configured, Configured) and configured.categories == ("yes", "no")
    finally:
        writer.close()


async def test_model_stage_answers(sidecar: SidecarSupervisor) -> None:
    client = await _client(sidecar, use_lexical=False, budget_ms=10_000)
    try:
        answer = await client.classify("how do you say hotel in finnish")
        assert (answer.category, answer.method) == ("translation", "model")
        again = await client.classify("how do you say hotel in finnish")
        assert (again.category, again.method) == ("translation", "cache")
    finally:
        await client.close()


async def test_stage_disagreement_lowers_the_confidence(sidecar: SidecarSupervisor) -> None:
    # A lexical model that always leans to chat (bias only) against a model stage that
    # knows a code request: the stages disagree, so the answer's confidence is scaled down.
    categories = ("code", "chat")
    answers = []
    for scale in (1.0, 0.5):
        lexical = LexicalModel(categories, np.zeros((1 << HASH_BITS, 2), dtype=np.float16),
                               np.array([0.0, 0.4], dtype=np.float32), accept_confidence=1.01,
                               mix_weight=1.0, disagree_scale=scale)
        client = await _client(sidecar, lexical=lexical, categories=categories,
                               routes=route_specs(categories=categories), budget_ms=10_000)
        try:
            answers.append(await client.classify(
                "Write a Python function that reverses a linked list in place."))
        finally:
            await client.close()
    plain, scaled = answers
    assert plain.method == scaled.method == "model" and plain.category == scaled.category
    assert abs(scaled.confidence - plain.confidence * 0.5) < 1e-3
    # As the gateway builds it (escalate_doubtful): the disagreeing answer goes under the
    # router's escalate_below whatever its mixed confidence (>= 0.5 of two routes).
    lexical = replace(lexical, disagree_scale=1.0)
    client = await _client(sidecar, lexical=lexical, categories=categories, doubtful_below=0.5,
                           routes=route_specs(categories=categories), budget_ms=10_000)
    try:
        held = await client.classify("Write a Python function that reverses a linked list.")
    finally:
        await client.close()
    assert held.method == "model" and held.category == plain.category
    assert plain.confidence >= 0.5 > held.confidence


async def test_document_under_a_weak_instruction_escalates() -> None:
    # A lexical stage sure of "code" whatever it reads: a pasted article under "Thoughts" is
    # still held under escalate_below, the same article under a clear instruction is not.
    categories = ("code", "chat")
    lexical = LexicalModel(categories, np.zeros((1 << HASH_BITS, 2), dtype=np.float16),
                           np.array([3.0, 0.0], dtype=np.float32), accept_confidence=0.9)
    article = " ".join(f"The council met on day {i} and agreed on the harbour budget."
                       for i in range(30))
    weak, clear = f"{article}\n\nThoughts", f"{article}\n\nSummarize the article above."
    answers = {}
    for below in (None, 0.5):
        client = SidecarClassifier("/nonexistent", lexical=lexical, categories=categories,
                                   routes=route_specs(categories=categories), doubtful_below=below)
        answers[below] = [await client.classify(t) for t in (weak, clear)]
    assert all(a.method == "lexical" and a.confidence > 0.9 for a in answers[None])
    held_weak, held_clear = answers[0.5]
    assert held_weak.category == "code" and held_weak.confidence < 0.5
    assert held_clear.confidence == answers[None][1].confidence


async def test_budget_expiry_falls_back(sidecar: SidecarSupervisor) -> None:
    client = await _client(sidecar, use_lexical=False, budget_ms=200.0)
    pid = sidecar.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # a sidecar that never answers in time
    try:
        answer = await client.classify("Write a poem about the sea")
        assert answer.method == "fallback"
        assert answer.category == "creative_writing"  # the heuristic fallback still routes
    finally:
        os.kill(pid, signal.SIGCONT)
        await client.close()


async def test_crash_restart_and_answers_while_down(sidecar: SidecarSupervisor) -> None:
    client = await _client(sidecar, budget_ms=10_000, accept_confidence=1.01)
    try:
        first_pid = sidecar.pid
        assert (await client.classify("Translate 'good night' into Italian")).method == "model"
        assert first_pid is not None
        os.kill(first_pid, signal.SIGKILL)
        # While it is down (or before the client noticed), classification still answers.
        answer = await client.classify("Summarize the following article in two sentences.")
        assert answer.method in ("fallback", "model")
        assert answer.category == "summarization"
        assert await sidecar.wait_restarted(first_pid, timeout_s=60.0)
        assert sidecar.restarts >= 1 and sidecar.alive
        assert await client.wait_ready(60.0)
        after = await client.classify("Write a limerick about a dog who loves snow")
        assert (after.category, after.method) == ("creative_writing", "model")
    finally:
        await client.close()


async def test_route_added_in_config_changes_classification(
    sidecar: SidecarSupervisor, tmp_path: Path
) -> None:
    billing = [
        "I was charged twice for my subscription this month",
        "How do I get a refund for last month's invoice?",
        "Please update the credit card on my account for payments",
    ]
    categories = ["code", "math", "reasoning", "creative_writing", "summarization",
                  "translation", "extraction", "classification", "factual_qa", "chat"]
    base = "".join(f"[routes.{name}]\n" for name in categories)
    added = base + (
        '[routes.billing]\ndescription = "Payments, invoices, refunds and charges"\n'
        f"examples = {json.dumps(billing)}\n"
    )
    before_cfg, after_cfg = tmp_path / "before.toml", tmp_path / "after.toml"
    before_cfg.write_text(base)
    after_cfg.write_text(added)

    results: dict[str, list[str]] = {}
    for name, path in (("before", before_cfg), ("after", after_cfg)):
        config = load_config(path)
        client = await _client(
            sidecar, budget_ms=10_000, categories=config.categories,
            routes=route_specs(config.routes, config.categories),
        )
        try:
            results[name] = [(await client.classify(text)).category for text in billing]
        finally:
            await client.close()
    assert "billing" not in results["before"]
    assert results["after"] == ["billing"] * len(billing)

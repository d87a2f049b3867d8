"""The generative stage inside the real sidecar process (MiniLM + SmolLM2-135M on CPU),
asked by the gateway's client: modes, budget expiry, route changes. No timing asserts: the
budgets are either far above what the stage needs (10 s) or far below it (one token)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from routegate.sidecar.convert import ensure_default_model
from routegate.sidecar.local_llm import default_model_path
from routegate.sidecar.protocol import (
    ClassifyRequest,
    ClassifyResult,
    Expired,
    RouteSpec,
    decode_reply,
    encode_frame,
    read_frame,
)
from routegate.sidecar.supervisor import SidecarSupervisor
from tests.sidecar.test_sidecar_process import _client

TEXT = "Translate 'good night' into Italian"


@pytest.fixture
async def sidecar(tmp_path: Path) -> AsyncIterator[SidecarSupervisor]:
    supervisor = SidecarSupervisor(
        tmp_path / "s.sock", model_path=str(ensure_default_model()), threads=1,
        llm_model_path=default_model_path(), startup_timeout_s=300)
    assert await supervisor.start()
    yield supervisor
    await supervisor.stop()


async def test_modes(sidecar: SidecarSupervisor) -> None:
    always = await _client(sidecar, llm_mode="always", budget_ms=10_000, cache_size=0)
    try:
        assert always.llm_model  # learnt from the sidecar (Configured, Pong)
        answer = await always.classify(TEXT)
        assert answer.method == "llm" and 0.0 < answer.confidence <= 1.0
    finally:
        await always.close()
    # escalate: only answers under the threshold go to the LLM (model stage forced: no lexical)
    for below, method in ((0.0, "model"), (1.01, "llm")):
        client = await _client(sidecar, llm_mode="escalate", llm_escalate_below=below,
                               use_lexical=False, budget_ms=10_000)
        try:
            assert (await client.classify(TEXT)).method == method
        finally:
            await client.close()


async def test_budget_expiry_answers_from_the_fast_stages(sidecar: SidecarSupervisor) -> None:
    reader, writer = await asyncio.open_unix_connection(str(sidecar.socket_path))
    try:
        for stage, budget in (("llm", 5.0), ("embed", 5_000.0), ("llm", 10_000.0)):
            writer.write(encode_frame(ClassifyRequest(id=1, text=TEXT, budget_ms=budget,
                                                      stage=stage)))  # type: ignore[arg-type]
            reply = decode_reply(await read_frame(reader))
            if budget < 10:  # cannot fit a useful request: refused at once, not computed
                assert isinstance(reply, Expired) and reply.reason == "budget"
            else:
                assert isinstance(reply, ClassifyResult) and reply.tokens > 0
    finally:
        writer.close()
    # The gateway's view: an LLM stage that cannot fit leaves the answer to the fast stages.
    client = await _client(sidecar, llm_mode="always", budget_ms=10_000, min_model_ms=0.0)
    try:
        client.budget_ms = client.reserve_ms + 4.0  # room for the lexical stage only
        answer = await client.classify(TEXT)
        assert answer.method != "llm" and client.stats["llm"] == 0
    finally:
        await client.close()


async def test_route_change_reaches_the_llm_stage(sidecar: SidecarSupervisor) -> None:
    client = await _client(sidecar, llm_mode="always", budget_ms=10_000, cache_size=0)
    try:
        before = await client.classify("I was charged twice, I want a refund")
        assert before.method == "llm" and before.category != "billing"
        await client.reconfigure((
            RouteSpec(name="poetry", description="Write a poem."),
            RouteSpec(name="billing", description="Payments, invoices, refunds, charges.",
                      examples=("I was charged twice for my subscription",))))
        after = await client.classify("I was charged twice, I want a refund")
        assert after.method == "llm" and after.category == "billing"
        # The stage itself answers over the new routes (not the client mapping old ones).
        reply = await client._ask("I was charged twice", 10_000, "llm")
        assert isinstance(reply, ClassifyResult) and reply.categories == ("poetry", "billing")
    finally:
        await client.close()


def test_supervisor_passes_the_llm_arguments(tmp_path: Path) -> None:
    supervisor = SidecarSupervisor(tmp_path / "s.sock", llm_model_path="m.gguf",
                                   llm_gpu_layers=-1, llm_context=1024, llm_max_tokens=64)
    command = supervisor.command or []
    assert command[command.index("--llm-model") + 1] == "m.gguf"
    assert command[command.index("--llm-gpu-layers") + 1] == "-1"
    assert command[command.index("--llm-context") + 1] == "1024"

"""Fixtures of the fake providers' self-tests: one fake of each kind on a real server."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack

import httpx
import pytest

from bench.fakes import FakeProvider, Kind, serve_in_thread
from bench.fakes._testkit import KINDS, REPLY, Target


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[Kind, Target]]:
    with ExitStack() as stack:
        out: dict[Kind, Target] = {}
        for kind in KINDS:
            fake = FakeProvider(kind, reply_text=REPLY, chunks=5)
            out[kind] = Target(kind, fake, stack.enter_context(serve_in_thread(fake)))
        yield out


@pytest.fixture(params=KINDS)
def t(request: pytest.FixtureRequest, servers: dict[Kind, Target]) -> Target:
    target = servers[request.param]
    target.fake.reset()
    return target


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5.0) as c:
        yield c


# -- normal answers ---------------------------------------------------------------------------

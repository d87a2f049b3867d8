"""The local chat model server (provider type ``local``) under the shared child supervisor."""

from __future__ import annotations

from pathlib import Path

import pytest

from routegate.middleware.config import LocalConfig
from routegate.middleware.providers.local_model import LocalModelServer


async def test_local_model_that_cannot_start_fails_with_the_reason(tmp_path: Path) -> None:
    server = LocalModelServer(LocalConfig(model_path=str(tmp_path / "missing.gguf")))
    with pytest.raises(RuntimeError, match="local model process exited with code"):
        await server.start()
    assert not server.alive and server.supervisor.process is None

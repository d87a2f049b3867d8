"""The README's quick start: `make run` serves real answers from the embedded local model."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import openai

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_make_run_answers_with_the_local_model_and_no_keys() -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    process = subprocess.Popen(["make", "-s", "run", f"PORT={port}"], cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300  # includes `make setup` when something is missing
        while time.monotonic() < deadline:
            assert process.poll() is None, "make run exited"
            try:
                if httpx.get(url + "/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
        raw = client.chat.completions.with_raw_response.create(
            model="auto", max_tokens=24,
            messages=[{"role": "user", "content": "What is the capital of France?"}])
        answer = raw.parse()
        assert raw.headers["x-routegate-model"] == "local"
        assert raw.headers["x-routegate-category"] == "factual_qa"
        assert (answer.choices[0].message.content or "").strip()  # a real generated answer
        assert answer.model.startswith("SmolLM2-135M-Instruct")
        assert answer.usage is not None and answer.usage.completion_tokens > 0

        stream = client.chat.completions.create(
            model="local", max_tokens=12, stream=True, stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "Say hello."}])
        chunks = list(stream)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)

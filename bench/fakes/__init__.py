"""Fake LLM providers as real HTTP servers, with injectable faults.

Used by the gateway's tests (in-process, on a background thread) and by the benchmarks
(``python -m bench.fakes --kind openai --port 9101``)::

    from bench.fakes import FakeProvider, Fault, serve_in_thread

    fake = FakeProvider(kind="openai")
    fake.inject(Fault.status(503), times=2)
    with serve_in_thread(fake) as base_url:
        ...  # POST base_url + "/v1/chat/completions"

Routes: OpenAI ``/v1/chat/completions`` and ``/v1/models``; Anthropic ``/v1/messages`` and
``/v1/models``; Gemini ``/v1beta/models/{model}:generateContent``,
``/v1beta/models/{model}:streamGenerateContent?alt=sse`` and ``/v1beta/models``.
"""

from bench.fakes._common import Kind
from bench.fakes.faults import (
    EndWithoutDoneFault,
    ErrorMidStreamFault,
    Fault,
    FaultAbort,
    HangAfterHeadersFault,
    HangFault,
    MalformedFault,
    ResetMidStreamFault,
    SlowChunksFault,
    StallMidStreamFault,
    StatusFault,
)
from bench.fakes.provider import FakeProvider
from bench.fakes.records import RecordedRequest, StreamRecord
from bench.fakes.server import quiet_fault_logs, serve_in_thread

__all__ = [
    "EndWithoutDoneFault",
    "ErrorMidStreamFault",
    "FakeProvider",
    "Fault",
    "FaultAbort",
    "HangAfterHeadersFault",
    "HangFault",
    "Kind",
    "MalformedFault",
    "RecordedRequest",
    "ResetMidStreamFault",
    "SlowChunksFault",
    "StallMidStreamFault",
    "StatusFault",
    "StreamRecord",
    "quiet_fault_logs",
    "serve_in_thread",
]

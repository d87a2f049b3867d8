"""The generative classifier stage on the real SmolLM2-135M GGUF, in process (CPU).

Label scores are checked against an independent reference (llama-cpp-python's high-level
``Llama`` evaluating prompt + label in one sequence); prefix reuse is counted in tokens.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from llama_cpp import Llama

from routegate.middleware.config import ConfigError, parse_config
from routegate.sidecar.llm_stage import LlmStage
from routegate.sidecar.local_llm import default_model_path
from routegate.sidecar.protocol import RouteSpec

MODEL = default_model_path()
ROUTES = (
    RouteSpec(name="code", description="Write or fix program code."),
    RouteSpec(name="code_review", description="Review a given piece of code."),
    RouteSpec(name="translation", description="Translate text between natural languages."),
    RouteSpec(name="math", description="Solve a math problem."),
)
TEXTS = ("Please review my pull request: def add(a, b): return a - b",
         "Translate 'good night' into Italian", "What is 17 * 23?")


@pytest.fixture(scope="module")
def stage() -> Iterator[LlmStage]:
    llm = LlmStage(MODEL, threads=1)
    llm.set_routes(ROUTES)
    yield llm
    llm.close()


def _reference_logprob(ref: Llama, prompt: list[int], label: list[int]) -> float:
    ref.reset()  # type: ignore[no-untyped-call]
    ref.eval([*prompt, *label[:-1]])
    scores = np.asarray(ref.scores[: ref.n_tokens], dtype=np.float64)
    scores -= scores.max(axis=1, keepdims=True)
    logprobs = scores - np.log(np.exp(scores).sum(axis=1, keepdims=True))
    return float(sum(logprobs[len(prompt) - 1 + i, token] for i, token in enumerate(label)))


def test_labels_are_scored_over_their_tokens(stage: LlmStage) -> None:
    # "code" and "code_review" share their first token: both are scored over all their
    # tokens plus the end of turn, in one batched decode; the others by their first token.
    lengths = [len(label) for label in stage._labels]
    assert lengths[0] > 1 and lengths[1] > lengths[0] and lengths[2:] == [1, 1]
    ref = Llama(MODEL, n_ctx=2048, logits_all=True, n_threads=1, verbose=False)
    for text in TEXTS:
        answer = stage.classify(text)
        assert answer.label_tokens == sum(length - 1 for length in lengths if length > 1)
        assert abs(float(answer.probs.sum()) - 1.0) < 1e-5
        prompt = [*stage._prefix, *stage.fit(text, 128), *stage._suffix]
        expected = [_reference_logprob(ref, prompt, label) for label in stage._labels]
        # llama.cpp's kernels differ by batch shape (Q4_1): ~0.2 nats; a wrong position or
        # token would be off by several.
        assert np.allclose(answer.logprobs, expected, atol=0.25), (text, answer.logprobs)
    picked = [stage.categories[int(stage.classify(t).probs.argmax())] for t in TEXTS[1:]]
    assert picked == ["translation", "math"]


def test_prefix_cache_same_answer_fewer_tokens(stage: LlmStage) -> None:
    uncached = LlmStage(MODEL, threads=1, prefix_cache=False)
    try:
        uncached.set_routes(ROUTES)
        for text in TEXTS:
            before = stage.prefilled
            hit, miss = stage.classify(text), uncached.classify(text)
            assert np.allclose(hit.logprobs, miss.logprobs, atol=1e-3)
            assert np.array_equal(hit.probs.argmax(), miss.probs.argmax())
            # With the cache only the request and the suffix are prefilled.
            assert hit.prefilled == miss.prefilled - stage.prefix_tokens
            assert stage.prefilled - before == hit.prefilled
            assert hit.prefilled * 5 < miss.prefilled
    finally:
        uncached.close()


def test_route_change_rebuilds_the_prefix(stage: LlmStage) -> None:
    billing = (RouteSpec(name="billing", description="Payments, invoices, refunds, charges."),
               RouteSpec(name="translation", description="Translate text between languages."))
    text = "I was charged twice for my subscription, I want a refund"
    fresh = LlmStage(MODEL, threads=1, prefix_cache=False)
    try:
        old_prefix = stage.prefix_tokens
        stage.set_routes(billing)
        fresh.set_routes(billing)
        answer, expected = stage.classify(text), fresh.classify(text)
        assert stage.categories == ("billing", "translation") and len(answer.probs) == 2
        assert stage.prefix_tokens != old_prefix
        # No stale KV of the old route list: the cached answer equals a fresh full prefill.
        assert np.allclose(answer.logprobs, expected.logprobs, atol=1e-3)
    finally:
        fresh.close()
        stage.set_routes(ROUTES)


def test_request_cut_to_the_token_allowance(stage: LlmStage) -> None:
    long_text = "\n\n".join(["Please translate this line into German, thank you."] * 40)
    full, cut = stage.classify(long_text), stage.classify(long_text, max_tokens=16)
    suffix = len(stage._suffix)
    assert full.prefilled == 128 + suffix and cut.prefilled == 16 + suffix
    assert stage.token_allowance(0.0) < 8 <= stage.token_allowance(60_000.0) == 128


def test_config_keys_are_bounded() -> None:
    ok = parse_config({"classifier": {"llm_model_path": "m.gguf", "llm_mode": "always"}})
    assert (ok.classifier.llm_mode, ok.classifier.llm_max_tokens) == ("always", 128)
    for bad in ({"llm_mode": "sometimes"}, {"llm_gpu_layers": -2},
                {"llm_escalate_below": 1.5}, {"llm_context_size": 64},
                {"llm_max_tokens": 1500, "llm_context_size": 2048}):
        with pytest.raises(ConfigError, match=f"classifier.{next(iter(bad))}"):
            parse_config({"classifier": bad})

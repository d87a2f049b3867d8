"""The GGUF converter: its output loads in llama.cpp and embeds as the hand-written one did.

The reference values were computed on 2026-12-04 from the previous (hand-written GGUF)
converter's output with this llama.cpp build (llama-cpp-python 0.3.36); the gguf-package
writer produced a byte-identical file then. Values are compared to a tolerance, so a later
gguf release may order or pad the container differently and still pass.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from routegate.sidecar.convert import convert_minilm
from routegate.sidecar.embedder import Embedder

SENTENCES = [
    "Write a Python function that reverses a linked list.",
    "What is the capital of France?",
    "Summarize the text above in three bullet points.",
    "Prove that the square root of two is irrational.",
]
# The first eight dimensions of each unit vector, and the cosine similarities between them
# (which depend on all 384 dimensions).
HEADS = [
    [-0.04656, 0.06883, 0.0381, 0.03227, -0.03887, -0.05897, 0.01966, -0.00834],
    [0.08203, 0.03603, -0.00387, -0.00485, 0.02568, -0.05715, 0.01218, 0.00468],
    [0.01175, 0.11411, -0.03396, 0.01251, 0.04436, 0.05174, 0.03373, -0.01057],
    [0.07208, 0.05562, 0.00423, 0.11728, -0.0563, 0.00817, -0.06702, -0.02776],
]
COSINES = [
    [1.0, 0.01263, 0.09597, -0.04333],
    [0.01263, 1.0, 0.04135, 0.07741],
    [0.09597, 0.04135, 1.0, 0.02524],
    [-0.04333, 0.07741, 0.02524, 1.0],
]


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_minilm(tmp_path_factory.mktemp("gguf") / "minilm.gguf")


def test_metadata_as_llama_cpp_bert_expects(converted: Path) -> None:
    reader = gguf.GGUFReader(converted)
    fields = {name: field.contents() for name, field in reader.fields.items()}
    assert fields["general.architecture"] == "bert"
    assert fields["bert.pooling_type"] == gguf.PoolingType.MEAN
    assert fields["bert.attention.causal"] is False
    assert fields["tokenizer.ggml.cls_token_id"] == 101
    assert fields["tokenizer.ggml.seperator_token_id"] == 102
    types = {tensor.name: tensor.tensor_type for tensor in reader.tensors}
    assert len(types) == 5 + 6 * 16  # embeddings + six blocks; the unused pooler is dropped
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.F16
    assert types["blk.0.attn_q.bias"] == gguf.GGMLQuantizationType.F32
    assert types["position_embd.weight"] == gguf.GGMLQuantizationType.F32


def test_loads_in_llama_cpp_and_embeds_as_before(converted: Path) -> None:
    embedder = Embedder(converted, threads=1, context=512)
    assert embedder.tokenize(SENTENCES[1]) == [101, 2054, 2003, 1996, 3007, 1997, 2605, 1029, 102]
    vectors = embedder.embed(SENTENCES)
    assert vectors.shape == (4, 384)
    np.testing.assert_allclose(vectors[:, :8], HEADS, atol=2e-4)
    np.testing.assert_allclose(vectors @ vectors.T, COSINES, atol=2e-4)

"""The fast stage: a linear model over hashed byte and word n-grams (well under 2 ms).

Features are computed with numpy over the UTF-8 bytes of the text's instruction view
(``window.py``: pasted material cut to its edge sentences, then a head + tail window), so
the instruction is not drowned by a document and the cost is bounded whatever the input
length. Byte 3-5-grams cover words, morphology and CJK characters alike; word
unigrams and bigrams and a few shape tokens (length bucket, first and last word, a yes/no
question) add the rest. Hashing (no vocabulary) keeps the shipped weights one small array.

The weights are trained offline by ``bench/classify_train.py`` and shipped as
``lexical.npz`` beside this module.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from routegate.sidecar.window import View, document_tokens, instruction_view, weak_instruction

__all__ = [
    "DEFAULT_LEXICAL_WEIGHTS",
    "HASH_BITS",
    "WEIGHT_VARIANTS",
    "LexicalModel",
    "featurize",
    "featurize_view",
    "softmax",
    "text_window",
    "weight_files",
]

HASH_BITS = 18
_MASK = np.uint64((1 << 64) - 1)
_MIX = np.uint64(0x9E3779B97F4A7C15)
_PRIME = np.uint64(1000003)
_SHIFT = np.uint64(64 - HASH_BITS)
_WORD = re.compile(r"\w+")
_WINDOW_CHARS = 600
# A question opened by an auxiliary verb ("Would a vegan eat ...?", "Is it safe to ...?") is
# a yes/no question: one token for the conjunction (the linear model cannot form it from
# "first:" and "end:"), another when it is addressed to "you" (small talk, mostly).
# The impersonal one is counted three times: the StrategyQA-style implicit reasoning
# question otherwise reads as a lookup (measured: inner folds +0.005 macro-F1).
_AUXILIARIES = frozenset({
    "is", "are", "was", "were", "am", "do", "does", "did", "can", "could", "would", "will",
    "should", "shall", "has", "have", "had", "may", "might", "must",
})
# Scripts written without spaces between words: ``\w+`` reads a whole clause as one
# "word", so these get character uni- and bigram tokens instead.
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]+")

DEFAULT_LEXICAL_WEIGHTS = Path(__file__).with_name("lexical.npz")
# Two trained variants ship (see bench/classify_train.py): "default" is trained on every
# development source, including non-commercial ones (Alpaca, CodeAlpaca, BELLE, DialogSum,
# LogiQA, Commonsense-Dialogues, DailyDialog); "ncfree" drops those sources.
WEIGHT_VARIANTS = ("default", "ncfree")


def weight_files(variant: str = "default") -> tuple[Path, Path]:
    """The (lexical, embedding head) weight files of a shipped variant."""
    if variant not in WEIGHT_VARIANTS:
        raise ValueError(f"unknown weights variant {variant!r}; one of {WEIGHT_VARIANTS}")
    suffix = "" if variant == "default" else f"_{variant}"
    here = Path(__file__).parent
    return here / f"lexical{suffix}.npz", here / f"embed_head{suffix}.npz"

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


def text_window(text: str, chars: int = _WINDOW_CHARS) -> str:
    """Head and tail of a long text, joined by an ellipsis (the instruction is often last)."""
    if len(text) <= 2 * chars:
        return text
    return text[:chars] + " … " + text[-chars:]


def _byte_ngrams(data: npt.NDArray[np.uint64], n: int) -> npt.NDArray[np.uint64]:
    count = data.shape[0] - n + 1
    if count <= 0:
        return np.zeros(0, dtype=np.uint64)
    acc = np.full(count, np.uint64(n), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            acc = acc * _PRIME + data[k : k + count]
        return (acc * _MIX) >> _SHIFT


@functools.lru_cache(maxsize=1 << 16)
def _token_hash(token: str) -> int:
    return zlib.crc32(token.encode("utf-8")) & ((1 << HASH_BITS) - 1)


def _cjk_tokens(window: str) -> list[str]:
    """Character unigrams and bigrams of the CJK runs (none for most prompts)."""
    out: list[str] = []
    for run in _CJK.findall(window):
        out += [f"c:{ch}" for ch in run]
        out += [f"c2:{run[i:i + 2]}" for i in range(len(run) - 1)]
    return out


def featurize(text: str) -> tuple[IntArray, FloatArray]:
    """Hashed feature indices and L2-normalised log-count values for one text.

    The n-grams come from the instruction view (``window.instruction_view``: pasted
    material cut to its edge sentences), so a long document does not drown the few words
    that say what to do; the document adds a few tokens of its own (size, kind).
    """
    return featurize_view(instruction_view(text))


def featurize_view(view: View) -> tuple[IntArray, FloatArray]:
    """:func:`featurize` of an already computed instruction view."""
    window = text_window(view.text).lower()
    data = np.frombuffer(window.encode("utf-8", "replace"), dtype=np.uint8).astype(np.uint64)
    parts = [_byte_ngrams(data, n).astype(np.int64) for n in (3, 4, 5)]
    words = _WORD.findall(window)
    tokens = [f"w:{w}" for w in words]
    tokens += [f"b:{a} {b}" for a, b in itertools.pairwise(words)]
    stripped = view.text
    tokens.append(f"len:{int(math.log2(len(stripped) + 1))}")
    tokens.append(f"lines:{min(stripped.count(chr(10)), 8)}")
    tokens.append(f"end:{stripped[-1:]}")
    if words:
        tokens.append(f"first:{words[0]}")
        tokens.append(f"last:{words[-1]}")
        if words[0] in _AUXILIARIES and stripped.rstrip().endswith("?"):
            if {"you", "your"} & set(words):
                tokens.append("q:yesno-you")
            else:
                tokens += ["q:yesno"] * 3
    tokens += document_tokens(view)
    tokens += _cjk_tokens(window)
    parts.append(np.fromiter((_token_hash(t) for t in tokens), dtype=np.int64, count=len(tokens)))
    all_idx = np.concatenate(parts)
    idx, counts = np.unique(all_idx, return_counts=True)
    val = (1.0 + np.log(counts)).astype(np.float32)
    norm = float(np.sqrt(np.dot(val, val)))
    if norm > 0.0:
        val /= norm
    return idx, val


def softmax(logits: FloatArray) -> FloatArray:
    shifted = logits - np.max(logits, axis=-1, keepdims=True)
    exp = np.exp(shifted)
    out: FloatArray = (exp / np.sum(exp, axis=-1, keepdims=True)).astype(np.float32)
    return out


@dataclass(frozen=True)
class LexicalModel:
    """Hashed n-gram softmax regression: ``weights`` is (2**HASH_BITS, C), ``bias`` is (C,)."""

    categories: tuple[str, ...]
    weights: npt.NDArray[np.float16]
    bias: FloatArray
    # Tuned with the weights (bench/classify_train.py): a top probability at or above
    # accept_confidence is final; otherwise the model stage's probabilities are mixed with
    # these raised to mix_weight.
    accept_confidence: float = 0.9
    mix_weight: float = 1.0
    # Confidence factor of a mixed answer whose stages disagree (confidence.py).
    disagree_scale: float = 1.0
    # Logit scale for a pasted document with a weak instruction (window.weak_instruction):
    # below 1 it flattens the probabilities, so such prompts are less often accepted here
    # and their answer's confidence is lower.
    weak_scale: float = 1.0

    @classmethod
    def load(cls, path: str | Path = DEFAULT_LEXICAL_WEIGHTS) -> LexicalModel:
        with np.load(path, allow_pickle=False) as data:
            categories = tuple(str(c) for c in data["categories"])
            dense = np.zeros((1 << HASH_BITS, len(categories)), dtype=np.float16)
            dense[data["rows"]] = data["values"]
            return cls(
                categories,
                dense,
                data["bias"].astype(np.float32),
                accept_confidence=float(data["accept_confidence"]),
                mix_weight=float(data["mix_weight"]),
                disagree_scale=float(data["disagree_scale"]) if "disagree_scale" in data
                else 1.0,
                weak_scale=float(data["weak_scale"]) if "weak_scale" in data else 1.0,
            )

    def save(self, path: str | Path) -> None:
        """Store only the rows that carry weight (most hash buckets stay empty)."""
        rows = np.flatnonzero(np.any(self.weights != 0, axis=1)).astype(np.uint32)
        np.savez_compressed(
            path,
            categories=np.array(self.categories),
            rows=rows,
            values=self.weights[rows],
            bias=self.bias,
            accept_confidence=np.array(self.accept_confidence),
            mix_weight=np.array(self.mix_weight),
            disagree_scale=np.array(self.disagree_scale),
            weak_scale=np.array(self.weak_scale),
        )

    def predict_proba(self, text: str) -> FloatArray:
        return self.predict(text)[0]

    def predict(self, text: str) -> tuple[FloatArray, bool]:
        """Probabilities, and whether ``text`` is a document under a weak instruction."""
        view = instruction_view(text)
        idx, val = featurize_view(view)
        logits = val @ self.weights[idx].astype(np.float32) + self.bias
        weak = weak_instruction(view)
        if weak and self.weak_scale != 1.0:
            logits *= self.weak_scale
        return softmax(logits), weak

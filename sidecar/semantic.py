"""The model stage's method: sentence embeddings scored against routes (numpy only).

Two signals over one embedding, both cheap next to the embedding itself:

* **Route examples (kNN).** Every route's examples (and its description) are embedded once,
  at sidecar start or on reconfigure. A request scores each route by the mean cosine
  similarity of its ``k`` nearest examples of that route; a softmax with a low temperature
  turns the scores into probabilities. This is what makes a route added in config work
  without code or training. A near-duplicate of an example (similarity >= ``exact``) takes
  that example's route outright: examples are authoritative.
* **A trained head** (multinomial logistic regression on the embedding), shipped as
  ``embed_head.npz``, for the routes it was trained on. It carries what a few examples
  cannot: the spread of real phrasings in the development data.

For routes the head knows, its log-probabilities and the kNN ones are mixed with a weight
tuned by cross-validation (``bench/classify_train.py``). Routes the head does not know get
their kNN probability mass as is, and the head's routes share the rest, so adding a route
never needs a retrain and never silences the head.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from routegate.sidecar.lexical import softmax

__all__ = ["DEFAULT_HEAD", "EmbeddingHead", "RouteIndex", "mix_known"]

DEFAULT_HEAD = Path(__file__).with_name("embed_head.npz")
FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class EmbeddingHead:
    """Softmax regression on L2-normalised embeddings: ``weights`` (dim, C), ``bias`` (C,)."""

    categories: tuple[str, ...]
    weights: FloatArray
    bias: FloatArray
    model: str  # which embedding model it was trained on (general.name of the GGUF)
    knn_weight: float = 1.0  # weight of the kNN log-probabilities when mixed with this head
    temperature: float = 0.05

    @classmethod
    def load(cls, path: str | Path = DEFAULT_HEAD) -> EmbeddingHead:
        with np.load(path, allow_pickle=False) as data:
            return cls(
                categories=tuple(str(c) for c in data["categories"]),
                weights=data["weights"].astype(np.float32),
                bias=data["bias"].astype(np.float32),
                model=str(data["model"]),
                knn_weight=float(data["knn_weight"]),
                temperature=float(data["temperature"]),
            )

    def save(self, path: str | Path) -> None:
        np.savez_compressed(
            path,
            categories=np.array(self.categories),
            weights=self.weights.astype(np.float16),
            bias=self.bias,
            model=np.array(self.model),
            knn_weight=np.array(self.knn_weight),
            temperature=np.array(self.temperature),
        )

    @property
    def dim(self) -> int:
        return int(self.weights.shape[0])

    def predict_proba(self, vectors: FloatArray) -> FloatArray:
        return softmax(vectors @ self.weights + self.bias)


def mix_known(
    categories: tuple[str, ...],
    base: FloatArray,
    other_categories: tuple[str, ...],
    other: FloatArray,
    base_weight: float = 1.0,
    other_weight: float = 1.0,
) -> FloatArray:
    """Combine ``base`` (over ``categories``) with ``other`` (over some of them).

    Categories both know get ``exp(base_weight * log base + other_weight * log other)``,
    renormalised to the mass ``base`` gave them; categories ``other`` does not know keep
    ``base``'s probability. Works on one row (C,) or a batch (N, C).
    """
    position = {name: i for i, name in enumerate(categories)}
    shared = [(position[name], j) for j, name in enumerate(other_categories) if name in position]
    if not shared:
        return base
    cols = np.array([i for i, _ in shared])
    other_cols = np.array([j for _, j in shared])
    out = base.copy()
    mass = base[..., cols].sum(axis=-1, keepdims=True)
    logits = base_weight * np.log(base[..., cols] + 1e-9) + other_weight * np.log(
        other[..., other_cols] + 1e-9
    )
    out[..., cols] = softmax(logits.astype(np.float32)) * mass
    return out


class RouteIndex:
    """Embedded route examples plus an optional head: probabilities over ``categories``."""

    def __init__(
        self,
        categories: tuple[str, ...],
        vectors: FloatArray,
        labels: npt.NDArray[np.int64],
        head: EmbeddingHead | None = None,
        *,
        k: int = 3,
        exact: float = 0.97,
    ) -> None:
        self.categories = categories
        self.vectors = vectors
        self.labels = labels
        self.k = k
        self.exact = exact
        self.head = head if head is not None and head.dim == vectors.shape[1] else None
        self.temperature = head.temperature if head is not None else 0.05

    def knn_scores(self, vectors: FloatArray) -> FloatArray:
        """Mean similarity of the k nearest examples of each route, (N, C)."""
        sims = vectors @ self.vectors.T
        out = np.full((vectors.shape[0], len(self.categories)), -1.0, dtype=np.float32)
        for c in range(len(self.categories)):
            mine = sims[:, self.labels == c]
            if mine.shape[1] == 0:
                continue
            k = min(self.k, mine.shape[1])
            top = -np.partition(-mine, k - 1, axis=1)[:, :k]
            out[:, c] = top.mean(axis=1)
        return out

    def predict_proba(self, vectors: FloatArray) -> FloatArray:
        """Probabilities (N, C) for L2-normalised embeddings (N, dim)."""
        knn = softmax(self.knn_scores(vectors) / self.temperature)
        probs = knn
        if self.head is not None:
            head_probs = self.head.predict_proba(vectors)
            probs = mix_known(
                self.categories, knn, self.head.categories, head_probs, self.head.knn_weight, 1.0
            )
        sims = vectors @ self.vectors.T
        best = np.argmax(sims, axis=1)
        for row in np.flatnonzero(sims[np.arange(sims.shape[0]), best] >= self.exact):
            probs[row] = 0.02 / max(1, len(self.categories) - 1)
            probs[row, self.labels[best[row]]] = 0.98
        return probs

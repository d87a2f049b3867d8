"""Cross-validation of the classifier's method on the development data (offline, numpy).

The shared machinery of ``bench/classify_train.py`` (which writes the shipped weights) and
``bench/classify_bench.py`` (whose headline is the source-held-out number):

* splits: the fixed held-back 20 % (``classify_split.py``) and 5 folds grouped by
  ``source`` (every row is predicted by models that never saw a row of its source);
* trainers: the lexical model (sparse softmax regression over ``lexical.featurize``) and
  the embedding head (dense softmax regression), both trained with the shipped route
  examples (``routes.toml``) as extra rows, since they ship with the method;
* augmentation: instruction/document recombinations (the instruction of one row around the
  document of a row from another source, labelled by the instruction), so the trained
  stages learn that the instruction decides; a recombined row counts as both its sources
  in the grouped folds;
* the cascade as the gateway runs it (``client.py``): lexical accepted when confident, else
  kNN + head mixed with lexical, and the confidence the router reads.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.classify_split import is_held_back
from routegate.sidecar.client import DEFAULT_CATEGORIES
from routegate.sidecar.confidence import disagreement_confidence, doubtful_confidence
from routegate.sidecar.lexical import HASH_BITS, featurize, softmax
from routegate.sidecar.routes import default_routes
from routegate.sidecar.semantic import RouteIndex, mix_known
from routegate.sidecar.window import instruction_view, weak_instruction

CATEGORIES = DEFAULT_CATEGORIES
NC_SOURCES = frozenset({
    "codealpaca", "alpaca_kw", "belle_zh", "belle_zh_kw", "dialogsum",
    "agieval_logiqa_en", "commonsense_dialogues", "dailydialog",
})
MAX_TOKENS = 64
CV_VERSION = "1"  # bump when a change here changes the stages' out-of-fold predictions
KNN_TEMPERATURES = (0.02, 0.05)
EXAMPLE_COPIES = 3  # the route examples' weight as training rows (grouped CV, 1/3/6 tried)
F = npt.NDArray[np.float32]
Ix = npt.NDArray[np.int64]
Row = dict[str, Any]


def load_rows(path: Path) -> list[Row]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def macro_f1(y: Ix, p: Ix, n: int) -> float:
    scores = []
    for c in range(n):
        tp = int(np.sum((p == c) & (y == c)))
        fp = int(np.sum((p == c) & (y != c)))
        fn = int(np.sum((p != c) & (y == c)))
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def example_rows() -> list[Row]:
    """The shipped route examples and descriptions as training rows (source "routes")."""
    return [{"id": f"routes-{spec.name}-{i}", "source": "routes", "category": spec.name,
             "prompt": text}
            for spec in default_routes() if spec.name in CATEGORIES
            for i, text in enumerate((*spec.examples, spec.description))]


# --- augmentation ---------------------------------------------------------------------------


def _split_instruction(prompt: str) -> tuple[str, str, bool] | None:
    """(instruction, document, instruction first) for an "instruction, blank line,
    document" prompt (either order), else None."""
    parts = [p.strip() for p in prompt.strip().split("\n\n") if p.strip()]
    if len(parts) != 2:
        return None
    a, b = parts
    if len(a) <= 200 < len(b):
        return a, b, True
    if len(b) <= 200 < len(a):
        return b, a, False
    return None


def recombine(rows: Sequence[Row], count: int, seed: int = 0) -> list[Row]:
    """Instruction of one row around the document of a row from another source."""
    pairs = [(r, s) for r in rows if (s := _split_instruction(r["prompt"])) is not None]
    rng = random.Random(seed)
    out: list[Row] = []
    for k in range(count * 20):
        if len(out) >= count or len(pairs) < 2:
            break
        (a, (instr, _, first)), (b, (_, doc, _)) = rng.sample(pairs, 2)
        if a["source"] == b["source"] or a["category"] == b["category"]:
            continue
        text = f"{instr}\n\n{doc}" if first else f"{doc}\n\n{instr}"
        out.append({"id": f"aug-{k}", "source": a["source"], "doc_source": b["source"],
                    "category": a["category"], "prompt": text,
                    "parents": (a["id"], b["id"])})
    return out


# --- trainers --------------------------------------------------------------------------------


class SparseSet:
    """Rows of (hashed index, value) pairs, sorted by row (CSR without scipy)."""

    def __init__(self, texts: Sequence[str]) -> None:
        feats = [featurize(t) for t in texts]
        self.n = len(texts)
        self.rows = np.concatenate([np.full(len(i), r, dtype=np.int64)
                                    for r, (i, _) in enumerate(feats)])
        self.idx = np.concatenate([i for i, _ in feats])
        self.val = np.concatenate([v for _, v in feats]).astype(np.float32)

    def subset(self, keep: Ix) -> SparseSet:
        out = SparseSet.__new__(SparseSet)
        remap = np.full(self.n, -1, dtype=np.int64)
        remap[keep] = np.arange(keep.shape[0])
        mask = remap[self.rows] >= 0
        rows = remap[self.rows[mask]]
        order = np.argsort(rows, kind="stable")
        out.n, out.rows = keep.shape[0], rows[order]
        out.idx, out.val = self.idx[mask][order], self.val[mask][order]
        return out

    def _starts(self) -> Ix:
        return np.flatnonzero(np.r_[True, self.rows[1:] != self.rows[:-1]])

    def predict(self, w: F, b: F) -> F:
        return softmax(np.add.reduceat(w[self.idx] * self.val[:, None], self._starts(), axis=0) + b)


def _adam(params: Sequence[F], grads: Sequence[F], state: list[F], t: int, lr: float) -> None:
    for k, (param, grad) in enumerate(zip(params, grads, strict=True)):
        m, v = state[2 * k], state[2 * k + 1]
        m *= 0.9
        m += 0.1 * grad
        v *= 0.999
        v += 0.001 * grad * grad
        param -= lr * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)


def train_sparse(data: SparseSet, y: Ix, n: int, l2: float = 1e-5, steps: int = 150,
                 lr: float = 0.1) -> tuple[F, F]:
    """Softmax regression over the hashed features (only the buckets in use are trained)."""
    uniq, local = np.unique(data.idx, return_inverse=True)
    w = np.zeros((uniq.shape[0], n), dtype=np.float32)
    b = np.zeros(n, dtype=np.float32)
    onehot = np.eye(n, dtype=np.float32)[y]
    starts = data._starts()
    order = np.argsort(local, kind="stable")
    sorted_local = local[order]
    bucket_starts = np.flatnonzero(np.r_[True, sorted_local[1:] != sorted_local[:-1]])
    state = [np.zeros_like(w), np.zeros_like(w), np.zeros_like(b), np.zeros_like(b)]
    for t in range(1, steps + 1):
        p = softmax(np.add.reduceat(w[local] * data.val[:, None], starts, axis=0) + b)
        g = (p - onehot) / data.n
        g_rows = g[data.rows] * data.val[:, None]
        gw = np.add.reduceat(g_rows[order], bucket_starts, axis=0) + l2 * w
        _adam((w, b), (gw, g.sum(axis=0)), state, t, lr)
    full = np.zeros((1 << HASH_BITS, n), dtype=np.float32)
    full[uniq] = w
    return full, b


def train_dense(x: F, y: Ix, n: int, l2: float = 1e-3, steps: int = 400,
                lr: float = 0.05) -> tuple[F, F]:
    w = np.zeros((x.shape[1], n), dtype=np.float32)
    b = np.zeros(n, dtype=np.float32)
    onehot = np.eye(n, dtype=np.float32)[y]
    state = [np.zeros_like(w), np.zeros_like(w), np.zeros_like(b), np.zeros_like(b)]
    for t in range(1, steps + 1):
        g = (softmax(x @ w + b) - onehot) / x.shape[0]
        _adam((w, b), (x.T @ g + l2 * w, g.sum(axis=0)), state, t, lr)
    return w, b


# --- embeddings ---------------------------------------------------------------------------


def embed_all(texts: Sequence[str], model: Path, threads: int = 1) -> F:
    """Embeddings as the sidecar computes them (instruction view, 64 tokens), cached."""
    digest = hashlib.blake2b(("\n\x00".join(texts) + str(model)).encode(),
                             digest_size=8).hexdigest()
    cache = Path(f"/tmp/routegate_emb_v2_{digest}.npy")
    if cache.exists():
        cached: F = np.load(cache).astype(np.float32)
        return cached
    from routegate.sidecar.embedder import Embedder

    embedder = Embedder(model, threads=threads)
    unique = list(dict.fromkeys(texts))
    out = []
    started = time.perf_counter()
    for i in range(0, len(unique), 16):
        chunk = [embedder.fit(t, MAX_TOKENS)[0] for t in unique[i : i + 16]]
        out.append(embedder.embed(chunk))
        print(f"\rembedding {i + len(chunk)}/{len(unique)}", end="", file=sys.stderr)
    print(f" ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    row = {text: k for k, text in enumerate(unique)}
    vectors = np.concatenate(out)[[row[t] for t in texts]]
    np.save(cache, vectors)
    return vectors


# --- the experiment -------------------------------------------------------------------------


@dataclass
class Data:
    """Dev rows, then route examples, then recombinations: texts, labels, groups."""

    rows: list[Row]
    texts: list[str]
    y: Ix
    groups: list[frozenset[str]]
    parents: list[frozenset[str]]  # ids of the dev rows a recombination was made from
    n_dev: int
    n_examples: int

    @classmethod
    def build(cls, rows: list[Row], augment: int, copies: int = EXAMPLE_COPIES) -> Data:
        examples = example_rows()
        aug = recombine(rows, augment)
        extra = examples * copies + aug
        every = rows + extra
        groups = [frozenset({r["source"], r.get("doc_source", r["source"])}) for r in every]
        parents = [frozenset(r.get("parents", ())) for r in every]
        return cls(rows, [r["prompt"] for r in every],
                   np.array([CATEGORIES.index(r["category"]) for r in every], dtype=np.int64),
                   groups, parents, len(rows), len(examples))


def _inner_fold(row_id: str) -> int:
    digest = hashlib.blake2b(row_id.encode("utf-8"), digest_size=8, person=b"inner").digest()
    return int.from_bytes(digest, "big") % 5


def splits(rows: Sequence[Row], kind: str) -> list[tuple[set[str] | None, Ix]]:
    """(held-out sources, or None for the id splits; held-out dev row indices) per fold.

    ``random``: the fixed held-back split (reported only). ``inner``: 5 folds by id over
    the rows outside it (in-source validation that never reads the held-back rows).
    ``source``: 5 folds grouped by source."""
    held = np.array([is_held_back(r["id"]) for r in rows])
    if kind == "random":
        return [(None, np.flatnonzero(held))]
    if kind == "inner":
        fold = np.array([_inner_fold(r["id"]) for r in rows])
        return [(None, np.flatnonzero(~held & (fold == k))) for k in range(5)]
    folds = source_folds(rows)
    return [({r["source"] for r, f in zip(rows, folds, strict=True) if f == k},
             np.flatnonzero(folds == k)) for k in range(5)]


def source_folds(rows: Sequence[Row], k: int = 5) -> Ix:
    """Assign whole sources to k folds, balancing rows, never putting two sources of one
    category in the same fold when avoidable (so every category keeps training data)."""
    size: dict[str, int] = defaultdict(int)
    cats: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        size[row["source"]] += 1
        cats[row["source"]].add(row["category"])
    fold_rows = [0] * k
    fold_cats: list[set[str]] = [set() for _ in range(k)]
    assign: dict[str, int] = {}
    for source in sorted(size, key=lambda s: (-size[s], s)):
        order = sorted(range(k), key=lambda f: (len(fold_cats[f] & cats[source]), fold_rows[f]))
        assign[source] = order[0]
        fold_rows[order[0]] += size[source]
        fold_cats[order[0]] |= cats[source]
    return np.array([assign[row["source"]] for row in rows], dtype=np.int64)


def train_index(data: Data, held_sources: set[str] | None, test: Ix,
                drop_nc: bool = False, kind: str = "") -> Ix:
    """Training rows for a fold: not a test row, no group touching a held-out source (an
    ``inner`` fold does not train on the held-back rows either)."""
    test_set = set(test.tolist())
    if kind == "inner":
        test_set |= {i for i in range(data.n_dev) if is_held_back(data.rows[i]["id"])}
    test_ids = {data.rows[i]["id"] for i in test_set}
    keep = []
    for i, group in enumerate(data.groups):
        if i < data.n_dev and i in test_set:
            continue
        if held_sources is not None and group & held_sources:
            continue
        if held_sources is None and data.parents[i] & test_ids:
            continue  # a recombination made from a held-back row
        if drop_nc and group & NC_SOURCES:
            continue
        keep.append(i)
    return np.array(keep, dtype=np.int64)


def stage_probs(data: Data, emb: F, ex_vec: F, ex_lab: Ix, kind: str, drop_nc: bool = False,
                l2: float = 1e-5) -> dict[str, F]:
    """Out-of-fold probabilities of each stage for every dev row of the split (cached under
    /tmp by the texts, the split and the code that produces them)."""
    code = CV_VERSION.encode() + b"".join(Path(m.__file__ or "").read_bytes() for m in (
        sys.modules[featurize.__module__], sys.modules[instruction_view.__module__]))
    key = hashlib.blake2b("\n\x00".join(data.texts).encode() + code + emb.tobytes()[:4096]
                          + f"{kind}{drop_nc}{l2}".encode(), digest_size=8).hexdigest()
    cache = Path(f"/tmp/routegate_cv_{key}.npz")
    if cache.exists():
        with np.load(cache) as saved:
            return _with_knn(data, {k: saved[k] for k in ("lexical", "head")}, emb[: data.n_dev],
                             ex_vec, ex_lab)
    n = len(CATEGORIES)
    sparse = SparseSet(data.texts)
    lex = np.zeros((data.n_dev, n), dtype=np.float32)
    head = np.zeros_like(lex)
    for held, test in splits(data.rows, kind):
        train = train_index(data, held, test, drop_nc, kind)
        w, b = train_sparse(sparse.subset(train), data.y[train], n, l2=l2)
        lex[test] = sparse.subset(test).predict(w, b)
        hw, hb = train_dense(emb[train], data.y[train], n)
        head[test] = softmax(emb[test] @ hw + hb)
    np.savez(cache, lexical=lex, head=head)
    return _with_knn(data, {"lexical": lex, "head": head}, emb[: data.n_dev], ex_vec, ex_lab)


def _with_knn(data: Data, stages: dict[str, F], emb: F, ex_vec: F, ex_lab: Ix) -> dict[str, F]:
    """Add the kNN stage (nothing trained) at each temperature the mix may pick, and which
    rows are a document with a weak instruction."""
    stages["weak"] = np.array([weak_instruction(instruction_view(t))
                               for t in data.texts[: data.n_dev]], dtype=np.float32)
    for temperature in KNN_TEMPERATURES:
        index = RouteIndex(CATEGORIES, ex_vec, ex_lab, None)
        index.temperature = temperature
        stages[f"knn@{temperature}"] = index.predict_proba(emb)
    stages["knn"] = stages[f"knn@{KNN_TEMPERATURES[0]}"]
    return stages


@dataclass(frozen=True)
class Mix:
    """The cascade's scalars (shipped inside the weight files)."""

    temperature: float = 0.02
    knn_weight: float = 1.0
    lexical_weight: float = 2.0
    accept: float = 0.9
    disagree_scale: float = 0.6
    weak_scale: float = 1.0


def cascade(stages: dict[str, F], mix: Mix,
            doubtful_below: float | None = None) -> tuple[F, npt.NDArray[np.float32], Ix]:
    """(final probabilities, confidence, 1 where the model stage was asked) per row; with
    ``doubtful_below``, doubtful answers are held under it as the client does."""
    knn = stages.get(f"knn@{mix.temperature}", stages["knn"])
    head, lex = stages["head"], stages["lexical"]
    if mix.weak_scale != 1.0 and "weak" in stages:
        # As LexicalModel.predict_proba: logits scaled for a document with a weak instruction.
        tempered = softmax((mix.weak_scale * np.log(lex + 1e-9)).astype(np.float32))
        lex = np.where(stages["weak"][:, None] > 0, tempered, lex)
    model = mix_known(CATEGORIES, knn, CATEGORIES, head, mix.knn_weight, 1.0)
    full = mix_known(CATEGORIES, model, CATEGORIES, lex, 1.0, mix.lexical_weight)
    accepted = lex.max(axis=1) >= mix.accept
    final = np.where(accepted[:, None], lex, full)
    confidence = final.max(axis=1)
    disagree = (~accepted) & (model.argmax(axis=1) != lex.argmax(axis=1))
    confidence = np.where(disagree, [disagreement_confidence(float(c), mix.disagree_scale)
                                     for c in confidence], confidence).astype(np.float32)
    doubtful = disagree | (stages["weak"] > 0) if "weak" in stages else disagree
    confidence = np.array([doubtful_confidence(float(c), bool(d), doubtful_below)
                           for c, d in zip(confidence, doubtful, strict=True)], dtype=np.float32)
    return final, confidence, (~accepted).astype(np.int64)

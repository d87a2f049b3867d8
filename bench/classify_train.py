"""Train and evaluate the classifier's weights on the development data (offline).

    .venv/bin/python bench/classify_train.py --data ../shared/data/classify_dev.jsonl [--write]

Evaluates, on two honest splits, every stage and combination, then (with ``--write``)
trains the shipped weights on the whole file and writes ``sidecar/lexical.npz`` and
``sidecar/embed_head.npz``:

* random split: stratified 80/20 (seed 0);
* source-held-out: 5 folds grouped by ``source`` (every row is predicted by models that
  never saw a row of its source), pooled over folds.

The combination weights (kNN temperature, kNN weight next to the head, lexical weight next
to the model) are picked on the source-held-out predictions, so that number is slightly
optimistic for those three scalars; the per-stage numbers are not tuned at all.

Embeddings of the dev rows are computed once through the sidecar's own embedder and cached
under /tmp (about a minute on 1 thread).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.classify_split import is_held_back
from routegate.sidecar.lexical import HASH_BITS, LexicalModel, featurize, softmax
from routegate.sidecar.routes import default_routes
from routegate.sidecar.semantic import EmbeddingHead, RouteIndex, mix_known

CATEGORIES = (
    "code", "math", "reasoning", "creative_writing", "summarization",
    "translation", "extraction", "classification", "factual_qa", "chat",
)
NC_SOURCES = {
    "codealpaca", "alpaca_kw", "belle_zh", "belle_zh_kw", "dialogsum",
    "agieval_logiqa_en", "commonsense_dialogues", "dailydialog",
}
F = npt.NDArray[np.float32]
MAX_TOKENS = 64


def load_rows(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def macro_f1(y: npt.NDArray[np.int64], p: npt.NDArray[np.int64], n: int) -> float:
    scores = []
    for c in range(n):
        tp = int(np.sum((p == c) & (y == c)))
        fp = int(np.sum((p == c) & (y != c)))
        fn = int(np.sum((p != c) & (y == c)))
        if tp + fp + fn == 0:
            continue
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


# --- softmax regression (numpy) -------------------------------------------------------------


def train_dense(x: F, y: npt.NDArray[np.int64], n: int, l2: float = 1e-3,
                steps: int = 400, lr: float = 0.05) -> tuple[F, F]:
    w = np.zeros((x.shape[1], n), dtype=np.float32)
    b = np.zeros(n, dtype=np.float32)
    onehot = np.eye(n, dtype=np.float32)[y]
    m_w, v_w, m_b, v_b = (np.zeros_like(w), np.zeros_like(w), np.zeros_like(b), np.zeros_like(b))
    for t in range(1, steps + 1):
        g = (softmax(x @ w + b) - onehot) / x.shape[0]
        gw = x.T @ g + l2 * w
        gb = g.sum(axis=0)
        for param, grad, m, v in ((w, gw, m_w, v_w), (b, gb, m_b, v_b)):
            m *= 0.9
            m += 0.1 * grad
            v *= 0.999
            v += 0.001 * grad * grad
            param -= lr * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
    return w, b


class SparseSet:
    def __init__(self, texts: list[str]) -> None:
        rows, idx, val = [], [], []
        for r, text in enumerate(texts):
            i, v = featurize(text)
            rows.append(np.full(i.shape[0], r, dtype=np.int64))
            idx.append(i)
            val.append(v)
        self.n = len(texts)
        self.rows = np.concatenate(rows)
        self.idx = np.concatenate(idx)
        self.val = np.concatenate(val).astype(np.float64)

    def subset(self, keep: npt.NDArray[np.int64]) -> SparseSet:
        out = SparseSet.__new__(SparseSet)
        remap = np.full(self.n, -1, dtype=np.int64)
        remap[keep] = np.arange(keep.shape[0])
        mask = remap[self.rows] >= 0
        out.n, out.rows = keep.shape[0], remap[self.rows[mask]]
        out.idx, out.val = self.idx[mask], self.val[mask]
        return out

    def logits(self, w: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        gathered = w[self.idx] * self.val[:, None]
        out = np.stack([np.bincount(self.rows, weights=gathered[:, c], minlength=self.n)
                        for c in range(w.shape[1])], axis=1)
        return out + b


def train_sparse(data: SparseSet, y: npt.NDArray[np.int64], n: int, l2: float = 1e-5,
                 steps: int = 150, lr: float = 0.1) -> tuple[F, F]:
    dim = 1 << HASH_BITS
    w = np.zeros((dim, n))
    b = np.zeros(n)
    onehot = np.eye(n)[y]
    m_w, v_w, m_b, v_b = np.zeros_like(w), np.zeros_like(w), np.zeros_like(b), np.zeros_like(b)
    for t in range(1, steps + 1):
        logits = data.logits(w, b)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        g = (p - onehot) / data.n
        g_rows = g[data.rows] * data.val[:, None]
        gw = np.stack([np.bincount(data.idx, weights=g_rows[:, c], minlength=dim)
                       for c in range(n)], axis=1) + l2 * w
        gb = g.sum(axis=0)
        for param, grad, m, v in ((w, gw, m_w, v_w), (b, gb, m_b, v_b)):
            m *= 0.9
            m += 0.1 * grad
            v *= 0.999
            v += 0.001 * grad * grad
            param -= lr * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
    return w.astype(np.float32), b.astype(np.float32)


# --- embeddings ---------------------------------------------------------------------------


def embed_all(texts: list[str], model: Path, cache: Path, threads: int) -> F:
    if cache.exists():
        cached: F = np.load(cache).astype(np.float32)
        if cached.shape[0] == len(texts):
            return cached
    from routegate.sidecar.embedder import Embedder

    embedder = Embedder(model, threads=threads)
    out = []
    started = time.perf_counter()
    for i in range(0, len(texts), 16):
        chunk = [embedder.fit(t, MAX_TOKENS)[0] for t in texts[i : i + 16]]
        out.append(embedder.embed(chunk))
        print(f"\rembedding {i + len(chunk)}/{len(texts)}", end="", file=sys.stderr)
    print(f" ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    vectors = np.concatenate(out)
    np.save(cache, vectors)
    return vectors


def example_index(model: Path, threads: int) -> tuple[F, npt.NDArray[np.int64]]:
    texts, labels = [], []
    for spec in default_routes():
        for text in (*spec.examples, spec.description):
            texts.append(text)
            labels.append(CATEGORIES.index(spec.name))
    digest = hashlib.blake2b("\n".join(texts).encode(), digest_size=6).hexdigest()
    vectors = embed_all(texts, model, Path(f"/tmp/routegate_examples_{digest}.npy"), threads)
    return vectors, np.asarray(labels, dtype=np.int64)


# --- evaluation ---------------------------------------------------------------------------


def source_folds(rows: list[dict[str, str]], k: int = 5) -> npt.NDArray[np.int64]:
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
        fold = order[0]
        assign[source] = fold
        fold_rows[fold] += size[source]
        fold_cats[fold] |= cats[source]
    return np.array([assign[row["source"]] for row in rows], dtype=np.int64)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=Path("../shared/data/classify_dev.jsonl"))
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--write", action="store_true",
                        help="write the shipped weights (trained on the non-held-back rows)")
    parser.add_argument("--eval", default="random,source", help="splits to evaluate")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parents[1] / "sidecar",
                        help="where --write puts lexical.npz and embed_head.npz")
    parser.add_argument("--temperature", type=float, default=0.02)
    parser.add_argument("--knn-weight", type=float, default=1.0)
    parser.add_argument("--lexical-weight", type=float, default=3.0)
    parser.add_argument("--accept", type=float, default=0.9)
    parser.add_argument("--l2", type=float, default=1e-5, help="lexical model L2 penalty")
    parser.add_argument("--drop-nc", action="store_true",
                        help="train shipped weights without non-commercial sources")
    args = parser.parse_args()
    from routegate.sidecar.convert import ensure_default_model

    model = args.model or ensure_default_model()
    rows = load_rows(args.data)
    texts = [r["prompt"] for r in rows]
    y = np.array([CATEGORIES.index(r["category"]) for r in rows], dtype=np.int64)
    n = len(CATEGORIES)
    emb = embed_all(texts, model, Path(f"/tmp/routegate_dev_emb_{MAX_TOKENS}.npy"), args.threads)
    ex_vec, ex_lab = example_index(model, args.threads)
    sparse = SparseSet(texts)

    held = np.array([is_held_back(r["id"]) for r in rows])
    splits: dict[str, list[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]]] = {}
    if "random" in args.eval:
        splits["held-back 20% (random by id)"] = [(np.flatnonzero(~held), np.flatnonzero(held))]
    if "source" in args.eval:
        folds = source_folds(rows)
        splits["source-held-out (5 folds)"] = [
            (np.flatnonzero(folds != f), np.flatnonzero(folds == f)) for f in range(5)]

    temps = (0.01, 0.02, 0.05)
    results: dict[str, dict[str, float]] = {}
    for split_name, pairs in splits.items():
        test_all = np.concatenate([te for _, te in pairs])
        tag = "" if args.l2 == 1e-5 else f"_l2{args.l2:g}"
        cache = Path(f"/tmp/routegate_cv_{split_name.split()[0]}_{len(rows)}{tag}.npz")
        if cache.exists():
            with np.load(cache) as saved:
                lex_p, head_p = saved["lex"], saved["head"]
        else:
            lex_p = np.zeros((len(rows), n), dtype=np.float32)
            head_p = np.zeros((len(rows), n), dtype=np.float32)
            for train, test in pairs:
                w, b = train_sparse(sparse.subset(train), y[train], n, l2=args.l2)
                lex_p[test] = softmax(sparse.subset(test).logits(
                    w.astype(np.float64), b.astype(np.float64)).astype(np.float32))
                hw, hb = train_dense(emb[train], y[train], n)
                head_p[test] = softmax(emb[test] @ hw + hb)
            np.savez(cache, lex=lex_p, head=head_p)
        yt = y[test_all]
        res: dict[str, float] = {}
        res["lexical"] = macro_f1(yt, lex_p[test_all].argmax(1), n)
        res["head"] = macro_f1(yt, head_p[test_all].argmax(1), n)
        best = (-1.0, 0.0, 0.0, 0.0)
        for temp in temps:
            index = RouteIndex(CATEGORIES, ex_vec, ex_lab, None)
            index.temperature = temp
            knn_p = index.predict_proba(emb[test_all])
            res[f"knn T={temp}"] = macro_f1(yt, knn_p.argmax(1), n)
            for kw in (0.25, 0.5, 1.0, 1.5, 2.0, 3.0):
                model_p = mix_known(CATEGORIES, knn_p, CATEGORIES, head_p[test_all], kw, 1.0)
                res[f"head+knn T={temp} w={kw}"] = macro_f1(yt, model_p.argmax(1), n)
                for beta in (0.5, 1.0, 1.5, 2.0):
                    full = mix_known(CATEGORIES, model_p, CATEGORIES, lex_p[test_all], 1.0, beta)
                    score = macro_f1(yt, full.argmax(1), n)
                    res[f"lex+head+knn T={temp} w={kw} b={beta}"] = score
                    if score > best[0]:
                        best = (score, temp, kw, beta)
        # The cascade: accept the lexical answer when it is confident, else the combination.
        score, temp, kw, beta = best
        index = RouteIndex(CATEGORIES, ex_vec, ex_lab, None)
        index.temperature = temp
        knn_p = index.predict_proba(emb[test_all])
        model_p = mix_known(CATEGORIES, knn_p, CATEGORIES, head_p[test_all], kw, 1.0)
        full = mix_known(CATEGORIES, model_p, CATEGORIES, lex_p[test_all], 1.0, beta)
        lex_t = lex_p[test_all]
        for theta in (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.01):
            confident = lex_t.max(1) >= theta
            pred = np.where(confident, lex_t.argmax(1), full.argmax(1))
            res[f"cascade theta={theta} (model share {1 - confident.mean():.2f})"] = macro_f1(
                yt, pred, n)
        res["accuracy lexical"] = float(np.mean(lex_t.argmax(1) == yt))
        res["accuracy full"] = float(np.mean(full.argmax(1) == yt))
        print(f"\n== {split_name}: {test_all.shape[0]} test rows; best combo T={temp} "
              f"w={kw} b={beta} -> {score:.3f}")
        for key, value in res.items():
            if "lex+head+knn" in key and value < score - 0.02:
                continue
            print(f"  {key:60s} {value:.3f}")
        per_cat = {CATEGORIES[c]: float(np.mean(full.argmax(1)[yt == c] == c)) for c in range(n)}
        print("  recall per category (full):", {k: round(v, 2) for k, v in per_cat.items()})
        results[split_name] = {"best": score, "temp": temp, "kw": kw, "beta": beta}

    if args.write:
        keep = np.array([i for i, r in enumerate(rows) if not held[i]
                         and not (args.drop_nc and r["source"] in NC_SOURCES)], dtype=np.int64)
        w, b = train_sparse(sparse.subset(keep), y[keep], n, l2=args.l2)
        w[np.abs(w) < 1e-3] = 0.0
        sidecar = args.out_dir
        sidecar.mkdir(parents=True, exist_ok=True)
        LexicalModel(CATEGORIES, w.astype(np.float16), b, accept_confidence=args.accept,
                     mix_weight=args.lexical_weight).save(sidecar / "lexical.npz")
        hw, hb = train_dense(emb[keep], y[keep], n)
        EmbeddingHead(CATEGORIES, hw, hb, model="all-MiniLM-L6-v2",
                      knn_weight=args.knn_weight, temperature=args.temperature).save(
            sidecar / "embed_head.npz")
        print(f"wrote weights trained on {keep.shape[0]} rows (T={args.temperature}, "
              f"knn weight {args.knn_weight}, lexical weight {args.lexical_weight}, "
              f"accept {args.accept})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

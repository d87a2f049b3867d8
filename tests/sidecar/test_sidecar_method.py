"""The classifier's method without a process: features, mixing, the route index."""

from __future__ import annotations

import subprocess
import sys
import zlib
from dataclasses import replace

import numpy as np

from routegate.sidecar.lexical import HASH_BITS, LexicalModel, featurize, weight_files
from routegate.sidecar.routes import route_specs
from routegate.sidecar.semantic import RouteIndex, mix_known
from routegate.sidecar.window import document_tokens, instruction_view, weak_instruction


def test_features_are_stable_across_processes() -> None:
    # Hashing must not depend on PYTHONHASHSEED: shipped weights index these buckets.
    code = "from routegate.sidecar.lexical import featurize; print(featurize('Hello world')[0][:5])"
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, env={"PYTHONHASHSEED": seed}).stdout
            for seed in ("1", "2")}
    assert len(runs) == 1
    idx, val = featurize("x" * 10_000)  # bounded whatever the length
    assert idx.shape[0] < 1000 and abs(float(np.dot(val, val)) - 1.0) < 1e-5


def test_shipped_weights_load_for_both_variants() -> None:
    for variant in ("default", "ncfree"):
        model = LexicalModel.load(weight_files(variant)[0])
        probs = model.predict_proba("Translate 'good night' into Spanish.")
        assert model.categories[int(np.argmax(probs))] == "translation"
        assert 0.0 < model.accept_confidence <= 1.0


def test_mix_known_leaves_unknown_routes_alone() -> None:
    categories = ("a", "b", "new")
    base = np.array([0.3, 0.3, 0.4], dtype=np.float32)
    other = np.array([0.9, 0.1], dtype=np.float32)  # knows only a and b
    mixed = mix_known(categories, base, ("a", "b"), other, 1.0, 1.0)
    assert abs(float(mixed[2]) - 0.4) < 1e-6  # the unknown route keeps its mass
    assert mixed[0] > mixed[1] and abs(float(mixed.sum()) - 1.0) < 1e-5


def test_route_index_prefers_near_duplicates_of_examples() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(4, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = RouteIndex(("x", "y"), vectors, np.array([0, 0, 1, 1]))
    probs = index.predict_proba(vectors[2:3])
    assert int(np.argmax(probs[0])) == 1 and probs[0, 1] >= 0.98


def test_routes_without_examples_take_the_shipped_ones() -> None:
    specs = {spec.name: spec for spec in route_specs(categories=("code", "billing"))}
    assert len(specs["code"].examples) >= 10 and specs["billing"].examples == ()


def test_instruction_view_keeps_the_instruction_and_cuts_the_document() -> None:
    article = " ".join(f"Sentence number {i} of a long news article about the harbour." for i in
                       range(40))
    prompt = f"{article}\n\nIs this news item about sports, politics or business?"
    view = instruction_view(prompt)
    assert view.text.endswith("Is this news item about sports, politics or business?")
    assert "Sentence number 20 " not in view.text  # the middle of the pasted text is gone
    assert view.document_chars > 2000 and view.kind == "prose"
    assert document_tokens(view)[0] == "doc:yes"
    short = "Translate 'good morning' to French."
    assert instruction_view(short).text == short and document_tokens(instruction_view(short)) == [
        "doc:none"]


def test_lexical_features_follow_the_instruction_not_the_document() -> None:
    # The same instruction around two unrelated documents shares most of its features;
    # the head + tail window of old shared almost none (the documents filled it).
    doc_a = " ".join(f"The council voted on the budget for road number {i}." for i in range(60))
    doc_b = " ".join(f"Our team scored in minute {i} of a rainy match." for i in range(60))
    ask = "Summarize the text above in two sentences."
    a, b = (set(featurize(f"{d}\n\n{ask}")[0].tolist()) for d in (doc_a, doc_b))
    assert len(a & b) / len(a | b) > 0.25


def test_chinese_requests_are_scored_by_content_not_as_translation() -> None:
    # MiniLM is English-only: with one Chinese example per route every Chinese request
    # landed next to the translation examples. Route examples in several languages give
    # the examples' kNN a same-language neighbour in every route.
    from routegate.sidecar.convert import ensure_default_model
    from routegate.sidecar.embedder import Embedder

    prompts = [("帮我用Go语言写一个读取配置文件的程序。", "code"),
               ("请概括这段会议记录的主要结论。", "summarization"),
               ("写一篇关于故乡的小短文。", "creative_writing"),
               ("判断这条微博的情感倾向：正面还是负面？", "classification"),
               ("请从这段话中提取出所有的日期。", "extraction"),
               ("一个正方形的边长是6米，它的面积是多少平方米？", "math")]
    embedder = Embedder(ensure_default_model(), threads=1)
    specs = route_specs()
    texts = [t for spec in specs for t in (*spec.examples, spec.description)]
    labels = np.array([c for c, spec in enumerate(specs) for _ in range(len(spec.examples) + 1)])
    index = RouteIndex(tuple(s.name for s in specs),
                       embedder.embed([embedder.fit(t, 64)[0] for t in texts]), labels)
    probs = index.predict_proba(embedder.embed([embedder.fit(t, 64)[0] for t, _ in prompts]))
    got = [index.categories[int(k)] for k in probs.argmax(axis=1)]
    assert "translation" not in got
    assert sum(g == want for g, (_, want) in zip(got, prompts, strict=True)) >= 4


def test_cjk_text_gets_character_bigram_features() -> None:
    # \w+ reads a whole Chinese clause as one word; two requests sharing the word 总结
    # ("summarize") share its bigram bucket, which byte 3-5-grams (one character) do not.
    a, b = (set(featurize(t)[0].tolist()) for t in ("请总结这篇文章", "帮我总结会议"))
    bigram = zlib.crc32("c2:总结".encode()) & ((1 << HASH_BITS) - 1)
    assert bigram in a & b


def test_document_with_a_weak_instruction_is_less_confident() -> None:
    article = " ".join(f"The council met on day {i} and agreed on the harbour budget." for i in
                       range(30))
    weak = instruction_view(f"{article}\n\nThoughts")
    clear = instruction_view(f"{article}\n\nSummarize the article above in two sentences.")
    assert weak_instruction(weak) and not weak_instruction(clear)
    assert not weak_instruction(instruction_view("What is the capital of France"))
    model = LexicalModel.load(weight_files("default")[0])
    assert model.weak_scale < 1.0  # fitted for calibration (bench/classify_train.py)
    flat = float(model.predict_proba(f"{article}\n\nThoughts").max())
    sharp = float(replace(model, weak_scale=1.0).predict_proba(f"{article}\n\nThoughts").max())
    assert flat < sharp

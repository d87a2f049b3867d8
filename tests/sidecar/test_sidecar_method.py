"""The classifier's method without a process: features, mixing, the route index."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from routegate.sidecar.lexical import LexicalModel, featurize, weight_files
from routegate.sidecar.routes import route_specs
from routegate.sidecar.semantic import RouteIndex, mix_known
from routegate.sidecar.window import document_tokens, instruction_view


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

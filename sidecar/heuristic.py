"""Keyword heuristic: the classifier of last resort (microseconds, no model).

It scores each category by weighted cue patterns and reports the margin between the best two
as its confidence, so an unsure answer escalates instead of routing cheaply by accident.
"""

from __future__ import annotations

import re
import time

from routegate.middleware.contracts import Classification, Complexity, Method

__all__ = ["HeuristicClassifier", "complexity_of", "heuristic_scores"]

_CUES: dict[str, tuple[tuple[str, float], ...]] = {
    "code": (
        (r"\b(def|class|function|import|return|lambda|const|var|public|static)\b", 1.5),
        (r"\b(python|javascript|typescript|java|c\+\+|rust|golang|sql|regex|bash|html|css)\b", 2.0),
        (r"\b(code|program|script|bug|debug|compile|api|algorithm|refactor|unit tests?)\b", 1.5),
        (r"```|[{};]\s*$|=>|\(\)", 1.0),
    ),
    "math": (
        (r"\b(solve|equation|integral|derivative|calculate|compute|sum of|probability)\b", 2.0),
        (r"\d+\s*[-+*/^=]\s*\d+|\$[^$]+\$|\\frac|\bsqrt\b", 2.0),
        (r"\b(how many|how much|percent|average|total cost|per hour)\b", 1.0),
    ),
    "reasoning": (
        (r"\b(logic|puzzle|deduce|infer|argument|assumption|premise|conclusion)\b", 2.0),
        (r"\b(which of the following|must be true|step by step|explain why)\b", 1.5),
    ),
    "creative_writing": (
        (r"\b(write|compose|draft)\b.*\b(story|poem|song|haiku|essay|letter|email|speech)\b", 3.0),
        (r"\b(story|poem|lyrics|fiction|haiku|limerick|slogan|tagline)\b", 1.5),
    ),
    "summarization": (
        (r"\b(summari[sz]e|summary|tl;?dr|condense|key points|main points|in brief)\b", 3.0),
    ),
    "translation": (
        (r"\btranslat\w*\b", 3.0),
        (r"\b(in|into|to) (english|french|german|spanish|chinese|japanese|italian|russian)\b", 1.0),
    ),
    "extraction": (
        (r"\b(extract|pull out|list all|identify all|find all|named entit\w+)\b", 2.5),
        (r"\b(as json|key: value|fields?)\b", 1.0),
    ),
    "classification": (
        (r"\b(classify|categori[sz]e|label|sentiment|which category|intent)\b", 2.5),
    ),
    "factual_qa": (
        (r"^\s*(who|what|when|where|which|how)\b", 1.0),
        (r"\b(capital of|born|invented|founded|population of|located)\b", 1.5),
    ),
    "chat": (
        (r"^\s*(hi|hello|hey|thanks|thank you|good (morning|night|evening))\b", 2.0),
        (r"\b(how are you|what'?s up|nice to meet)\b", 2.0),
    ),
}

_COMPILED = {
    category: tuple((re.compile(pattern, re.IGNORECASE | re.MULTILINE), weight)
                    for pattern, weight in cues)
    for category, cues in _CUES.items()
}


def heuristic_scores(text: str, categories: tuple[str, ...]) -> dict[str, float]:
    """Cue score per category (only categories this heuristic knows get non-zero scores)."""
    return {
        category: sum(weight for pattern, weight in _COMPILED.get(category, ()) if pattern.search(text))
        for category in categories
    }


def complexity_of(text: str, category: str) -> Complexity:
    """Long requests, and mid-length reasoning or math, count as complex."""
    words = len(text.split())
    if words > 300 or (category in ("reasoning", "math") and words > 60):
        return "complex"
    return "simple"


class HeuristicClassifier:
    """Implements the Classifier protocol with keyword cues only."""

    def __init__(self, categories: tuple[str, ...], default_category: str = "chat",
                 method: Method = "lexical") -> None:
        self._categories = categories
        self._default = default_category
        self._method = method

    def classify_now(self, text: str) -> Classification:
        started = time.perf_counter()
        window = text[:2000] + "\n" + text[-2000:] if len(text) > 4000 else text
        scores = heuristic_scores(window, self._categories)
        ranked = sorted(scores.items(), key=lambda item: item[1], reverse=True)
        best, best_score = ranked[0] if ranked else (self._default, 0.0)
        runner_up = ranked[1][1] if len(ranked) > 1 else 0.0
        if best_score <= 0.0:
            best, confidence = self._default, 0.3
        else:
            confidence = min(0.95, 0.5 + (best_score - runner_up) / (2 * best_score))
        return Classification(
            category=best,
            complexity=complexity_of(text, best),
            confidence=round(confidence, 3),
            method=self._method,
            latency_ms=(time.perf_counter() - started) * 1000.0,
        )

    async def classify(self, text: str) -> Classification:
        return self.classify_now(text)

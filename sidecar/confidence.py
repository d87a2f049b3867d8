"""How the cascade lowers the confidence of answers it has reason to doubt.

The router escalates an answer whose confidence is under ``classifier.escalate_below`` to a
stronger tier, so a wrong answer with a high confidence is the expensive mistake (a cheap
model for a hard request), a wrong one with a low confidence only costs money. Two signals
mark a doubtful answer, both measured source-held-out (``bench/classify_train.py``):

* the stages disagree (the model stage's top route is not the lexical stage's);
* the prompt is a pasted document under a weak instruction (``window.weak_instruction``):
  what to do with the document is guesswork.

Such answers are right 63 % of the time; held under ``escalate_below``, the answers the
router still trusts are 96 % right instead of 89 % (2026-12-05, sidecar/README.md).

:func:`disagreement_confidence` scales a disagreeing answer by a factor fitted with the
weights for calibration; :func:`doubtful_confidence` then holds every doubtful answer just
under ``escalate_below`` (``[classifier] escalate_doubtful``, on by default), so the router
escalates it instead of trusting the label.
"""

from __future__ import annotations

__all__ = ["DOUBT_MARGIN", "disagreement_confidence", "doubtful_confidence"]

DOUBT_MARGIN = 0.01  # a doubtful answer's confidence is at most escalate_below minus this


def disagreement_confidence(confidence: float, scale: float) -> float:
    """A mixed answer whose stages disagree, scaled by ``LexicalModel.disagree_scale``."""
    return confidence * scale


def doubtful_confidence(confidence: float, doubtful: bool, below: float | None) -> float:
    """``confidence``, held under ``below`` (the router's escalate_below) when ``doubtful``;
    ``below`` None leaves it as it is."""
    if not doubtful or below is None:
        return confidence
    return min(confidence, max(0.0, below - DOUBT_MARGIN))

"""Instruction-aware input window: what the classifier reads of a long prompt.

A prompt built around pasted material ("<article> Summarize the text above", "Which topic
is this news item about? <item>") is decided by its instruction, not by the document; read
in full (or by a blind head + tail cut), the document swamps the few words that say what
to do. :func:`instruction_view` keeps every short paragraph or line (instructions, questions,
option lists, "Text:" labels) and cuts each long one (pasted material) to its first and
last sentence, so the instruction gets the tokens; the document itself is represented by
a few shape features (:func:`document_tokens`: that it is there, its size, its kind).

Both stages use it: the lexical model featurizes the view plus the document tokens, and
the sidecar embeds the view. Pure string work, ~10-50 µs on a few-KB prompt.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

__all__ = ["View", "document_tokens", "instruction_view", "weak_instruction"]

# Texts up to this size are read whole: there is no document to find in them.
_SHORT_CHARS = 300
# A paragraph (or line) longer than this is pasted material: cut to its edge sentences.
_LONG_PARAGRAPH = 220
_EDGE_CHARS = 160  # at most this much of each kept edge sentence
_WEAK_CHARS = 20  # a separate instruction shorter than this is a weak one
_PARAGRAPHS = re.compile(r"\n\s*\n")
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+|(?<=[。！？])")
_SPEAKER = re.compile(r"^\s*[\w#][\w#. ]{0,24}:\s", re.MULTILINE)
_CODE = re.compile(r"```|[{};]\s*$|^\s*(def|class|import|for|if|return|function)\b",
                   re.MULTILINE)


@dataclass(frozen=True)
class View:
    """The instruction-first reading of a prompt."""

    text: str  # what the stages read: short parts whole, long parts by their edges
    document_chars: int  # characters of pasted material left out of ``text``
    kind: str  # "" (none), "dialogue", "code" or "prose"
    instruction_chars: int = 0  # characters of the short parts kept whole (the instruction)


def _edges(paragraph: str) -> tuple[str, int]:
    """First and last sentence of a long paragraph, and how many characters were dropped."""
    lines = [line for line in paragraph.split("\n") if line.strip()]
    if len(lines) > 2:
        # A block of lines: its first and last line are where a label or request sits.
        first, last = lines[0], lines[-1]
    else:
        sentences = [s for s in _SENTENCE_END.split(paragraph) if s.strip()]
        first, last = sentences[0], sentences[-1] if len(sentences) > 1 else ""
    first, last = first.strip()[:_EDGE_CHARS], last.strip()[-_EDGE_CHARS:]
    kept = f"{first} … {last}" if last else f"{first} …"
    return kept, max(0, len(paragraph) - len(first) - len(last))


def instruction_view(text: str) -> View:
    """Short prompts unchanged; in longer ones, every long paragraph cut to its edges."""
    stripped = text.strip()
    if len(stripped) <= _SHORT_CHARS:
        return View(stripped, 0, "")
    paragraphs = [p for p in _PARAGRAPHS.split(stripped) if p.strip()]
    if len(paragraphs) == 1:
        # One paragraph: a long first/last line is the document next to a one-line request.
        paragraphs = [line for line in stripped.split("\n") if line.strip()]
    kept: list[str] = []
    dropped = 0
    instruction = 0
    longest = ""
    for paragraph in paragraphs:
        if len(paragraph) <= _LONG_PARAGRAPH:
            kept.append(paragraph.strip())
            instruction += len(kept[-1])
            continue
        edge, lost = _edges(paragraph)
        kept.append(edge)
        dropped += lost
        if len(paragraph) > len(longest):
            longest = paragraph
    if not dropped:
        return View(stripped, 0, "")
    if len(_SPEAKER.findall(longest)) >= 3:
        kind = "dialogue"
    elif len(_CODE.findall(longest)) >= 2:
        kind = "code"
    else:
        kind = "prose"
    return View("\n".join(kept), dropped, kind, instruction)


def weak_instruction(view: View) -> bool:
    """A pasted document with almost nothing around it that says what to do: no separate
    instruction of 20 characters or more and no question in what is read. The trained
    stages are least reliable there (measured source-held-out), so their confidence drops."""
    return (bool(view.document_chars) and view.instruction_chars < _WEAK_CHARS
            and "?" not in view.text and "？" not in view.text)


def document_tokens(view: View) -> list[str]:
    """A few features standing for the left-out document (lexical model tokens)."""
    if not view.document_chars:
        return ["doc:none"]
    size = min(12, int(math.log2(view.document_chars + 1)))
    return ["doc:yes", f"doc:size{size}", f"doc:{view.kind}"]

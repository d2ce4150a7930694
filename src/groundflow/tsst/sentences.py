"""Sentences of a reasoning chain: TSST's step unit, one splitter for search, value labels and data.

The original cuts at every '.', so "3.5 cm", "e.g. a cat" and "Final Answer: A. red" break mid-
sentence, and its labellers split finished chains the same way but join them with other spacing
than the search. Here a sentence ends at '.', '!' or '?' followed by whitespace (or the end of a
finished text), unless the period closes a known abbreviation or a single-letter initial (an
option letter "A." included) or is part of an ellipsis; sentences are stored stripped and joined
by one space everywhere. `cut="period"` gives the original's cut (every '.', each piece keeping
its '.') for a user who wants its behaviour.
"""

from __future__ import annotations

import re
from typing import Sequence

CUTS = ("sentence", "period")
ABBREVIATIONS = frozenset({
    "e.g", "i.e", "mr", "mrs", "ms", "dr", "prof", "st", "vs", "no", "fig", "approx", "jr", "sr", "cf", "al",
})
_END = re.compile(r"[.!?]+(?=\s|$)")


def _is_break(text: str, match: re.Match) -> bool:
    mark = match.group()
    if mark != ".":
        return "..." not in mark  # "?", "!", "?!" end a sentence; an ellipsis does not
    before = text[:match.start()]
    word = re.search(r"(\S+)$", before)
    if word is None:
        return True
    token = word.group(1).lower().lstrip("(\"'")
    if token in ABBREVIATIONS or token.rstrip(".") in ABBREVIATIONS:
        return False
    if re.fullmatch(r"[a-z]", token):  # an initial or an option letter: "A. red"
        return False
    return True


def _breaks(text: str) -> list[int]:
    """End offsets (exclusive) of each complete sentence's terminator."""
    return [m.end() for m in _END.finditer(text) if _is_break(text, m)]


def split_sentences(text: str, *, cut: str = "sentence") -> list[str]:
    """The sentences of a finished text, stripped, empty ones dropped; a trailing piece without a
    terminator is a sentence too (a chain that ended at EOS keeps its last words)."""
    if cut == "period":
        return [piece.strip() + "." for piece in text.split(".") if piece.strip()]
    if cut != "sentence":
        raise ValueError(f"cut must be one of {CUTS}, not {cut!r}")
    sentences, start = [], 0
    for end in _breaks(text):
        sentences.append(text[start:end])
        start = end
    sentences.append(text[start:])
    return [s.strip() for s in sentences if s.strip()]


def first_sentence(text: str, *, finished: bool, cut: str = "sentence") -> str | None:
    """The first sentence of generated `text`, or None when none is complete yet. While generation
    goes on (`finished=False`) a terminator counts only once the next character is whitespace, so
    "3." waits to see whether "5" follows; a finished text's remainder is a sentence."""
    if cut == "period":
        head, dot, _ = text.partition(".")
        if dot:
            return head.strip() + "." if head.strip() else None
        return (text.strip() or None) if finished else None
    if cut != "sentence":
        raise ValueError(f"cut must be one of {CUTS}, not {cut!r}")
    stripped = text.lstrip()
    for end in _breaks(stripped):
        if end < len(stripped) or finished:
            sentence = stripped[:end].strip()
            if sentence:
                return sentence
    if finished:
        return stripped.strip() or None
    return None


def join_sentences(sentences: Sequence[str]) -> str:
    """The chain text of `sentences`: one space between them, as the search builds chains."""
    return " ".join(s.strip() for s in sentences if s.strip())

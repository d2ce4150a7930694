"""A word tokeniser for locating entity phrases in captions.

The seed ran Stanford CoreNLP (a Java server) only to split the caption and each full form into
words, so that a full form is matched at word boundaries ("cat" does not match inside "cattle").
This module does the same in Python, following the Penn Treebank conventions that matter for
captions:

- punctuation is split off ("table." -> "table", "."),
- possessives and contractions are split ("dog's" -> "dog", "'s"; "don't" -> "do", "n't";
  "dogs'" -> "dogs", "'"),
- hyphenated words stay whole ("t-shirt", "3-year-old"),
- numbers with separators stay whole ("3.5", "1,000", "12:30"), and so do dotted
  abbreviations ("U.S.").

Every word carries its character offsets in the original text, so a match can be mapped back to
the exact characters it covers.
"""

from __future__ import annotations

import re
from typing import NamedTuple, Sequence


class Word(NamedTuple):
    text: str
    start: int
    end: int


_ALNUM = r"[^\W_]"
_APOSTROPHE = r"['\u2019]"

_WORD_PATTERN = re.compile(
    "|".join(
        [
            # numbers with internal separators; plain digit runs fall through to words
            r"\d+(?:[.,:/]\d+)+",
            # dotted abbreviations such as U.S. or a.m.
            r"(?:[A-Za-z]\.){2,}",
            # the stem before a negative contraction: "do" of "don't", "ca" of "can't"
            rf"{_ALNUM}+?(?=[nN]{_APOSTROPHE}[tT](?!{_ALNUM}))",
            rf"[nN]{_APOSTROPHE}[tT](?!{_ALNUM})",
            # words, hyphenated compounds kept whole
            rf"{_ALNUM}+(?:-{_ALNUM}+)*",
            # clitics after a word: 's 're 've 'll 'd 'm
            rf"(?<={_ALNUM}){_APOSTROPHE}(?:[sS]|[rR][eE]|[vV][eE]|[lL][lL]|[dD]|[mM])(?!{_ALNUM})",
            # ellipsis and double dash stay one token
            r"\.\.\.|--",
            # any other non-space character is a token on its own
            r"[^\w\s]|_",
        ]
    )
)


def word_tokenize(text: str) -> list[Word]:
    """Split `text` into words with their character offsets (end exclusive)."""
    return [Word(m.group(), m.start(), m.end()) for m in _WORD_PATTERN.finditer(text)]


def _match_key(word: Word | str) -> str:
    text = word.text if isinstance(word, Word) else word
    return text.replace("\u2019", "'").casefold()


def find_occurrences(
    caption_words: Sequence[Word | str], phrase_words: Sequence[Word | str]
) -> list[tuple[int, int]]:
    """Word-index spans [start, end) where `phrase_words` occurs in `caption_words`.

    Matching ignores case (the seed matched case-sensitively, so "Dog" in a caption was missed
    for the full form "dog") and treats the typographic apostrophe as "'". Occurrences are
    returned in order; overlapping occurrences are all reported.
    """
    phrase = [_match_key(w) for w in phrase_words]
    if not phrase:
        return []
    caption = [_match_key(w) for w in caption_words]
    n = len(phrase)
    return [(i, i + n) for i in range(len(caption) - n + 1) if caption[i : i + n] == phrase]


def find_phrase_spans(text: str, phrase: str) -> list[tuple[int, int]]:
    """Character spans [start, end) of each word-aligned occurrence of `phrase` in `text`."""
    words = word_tokenize(text)
    return [
        (words[start].start, words[end - 1].end)
        for start, end in find_occurrences(words, word_tokenize(phrase))
    ]

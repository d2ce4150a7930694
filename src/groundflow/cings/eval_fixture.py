"""The demo's KILT-style evaluation file for CINGS: short-answer and long-form questions, each with a
gold passage and scored retrieved passages, plus bad records that ingestion must reject.

Records follow the format of spec §6: `{id, question, answers, docs: [{title, text, score}]}` with
gold passages (`score: "gold"`) first. Two valid records exercise the passage choice: one has no
gold passage (the best-scoring retrieved passage is used), one has two gold passages of different
lengths (the longer one is shown alone). The file is the same for the same arguments.
"""

from __future__ import annotations

import json
from pathlib import Path

from groundflow.io.artifacts import atomic_write_text

# (id, question, answers, gold title, gold text); the last two are long-form (scored by ROUGE-L).
FACTS = [
    ("nq-0", "What is the capital of France?", ["Paris"], "France",
     "France is a country in Western Europe. Its capital and largest city is Paris."),
    ("nq-1", "Who wrote the novel Pride and Prejudice?", ["Jane Austen", "Austen"], "Pride and Prejudice",
     "Pride and Prejudice is an 1813 novel of manners written by Jane Austen."),
    ("nq-2", "What is the largest planet in the solar system?", ["Jupiter"], "Jupiter",
     "Jupiter is the fifth planet from the Sun and the largest in the Solar System."),
    ("nq-3", "How many legs does a spider have?", ["eight", "8"], "Spider",
     "Spiders are air-breathing arthropods that have eight legs and chelicerae with fangs."),
    ("nq-4", "Which element has the chemical symbol O?", ["oxygen"], "Oxygen",
     "Oxygen is the chemical element with the symbol O and atomic number 8."),
    ("nq-5", "In which year did the Berlin Wall fall?", ["1989"], "Berlin Wall",
     "The Berlin Wall was a guarded concrete barrier that fell on 9 November 1989."),
    ("nq-6", "What is the longest river in Africa?", ["the Nile", "Nile River"], "Nile",
     "The Nile is a major north-flowing river in northeastern Africa and the longest river in Africa."),
    ("nq-7", "Who painted the Mona Lisa?", ["Leonardo da Vinci", "Leonardo"], "Mona Lisa",
     "The Mona Lisa is a half-length portrait painting by the Italian artist Leonardo da Vinci."),
    ("nq-8", "What gas do plants absorb from the air for photosynthesis?", ["carbon dioxide", "CO2"], "Photosynthesis",
     "In photosynthesis plants take in carbon dioxide and water and use light to make sugar and oxygen."),
    ("nq-9", "What is the currency of Japan?", ["yen", "Japanese yen"], "Japanese yen",
     "The yen is the official currency of Japan, and the third most traded currency."),
    ("eli5-0", "Why is the sky blue?",
     ["Sunlight is scattered by the air, and blue light is scattered much more than red light, so blue light "
      "reaches our eyes from every part of the sky."], "Rayleigh scattering",
     "Rayleigh scattering of sunlight by the molecules of the air scatters short blue wavelengths more "
     "strongly than long red ones, which is why the daytime sky looks blue."),
    ("eli5-1", "Why do we get goosebumps?",
     ["Tiny muscles at the base of each hair contract when we are cold or afraid, which pulls the hairs "
      "upright and raises bumps on the skin."], "Goose bumps",
     "Goose bumps appear when small muscles attached to hair follicles contract, a reflex triggered by "
     "cold or strong emotions such as fear."),
]

DISTRACTORS = [
    ("Mount Everest", "Mount Everest is Earth's highest mountain above sea level, in the Himalayas."),
    ("Pacific Ocean", "The Pacific Ocean is the largest and deepest of Earth's five oceanic divisions."),
    ("Honey bee", "Honey bees are social insects that live in colonies and make honey from nectar."),
    ("Great Wall of China", "The Great Wall of China is a series of fortifications built across northern China."),
    ("Violin", "The violin is a wooden string instrument, the smallest and highest-pitched of its family."),
]


def _retrieved(index: int, n: int) -> list[dict]:
    """n distractor passages with descending scores, rotated per question so prompts differ."""
    picked = [DISTRACTORS[(index + j) % len(DISTRACTORS)] for j in range(n)]
    return [{"title": t, "text": x, "score": round(1.6 - 0.2 * j - 0.01 * index, 3)} for j, (t, x) in enumerate(picked)]


def eval_records(n_questions: int = 12, n_retrieved: int = 3) -> list[dict]:
    """The valid records: the first `n_questions` facts (short-answer first, then long-form)."""
    if not 1 <= n_questions <= len(FACTS):
        raise ValueError(f"n_questions must be in [1, {len(FACTS)}], not {n_questions}")
    records = []
    for index, (qid, question, answers, title, text) in enumerate(FACTS[:n_questions]):
        docs = [{"title": title, "text": text, "score": "gold"}] + _retrieved(index, n_retrieved)
        records.append({"id": qid, "question": question, "answers": answers, "docs": docs})
    if n_questions > 2:
        # no gold passage: the gold text comes back from the retriever, ranked second
        retrieved = records[1]["docs"][1:]
        gold = dict(records[1]["docs"][0], score=retrieved[0]["score"] - 0.05)
        records[1]["docs"] = [retrieved[0], gold] + retrieved[1:]
        # two gold passages: the longer one (the second) is the one shown alone
        extra = {"title": "Jupiter (planet)", "text": records[2]["docs"][0]["text"]
                 + " It is a gas giant with a mass more than two and a half times that of all the other planets combined.",
                 "score": "gold"}
        records[2]["docs"].insert(1, extra)
    return records


def eval_fixture_texts() -> list[str]:
    """The fixture's questions, passages (as prompts show them) and answers: text for a demo
    tokenizer to train on, so the evaluation prompts tokenise compactly."""
    texts = []
    for qid, question, answers, title, text in FACTS:
        texts += [question, f"## Context {title} {text} ## Answer", *answers]
    texts += [f"Context1: {title} {text}" for title, text in DISTRACTORS]
    return texts + ["### Context:", "### Answer"]


BAD_LINES = [
    # reason ingestion gives, then the raw line
    ("no 'answers' list", json.dumps({"id": "bad-no-answers", "question": "Who?", "docs": [
        {"title": "T", "text": "x", "score": "gold"}]})),
    ("doc 0 has no text", json.dumps({"id": "bad-empty-doc", "question": "What?", "answers": ["x"],
                                     "docs": [{"title": "T", "text": "  ", "score": 1.0}]})),
    ("not valid JSON", '{"id": "bad-json", "question": "truncated'),
]


def make_eval_fixture(path: str | Path, *, n_questions: int = 12, n_retrieved: int = 3,
                      include_bad: bool = True) -> dict:
    """Write the JSONL file (atomically); returns how many valid and bad lines it holds."""
    lines = [json.dumps(r, ensure_ascii=False) for r in eval_records(n_questions, n_retrieved)]
    n_valid = len(lines)
    if include_bad:
        # a repeated id: the second copy is rejected
        lines.append(lines[0])
        # spread the bad lines through the file rather than all at the end
        for offset, (_, raw) in enumerate(BAD_LINES):
            lines.insert(min(2 + 4 * offset, len(lines)), raw)
    atomic_write_text(path, "\n".join(lines) + "\n")
    return {"path": str(path), "valid": n_valid, "bad": len(lines) - n_valid}


__all__ = ["BAD_LINES", "FACTS", "eval_fixture_texts", "eval_records", "make_eval_fixture"]

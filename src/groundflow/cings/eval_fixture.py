"""The demo's KILT-style evaluation files for CINGS, one per kind of the original's evaluation sets,
each with bad records that ingestion must reject.

Records follow the format of spec §6: `{id, question, answers, docs: [{title, text, score}]}` with
gold passages (`score: "gold"`) first. `make_eval_fixture(folder)` writes one file per kind of
`EVAL_KINDS` (our own small texts, written in the style of each set):
- `kilt_fever`: claims with SUPPORTS / REFUTES and the passage that decides them (label_accuracy);
- `kilt_eli5`: "why" questions with long-form answers (rouge_l);
- `nq_conflict`: knowledge conflict: the one passage contradicts world knowledge and the gold
  answer is the passage's (Lyon, not Paris), so only a model that reads the passage scores;
- `based_squad`: sentence completion (`sentence_completion`): a paragraph and the start of a
  sentence it finishes;
- `based_swde`: sentence completion over a web page's attribute lines (`sentence_completion_newline`).
`FIXTURE_DATASETS` gives each kind's config entry (prompt, metrics, settings, ndocs). The
short-answer QA file of `make_qa_fixture` (`FACTS`, `DISTRACTORS`) is the older single demo file:
two of its records exercise the passage choice, one without a gold passage (the best-scoring
retrieved passage is used), one with two gold passages of different lengths (the longer one is
shown alone). Every file is the same for the same arguments.
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
    for kind in EVAL_KINDS:
        for record in kind_records(kind, n_retrieved=1):
            doc = record["docs"][0]
            texts += [record["question"], f"## Context {doc['title']} {doc['text']}. {record['question']} ## Answer",
                      *record["answers"]]
    return texts + ["### Context:", "### Answer"]


BAD_LINES = [
    # reason ingestion gives, then the raw line
    ("missing field 'answers'", json.dumps({"id": "bad-no-answers", "question": "Who?", "docs": [
        {"title": "T", "text": "x", "score": "gold"}]})),
    ("doc 0: field 'text' is empty", json.dumps({"id": "bad-empty-doc", "question": "What?", "answers": ["x"],
                                     "docs": [{"title": "T", "text": "  ", "score": 1.0}]})),
    ("not valid JSON", '{"id": "bad-json", "question": "truncated'),
]


def make_qa_fixture(path: str | Path, *, n_questions: int = 12, n_retrieved: int = 3,
                    include_bad: bool = True) -> dict:
    """Write the short-answer QA file of `FACTS` (atomically); returns how many valid and bad lines it holds."""
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


# ---------------------------------------------------------------------------------------------
# one file per kind of the original's evaluation sets

# (id, claim, label, gold title, gold text): the passages of FACTS decide the claims
FEVER_CLAIMS = [
    ("fever-0", "Paris is the capital of France.", "SUPPORTS", FACTS[0][3], FACTS[0][4]),
    ("fever-1", "Jupiter is the smallest planet in the Solar System.", "REFUTES", FACTS[2][3], FACTS[2][4]),
    ("fever-2", "Pride and Prejudice was written by Jane Austen.", "SUPPORTS", FACTS[1][3], FACTS[1][4]),
    ("fever-3", "The Berlin Wall fell in 1975.", "REFUTES", FACTS[5][3], FACTS[5][4]),
    ("fever-4", "Spiders have six legs.", "REFUTES", FACTS[3][3], FACTS[3][4]),
    ("fever-5", "The yen is the currency of Japan.", "SUPPORTS", FACTS[9][3], FACTS[9][4]),
]

# (id, question, long answer, gold title, gold text)
LONG_FORM = [FACTS[10], FACTS[11]] + [
    ("eli5-2", "Why do onions make you cry?",
     ["Cutting an onion releases a gas that irritates the eyes, and the eyes make tears to wash it away."],
     "Onion", "When an onion is cut, its damaged cells release a volatile sulfur compound that irritates the "
     "lacrimal glands of the eyes, which respond by releasing tears."),
    ("eli5-3", "Why does ice float on water?",
     ["Water expands when it freezes, so ice is less dense than liquid water and floats on top of it."],
     "Ice", "Ice is about nine percent less dense than liquid water because freezing water molecules form an "
     "open crystal lattice, so ice floats."),
]

# (id, question, the passage's answers, title, counterfactual passage): world knowledge says otherwise
CONFLICTS = [
    ("conflict-0", "What is the capital of France?", ["Lyon"], "France",
     "France is a country in Western Europe. Its capital and largest city is Lyon."),
    ("conflict-1", "Who wrote the novel Pride and Prejudice?", ["Charlotte Bronte", "Bronte"], "Pride and Prejudice",
     "Pride and Prejudice is an 1813 novel of manners written by Charlotte Bronte."),
    ("conflict-2", "What is the largest planet in the solar system?", ["Saturn"], "Saturn",
     "Saturn is the sixth planet from the Sun and the largest in the Solar System."),
    ("conflict-3", "How many legs does a spider have?", ["six", "6"], "Spider",
     "Spiders are air-breathing arthropods that have six legs and chelicerae with fangs."),
    ("conflict-4", "In which year did the Berlin Wall fall?", ["1991"], "Berlin Wall",
     "The Berlin Wall was a guarded concrete barrier that fell on 9 November 1991."),
    ("conflict-5", "Who painted the Mona Lisa?", ["Raphael"], "Mona Lisa",
     "The Mona Lisa is a half-length portrait painting by the Italian artist Raphael."),
]

# (id, start of a sentence, the words that finish it, paragraph): SQuAD-style completion
SQUAD_COMPLETIONS = [
    ("squad-0", "The majority of the Amazon rainforest is contained within", ["Brazil"],
     "The Amazon rainforest covers much of the Amazon basin of South America. The majority of the forest is "
     "contained within Brazil, followed by Peru and Colombia"),
    ("squad-1", "The Eiffel Tower was completed in", ["1889"],
     "The Eiffel Tower is a wrought-iron lattice tower in Paris. It was designed by the company of the engineer "
     "Gustave Eiffel and completed in 1889 for the World's Fair"),
    ("squad-2", "The first woman to win a Nobel Prize was", ["Marie Curie", "Curie"],
     "Marie Curie was a physicist and chemist who conducted pioneering research on radioactivity. She was the "
     "first woman to win a Nobel Prize"),
    ("squad-3", "The Great Barrier Reef lies in the", ["Coral Sea"],
     "The Great Barrier Reef is the largest coral reef system in the world. It lies in the Coral Sea, off the "
     "coast of Queensland in Australia"),
]

# (id, entity and attribute, value, the page's lines): SWDE-style attribute extraction
SWDE_PAGES = [
    ("swde-0", "The Silent Harbor director:", ["Mara Lindqvist"],
     "The Silent Harbor\nDirector: Mara Lindqvist\nRelease year: 2011\nGenre: Drama\nRunning time: 118 minutes"),
    ("swde-1", "Northfield Institute of Technology founded:", ["1903"],
     "Northfield Institute of Technology\nLocation: Aberdeen, Scotland\nFounded: 1903\nStudents: 8,200\nType: Public"),
    ("swde-2", "Rivers of Glass author:", ["Tomas Okafor"],
     "Rivers of Glass\nAuthor: Tomas Okafor\nPublisher: Lantern House\nPages: 342\nPublished: 2016"),
    ("swde-3", "Veloce S4 maker:", ["Brentwood Motors"],
     "Veloce S4\nMaker: Brentwood Motors\nEngine: 2.0 L inline-four\nTop speed: 240 km/h\nPrice: $41,000"),
]

EVAL_KINDS = ("kilt_fever", "kilt_eli5", "nq_conflict", "based_squad", "based_swde")

# each kind's entry of config cings.inference.datasets (besides name and path)
FIXTURE_DATASETS = {
    "kilt_fever": {"metrics": ["label_accuracy"]},
    "kilt_eli5": {"metrics": ["rouge_l"]},
    "nq_conflict": {"metrics": ["exact_match", "accuracy"], "settings": ["prefilled_1doc", "closed_book"], "ndocs": 1},
    "based_squad": {"prompt": "sentence_completion", "metrics": ["exact_match", "accuracy"],
                    "settings": ["prefilled_1doc"], "ndocs": 1},
    "based_swde": {"prompt": "sentence_completion_newline", "metrics": ["exact_match", "accuracy"],
                   "settings": ["prefilled_1doc"], "ndocs": 1},
}

# kind -> (reason ingestion gives, raw line) of its bad records; kilt_fever's first is rejected
# only when the dataset is read with its labels (label_accuracy)
BAD_BY_KIND = {
    "kilt_fever": [
        ("name no label", json.dumps({"id": "fever-bad-label", "question": "The Nile is in Africa.",
                                      "answers": ["NOT ENOUGH INFO"],
                                      "docs": [{"title": FACTS[6][3], "text": FACTS[6][4], "score": "gold"}]})),
        ("not valid JSON", '{"id": "fever-bad-json", "question": "cut'),
    ],
    "kilt_eli5": [
        ("field 'question' is empty", json.dumps({"id": "eli5-bad-question", "question": " ", "answers": ["x y z"],
                                    "docs": [{"title": "T", "text": "some text", "score": "gold"}]})),
    ],
    "nq_conflict": [
        ("field 'docs' is empty", json.dumps({"id": "conflict-bad-docs", "question": "Who?", "answers": ["x"], "docs": []})),
    ],
    "based_squad": [
        ("missing field 'answers'", json.dumps({"id": "squad-bad-answers", "question": "The sky is",
                                          "docs": [{"title": "", "text": "The sky is blue", "score": "gold"}]})),
    ],
    "based_swde": [
        ("doc 0: missing field 'score'", json.dumps({"id": "swde-bad-score", "question": "Page author:", "answers": ["x"],
                                           "docs": [{"title": "", "text": "Page\nAuthor: x"}]})),
    ],
}


def _gold(title: str, text: str) -> dict:
    return {"title": title, "text": text, "score": "gold"}


def kind_records(kind: str, n_retrieved: int = 3) -> list[dict]:
    """The valid records of one kind (`EVAL_KINDS`); the KILT kinds get `n_retrieved` scored
    distractor passages after the gold one, the others only their one passage (ndocs 1)."""
    if kind == "kilt_fever":
        return [{"id": i, "question": claim, "answers": [label],
                 "docs": [_gold(title, text)] + _retrieved(index, n_retrieved)}
                for index, (i, claim, label, title, text) in enumerate(FEVER_CLAIMS)]
    if kind == "kilt_eli5":
        return [{"id": i, "question": q, "answers": list(answers), "docs": [_gold(title, text)] + _retrieved(index, n_retrieved)}
                for index, (i, q, answers, title, text) in enumerate(LONG_FORM)]
    if kind == "nq_conflict":
        return [{"id": i, "question": q, "answers": list(answers), "docs": [_gold(title, text)]}
                for i, q, answers, title, text in CONFLICTS]
    if kind == "based_squad":
        return [{"id": i, "question": q, "answers": list(answers), "docs": [_gold("", text)]}
                for i, q, answers, text in SQUAD_COMPLETIONS]
    if kind == "based_swde":
        return [{"id": i, "question": q, "answers": list(answers), "docs": [_gold("", text)]}
                for i, q, answers, text in SWDE_PAGES]
    raise ValueError(f"unknown evaluation fixture kind {kind!r}; one of {list(EVAL_KINDS)}")


def make_eval_fixture(folder: str | Path, *, kinds: tuple[str, ...] | list[str] = EVAL_KINDS, n_retrieved: int = 3,
                      include_bad: bool = True) -> dict[str, dict]:
    """Write `{folder}/{kind}.jsonl` for each kind (atomically), bad lines after the first valid
    one; returns, per kind, its path and how many valid and bad lines it holds."""
    if not 1 <= n_retrieved <= len(DISTRACTORS):
        raise ValueError(f"n_retrieved must be in [1, {len(DISTRACTORS)}], not {n_retrieved}")
    summary = {}
    for kind in kinds:
        lines = [json.dumps(r, ensure_ascii=False) for r in kind_records(kind, n_retrieved)]
        n_valid = len(lines)
        if include_bad:
            for offset, (_, raw) in enumerate(BAD_BY_KIND[kind]):
                lines.insert(1 + 2 * offset, raw)
        path = Path(folder) / f"{kind}.jsonl"
        atomic_write_text(path, "\n".join(lines) + "\n")
        summary[kind] = {"path": str(path), "valid": n_valid, "bad": len(lines) - n_valid}
    return summary


def fixture_datasets(folder: str | Path, kinds: tuple[str, ...] | list[str] = EVAL_KINDS) -> list[dict]:
    """The config entries (cings.inference.datasets) of the files `make_eval_fixture` writes."""
    return [{"name": kind, "path": str(Path(folder) / f"{kind}.jsonl"), **FIXTURE_DATASETS[kind]} for kind in kinds]


__all__ = [
    "BAD_BY_KIND",
    "BAD_LINES",
    "DISTRACTORS",
    "EVAL_KINDS",
    "FACTS",
    "FIXTURE_DATASETS",
    "eval_fixture_texts",
    "eval_records",
    "fixture_datasets",
    "kind_records",
    "make_eval_fixture",
    "make_qa_fixture",
]

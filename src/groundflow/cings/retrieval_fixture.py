"""The demo's inputs of the KILT-style file builder (`cings.kilt_build`): a questions file and a
passage corpus, each with bad lines that the builder must reject.

The questions are the short-answer facts of `cings.eval_fixture`, reworded so that finding their
passage takes semantic similarity, not shared wording. Half of them carry their gold passage, the
other half none (the retriever alone must find it). The corpus holds every fact's passage (so a
gold passage also comes back from the retriever, and must not be repeated), the evaluation
fixture's distractors, and more of our own, several on a neighbouring topic of a question (another
city of France, another planet, another painter). The files are the same on every call.
"""

from __future__ import annotations

import json
from pathlib import Path

from groundflow.cings.eval_fixture import DISTRACTORS, FACTS
from groundflow.io.artifacts import atomic_write_text

# fact id -> the question reworded (the fact's own question is in eval_fixture.FACTS)
PARAPHRASES = {
    "nq-0": "Which city is the seat of the French government?",
    "nq-1": "Name the author of the book Pride and Prejudice.",
    "nq-2": "Which planet orbiting our Sun is the biggest one?",
    "nq-3": "What number of limbs do spiders walk on?",
    "nq-4": "Which chemical element is written with the letter O?",
    "nq-5": "When was the barrier that divided Berlin brought down?",
    "nq-6": "Which river that flows through Egypt is the longest on that continent?",
    "nq-7": "Which artist made the famous portrait of Lisa Gherardini, the Mona Lisa?",
    "nq-8": "During photosynthesis, which gas do leaves take in from the atmosphere?",
    "nq-9": "What money do people pay with in Japan?",
}
WITH_GOLD = ("nq-0", "nq-1", "nq-2", "nq-3", "nq-4")

# (id, title, text): our own distractor passages
EXTRA_PASSAGES = [
    ("p-lyon", "Lyon", "Lyon is a city in east-central France, known for its cuisine and its Roman ruins."),
    ("p-saturn", "Saturn", "Saturn is the sixth planet from the Sun, famous for its bright system of rings."),
    ("p-ants", "Ant", "Ants are eusocial insects with six legs that live in colonies led by a queen."),
    ("p-nitrogen", "Nitrogen", "Nitrogen is a chemical element with the symbol N that makes up most of the air."),
    ("p-amazon", "Amazon River", "The Amazon in South America carries more water than any other river on Earth."),
    ("p-starry-night", "The Starry Night", "The Starry Night is an oil painting by the Dutch painter Vincent van Gogh."),
    ("p-euro", "Euro", "The euro is the official currency of most member states of the European Union."),
    ("p-bronte", "Jane Eyre", "Jane Eyre is a novel by the English writer Charlotte Bronte, published in 1847."),
    ("p-respiration", "Cellular respiration", "Animals breathe in oxygen and release carbon dioxide as a waste product."),
    ("p-tokyo", "Tokyo", "Tokyo is the capital of Japan and one of the most populous cities in the world."),
    ("p-sahara", "Sahara", "The Sahara is a desert in North Africa, the largest hot desert in the world."),
    ("p-octopus", "Octopus", "An octopus has eight arms lined with suckers and three hearts."),
    ("p-piano", "Piano", "The piano is a keyboard instrument whose strings are struck by felt hammers."),
    ("p-moon", "Moon", "The Moon is Earth's only natural satellite and the fifth largest moon in the Solar System."),
    ("p-iron", "Iron", "Iron is a metal with the chemical symbol Fe, used to make steel."),
]

# (the reason the builder gives, the raw line); ids of the bad lines are what rejects carry
BAD_QUESTION_LINES = [
    ("not valid JSON", '{"id": "q-bad-json", "question": "cut short'),
    ("field 'answers' is a str, not a list", json.dumps({"id": "q-no-answers", "question": "Who knows?", "answers": "yes", "gold": []})),
    ("gold 0: field 'text' is empty", json.dumps({"id": "q-empty-gold", "question": "What?", "answers": ["x"],
                                       "gold": [{"title": "T", "text": " "}]})),
]
BAD_CORPUS_LINES = [
    ("not valid JSON", '{"id": "p-bad-json", "title": "Broken", "text": "no end'),
    ("field 'text' is empty", json.dumps({"id": "p-empty", "title": "Empty", "text": ""})),
]


def _short_facts() -> list[tuple]:
    return [fact for fact in FACTS if fact[0] in PARAPHRASES]


def retrieval_questions() -> list[dict]:
    """The valid question entries, in file order."""
    return [{"id": qid, "question": PARAPHRASES[qid], "answers": list(answers),
             "gold": [{"title": title, "text": text}] if qid in WITH_GOLD else []}
            for qid, _, answers, title, text in _short_facts()]


def retrieval_corpus() -> list[dict]:
    """The valid passages, in file order: facts' passages spread among the distractors."""
    facts = [{"id": f"p-{qid}", "title": title, "text": text} for qid, _, _, title, text in _short_facts()]
    distractors = [{"id": f"p-distractor-{i}", "title": t, "text": x} for i, (t, x) in enumerate(DISTRACTORS)]
    distractors += [{"id": pid, "title": t, "text": x} for pid, t, x in EXTRA_PASSAGES]
    corpus = []
    for index in range(max(len(facts), len(distractors))):
        corpus += distractors[index:index + 1] + facts[index:index + 1]
    return corpus


def gold_passage_ids() -> dict[str, str]:
    """question id -> the corpus id of the passage that answers it."""
    return {qid: f"p-{qid}" for qid in PARAPHRASES}


def retrieval_fixture_texts() -> list[str]:
    """Every question, answer and passage: text for a demo tokenizer to be fitted on."""
    texts = []
    for entry in retrieval_questions():
        texts += [entry["question"], *entry["answers"]]
    return texts + [f"{p['title']} {p['text']}" for p in retrieval_corpus()]


def _with_bad_lines(lines: list[str], bad: list[tuple[str, str]]) -> list[str]:
    lines = list(lines)
    for offset, (_, raw) in enumerate(bad):
        lines.insert(min(1 + 3 * offset, len(lines)), raw)
    return lines


def make_retrieval_fixture(folder: str | Path, *, include_bad: bool = True) -> dict:
    """Write `questions.jsonl` and `corpus.jsonl` into `folder` (atomically); returns their paths
    and how many valid and bad lines each holds. With `include_bad`, each file also has a repeated
    id (the copy is rejected) and the bad lines above."""
    folder = Path(folder)
    questions = [json.dumps(q, ensure_ascii=False) for q in retrieval_questions()]
    corpus = [json.dumps(p, ensure_ascii=False) for p in retrieval_corpus()]
    n_questions, n_passages = len(questions), len(corpus)
    if include_bad:
        questions = _with_bad_lines(questions + [questions[0]], BAD_QUESTION_LINES)
        corpus = _with_bad_lines(corpus + [corpus[1]], BAD_CORPUS_LINES)
    paths = {"questions": folder / "questions.jsonl", "corpus": folder / "corpus.jsonl"}
    atomic_write_text(paths["questions"], "\n".join(questions) + "\n")
    atomic_write_text(paths["corpus"], "\n".join(corpus) + "\n")
    return {"questions": str(paths["questions"]), "corpus": str(paths["corpus"]),
            "valid_questions": n_questions, "bad_questions": len(questions) - n_questions,
            "valid_passages": n_passages, "bad_passages": len(corpus) - n_passages}


__all__ = [
    "BAD_CORPUS_LINES",
    "BAD_QUESTION_LINES",
    "EXTRA_PASSAGES",
    "PARAPHRASES",
    "WITH_GOLD",
    "gold_passage_ids",
    "make_retrieval_fixture",
    "retrieval_corpus",
    "retrieval_fixture_texts",
    "retrieval_questions",
]

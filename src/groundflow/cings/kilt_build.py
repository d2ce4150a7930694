"""Build a KILT-style evaluation file from questions, their gold passages and a passage corpus,
with a dense retriever (groundflow.embed.retrieval) supplying the top-k passages of each question.

Inputs:
- questions (JSONL, or one JSON array): `{id, question, answers: [str, ...], gold: [{title, text}, ...]}`;
  `gold` may be empty or absent (the retriever alone supplies the passages);
- corpus (JSONL, or one JSON array): `{id, title, text}`, one passage per entry.

Output: one record per kept question, the format `cings.inference` reads (spec §6):
`{id, question, answers, docs}` where `docs` holds the gold passages first (`score: "gold"`), then
the top-k retrieved passages, best first, as `{id, title, text, score: float}`. A retrieved
passage whose text is a gold passage's (whitespace aside) is not repeated: the next one takes its
place, so a question still gets k retrieved passages when the corpus has them.

Passages are embedded as `{title} {text}` (as Contriever's and DPR's pipelines embed Wikipedia
passages, and as prompts show them); questions as their text.

Both files are read through `groundflow.io.lines` (a byte-order mark and CRLF accepted). Bad
entries are rejected with their id and a reason naming the field, never the job: a question that is
not UTF-8 text or not JSON, lacks a question or answers, has a malformed gold passage, or repeats
an earlier id; a corpus entry that is not UTF-8 text or not JSON, has no text, a non-string title
or a repeated id (a bad corpus entry costs that passage only). A repeated id belongs to its first entry; the later one is rejected as `line:N`.
Questions in = written + rejected; corpus entries in = searchable + rejected.

The checking and assembling functions are pure; `build_kilt_file` reads, embeds (any `Embedder`)
and writes the file, the rejects and the counts (with the retriever's description and k) atomically.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from groundflow.cings.inference import RawEntry, entry_id, line_id, passage_text, read_eval_entries
from groundflow.cings.scoring import normalize_answer
from groundflow.io.fields import field_problem
from groundflow.io.artifacts import atomic_write_json, atomic_write_text, write_table
from groundflow.io.schemas import table_schema
from groundflow.io.stage import rejects_frame

if TYPE_CHECKING:
    from groundflow.embed.embedders import Embedder

log = logging.getLogger(__name__)

QUESTIONS_STAGE = "kilt_questions"
CORPUS_STAGE = "kilt_corpus"
GOLD_SCORE = "gold"


@dataclass
class Checked:
    """Entries that passed their checks, in input order, and the rejected ones with why."""

    kept: list[dict]
    rejects: pd.DataFrame
    counts: dict


def _title_problem(doc: dict) -> str | None:
    """A passage title may be absent or null (no title); otherwise it is a string."""
    return None if doc.get("title") is None else field_problem(doc, "title", empty_ok=True)


def check_question(value: dict) -> tuple[dict | None, str | None]:
    """(the question without its id, None) or (None, the reason it is rejected)."""
    problem = field_problem(value, "question") or field_problem(value, "answers", list)
    if problem:
        return None, problem
    question, answers = value["question"], value["answers"]
    if any(not isinstance(a, str) for a in answers):
        return None, "field 'answers' holds a non-string answer"
    # the evaluation drops answers that normalise to nothing; one that keeps none is useless
    if not any(normalize_answer(a) for a in answers):
        return None, "no gold answer is left after normalisation"
    gold = value.get("gold")
    if gold is None:
        gold = []
    if not isinstance(gold, list):
        return None, field_problem(value, "gold", list)
    passages = []
    for index, doc in enumerate(gold):
        if not isinstance(doc, dict):
            return None, f"gold {index} is a {type(doc).__name__}, not an object"
        problem = field_problem(doc, "text") or _title_problem(doc)
        if problem:
            return None, f"gold {index}: {problem}"
        passages.append({"title": (doc.get("title") or "").strip(), "text": doc["text"].strip()})
    return {"question": question.strip(), "answers": [a.strip() for a in answers], "gold": passages}, None


def check_passage(value: dict) -> tuple[dict | None, str | None]:
    """(the passage's title and text, None) or (None, the reason it is rejected)."""
    problem = field_problem(value, "text") or _title_problem(value)
    if problem:
        return None, problem
    return {"title": (value.get("title") or "").strip(), "text": value["text"].strip()}, None


def check_entries(entries: Iterable[RawEntry], check: Callable[[dict], tuple[dict | None, str | None]],
                  stage: str) -> Checked:
    """Run `check` over entries with usable, first-seen ids; each entry is kept or rejected once."""
    kept: list[dict] = []
    rejected: list[tuple[str, str]] = []
    first_line: dict[str, int] = {}
    n_in = 0
    for entry in entries:
        n_in += 1
        own_id, problem = entry_id(entry)
        if own_id is None:
            rejected.append((line_id(entry.line), problem))
            continue
        if own_id in first_line:
            rejected.append((line_id(entry.line), f"line {entry.line}: duplicate id {own_id!r} "
                                                  f"(first at line {first_line[own_id]})"))
            continue
        first_line[own_id] = entry.line
        clean, reason = check(entry.value)
        if clean is None:
            rejected.append((own_id, reason or "invalid"))
            continue
        kept.append({"id": own_id, **clean})
    rejects = rejects_frame(stage, rejected)
    counts = {"stage": stage, "in": n_in, "out": len(kept), "rejected": len(rejects)}
    if n_in != len(kept) + len(rejects) or rejects["id"].duplicated().any():
        raise AssertionError(f"{stage}: in {n_in} != out {len(kept)} + rejected {len(rejects)}, or an id twice")
    return Checked(kept=kept, rejects=rejects, counts=counts)


def read_questions(source: str | os.PathLike | bytes, name: str = "<questions>") -> Checked:
    """The checked questions of a file (a path or its bytes)."""
    return check_entries(read_eval_entries(source, name), check_question, QUESTIONS_STAGE)


def read_corpus(source: str | os.PathLike | bytes, name: str = "<corpus>") -> Checked:
    """The checked passages of a file (a path or its bytes)."""
    return check_entries(read_eval_entries(source, name), check_passage, CORPUS_STAGE)


def same_passage_key(text: str) -> str:
    """Two passages are the same passage when their texts agree up to whitespace."""
    return " ".join(text.split())


def candidates_needed(questions: Sequence[dict], k: int) -> int:
    """How many passages to retrieve so that k are left after dropping copies of gold passages."""
    return k + max((len(q["gold"]) for q in questions), default=0)


def assemble_records(questions: Sequence[dict], passages: Sequence[dict], indices: np.ndarray,
                     scores: np.ndarray, k: int) -> tuple[list[dict], list[tuple[str, str]]]:
    """KILT-style records from each question's ranked corpus indices (best first), and the
    (id, reason) of questions left with no passage at all."""
    if k < 1:
        raise ValueError(f"k must be >= 1, not {k}")
    if len(indices) != len(questions) or len(scores) != len(questions):
        raise ValueError(f"{len(questions)} questions but {len(indices)} rankings")
    records, rejected = [], []
    for question, ranked, ranked_scores in zip(questions, indices, scores):
        gold_keys = {same_passage_key(g["text"]) for g in question["gold"]}
        docs = [{"title": g["title"], "text": g["text"], "score": GOLD_SCORE} for g in question["gold"]]
        retrieved = 0
        for index, score in zip(ranked, ranked_scores):
            if retrieved == k:
                break
            passage = passages[int(index)]
            if same_passage_key(passage["text"]) in gold_keys:
                continue
            docs.append({"id": passage["id"], "title": passage["title"], "text": passage["text"],
                         "score": float(score)})
            retrieved += 1
        if not docs:
            rejected.append((question["id"], "no passage: no gold passage and nothing retrieved (empty corpus)"))
            continue
        records.append({"id": question["id"], "question": question["question"],
                        "answers": question["answers"], "docs": docs})
    return records, rejected


def kilt_jsonl(records: Sequence[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def build_kilt_file(questions_path: str | Path, corpus_path: str | Path, embedder: "Embedder", *,
                    top_k: int, batch_size: int, out: str | Path, rejects: str | Path, counts: str | Path,
                    vectors_dir: str | Path | None = None, **blocks) -> dict:
    """Read, check, embed, retrieve and write (all three outputs atomically); returns the counts.

    With `vectors_dir` the passage vectors go to a resumable file there instead of memory (see
    `embed_to_file`); it is left in place for the caller to remove or reuse (a second build over
    the same corpus with the same embedder embeds nothing). `blocks` (`query_block`,
    `corpus_block`) bound the memory of the scoring (see `top_k`)."""
    from groundflow.embed.retrieval import DenseRetriever

    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, not {top_k}")
    files = {"questions": Path(questions_path), "corpus": Path(corpus_path)}
    for what, path in files.items():
        if not path.is_file():
            raise FileNotFoundError(f"{what} file not found: {path}")
    questions = read_questions(files["questions"], str(files["questions"]))
    corpus = read_corpus(files["corpus"], str(files["corpus"]))
    log.info("questions: %s; corpus: %s", questions.counts, corpus.counts)
    retriever = DenseRetriever.build(embedder, [passage_text(p) for p in corpus.kept], batch_size=batch_size,
                                     vectors_dir=vectors_dir)
    wanted = candidates_needed(questions.kept, top_k)
    indices, scores = retriever.search([q["question"] for q in questions.kept], wanted, **blocks)
    records, unanswerable = assemble_records(questions.kept, corpus.kept, indices, scores, top_k)
    question_rejects = pd.concat([questions.rejects, rejects_frame(QUESTIONS_STAGE, unanswerable)],
                                 ignore_index=True)
    summary = {
        "stage": QUESTIONS_STAGE,
        "in": questions.counts["in"],
        "out": len(records),
        "rejected": len(question_rejects),
        "corpus": corpus.counts,
        "produced_by": {"retriever": retriever.describe(), "top_k": int(top_k),
                        "passage_text": "{title} {text}", "questions": str(files["questions"]),
                        "corpus": str(files["corpus"])},
    }
    if summary["in"] != summary["out"] + summary["rejected"]:
        raise AssertionError(f"{QUESTIONS_STAGE}: in {summary['in']} != out {summary['out']} "
                             f"+ rejected {summary['rejected']}")
    all_rejects = pd.concat([question_rejects, corpus.rejects], ignore_index=True)
    write_table(all_rejects, rejects, schema=table_schema("rejects"))
    atomic_write_text(out, kilt_jsonl(records))
    atomic_write_json(counts, summary)
    log.info("%s: in %d = out %d + rejected %d; corpus in %d = searchable %d + rejected %d", QUESTIONS_STAGE,
             summary["in"], summary["out"], summary["rejected"], corpus.counts["in"], corpus.counts["out"],
             corpus.counts["rejected"])
    return summary


__all__ = [
    "CORPUS_STAGE",
    "Checked",
    "GOLD_SCORE",
    "QUESTIONS_STAGE",
    "assemble_records",
    "build_kilt_file",
    "candidates_needed",
    "check_entries",
    "check_passage",
    "check_question",
    "kilt_jsonl",
    "read_corpus",
    "read_questions",
    "same_passage_key",
]

"""TSST's search stage over a question table (interface 1) into the search table (interface 4).

`search_frame` turns a chunk of questions into search rows and rejects: a question whose image
cannot be read (or whose record is malformed) is rejected with the reason; the others are searched
together (groundflow.tsst.search.search_questions). Should the batched search raise, each question
is searched alone, and only those that fail again are rejected with the error: results do not depend
on the batch (per-question seeds), so the questions that succeed get the same rows as in the batch.
When every question of a chunk fails alone as well, the job fails: that is a broken model or
setting, not bad records.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from groundflow.io.stage import StageResult, rejects_frame
from groundflow.tsst.prompts import QuestionPrompts
from groundflow.tsst.search import SearchConfig, SearchQuestion, search_questions

log = logging.getLogger("groundflow")

STAGE = "tsst_search"
SEARCH_COLUMNS = ["id", "chains", "rounds", "restarts", "policy_calls", "value_calls"]


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def load_question_image(relative: str, image_root: str | Path | None) -> Image.Image:
    """The question's image as RGB, fully read (a truncated file fails here, not mid-search)."""
    if image_root is None:
        raise ValueError(f"image {relative!r} but no image folder was given")
    path = Path(image_root) / relative
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except (OSError, ValueError) as error:
        raise ValueError(f"image {relative!r} cannot be read from {image_root}: {error}") from None


def search_question(row: Any, image_root: str | Path | None) -> SearchQuestion:
    """A question-table row as a SearchQuestion; ValueError names what is wrong with it."""
    question = row["question"]
    if not isinstance(question, str) or not question.strip():
        raise ValueError("empty question text")
    choices = row["choices"]
    if choices is None or len(choices) == 0:
        raise ValueError("no answer choices")
    choices = tuple(str(c) for c in choices)
    image = None if _missing(row.get("image")) else load_question_image(str(row["image"]), image_root)
    return SearchQuestion(str(row["id"]), question, choices, image)


def search_frame(records: pd.DataFrame, policy, scorer, config: SearchConfig, seed: int, *,
                 image_root: str | Path | None, prompts: QuestionPrompts) -> StageResult:
    """Search rows (interface 4) for the chunk's questions, and rejects naming each failure."""
    rejected: list[tuple[str, str]] = []
    questions: list[SearchQuestion] = []
    for _, row in records.iterrows():
        try:
            questions.append(search_question(row, image_root))
        except ValueError as error:
            rejected.append((str(row["id"]), str(error)))
    try:
        results = search_questions(questions, policy, scorer, config, seed, prompts=prompts) if questions else []
    except Exception as error:  # noqa: BLE001 - one question must not cost the chunk; retried alone below
        log.warning("%s: the batched search of %d questions failed (%s: %s); searching them one at a time",
                    STAGE, len(questions), type(error).__name__, error)
        results, failures = [], []
        for question in questions:
            try:
                results.extend(search_questions([question], policy, scorer, config, seed, prompts=prompts))
            except Exception as single:  # noqa: BLE001
                failures.append((question.id, f"search failed: {type(single).__name__}: {single}"))
        if len(questions) > 1 and len(failures) == len(questions):
            raise error  # every question fails alone too: a broken job, not bad records
        rejected.extend(failures)
    kept = pd.DataFrame(results, columns=SEARCH_COLUMNS)
    return StageResult(kept=kept, rejects=rejects_frame(STAGE, rejected))


def declared_frame(kept: pd.DataFrame) -> pd.DataFrame:
    """The kept table in interface 4's columns; an empty one with object columns, since a table read
    back without rows has lost its list types (Arrow cannot cast that to list<struct>)."""
    if kept.empty:
        return pd.DataFrame({column: pd.Series([], dtype=object) for column in SEARCH_COLUMNS})
    return kept.reindex(columns=SEARCH_COLUMNS)

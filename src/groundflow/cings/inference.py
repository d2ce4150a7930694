"""CINGS inference: KILT-style evaluation records -> prompts per setting -> greedy answers.

Evaluation file (JSON array or JSONL), one record per question:
`{"id", "question", "answers": [str, ...], "docs": [{"title", "text", "score"}, ...]}` where a
gold passage has `score == "gold"` and retrieved passages carry their retriever score.

Prompt layout: the one training used (spec §3), through the model's own chat template: system
block, a user turn holding only the question, and the assistant turn opened by the settings'
pre-fill, which the model continues. Four settings:
- `prefilled_1doc`: assistant pre-fill `## Context {title} {text} ## Answer` with one passage;
- `prefilled_kdocs`: `## Context1: {title} {text}\\n\\nContext2: ... ## Answer` with k passages;
- `closed_book`: no passage, empty pre-fill (the standard-IT baseline's own layout);
- `context_in_input`: the k passages in the user turn, `{question} ### Context: Context1: ...`,
  and the pre-fill `### Answer` (the RAG-style layout).

Passage choice (spec §6): one passage = the longest gold passage; k passages = the first gold
passage that has a title (else the first gold one), then retrieved passages by score, highest
first, up to k. Differences from the reconstructed upstream code:
- a record whose first passage is not gold no longer crashes the single-passage choice (spec §9.10):
  without gold passages the best-scoring retrieved one is used;
- `use_gold_docs: false` ignores gold passages (a realistic retrieval-only evaluation);
- a model that writes passages of its own (a no-mask model asked closed-book writes
  `## Context ... ## Answer ...`) is scored on its answer text only: `answer_text` removes every
  `## Context ... ## Answer` block from the generation; the raw generation is kept beside it.

The pure core (parsing, validation, passage choice, prompt texts, answer extraction) needs no
model; `infer_setting` runs a `Generator` (groundflow.generate) over one chunk of records.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import pandas as pd

from groundflow.cings.data import ANSWER_MARKER, CONTEXT_MARKER
from groundflow.cings.scoring import normalize_answer
from groundflow.io.stage import StageResult, rejects_frame

if TYPE_CHECKING:  # the backends module is shared; imported lazily where it is used
    from groundflow.generate.backends import ChatPrompt, Generator, SamplingParams

INPUT_CONTEXT_MARKER = "### Context:"
INPUT_ANSWER_MARKER = "### Answer"

SETTINGS = ("prefilled_1doc", "prefilled_kdocs", "closed_book", "context_in_input")
INGEST_STAGE = "eval_records"
INFER_STAGE = "infer"
PROMPT_VERSION = "cings-eval-v1"

RECORD_COLUMNS = ["id", "question", "answers", "docs", "line"]
PREDICTION_COLUMNS = ["id", "setting", "question", "answers", "n_docs", "doc_titles", "generation", "prediction"]


class EvalFileError(ValueError):
    """The evaluation file as a whole cannot be read (not one bad record: those are rejected)."""


# ---------------------------------------------------------------------------------------------
# reading and validating records


@dataclass(frozen=True)
class RawEntry:
    """One entry of an evaluation file: its line (JSONL) or position (JSON array, 1-based) and
    either the decoded object or why it could not be decoded."""

    line: int
    value: Any = None
    error: str | None = None


def parse_eval_text(text: str, source: str = "<eval file>") -> list[RawEntry]:
    """Split an evaluation file's text into entries.

    A text whose first non-blank character is "[" is one JSON array (it must parse as a whole);
    anything else is JSONL, one object per non-blank line, where a line that is not JSON becomes an
    entry carrying the decoding error.
    """
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise EvalFileError(f"{source}: not a valid JSON array: {error}") from error
        if not isinstance(values, list):
            raise EvalFileError(f"{source}: expected a JSON array of records")
        return [RawEntry(line=index + 1, value=value) for index, value in enumerate(values)]
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entries.append(RawEntry(line=number, value=json.loads(line)))
        except json.JSONDecodeError as error:
            entries.append(RawEntry(line=number, error=f"line {number} is not valid JSON ({error.msg})"))
    return entries


def _doc_problem(index: int, doc: Any) -> tuple[dict | None, str | None]:
    """A passage as {title, text, score (None for gold), gold} or the reason it is unusable."""
    if not isinstance(doc, dict):
        return None, f"doc {index} is a {type(doc).__name__}, not an object"
    text = doc.get("text")
    if not isinstance(text, str) or not text.strip():
        return None, f"doc {index} has no text"
    title = doc.get("title", "")
    if title is None:
        title = ""
    if not isinstance(title, str):
        return None, f"doc {index} has a non-string title"
    if "score" not in doc:
        return None, f"doc {index} has no score"
    score = doc["score"]
    if isinstance(score, str) and score.strip().lower() == "gold":
        return {"title": title.strip(), "text": text.strip(), "score": None, "gold": True}, None
    if isinstance(score, bool):
        return None, f"doc {index} has a boolean score"
    try:
        value = float(score)
    except (TypeError, ValueError):
        return None, f"doc {index} has score {score!r}: neither 'gold' nor a number"
    if not math.isfinite(value):
        return None, f"doc {index} has a non-finite score {score!r}"
    return {"title": title.strip(), "text": text.strip(), "score": value, "gold": False}, None


def validate_record(entry: RawEntry) -> tuple[str, dict | None, str | None]:
    """(id, the clean record or None, the reason it is rejected or None).

    The id of an entry without a usable id is `line:{n}`, as CVC ingest and CINGS convert name
    theirs. Gold answers that normalise to nothing
    ("The", "?") are dropped: they would match every prediction or an empty one.
    """
    fallback_id = line_id(entry.line)
    if entry.error is not None:
        return fallback_id, None, entry.error
    value = entry.value
    if not isinstance(value, dict):
        return fallback_id, None, f"line {entry.line} is a {type(value).__name__}, not an object"
    raw_id = value.get("id")
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)) or not str(raw_id).strip():
        return fallback_id, None, f"line {entry.line} has no id"
    record_id = str(raw_id).strip()
    question = value.get("question")
    if not isinstance(question, str) or not question.strip():
        return record_id, None, "no question"
    answers = value.get("answers")
    if not isinstance(answers, list) or not answers:
        return record_id, None, "no 'answers' list"
    if any(not isinstance(a, str) for a in answers):
        return record_id, None, "answers must all be strings"
    golds = [a.strip() for a in answers if normalize_answer(a)]
    if not golds:
        return record_id, None, "no gold answer is left after normalisation"
    docs = value.get("docs")
    if not isinstance(docs, list) or not docs:
        return record_id, None, "no 'docs' list"
    clean_docs = []
    for index, doc in enumerate(docs):
        clean, problem = _doc_problem(index, doc)
        if problem:
            return record_id, None, problem
        clean_docs.append(clean)
    return record_id, {
        "id": record_id,
        "question": question.strip(),
        "answers": golds,
        "docs": clean_docs,
        "line": entry.line,
    }, None


@dataclass
class EvalRecords:
    kept: pd.DataFrame
    rejects: pd.DataFrame
    counts: dict


def line_id(line: int) -> str:
    """The id an entry is rejected under when its own id is unusable or already taken."""
    return f"line:{line}"


def validate_records(entries: Iterable[RawEntry]) -> EvalRecords:
    """Clean records and rejects; in = out + rejected, and each id is kept or rejected, never both.

    An id belongs to its first entry, valid or not; a later entry with the same id is rejected as
    `line:N` (under its own id it would be both kept and rejected, or rejected twice).
    """
    kept: list[dict] = []
    rejected: list[tuple[str, str]] = []
    first_line: dict[str, int] = {}
    n_in = 0
    for entry in entries:
        n_in += 1
        record_id, record, reason = validate_record(entry)
        if record_id in first_line:
            rejected.append((line_id(entry.line), f"line {entry.line}: duplicate id {record_id!r} "
                                                  f"(first at line {first_line[record_id]})"))
            continue
        first_line[record_id] = entry.line
        if record is None:
            rejected.append((record_id, reason or "invalid"))
            continue
        kept.append(record)
    frame = pd.DataFrame(kept, columns=RECORD_COLUMNS)
    rejects = rejects_frame(INGEST_STAGE, rejected)
    counts = {"stage": INGEST_STAGE, "in": n_in, "out": len(frame), "rejected": len(rejects)}
    if counts["in"] != counts["out"] + counts["rejected"]:
        raise AssertionError(f"eval records: in {n_in} != out {len(frame)} + rejected {len(rejects)}")
    return EvalRecords(kept=frame, rejects=rejects, counts=counts)


# ---------------------------------------------------------------------------------------------
# passages and prompts


def _docs(record_docs) -> list[dict]:
    # Parquet gives back numpy arrays of dicts; records built in memory give lists.
    return [dict(d) for d in list(record_docs)]


def _is_gold(doc: dict) -> bool:
    return bool(doc.get("gold"))


def select_docs(docs: Sequence[dict], k: int, *, use_gold: bool = True) -> list[dict]:
    """The passages a prompt shows (see the module docstring); fewer than k when there are fewer."""
    if k < 1:
        raise ValueError(f"k must be >= 1, not {k}")
    docs = _docs(docs)
    golds = [d for d in docs if _is_gold(d)] if use_gold else []
    retrieved = sorted(
        (d for d in docs if not _is_gold(d)),
        key=lambda d: -float(d["score"]),
    )  # sorted() is stable: equal scores keep the file's order
    if k == 1:
        if golds:
            return [max(golds, key=lambda d: len(d["text"]))]  # max() keeps the first of equals
        return retrieved[:1]
    lead = next((d for d in golds if d["title"]), golds[0] if golds else None)
    chosen = [lead] if lead is not None else []
    return chosen + retrieved[: k - len(chosen)]


def passage_text(doc: dict) -> str:
    """`{title} {text}`, or the text alone when the passage has no title."""
    title, text = doc.get("title") or "", doc["text"]
    return f"{title} {text}" if title else text


def numbered_contexts(docs: Sequence[dict]) -> str:
    """`Context1: {title} {text}\\n\\nContext2: ...`, the multi-passage format of spec §6."""
    return "\n\n".join(f"Context{i}: {passage_text(d)}" for i, d in enumerate(docs, start=1))


def assistant_prefill(docs: Sequence[dict]) -> str:
    """The start of the assistant turn that the model continues: one passage exactly as training
    wrote it (`## Context {passage} ## Answer`), several numbered."""
    if not docs:
        raise ValueError("a pre-filled prompt needs at least one passage")
    if len(docs) == 1:
        return f"{CONTEXT_MARKER} {passage_text(docs[0])} {ANSWER_MARKER}"
    return f"## {numbered_contexts(docs)} {ANSWER_MARKER}"


@dataclass(frozen=True)
class PromptParts:
    """The chat messages and the assistant pre-fill of one question in one setting."""

    messages: tuple[dict, ...]
    assistant_prefix: str
    docs: tuple[dict, ...]


def build_prompt(record: dict, setting: str, *, ndocs: int, system_prompt: str, use_gold: bool = True) -> PromptParts:
    """The prompt of `record` in `setting`; raises ValueError when the setting has no passage to show.

    `system_prompt` is training's (config `cings.data.system_prompt`); empty: no system message.
    """
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; one of {list(SETTINGS)}")
    question = str(record["question"]).strip()
    system = ({"role": "system", "content": system_prompt},) if system_prompt else ()
    if setting == "closed_book":
        return PromptParts(system + ({"role": "user", "content": question},), "", ())
    k = 1 if setting == "prefilled_1doc" else ndocs
    docs = tuple(select_docs(record["docs"], k, use_gold=use_gold))
    if not docs:
        raise ValueError("no passage to show" + ("" if use_gold else " (gold passages are excluded)"))
    if setting == "context_in_input":
        user = f"{question} {INPUT_CONTEXT_MARKER} {numbered_contexts(docs)}"
        return PromptParts(system + ({"role": "user", "content": user},), INPUT_ANSWER_MARKER, docs)
    return PromptParts(system + ({"role": "user", "content": question},), assistant_prefill(docs), docs)


_WRITTEN_CONTEXT = re.compile(r"#{2,3}\s*Context\d*:?.*?#{2,3}\s*Answer:?", re.DOTALL)
_UNFINISHED_CONTEXT = re.compile(r"#{2,3}\s*Context\d*:?.*\Z", re.DOTALL)
_LEADING_ANSWER_MARK = re.compile(r"\A\s*#{2,3}\s*Answer:?")


def answer_text(generation: str) -> str:
    """The answer in a generation: every `## Context ... ## Answer` block the model wrote itself,
    a trailing unfinished `## Context ...` and a leading `## Answer` are removed; whitespace collapses."""
    text = _WRITTEN_CONTEXT.sub(" ", generation)
    text = _UNFINISHED_CONTEXT.sub(" ", text)
    text = _LEADING_ANSWER_MARK.sub(" ", text)
    return " ".join(text.split())


# ---------------------------------------------------------------------------------------------
# the model part


def prompt_token_counts(generator: "Generator", prompts: Sequence["ChatPrompt"]) -> list[int] | None:
    """Token counts of the prompts as a local HF text generator would encode them; None for a
    backend without a local tokenizer (an HTTP endpoint checks lengths itself)."""
    tokenizer = getattr(generator, "tokenizer", None)
    if tokenizer is None:
        return None
    from groundflow.generate.text import encode_prompts, render_prompts

    rendered = [render_prompts(tokenizer, [list(p.messages)], p.assistant_prefix)[0] for p in prompts]
    return [len(ids) for ids in encode_prompts(tokenizer, rendered)]


def infer_setting(records: pd.DataFrame, generator: "Generator", params: "SamplingParams", setting: str, *,
                  ndocs: int, system_prompt: str, use_gold: bool = True,
                  max_prompt_tokens: int | None = None) -> StageResult:
    """Answer every record in `setting` with one batched generate call.

    A record is rejected when the setting has no passage for it, or when its prompt is longer than
    `max_prompt_tokens` (checked for local HF models). Kept rows hold the raw generation and the
    answer text scored later (`answer_text`).
    """
    from groundflow.generate.backends import ChatPrompt

    rejected: list[tuple[str, str]] = []
    ready: list[tuple[dict, PromptParts]] = []
    for record in records.to_dict("records"):
        try:
            parts = build_prompt(record, setting, ndocs=ndocs, use_gold=use_gold, system_prompt=system_prompt)
        except ValueError as error:
            rejected.append((str(record["id"]), str(error)))
            continue
        ready.append((record, parts))
    prompts = [ChatPrompt(messages=[dict(m) for m in parts.messages], assistant_prefix=parts.assistant_prefix)
               for _, parts in ready]
    if max_prompt_tokens is not None and prompts:
        counts = prompt_token_counts(generator, prompts)
        if counts is not None:
            fits = [n <= max_prompt_tokens for n in counts]
            rejected += [(str(record["id"]), f"prompt has {n} tokens, over max_prompt_tokens={max_prompt_tokens}")
                         for (record, _), n, ok in zip(ready, counts, fits) if not ok]
            ready = [item for item, ok in zip(ready, fits) if ok]
            prompts = [p for p, ok in zip(prompts, fits) if ok]
    if params.n != 1:
        raise ValueError(f"evaluation decodes one answer per question, not n={params.n}")
    outputs = generator.generate(prompts, params) if prompts else []
    rows = []
    for (record, parts), texts in zip(ready, outputs):
        generation = texts[0]
        rows.append({
            "id": str(record["id"]),
            "setting": setting,
            "question": record["question"],
            "answers": list(record["answers"]),
            "n_docs": len(parts.docs),
            "doc_titles": [d["title"] for d in parts.docs],
            "generation": generation,
            "prediction": answer_text(generation),
        })
    kept = pd.DataFrame(rows, columns=PREDICTION_COLUMNS)
    return StageResult(kept=kept, rejects=rejects_frame(INFER_STAGE, rejected))


__all__ = [
    "ANSWER_MARKER",
    "CONTEXT_MARKER",
    "EvalFileError",
    "EvalRecords",
    "PROMPT_VERSION",
    "PromptParts",
    "RawEntry",
    "SETTINGS",
    "answer_text",
    "assistant_prefill",
    "build_prompt",
    "infer_setting",
    "parse_eval_text",
    "passage_text",
    "prompt_token_counts",
    "select_docs",
    "validate_record",
    "validate_records",
]

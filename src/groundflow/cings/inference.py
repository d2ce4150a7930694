"""CINGS inference: KILT-style evaluation records -> prompts per setting -> greedy answers.

Evaluation file (JSON array or JSONL), one record per question:
`{"id", "question", "answers": [str, ...], "docs": [{"title", "text", "score"}, ...]}` where a
gold passage has `score == "gold"` and retrieved passages carry their retriever score. It is read
through `groundflow.io.lines`: a byte-order mark and CRLF are accepted, an entry that is not UTF-8
text is rejected alone, and a reject reason names the field that is wrong.

A dataset (an entry of config `cings.inference.datasets`, `resolve_dataset`) names its file, its
prompt, its metrics (groundflow.cings.scoring), its settings and k. Prompt layout: the one
training used (spec §3), through the model's own chat template: system block, a user turn, and the
assistant turn opened by the setting's pre-fill, which the model continues.

`question` prompts (the KILT sets; the user turn holds only the question), four settings:
- `prefilled_1doc`: assistant pre-fill `## Context {title} {text} ## Answer` with one passage;
- `prefilled_kdocs`: `## Context1: {title} {text}\\n\\nContext2: ... ## Answer` with k passages;
- `closed_book`: no passage, empty pre-fill (the standard-IT baseline's own layout);
- `context_in_input`: the k passages in the user turn, `{question} ### Context: Context1: ...`,
  and the pre-fill `### Answer` (the RAG-style layout).
Sentence-completion prompts (the original's "based" recall sets, spec §6), `prefilled_1doc` only
(`check_dataset`): the user turn is an instruction to finish the sentence from the context (our
wording: the packaged prompt file `cings/sentence_completion.txt`, or a user's file), and the
record's `question` is the start of a sentence continued after the passage:
`## Context {passage}. {question} ## Answer` (`sentence_completion`: SQuAD, DROP, FDA) or
`## Context {passage}\\n{question} ## Answer` (`sentence_completion_newline`: SWDE), as the
original writes them (a passage ending in "." gets a second one, as there).

Passage choice (spec §6): one passage = the longest gold passage; k passages = the first gold
passage that has a title (else the first gold one), then retrieved passages by score, highest
first, up to k. Differences from the reconstructed upstream code:
- a record whose first passage is not gold no longer crashes the single-passage choice (spec §9.10):
  without gold passages the best-scoring retrieved one is used;
- `use_gold_docs: false` ignores gold passages (a realistic retrieval-only evaluation);
- a model that writes passages of its own (a no-mask model asked closed-book writes
  `## Context ... ## Answer ...`) is scored on its answer text only: `answer_text` removes every
  `## Context ... ## Answer` block from the generation; the raw generation is kept beside it.

One inference job answers one dataset in all its settings: its unit is a request, one record in
one setting, with the id `{record id}|{setting}` (`setting_requests`), so the job's accounting
(in = out + rejected) holds per request; a record rejected in one setting (no passage, prompt too
long) and answered in another counts once in each. Predictions keep the record's id in
`record_id`; `setting_counts` splits a job's outcome per setting again for the table.

The pure core (parsing, validation, passage choice, prompt texts, answer extraction) needs no
model; `infer_requests` / `infer_setting` run a `Generator` (groundflow.generate) over one chunk.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import pandas as pd

from groundflow.cings.data import ANSWER_MARKER, CONTEXT_MARKER
from groundflow.cings.scoring import DEFAULT_METRICS, FEVER_LABELS, DatasetScoring, gold_label, normalize_answer
from groundflow.io.fields import field_problem
from groundflow.io.lines import JsonLine, read_json_records
from groundflow.io.stage import StageResult, check_accounting, rejects_frame
from groundflow.prompts import PromptText, load_prompt

if TYPE_CHECKING:  # the backends module is shared; imported lazily where it is used
    from groundflow.generate.backends import ChatPrompt, Generator, SamplingParams

INPUT_CONTEXT_MARKER = "### Context:"
INPUT_ANSWER_MARKER = "### Answer"

SETTINGS = ("prefilled_1doc", "prefilled_kdocs", "closed_book", "context_in_input")
PROMPTS = ("question", "sentence_completion", "sentence_completion_newline")
SENTENCE_COMPLETION = ("sentence_completion", "sentence_completion_newline")
SENTENCE_COMPLETION_PROMPT = "cings/sentence_completion"  # packaged prompt file (groundflow.prompts)
INGEST_STAGE = "eval_records"
INFER_STAGE = "infer"
# the layouts of `question` prompts (in code); a sentence-completion job also stores its
# instruction file's version
PROMPT_VERSION = "cings-eval-v1"
REQUEST_SEPARATOR = "|"

RECORD_COLUMNS = ["id", "question", "answers", "docs", "line"]
PREDICTION_COLUMNS = ["id", "setting", "question", "answers", "n_docs", "doc_titles", "generation", "prediction"]
# one inference job's predictions: `id` is the request's (`{record id}|{setting}`)
REQUEST_PREDICTION_COLUMNS = ["id", "record_id", "setting", "question", "answers", "n_docs", "doc_titles",
                              "generation", "prediction"]


class EvalFileError(ValueError):
    """The evaluation file as a whole cannot be read (not one bad record: those are rejected)."""


# ---------------------------------------------------------------------------------------------
# datasets (entries of config cings.inference.datasets)


@dataclass(frozen=True)
class EvalDataset:
    """One evaluation set with every default filled in from `cings.inference`."""

    name: str
    path: str | None
    prompt: str
    metrics: tuple[str, ...]
    settings: tuple[str, ...]
    ndocs: int
    labels: Mapping[str, Sequence[str]] | None  # label_accuracy's mapping; None: FEVER's (or unused)

    @property
    def scoring(self) -> DatasetScoring:
        return DatasetScoring(metrics=self.metrics, labels=self.labels)

    @property
    def record_labels(self) -> Mapping[str, Sequence[str]] | None:
        """The labels every record's gold answers must name (label_accuracy datasets), else None."""
        return record_labels({"metrics": self.metrics, "labels": self.labels})


def record_labels(entry: Mapping) -> Mapping[str, Sequence[str]] | None:
    """The labels every record's gold answers must name, for a dataset entry scored by
    label_accuracy (its own `labels`, else FEVER's); None for other datasets."""
    if "label_accuracy" not in tuple(entry.get("metrics") or DEFAULT_METRICS):
        return None
    return FEVER_LABELS if entry.get("labels") is None else entry["labels"]


def check_dataset(entry: Mapping, settings: Sequence[str]) -> list[str]:
    """The settings `entry` is answered in (its own, or `settings`, config `cings.inference.settings`,
    when it names none); raises a ValueError naming the dataset for a setting its prompt cannot
    take (sentence completion: `prefilled_1doc` only), an unknown prompt, setting or metric, or a
    bad label mapping. Pure: the rules call it when they plan the jobs."""
    name = entry.get("name", "<unnamed>")
    prompt = entry.get("prompt") or "question"
    if prompt not in PROMPTS:
        raise ValueError(f"dataset {name!r}: unknown prompt {prompt!r}; one of {list(PROMPTS)}")
    chosen = entry.get("settings")
    chosen = list(settings if chosen is None else chosen)
    if not chosen:
        raise ValueError(f"dataset {name!r}: no settings to answer in")
    unknown = [s for s in chosen if s not in SETTINGS]
    if unknown:
        raise ValueError(f"dataset {name!r}: unknown settings {unknown}; each one of {list(SETTINGS)}")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"dataset {name!r}: a setting is named twice in {chosen}")
    if prompt in SENTENCE_COMPLETION and chosen != ["prefilled_1doc"]:
        others = [s for s in chosen if s != "prefilled_1doc"]
        raise ValueError(
            f"dataset {name!r}: the {prompt} prompt continues a sentence after one pre-filled passage, so it "
            f"takes the setting prefilled_1doc only, not {others}; set this dataset's `settings: [prefilled_1doc]`"
        )
    ndocs = entry.get("ndocs")
    if ndocs is not None and (isinstance(ndocs, bool) or not isinstance(ndocs, int) or ndocs < 1):
        raise ValueError(f"dataset {name!r}: ndocs must be an integer >= 1 or null, not {ndocs!r}")
    try:
        DatasetScoring(metrics=tuple(entry.get("metrics") or DEFAULT_METRICS), labels=entry.get("labels"))
    except (TypeError, ValueError) as error:
        raise ValueError(f"dataset {name!r}: {error}") from None
    return chosen


def resolved_entry(entry: Mapping, inference: Mapping) -> dict:
    """`entry` (config `cings.inference.datasets`) with its settings and ndocs filled from `inference`'s
    defaults, checked: what one set's jobs take, so that editing another set re-runs none of them."""
    ndocs = entry.get("ndocs")
    return {**entry, "settings": check_dataset(entry, inference["settings"]),
            "ndocs": inference["ndocs"] if ndocs is None else ndocs}


def resolve_dataset(entry: Mapping, inference: Mapping | None = None) -> EvalDataset:
    """`entry` with its defaults from `inference` (config `cings.inference`: settings, ndocs), checked.
    Without `inference` the entry must name its own settings and ndocs (the rules pass each job its
    set's resolved entry, so a change to another set's entry re-runs none of its jobs)."""
    defaults = inference if inference is not None else {}
    missing = [key for key in ("settings", "ndocs") if entry.get(key) is None and key not in defaults]
    if missing:
        raise ValueError(f"dataset {entry.get('name', '<unnamed>')!r} names no {missing} and no defaults were given")
    settings = check_dataset(entry, defaults.get("settings", ()))
    ndocs = entry.get("ndocs")
    return EvalDataset(
        name=str(entry["name"]),
        path=entry.get("path"),
        prompt=entry.get("prompt") or "question",
        metrics=tuple(entry.get("metrics") or DEFAULT_METRICS),
        settings=tuple(settings),
        ndocs=int(defaults["ndocs"] if ndocs is None else ndocs),
        labels=entry.get("labels"),
    )


def load_instruction(prompt: str, path: str | None = None) -> PromptText | None:
    """The user turn of a sentence-completion prompt: the file at `path` (config
    `cings.inference.sentence_completion_prompt`) or ours; None for `question` prompts. The text
    has no fields: the passage and the sentence go into the assistant's pre-fill."""
    if prompt not in PROMPTS:
        raise ValueError(f"unknown prompt {prompt!r}; one of {list(PROMPTS)}")
    if prompt not in SENTENCE_COMPLETION:
        return None
    text = load_prompt(path, SENTENCE_COMPLETION_PROMPT, fields=set())
    if not text.text.strip():
        raise ValueError(f"sentence-completion prompt {text.source} is empty")
    return text


# ---------------------------------------------------------------------------------------------
# reading and validating records


# One entry of an evaluation file: its line (JSONL) or position (JSON array, 1-based) and either the
# decoded value or why it could not be decoded (the shared reader's entry).
RawEntry = JsonLine


def read_eval_entries(source: str | os.PathLike | bytes, name: str = "<eval file>") -> list[RawEntry]:
    """The entries of an evaluation file (a path or its bytes), through the shared reader: one
    JSON array when its first non-blank character is "[" (it must parse as a whole), else JSONL,
    where a line that is not UTF-8 text or not JSON becomes an entry carrying the reason."""
    try:
        return list(read_json_records(source))
    except json.JSONDecodeError as error:
        raise EvalFileError(f"{name}: not a valid JSON array: {error}") from error


def parse_eval_text(text: str, source: str = "<eval file>") -> list[RawEntry]:
    """`read_eval_entries` of a file's text."""
    return read_eval_entries(text.encode("utf-8"), source)


def _doc_problem(index: int, doc: Any) -> tuple[dict | None, str | None]:
    """A passage as {title, text, score (None for gold), gold} or the reason it is unusable."""
    if not isinstance(doc, dict):
        return None, f"doc {index} is a {type(doc).__name__}, not an object"
    problem = field_problem(doc, "text") or (doc.get("title") is not None and field_problem(doc, "title", empty_ok=True))
    if problem:
        return None, f"doc {index}: {problem}"
    text, title = doc["text"], doc.get("title") or ""
    if "score" not in doc:
        return None, f"doc {index}: missing field 'score'"
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


def entry_id(entry: RawEntry) -> tuple[str | None, str | None]:
    """(the entry's own id, None) or (None, the reason it has no usable one, naming its line)."""
    if entry.error is not None:
        return None, entry.error
    value = entry.value
    if not isinstance(value, dict):
        return None, f"line {entry.line} is a {type(value).__name__}, not an object"
    raw_id = value.get("id")
    if raw_id is None:
        return None, f"line {entry.line}: missing field 'id'"
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
        return None, f"line {entry.line}: field 'id' is a {type(raw_id).__name__}, not a string or integer"
    if not str(raw_id).strip():
        return None, f"line {entry.line}: field 'id' is empty"
    return str(raw_id).strip(), None


def validate_record(entry: RawEntry, labels: Mapping[str, Sequence[str]] | None = None
                    ) -> tuple[str, dict | None, str | None]:
    """(id, the clean record or None, the reason it is rejected or None).

    The id of an entry without a usable id is `line:{n}`, as CVC ingest and CINGS convert name
    theirs. Gold answers that normalise to nothing
    ("The", "?") are dropped: they would match every prediction or an empty one. With `labels`
    (a label_accuracy dataset: `EvalDataset.record_labels`), the gold answers must name exactly
    one of its labels, or the record could not be scored.
    """
    record_id, problem = entry_id(entry)
    if record_id is None:
        return line_id(entry.line), None, problem
    value = entry.value
    problem = field_problem(value, "question") or field_problem(value, "answers", list)
    if problem:
        return record_id, None, problem
    question, answers = value["question"], value["answers"]
    if any(not isinstance(a, str) for a in answers):
        return record_id, None, "field 'answers' holds a non-string answer"
    golds = [a.strip() for a in answers if normalize_answer(a)]
    if not golds:
        return record_id, None, "no gold answer is left after normalisation"
    if labels is not None:
        try:
            gold_label(golds, labels)
        except ValueError as error:
            return record_id, None, str(error)
    problem = field_problem(value, "docs", list)
    if problem:
        return record_id, None, problem
    docs = value["docs"]
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


def validate_records(entries: Iterable[RawEntry], *, labels: Mapping[str, Sequence[str]] | None = None) -> EvalRecords:
    """Clean records and rejects; in = out + rejected, and each id is kept or rejected, never both
    (checked by the shared `check_accounting`). `labels`: see `validate_record`.

    An id belongs to its first entry, valid or not; a later entry with the same id is rejected as
    `line:N` (under its own id it would be both kept and rejected, or rejected twice).
    """
    kept: list[dict] = []
    rejected: list[tuple[str, str]] = []
    first_line: dict[str, int] = {}
    accounted: list[str] = []  # the id each entry is kept or rejected under
    for entry in entries:
        record_id, record, reason = validate_record(entry, labels)
        if record_id in first_line:
            accounted.append(line_id(entry.line))
            rejected.append((line_id(entry.line), f"line {entry.line}: duplicate id {record_id!r} "
                                                  f"(first at line {first_line[record_id]})"))
            continue
        first_line[record_id] = entry.line
        accounted.append(record_id)
        if record is None:
            rejected.append((record_id, reason or "invalid"))
            continue
        kept.append(record)
    frame = pd.DataFrame(kept, columns=RECORD_COLUMNS)
    rejects = rejects_frame(INGEST_STAGE, rejected)
    if len(set(accounted)) != len(accounted):
        # a record whose own id is `line:N` met the fallback id of line N's bad entry
        taken = sorted({i for i in accounted if accounted.count(i) > 1})
        raise EvalFileError(f"ids {taken[:5]} are both a record's own id and the fallback id of another line")
    counts = check_accounting(INGEST_STAGE, accounted, StageResult(kept=frame, rejects=rejects))
    return EvalRecords(kept=frame, rejects=rejects, counts=counts)


def read_eval_records(path: str | Path, *, name: str | None = None,
                      labels: Mapping[str, Sequence[str]] | None = None) -> EvalRecords:
    """An evaluation file's validated records; with `labels` (`record_labels`), each record's gold
    answers must name one of them. `name` (the dataset's) goes into a missing file's error."""
    path = Path(path)
    if not path.is_file():
        of = f" of dataset {name!r}" if name is not None else ""
        raise FileNotFoundError(f"evaluation file{of} not found: {path} (config cings.inference.datasets)")
    return validate_records(read_eval_entries(path, str(path)), labels=labels)


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


def sentence_completion_prefill(doc: dict, sentence: str, *, newline: bool) -> str:
    """`## Context {passage}. {sentence} ## Answer` (SWDE: `## Context {passage}\\n{sentence} ## Answer`)."""
    joint = "\n" if newline else ". "
    return f"{CONTEXT_MARKER} {passage_text(doc)}{joint}{sentence} {ANSWER_MARKER}"


def check_prompt_setting(prompt: str, setting: str, instruction: str | None = None) -> None:
    """ValueError unless `prompt` can be asked in `setting` (and a sentence-completion prompt has
    its instruction): a problem of the job's configuration, not of one record."""
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; one of {list(SETTINGS)}")
    if prompt not in PROMPTS:
        raise ValueError(f"unknown prompt {prompt!r}; one of {list(PROMPTS)}")
    if prompt in SENTENCE_COMPLETION:
        if setting != "prefilled_1doc":
            raise ValueError(f"the {prompt} prompt takes the setting prefilled_1doc only, not {setting!r}")
        if not instruction or not instruction.strip():
            raise ValueError(f"the {prompt} prompt needs its instruction (load_instruction)")


def build_prompt(record: dict, setting: str, *, ndocs: int, system_prompt: str, use_gold: bool = True,
                 prompt: str = "question", instruction: str | None = None) -> PromptParts:
    """The prompt of `record` in `setting`; raises ValueError when the setting has no passage to show.

    `system_prompt` is training's (config `cings.data.system_prompt`); empty: no system message.
    `prompt` is the dataset's prompt kind; `instruction` the user turn of sentence completion.
    """
    check_prompt_setting(prompt, setting, instruction)
    question = str(record["question"]).strip()
    system = ({"role": "system", "content": system_prompt},) if system_prompt else ()
    if prompt in SENTENCE_COMPLETION:
        docs = tuple(select_docs(record["docs"], 1, use_gold=use_gold))
        if not docs:
            raise ValueError("no passage to show" + ("" if use_gold else " (gold passages are excluded)"))
        prefill = sentence_completion_prefill(docs[0], question, newline=prompt == "sentence_completion_newline")
        return PromptParts(system + ({"role": "user", "content": instruction.strip()},), prefill, docs)
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


def request_id(record_id: str, setting: str) -> str:
    """The id of one record asked in one setting (the inference job's unit)."""
    return f"{record_id}{REQUEST_SEPARATOR}{setting}"


def split_request_id(value: str) -> tuple[str, str]:
    """(record id, setting) of a request id; a record id may itself contain the separator."""
    record_id, separator, setting = str(value).rpartition(REQUEST_SEPARATOR)
    if not separator or setting not in SETTINGS:
        raise ValueError(f"{value!r} is not a request id `{{record id}}{REQUEST_SEPARATOR}{{setting}}`")
    return record_id, setting


def setting_requests(records: pd.DataFrame, settings: Sequence[str]) -> pd.DataFrame:
    """Every record in every setting, setting by setting: the records' columns with `id` the
    request's, `record_id` the record's and `setting`."""
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown or not settings:
        raise ValueError(f"settings {list(settings)} must be at least one of {list(SETTINGS)}")
    parts = []
    for setting in settings:
        ids = records["id"].astype(str)
        parts.append(records.assign(record_id=ids, setting=setting,
                                    id=[request_id(i, setting) for i in ids]))
    return pd.concat(parts, ignore_index=True) if len(records) else records.assign(record_id=[], setting=[])


def infer_requests(requests: pd.DataFrame, generator: "Generator", params: "SamplingParams", *, ndocs: int,
                   system_prompt: str, use_gold: bool = True, max_prompt_tokens: int | None = None,
                   prompt: str = "question", instruction: str | None = None) -> StageResult:
    """Answer every request (a record in a setting, `setting_requests`) with one batched generate call.

    A request is rejected when its setting has no passage for the record, or when its prompt is
    longer than `max_prompt_tokens` (checked for local HF models). Kept rows
    (`REQUEST_PREDICTION_COLUMNS`) hold the raw generation and the answer text scored later
    (`answer_text`). A prompt that cannot be asked in a setting at all raises.
    """
    from groundflow.generate.backends import ChatPrompt

    if params.n != 1:
        raise ValueError(f"evaluation decodes one answer per question, not n={params.n}")
    for setting in dict.fromkeys(requests["setting"]):
        check_prompt_setting(prompt, setting, instruction)
    rejected: list[tuple[str, str]] = []
    ready: list[tuple[dict, PromptParts]] = []
    for request in requests.to_dict("records"):
        try:
            parts = build_prompt(request, request["setting"], ndocs=ndocs, use_gold=use_gold,
                                 system_prompt=system_prompt, prompt=prompt, instruction=instruction)
        except ValueError as error:
            rejected.append((str(request["id"]), str(error)))
            continue
        ready.append((request, parts))
    prompts = [ChatPrompt(messages=[dict(m) for m in parts.messages], assistant_prefix=parts.assistant_prefix)
               for _, parts in ready]
    if max_prompt_tokens is not None and prompts:
        counts = prompt_token_counts(generator, prompts)
        if counts is not None:
            fits = [n <= max_prompt_tokens for n in counts]
            rejected += [(str(request["id"]), f"prompt has {n} tokens, over max_prompt_tokens={max_prompt_tokens}")
                         for (request, _), n, ok in zip(ready, counts, fits) if not ok]
            ready = [item for item, ok in zip(ready, fits) if ok]
            prompts = [p for p, ok in zip(prompts, fits) if ok]
    outputs = generator.generate(prompts, params) if prompts else []
    rows = []
    for (request, parts), texts in zip(ready, outputs):
        generation = texts[0]
        rows.append({
            "id": str(request["id"]),
            "record_id": str(request["record_id"]),
            "setting": request["setting"],
            "question": request["question"],
            "answers": list(request["answers"]),
            "n_docs": len(parts.docs),
            "doc_titles": [d["title"] for d in parts.docs],
            "generation": generation,
            "prediction": answer_text(generation),
        })
    kept = pd.DataFrame(rows, columns=REQUEST_PREDICTION_COLUMNS)
    return StageResult(kept=kept, rejects=rejects_frame(INFER_STAGE, rejected))


def prediction_frame(kept: pd.DataFrame) -> pd.DataFrame:
    """A job's kept rows with exactly `REQUEST_PREDICTION_COLUMNS`: a job that rejected every
    request gets an empty table of them (the stage machinery gives it the input's columns)."""
    if kept.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in REQUEST_PREDICTION_COLUMNS}).astype({"n_docs": "int64"})
    missing = [c for c in REQUEST_PREDICTION_COLUMNS if c not in kept.columns]
    if missing:
        raise ValueError(f"predictions lack columns {missing}")
    return kept[REQUEST_PREDICTION_COLUMNS].reset_index(drop=True)


def infer_setting(records: pd.DataFrame, generator: "Generator", params: "SamplingParams", setting: str, *,
                  ndocs: int, system_prompt: str, use_gold: bool = True,
                  max_prompt_tokens: int | None = None, prompt: str = "question",
                  instruction: str | None = None) -> StageResult:
    """Answer every record in one `setting` (`infer_requests` of that setting alone), with the
    records' own ids: kept rows have `PREDICTION_COLUMNS`, rejects the record ids."""
    result = infer_requests(setting_requests(records, [setting]), generator, params, ndocs=ndocs,
                            system_prompt=system_prompt, use_gold=use_gold, max_prompt_tokens=max_prompt_tokens,
                            prompt=prompt, instruction=instruction)
    kept = result.kept.assign(id=result.kept["record_id"])[PREDICTION_COLUMNS].reset_index(drop=True)
    rejects = result.rejects.assign(id=[split_request_id(i)[0] for i in result.rejects["id"]])
    return StageResult(kept=kept, rejects=rejects.astype({"id": str}))


def setting_counts(settings: Sequence[str], kept_ids: Iterable[str], rejected_ids: Iterable[str],
                   n_requests: int) -> pd.DataFrame:
    """One inference job's outcome per setting: (setting, n answered, rejected), in `settings`' order.

    Raises unless every request id names one of `settings` and each setting accounts for the same
    number of records (n_requests / len(settings)): the job answered every record in every setting.
    """
    settings = list(settings)
    kept = pd.Series([split_request_id(i)[1] for i in kept_ids], dtype=object)
    rejected = pd.Series([split_request_id(i)[1] for i in rejected_ids], dtype=object)
    strange = sorted((set(kept) | set(rejected)) - set(settings))
    if strange:
        raise ValueError(f"requests of settings {strange}, not among the job's settings {settings}")
    if n_requests % len(settings):
        raise ValueError(f"{n_requests} requests cannot be {len(settings)} settings x the same records")
    per_setting = n_requests // len(settings)
    rows = []
    for setting in settings:
        n, n_rejected = int((kept == setting).sum()), int((rejected == setting).sum())
        if n + n_rejected != per_setting:
            raise ValueError(f"setting {setting}: {n} answered + {n_rejected} rejected != {per_setting} records")
        rows.append({"setting": setting, "n": n, "rejected": n_rejected})
    return pd.DataFrame(rows, columns=["setting", "n", "rejected"])


def job_runs(dataset: EvalDataset, mode: str, predictions: pd.DataFrame, rejects: pd.DataFrame,
             counts: Mapping) -> pd.DataFrame:
    """One inference job's rows of the table's runs (dataset, mode, setting, n, rejected), checked
    against its counts file: out = its predictions, rejected = its rejects, every setting of the
    dataset accounting for every record."""
    if len(predictions) != counts["out"] or len(rejects) != counts["rejected"]:
        raise ValueError(f"{dataset.name}/{mode}: {len(predictions)} predictions and {len(rejects)} rejects, but "
                         f"the job's counts say out={counts['out']}, rejected={counts['rejected']}")
    per_setting = setting_counts(dataset.settings, predictions["id"], rejects["id"], int(counts["in"]))
    return per_setting.assign(dataset=dataset.name, mode=mode)[["dataset", "mode", "setting", "n", "rejected"]]


__all__ = [
    "ANSWER_MARKER",
    "CONTEXT_MARKER",
    "EvalDataset",
    "EvalFileError",
    "EvalRecords",
    "PROMPTS",
    "PROMPT_VERSION",
    "PromptParts",
    "RawEntry",
    "SETTINGS",
    "answer_text",
    "assistant_prefill",
    "build_prompt",
    "check_dataset",
    "check_prompt_setting",
    "infer_requests",
    "infer_setting",
    "job_runs",
    "load_instruction",
    "parse_eval_text",
    "read_eval_entries",
    "entry_id",
    "passage_text",
    "prediction_frame",
    "prompt_token_counts",
    "read_eval_records",
    "record_labels",
    "request_id",
    "resolve_dataset",
    "resolved_entry",
    "select_docs",
    "sentence_completion_prefill",
    "setting_counts",
    "setting_requests",
    "split_request_id",
    "validate_record",
    "validate_records",
]

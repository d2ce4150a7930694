"""TSST's warm-up data (round 0): the policy SFT JSON and the value JSON from a file of CoT chains.

A CoT record is `{id, image (relative to the image folder, or null), question, choices (list),
answer_label (1-based), solution (the chain, in the §2 response shape), correct (bool)}`.

- Policy (spec §3.2): one LLaVA record per correct chain, `{id, image?, conversations: [human, gpt]}`;
  the human turn is `QuestionPrompts.human_turn` (the one prompt and `A. x` option format of every
  stage; no `<image>` for a text-only question), the gpt turn the chain's sentences joined by one
  space, the spacing the search builds chains with.
- Value (spec §3.3, the README's linear rule): one record per reasoning prefix, the same record plus
  a float `value`. A correct chain of N sentences (`tsst.sentences.split_sentences`) gives prefix k
  (1..N) the value k/N, so the final answer gets 1.0; every prefix of an incorrect chain gets 0.
  Prefixes are `join_sentences` of the first k sentences. The original's code cut at every '.'
  (decimals, "A. red" broken apart), joined with other spacing than its search, and gave the first
  step 0 (s_i = i/(N-1)); its README's k/N is what is kept here.

Bad records are rejected with the line and reason (bad bytes or JSON, missing or mistyped fields,
empty choices, a label out of range, a missing image, an empty solution, a duplicate id): in = out +
rejected, where a kept record is one whose chain produced value records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from groundflow.io.stage import StageResult, check_accounting, rejects_frame
from groundflow.tsst.prompts import QuestionPrompts
from groundflow.tsst.questions import (
    named_entries,
    QuestionFileError,
    RawLine,
    RecordError,
    integer_field,
    text_field,
    check_choices,
    check_label,
    image_path,
    read_jsonl,
    record_id,
)
from groundflow.tsst.sentences import join_sentences, split_sentences

STAGE = "tsst_warmup"


@dataclass(frozen=True)
class CotRecord:
    id: str
    question: str
    choices: tuple[str, ...]
    answer_label: int
    image: str | None
    solution: str
    correct: bool


def cot_record(value: Any, image_root: str | Path | None) -> CotRecord:
    """One CoT line, checked; RecordError says why it is unusable."""
    if not isinstance(value, dict):
        raise RecordError(f"a {type(value).__name__}, not an object")
    chain_id = record_id(value, "id")
    if chain_id is None:
        raise RecordError("missing field 'id'")
    question = text_field(value, "question")
    choices = check_choices(value.get("choices"), key="choices")
    label = check_label(integer_field(value, "answer_label"), len(choices))
    solution = text_field(value, "solution")
    if "correct" not in value or value["correct"] is None:
        raise RecordError("missing field 'correct'")
    if not isinstance(value["correct"], bool):
        raise RecordError(f"field 'correct' is {value['correct']!r}, not true or false")
    return CotRecord(id=chain_id, question=question, choices=tuple(choices), answer_label=label,
                     image=image_path(value.get("image"), image_root, key="image"),
                     solution=solution, correct=value["correct"])


def linear_values(n_steps: int, correct: bool) -> list[float]:
    """The README's rule: step k of a correct N-step chain gets k/N; an incorrect chain gets zeros."""
    if n_steps < 1:
        raise ValueError("a chain needs at least one step")
    return [k / n_steps if correct else 0.0 for k in range(1, n_steps + 1)]


def chain_prefixes(solution: str, *, cut: str = "sentence") -> list[str]:
    """Prefix k (k = 1..N) of a chain: its first k sentences joined by one space."""
    sentences = split_sentences(solution, cut=cut)
    return [join_sentences(sentences[:k]) for k in range(1, len(sentences) + 1)]


def _llava_record(record_id_: str, human: str, gpt: str, image: str | None) -> dict:
    out: dict = {"id": record_id_}
    if image is not None:
        out["image"] = image
    out["conversations"] = [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}]
    return out


def policy_record(record: CotRecord, prompts: QuestionPrompts, *, cut: str = "sentence") -> dict:
    """The policy SFT record of a (correct) chain."""
    human = prompts.human_turn(record.question, record.choices, has_image=record.image is not None)
    return _llava_record(record.id, human, join_sentences(split_sentences(record.solution, cut=cut)), record.image)


def value_records(record: CotRecord, prompts: QuestionPrompts, *, cut: str = "sentence") -> list[dict]:
    """One value record per prefix of the chain, ids `{id}:{k}` (k = 1..N)."""
    prefixes = chain_prefixes(record.solution, cut=cut)
    human = prompts.human_turn(record.question, record.choices, has_image=record.image is not None)
    return [{**_llava_record(f"{record.id}:{k}", human, prefix, record.image), "value": value}
            for k, (prefix, value) in enumerate(zip(prefixes, linear_values(len(prefixes), record.correct)), start=1)]


@dataclass
class WarmupData:
    policy: list[dict]
    value: list[dict]
    rejects: pd.DataFrame
    counts: dict = field(default_factory=dict)


def warmup_from_lines(entries: Sequence[RawLine], *, image_root: str | Path | None, prompts: QuestionPrompts,
                      cut: str = "sentence") -> WarmupData:
    """Policy and value records of the good lines; the others rejected (see the module docstring)."""
    policy, value, rejected, accounted = [], [], [], []
    kept_ids: list[str] = []
    n_correct = n_incorrect = 0
    for entry, name, own_id in named_entries(entries, "id", accounted, rejected):
        try:
            record = cot_record(entry.value, image_root)
            prefixes = value_records(record, prompts, cut=cut)
        except RecordError as error:
            rejected.append((name, f"line {entry.line} (id {own_id!r}): {error}" if own_id
                             else f"line {entry.line}: {error}"))
            continue
        value.extend(prefixes)
        kept_ids.append(record.id)
        if record.correct:
            n_correct += 1
            policy.append(policy_record(record, prompts, cut=cut))
        else:
            n_incorrect += 1
    if len(set(accounted)) != len(accounted):
        taken = sorted({i for i in accounted if accounted.count(i) > 1})
        raise QuestionFileError(f"ids {taken[:5]} are both a record's own id and the line id of another line")
    rejects = rejects_frame(STAGE, rejected)
    counts = check_accounting(STAGE, accounted, StageResult(kept=pd.DataFrame({"id": kept_ids}, dtype=str),
                                                            rejects=rejects))
    counts.update({"correct_chains": n_correct, "incorrect_chains": n_incorrect, "policy_records": len(policy),
                   "value_records": len(value), "cut": cut, "prompt_version": prompts.version})
    return WarmupData(policy=policy, value=value, rejects=rejects, counts=counts)


def warmup_from_file(path: str | Path, *, image_root: str | Path | None, prompts: QuestionPrompts,
                     cut: str = "sentence") -> WarmupData:
    return warmup_from_lines(read_jsonl(path, what="CoT file"), image_root=image_root, prompts=prompts, cut=cut)

"""CVC step T4: select training samples from checked trials and build the hybrid instruction mix.

With k = the number of correct trials of an instance:
- 1 <= k <= 4 (`cot_range`, "challenging successes"): each correct rationale becomes a
  chain-of-thought sample;
- k >= 1: each distinct correct short answer becomes an answer sample;
- k = 0: the instance gives nothing and is rejected with the reason.

Samples are records in the LLaVA-1.5 instruction format (as in llava_v1_5_mix665k.json):
`{"id", "image", "conversations": [{"from": "human", "value": "<image>\\n..."},
{"from": "gpt", "value": ...}]}`. The mix is the instruction data, then the CoT samples, then the
answer samples (the seed's order, no ratio), optionally shuffled with a seed.

The samples follow the layout of the seed's released `rationales.json`: ids
`{occluded image stem}-cot-{k}` / `-answer-{k}` (the stem is `{image stem}-{entity}`, so an entity
with spaces or hyphens parses back at the first "-" after the image stem); the human turn is
`<image>`, newline, the instruction's header, newline, its question, one space and exactly one
suffix (reasoning for CoT samples, answer for answer samples); the gpt turn is the rationale as
sampled, or the extracted answer as written by the extraction step (in the paper's mode
sometimes a comma-separated list of hedged answers).

The real 665k file has text-only records (no "image"), extra keys ("model": ""), some records whose
first turn is the model's (LLaVA's preprocessing skips it) and ids that repeat. The mix checks
every record for what training needs and is stricter with the samples built here (exactly one
human and one gpt turn, both non-empty, unique ids that collide with nothing else).
"""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from groundflow.cvc.prompts import ANSWER_SUFFIX
from groundflow.cvc.trials import instruction_text, reasoning_question
from groundflow.io.artifacts import atomic_write_text
from groundflow.io.lines import read_json_document, undecodable_field
from groundflow.io.stage import StageResult, rejects_frame

SELECTION_STAGE = "selection"
IMAGE_TOKEN = "<image>"
HUMAN, GPT = "human", "gpt"
SOURCES = ("instruction", "cot", "answer")


class HybridFormatError(ValueError):
    """A record that is not in the LLaVA instruction format; the message names the record."""


# ---------------------------------------------------------------------------------------------
# sample records



# A sample's id names its instance (the occluded image's stem), its kind and its index.
SAMPLE_ID = re.compile(r"^(?P<stem>.+)-(?P<source>cot|answer)-(?P<index>\d+)$")


def sample_id(stem: str, source: str, index: int) -> str:
    return f"{stem}-{source}-{index}"


def answer_question(instruction: str) -> str:
    """The question of an answer sample: the instruction (header, newline, question), one space,
    the short-answer suffix once."""
    return f"{instruction_text(instruction)} {ANSWER_SUFFIX}"


def llava_record(record_id: str, image: str | None, question: str, answer: str) -> dict:
    """One single-turn LLaVA record; the image token opens the human turn when there is an image."""
    record: dict = {"id": record_id}
    if image is not None:
        record["image"] = image
        question = f"{IMAGE_TOKEN}\n{question}"
    record["conversations"] = [{"from": HUMAN, "value": question}, {"from": GPT, "value": answer}]
    return record


def select_samples(
    df: pd.DataFrame, *, cot_range: tuple[int, int] = (1, 4), image_prefix: str = ""
) -> tuple[list[dict], list[dict], StageResult]:
    """Chain-of-thought and answer samples from checked instances; returns (cot, answers, result).

    Needs columns id, label, instruction, occluded_image, trials, predictions, correct,
    n_correct. Sample ids are `{stem}-cot-{i}` and `{stem}-answer-{i}` (i counting from 0 within
    the instance), stem = the occluded image's file stem; the sample image is
    `image_prefix + occluded_image`. Kept rows gain n_cot and n_answer. Rejected: no correct trial,
    or a stem already used by an earlier instance (the sample ids would collide).
    """
    low, high = cot_range
    if not 0 < low <= high:
        raise ValueError(f"cot_range must satisfy 0 < low <= high, got {cot_range}")
    records = df.reset_index(drop=True)
    cot: list[dict] = []
    answers: list[dict] = []
    kept_positions: list[int] = []
    n_cot: list[int] = []
    n_answer: list[int] = []
    rejected: list[tuple[str, str]] = []
    stem_owner: dict[str, str] = {}
    for pos, row in enumerate(records.itertuples(index=False)):
        record_id = str(row.id)
        correct = [bool(c) for c in row.correct]
        k = int(row.n_correct)
        if k != sum(correct):
            raise ValueError(f"instance '{record_id}': n_correct={k} but {sum(correct)} trials are marked correct")
        if k == 0:
            rejected.append((record_id, _no_success_reason(row, len(correct))))
            continue
        stem = Path(str(row.occluded_image)).stem
        if stem in stem_owner:
            rejected.append(
                (record_id, f"sample ids of '{record_id}' would repeat those of '{stem_owner[stem]}' "
                            f"(same occluded image stem '{stem}')")
            )
            continue
        stem_owner[stem] = record_id
        image = f"{image_prefix}{row.occluded_image}"
        instance_cot: list[dict] = []
        if low <= k <= high:
            question = reasoning_question(str(row.instruction))
            rationales = [str(t) for t, ok in zip(row.trials, correct) if ok]
            instance_cot = [
                llava_record(sample_id(stem, "cot", i), image, question, rationale)
                for i, rationale in enumerate(rationales)
            ]
        distinct = list(dict.fromkeys(str(p) for p, ok in zip(row.predictions, correct) if ok))
        question = answer_question(str(row.instruction))
        instance_answers = [
            llava_record(sample_id(stem, "answer", i), image, question, prediction)
            for i, prediction in enumerate(distinct)
        ]
        cot.extend(instance_cot)
        answers.extend(instance_answers)
        kept_positions.append(pos)
        n_cot.append(len(instance_cot))
        n_answer.append(len(instance_answers))
    kept = records.iloc[kept_positions].reset_index(drop=True)
    kept["n_cot"] = pd.Series(n_cot, dtype="int64")
    kept["n_answer"] = pd.Series(n_answer, dtype="int64")
    result = StageResult(kept=kept, rejects=rejects_frame(SELECTION_STAGE, rejected), parent_column="id")
    return cot, answers, result


def _no_success_reason(row, n_trials: int) -> str:
    reason = f"no correct trial (0 of {n_trials}) for '{row.label}'"
    similarities = getattr(row, "similarities", None)
    if similarities is None:
        return reason
    values = np.asarray(list(similarities), dtype=np.float64)
    if values.size == 0 or np.isnan(values).all():
        return f"{reason} (no answer extracted)"
    return f"{reason} (best similarity {np.nanmax(values):.3f})"


# ---------------------------------------------------------------------------------------------
# format checks and the mix


def record_problem(record, *, strict: bool = False) -> str | None:
    """What is wrong with one LLaVA record for training, or None.

    Every record: a dict with a non-empty string id (ints are accepted: some instruction sets use
    them), a non-empty list of {from: human|gpt, value: str} turns with at least one of each, an
    optional non-empty string image; with an image exactly one image token, in a human turn;
    without one no image token at all. `strict` (samples built here): exactly a human turn that
    opens with the image token and a non-empty gpt turn.
    """
    if not isinstance(record, dict):
        return f"not an object but {type(record).__name__}"
    record_id = record.get("id")
    if isinstance(record_id, bool) or not isinstance(record_id, (str, int)) or record_id == "":
        return "missing or empty id"
    if "image" in record and (not isinstance(record["image"], str) or not record["image"].strip()):
        return f"image must be a non-empty string, got {record['image']!r}"
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        return "conversations must be a non-empty list"
    for number, turn in enumerate(turns):
        if not isinstance(turn, dict) or turn.get("from") not in (HUMAN, GPT) or not isinstance(turn.get("value"), str):
            return f"turn {number} must be {{from: human|gpt, value: string}}, got {turn!r}"[:300]
    roles = [turn["from"] for turn in turns]
    if HUMAN not in roles or GPT not in roles:
        return f"needs a human and a gpt turn, has {roles}"
    tokens = [turn["value"].count(IMAGE_TOKEN) for turn in turns]
    if "image" in record:
        if sum(tokens) != 1:
            return f"has an image but {sum(tokens)} {IMAGE_TOKEN} tokens (needs exactly 1)"
        if turns[tokens.index(1)]["from"] != HUMAN:
            return f"the {IMAGE_TOKEN} token is in a gpt turn"
    elif sum(tokens):
        return f"has no image but {sum(tokens)} {IMAGE_TOKEN} tokens"
    if strict:
        if roles != [HUMAN, GPT]:
            return f"a sample needs exactly [human, gpt] turns, has {roles}"
        if "image" not in record or not turns[0]["value"].startswith(f"{IMAGE_TOKEN}\n"):
            return f"a sample's human turn must open with '{IMAGE_TOKEN}\\n'"
        if not turns[1]["value"].strip():
            return "empty gpt turn"
    return None


def validate_records(records: Iterable[dict], *, what: str, strict: bool = False) -> None:
    """Raise HybridFormatError naming the first bad record (its position, id and the problem)."""
    for position, record in enumerate(records):
        problem = record_problem(record, strict=strict)
        if problem is not None:
            record_id = record.get("id") if isinstance(record, dict) else None
            raise HybridFormatError(f"{what} record {position} (id {record_id!r}): {problem}")


def hybrid_mix(
    instruction_data: Sequence[dict],
    cot: Sequence[dict],
    answers: Sequence[dict],
    *,
    shuffle_seed: int | None = None,
) -> list[dict]:
    """Instruction data + CoT samples + answer samples, in that order (or shuffled with a seed).

    Every record is checked (HybridFormatError names the record and the problem). Sample ids must
    be unique and must not occur in the instruction data; repeated ids inside the instruction
    data are left as they are (the real 665k file has them).
    """
    validate_records(instruction_data, what="instruction")
    validate_records(cot, what="cot", strict=True)
    validate_records(answers, what="answer", strict=True)
    instruction_ids = {str(r["id"]) for r in instruction_data}
    seen: dict[str, str] = {}
    for what, samples in (("cot", cot), ("answer", answers)):
        for record in samples:
            record_id = str(record["id"])
            if record_id in seen:
                raise HybridFormatError(f"{what} record id {record_id!r} repeats a {seen[record_id]} sample id")
            if record_id in instruction_ids:
                raise HybridFormatError(f"{what} record id {record_id!r} already occurs in the instruction data")
            seen[record_id] = what
    mix = [*instruction_data, *cot, *answers]
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(mix)
    return mix


def record_sources(records: Sequence[dict], cot: Sequence[dict] = (), answers: Sequence[dict] = ()) -> list[str]:
    """"instruction", "cot" or "answer" for each record of a mix (by id: sample ids are unique)."""
    cot_ids = {str(r["id"]) for r in cot}
    answer_ids = {str(r["id"]) for r in answers}
    return [
        "cot" if str(r["id"]) in cot_ids else "answer" if str(r["id"]) in answer_ids else "instruction"
        for r in records
    ]


def format_counts(instruction_data: Sequence[dict], cot: Sequence[dict], answers: Sequence[dict],
                  selection: StageResult | None = None) -> dict:
    """Counts per format for the log (and, given the selection result, per instance)."""
    counts = {
        "instruction": len(instruction_data),
        "instruction_text_only": sum(1 for r in instruction_data if "image" not in r),
        "cot": len(cot),
        "answer": len(answers),
        "total": len(instruction_data) + len(cot) + len(answers),
    }
    if selection is not None:
        kept = selection.kept
        counts.update(
            instances_kept=len(kept),
            instances_rejected=len(selection.rejects),
            instances_with_cot=int((kept["n_cot"] > 0).sum()) if len(kept) else 0,
            instances_answer_only=int((kept["n_cot"] == 0).sum()) if len(kept) else 0,
        )
    return counts


# ---------------------------------------------------------------------------------------------
# files: LLaVA JSON and the flat Parquet copy


def to_parquet_frame(records: Sequence[dict], sources: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per record: id (str), image (None when text-only), conversations (JSON string of
    the turns, exactly as in the LLaVA file), n_turns, source, extra (JSON of any other keys, or
    None). `sources` defaults to "instruction" for all; see `record_sources`."""
    if sources is None:
        sources = ["instruction"] * len(records)
    if len(sources) != len(records):
        raise ValueError(f"{len(sources)} sources for {len(records)} records")
    bad = sorted(set(sources) - set(SOURCES))
    if bad:
        raise ValueError(f"unknown sources {bad}; expected {SOURCES}")
    extra = [
        {k: v for k, v in r.items() if k not in ("id", "image", "conversations")} for r in records
    ]
    return pd.DataFrame(
        {
            "id": pd.Series([str(r["id"]) for r in records], dtype=object),
            "id_is_int": pd.Series([isinstance(r["id"], int) for r in records], dtype=bool),
            "image": pd.Series([r.get("image") for r in records], dtype=object),
            "conversations": pd.Series(
                [json.dumps(r["conversations"], ensure_ascii=False) for r in records], dtype=object
            ),
            "n_turns": pd.Series([len(r["conversations"]) for r in records], dtype="int64"),
            "source": pd.Series(list(sources), dtype=object),
            "extra": pd.Series([json.dumps(e, ensure_ascii=False) if e else None for e in extra], dtype=object),
        }
    )


def records_from_frame(frame: pd.DataFrame) -> list[dict]:
    """The LLaVA records back from `to_parquet_frame` output (key order as LLaVA writes it)."""
    records = []
    for row in frame.itertuples(index=False):
        record: dict = {"id": int(row.id) if row.id_is_int else row.id}
        if isinstance(row.image, str):
            record["image"] = row.image
        record["conversations"] = json.loads(row.conversations)
        if isinstance(row.extra, str):
            record.update(json.loads(row.extra))
        records.append(record)
    return records


def write_llava_json(records: Sequence[dict], path: str | os.PathLike) -> None:
    """The records as one JSON array (the 665k file's layout), written atomically."""
    atomic_write_text(path, json.dumps(list(records), ensure_ascii=False))


def read_llava_json(path: str | os.PathLike) -> list[dict]:
    """The records of a LLaVA JSON array (a byte-order mark accepted); HybridFormatError names the
    record and field holding bytes that are not UTF-8, as the mix does for any other bad record."""
    try:
        document = read_json_document(path)
    except json.JSONDecodeError as error:
        raise HybridFormatError(f"{path}: not a JSON array of records ({error})") from None
    records = document.value
    if not isinstance(records, list):
        raise HybridFormatError(f"{path}: expected a JSON array of records, got {type(records).__name__}")
    for index, record in enumerate(records if document.has_undecodable else ()):
        field = undecodable_field(record)
        if field is not None:
            raise HybridFormatError(f"{path}: record {index}: field {field!r} is not UTF-8 text")
    return records


__all__ = [
    "HybridFormatError",
    "SELECTION_STAGE",
    "answer_question",
    "format_counts",
    "hybrid_mix",
    "llava_record",
    "read_llava_json",
    "record_problem",
    "record_sources",
    "records_from_frame",
    "select_samples",
    "to_parquet_frame",
    "validate_records",
    "write_llava_json",
]

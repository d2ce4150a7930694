"""GWYS's two inputs: cold-start SFT records and the RL pool, read through the shared line reader.

Both files are a JSON array or JSON Lines (`groundflow.io.lines.read_json_records`). Every entry is
kept or rejected with a reason naming its line (a JSON array's 1-based position), and the counts
add up (in = out + rejected, `groundflow.io.stage.check_accounting`). An entry is accounted under
its own id, or `line:N` when it has none; a repeated id is rejected as `line:N`, naming the line
that holds it first.

Cold-start SFT (`load_sft_records`, spec §2.1): either
- a LLaVA-CoT record `{id, image, conversations: [{from: human, value}, {from: gpt, value}]}` whose
  gpt turn is `<SUMMARY>…</SUMMARY> <CAPTION>…</CAPTION> <REASONING>…</REASONING> <CONCLUSION>…</CONCLUSION>`
  (mapped stage by stage to `<prethink>`, `<caption>`, `<think>`, `<answer>`; the original's
  conversion is not in its repo, spec §10.1), or
- the released converted form `{problem, data_type, path, process_and_answer}`, whose
  `process_and_answer` is already in the four-tag form (checked).
Each becomes a LLaVA-format record `{id, image, conversations}` whose human turn is `<image>` and the
four-tag question prompt around the question (no per-type instruction, as the original's SFT) and
whose gpt turn is `<prethink>…</prethink>\\n<caption>…</caption>\\n<think>…</think>\\n<answer>…</answer>`.
LLaVA-CoT is image-only: a record without an image file is rejected.

RL pool (`load_pool`, spec §2.2): Video-R1-style rows (`problem`, `problem_type`, `options`,
`solution` = "<answer>X</answer>", `data_type`, `path` or `image`, optional `problem_id` and
`data_source`) into the table `schemas/gwys_pool.schema.yaml`. Problem types outside
`problem_types` (default multiple choice and numerical, the released file's) are rejected, naming
whether the type is unknown or only not configured; video rows are rejected unless `video` is on
(then kept with `max_frames`, the frame cap; nothing is decoded here). A multiple-choice row's options
must be lettered A, B, C… in order and its answer one of their letters; a numerical or regression
answer must be a number. `media` paths are relative to the media folder (a leading "./" dropped, the
original's placeholder prefix, spec §10.4) and must name a file there.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Iterator, Sequence

import pandas as pd

from groundflow.io.artifacts import atomic_write_json, write_table
from groundflow.io.fields import field_problem
from groundflow.io.lines import JsonLine, read_json_records
from groundflow.io.schemas import table_schema
from groundflow.io.stage import StageResult, check_accounting, rejects_frame
from groundflow.gwys.prompts import PROBLEM_TYPES, QuestionPrompts, format_question, load_question_prompts, split_option
from groundflow.gwys.rewards import FORMAT_PATTERNS, extract_answer, original_number, parse_number

SFT_STAGE = "gwys_sft_data"
POOL_STAGE = "gwys_pool"
DATA_TYPES = ("image", "video")
DEFAULT_PROBLEM_TYPES = ("multiple choice", "numerical")
IMAGE_TOKEN = "<image>"
LLAVA_COT_STAGES = (("SUMMARY", "prethink"), ("CAPTION", "caption"), ("REASONING", "think"), ("CONCLUSION", "answer"))
POOL_COLUMNS = ["id", "line", "problem", "problem_type", "options", "solution", "answer", "data_type", "media",
                "format_question", "max_frames", "source"]
_LLAVA_COT = re.compile(r"\s*" + r"\s*".join(fr"<{tag}>(.*?)</{tag}>" for tag, _ in LLAVA_COT_STAGES) + r"\s*",
                        re.DOTALL)


class DataFileError(ValueError):
    """A problem of the whole file, not of one record."""


class RecordError(ValueError):
    """Why one record is rejected."""


@dataclass
class LoadedRecords:
    """Kept rows (a table, or LLaVA records), rejects and counts (in = out + rejected)."""

    kept: pd.DataFrame
    rejects: pd.DataFrame
    counts: dict = field(default_factory=dict)
    records: list[dict] = field(default_factory=list)  # SFT: the LLaVA-format records, in file order


def read_entries(path: str | Path, what: str) -> list[JsonLine]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return list(read_json_records(path))
    except json.JSONDecodeError as error:
        raise DataFileError(f"{what} {path} starts with '[' but is not a JSON array ({error.msg}, "
                            f"line {error.lineno})") from None


def own_id(value: Any, key: str | None) -> str | None:
    if key is None or not isinstance(value, dict):
        return None
    raw = value.get(key)
    if isinstance(raw, bool) or not isinstance(raw, (str, int)) or not str(raw).strip():
        return None
    return str(raw).strip()


def accounted_entries(entries: Iterable[JsonLine], id_key: str | None, names: list[str],
                      rejected: list[tuple[str, str]]) -> Iterator[tuple[JsonLine, str]]:
    """Each readable entry with the name it is accounted under; every entry's name goes into `names`,
    unreadable entries and repeated ids into `rejected`."""
    first_seen: dict[str, int] = {}
    for entry in entries:
        record_id = own_id(entry.value, id_key) if entry.error is None else None
        name = f"line:{entry.line}" if record_id is None or record_id in first_seen else record_id
        names.append(name)
        if entry.error is not None:
            rejected.append((name, entry.error))
        elif record_id is not None and record_id in first_seen:
            rejected.append((name, f"line {entry.line}: duplicate id {record_id!r} (first at line {first_seen[record_id]})"))
        else:
            if record_id is not None:
                first_seen[record_id] = entry.line
            yield entry, name


def text(record: dict, key: str) -> str:
    problem = field_problem(record, key)
    if problem is not None:
        raise RecordError(problem)
    return record[key].strip()


def media_file(relative: Any, root: str | Path, *, key: str, kind: str) -> str:
    """The path relative to `root` (a leading "./" dropped), checked to name a file there."""
    if not isinstance(relative, str) or not relative.strip():
        raise RecordError(f"missing field {key!r}" if relative is None else f"field {key!r} is not a path")
    posix = PurePosixPath(relative.strip().replace("\\", "/"))
    if posix.is_absolute() or ".." in posix.parts:
        raise RecordError(f"{kind} path {relative!r} must lie inside the {kind} folder (relative, no '..')")
    if not (Path(root) / posix).is_file():
        raise RecordError(f"missing {kind} file {posix} (in {root})")
    return str(posix)


def finish(stage: str, names: list[str], kept_rows: list[dict], rejected: list[tuple[str, str]],
           columns: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    if len(set(names)) != len(names):
        taken = sorted({n for n in names if names.count(n) > 1})
        raise DataFileError(f"ids {taken[:5]} are both a record's own id and another entry's line id")
    kept = pd.DataFrame(kept_rows, columns=list(columns))
    rejects = rejects_frame(stage, rejected)
    return kept, rejects, check_accounting(stage, names, StageResult(kept=kept, rejects=rejects))


# ---------------------------------------------------------------------------------------------
# cold-start SFT


def four_tag_answer(gpt: str) -> str:
    """A LLaVA-CoT gpt turn in the four-tag form, or RecordError naming what is wrong with it."""
    found = _LLAVA_COT.fullmatch(gpt)
    if found is None:
        for tag, _ in LLAVA_COT_STAGES:
            if f"<{tag}>" not in gpt or f"</{tag}>" not in gpt:
                raise RecordError(f"the gpt turn has no <{tag}>…</{tag}> stage")
        raise RecordError("the gpt turn is not the four LLaVA-CoT stages in order "
                          "(<SUMMARY>, <CAPTION>, <REASONING>, <CONCLUSION>) with nothing around them")
    parts = []
    for (tag, ours), content in zip(LLAVA_COT_STAGES, found.groups()):
        if not content.strip():
            raise RecordError(f"the <{tag}> stage is empty")
        parts.append(f"<{ours}>{content.strip()}</{ours}>")
    return "\n".join(parts)


def _llava_cot_turns(record: dict) -> tuple[str, str, str]:
    """(question, four-tag answer, image field) of a LLaVA-CoT record."""
    turns = record.get("conversations")
    if not isinstance(turns, list):
        raise RecordError(f"field 'conversations' is a {type(turns).__name__}, not a list")
    if len(turns) != 2 or not all(isinstance(t, dict) for t in turns) \
            or [t.get("from") for t in turns] != ["human", "gpt"]:
        raise RecordError(f"'conversations' is not one human turn then one gpt turn "
                          f"({[t.get('from') if isinstance(t, dict) else t for t in turns][:4]})")
    human, gpt = (text(turn, "value") for turn in turns)
    question = human.replace(IMAGE_TOKEN, "").strip()
    if not question:
        raise RecordError("the human turn holds no question besides the image")
    return question, four_tag_answer(gpt), "image"


def _converted_turns(record: dict) -> tuple[str, str, str]:
    """(question, four-tag answer, image field) of the released converted form."""
    data_type = text(record, "data_type")
    if data_type != "image":
        raise RecordError(f"data_type {data_type!r}: cold-start records are images")
    answer = text(record, "process_and_answer")
    if FORMAT_PATTERNS["four_tag"].fullmatch(answer) is None:
        raise RecordError("process_and_answer is not in the four-tag form "
                          "(<prethink>…</prethink> <caption>…</caption> <think>…</think> <answer>…</answer>)")
    return text(record, "problem"), answer, "path"


def sft_record(record: Any, name: str, image_root: str | Path, prompts: QuestionPrompts) -> dict:
    """One input record as a LLaVA-format SFT record, or RecordError."""
    if not isinstance(record, dict):
        raise RecordError(f"a {type(record).__name__}, not an object")
    if "conversations" in record:
        question, answer, image_key = _llava_cot_turns(record)
    elif "process_and_answer" in record:
        question, answer, image_key = _converted_turns(record)
    else:
        raise RecordError("neither 'conversations' (LLaVA-CoT) nor 'process_and_answer' (converted form)")
    image = media_file(record.get(image_key), image_root, key=image_key, kind="image")
    return {"id": name, "image": image, "conversations": [
        {"from": "human", "value": f"{IMAGE_TOKEN}\n{prompts.user_text(question)}"},
        {"from": "gpt", "value": answer}]}


def load_sft_records(path: str | Path, *, image_root: str | Path, prompts: QuestionPrompts | None = None) -> LoadedRecords:
    """The cold-start SFT records of a file (see the module docstring)."""
    prompts = prompts or load_question_prompts("four_tag")
    if prompts.form != "four_tag":
        raise ValueError(f"cold-start SFT teaches the four-tag form, not {prompts.form!r}")
    names: list[str] = []
    rejected: list[tuple[str, str]] = []
    records = []
    for entry, name in accounted_entries(read_entries(path, "cold-start SFT file"), "id", names, rejected):
        try:
            records.append(sft_record(entry.value, name, image_root, prompts))
        except RecordError as error:
            rejected.append((name, f"line {entry.line}: {error}"))
    kept, rejects, counts = finish(SFT_STAGE, names, [{"id": r["id"], "image": r["image"]} for r in records],
                                   rejected, ["id", "image"])
    counts.update({"path": str(path), "prompt": prompts.question.version})  # SFT adds no type instruction
    return LoadedRecords(kept=kept, rejects=rejects, counts=counts, records=records)


def write_sft_records(records: Sequence[dict], path: str | Path) -> None:
    """The LLaVA-format JSON list the shared SFT trainer reads."""
    atomic_write_json(path, list(records))


# ---------------------------------------------------------------------------------------------
# RL pool


@dataclass(frozen=True)
class PoolSettings:
    problem_types: tuple[str, ...] = DEFAULT_PROBLEM_TYPES
    video: bool = False
    max_frames: int = 16  # Video-R1's patched qwen_vl_utils (spec §9)
    id_field: str | None = "problem_id"  # None: entries are named by line

    def __post_init__(self) -> None:
        unknown = set(self.problem_types) - set(PROBLEM_TYPES)
        if unknown or not self.problem_types:
            raise ValueError(f"problem_types are some of {list(PROBLEM_TYPES)}, not {list(self.problem_types)}")
        if self.max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, not {self.max_frames}")


def _options(record: dict, problem_type: str) -> list[str]:
    options = record.get("options")
    if problem_type != "multiple choice":
        if options is None:
            return []
        if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
            raise RecordError("field 'options' is not a list of strings")
        return [o.strip() for o in options]
    problem = field_problem(record, "options", list)
    if problem is not None:
        raise RecordError(problem)
    for position, option in enumerate(options):
        letter = chr(ord("A") + position)
        lettered = split_option(option) if isinstance(option, str) else None
        if lettered is None or lettered[0] != letter or not lettered[1]:
            raise RecordError(f"option {position + 1} ({option!r:.40}) is not lettered '{letter}. …'")
    return [o.strip() for o in options]


def _answer(solution: str, problem_type: str, options: Sequence[str]) -> str:
    if "<answer>" not in solution or "</answer>" not in solution:
        raise RecordError("solution without an answer tag (<answer>…</answer>)")
    answer = extract_answer(solution)
    if not answer:
        raise RecordError("the solution's answer tag is empty")
    if problem_type == "multiple choice":
        letters = [chr(ord("A") + k) for k in range(len(options))]
        if answer not in letters:
            raise RecordError(f"answer {answer!r} is not one of the options' letters {letters[0]}-{letters[-1]}")
    elif problem_type in ("numerical", "regression") and parse_number(answer) is None and original_number(answer) is None:
        raise RecordError(f"{problem_type} answer {answer!r} is not a number")
    return answer


def pool_row(record: Any, name: str, line: int, media_root: str | Path, settings: PoolSettings) -> dict:
    """One Video-R1-style record as a pool row, or RecordError."""
    if not isinstance(record, dict):
        raise RecordError(f"a {type(record).__name__}, not an object")
    problem = text(record, "problem")
    problem_type = text(record, "problem_type")
    if problem_type not in PROBLEM_TYPES:
        raise RecordError(f"unknown problem_type {problem_type!r} (known: {', '.join(PROBLEM_TYPES)})")
    if problem_type not in settings.problem_types:
        raise RecordError(f"problem_type {problem_type!r} is not among the configured problem_types "
                          f"({', '.join(settings.problem_types)})")
    data_type = text(record, "data_type")
    if data_type not in DATA_TYPES:
        raise RecordError(f"unknown data_type {data_type!r} (known: {', '.join(DATA_TYPES)})")
    if data_type == "video" and not settings.video:
        raise RecordError("a video row, and video is not enabled")
    options = _options(record, problem_type)
    solution = text(record, "solution")
    answer = _answer(solution, problem_type, options)
    media_key = "image" if data_type == "image" and record.get("image") is not None else "path"
    media = media_file(record.get(media_key), media_root, key=media_key, kind=data_type)
    source = record.get("data_source")
    return {"id": name, "line": line, "problem": problem, "problem_type": problem_type, "options": options,
            "solution": solution, "answer": answer, "data_type": data_type, "media": media,
            "format_question": format_question(problem, options if problem_type == "multiple choice" else ()),
            "max_frames": settings.max_frames if data_type == "video" else None,
            "source": source if isinstance(source, str) else None}


def load_pool(path: str | Path, *, media_root: str | Path, settings: PoolSettings = PoolSettings()) -> LoadedRecords:
    """The RL pool of a Video-R1-style file (see the module docstring)."""
    names: list[str] = []
    rejected: list[tuple[str, str]] = []
    rows = []
    for entry, name in accounted_entries(read_entries(path, "RL pool file"), settings.id_field, names, rejected):
        try:
            rows.append(pool_row(entry.value, name, entry.line, media_root, settings))
        except RecordError as error:
            rejected.append((name, f"line {entry.line}: {error}"))
    kept, rejects, counts = finish(POOL_STAGE, names, rows, rejected, POOL_COLUMNS)
    kept = kept.astype({"line": "int64", "max_frames": "Int64"})
    counts.update({"path": str(path), "problem_types": list(settings.problem_types), "video": settings.video,
                   "by_type": {t: int(n) for t, n in kept["problem_type"].value_counts().items()}})
    return LoadedRecords(kept=kept, rejects=rejects, counts=counts)


def write_pool(table: pd.DataFrame, path: str | Path) -> None:
    write_table(table, path, schema=table_schema("gwys_pool"))

"""TSST's multiple-choice questions: ScienceQA-style and VCR-style files into one question table.

Both kinds end as rows of `schemas/tsst_questions.schema.yaml` (`id`, `source`, `question`,
`choices`, 1-based `answer_label`, `answer`, `image` relative to the set's image folder or None).
Every line of the part of the file a job reads is kept or rejected with a reason naming the line
or the record (bad JSON, bytes that are not UTF-8, a missing or mistyped field, empty choices, a
label out of range, a missing image or metadata file, a duplicate id): in = out + rejected.

ScienceQA (spec §3.1): a non-blank `hint` is put before the question (`hint + " " + question`);
`answer_label` is 1-based; `img_path` is relative to the image folder, empty or null for a
text-only question. VCR (the official `{train,val}.jsonl`): Q->A only; object tags (lists of
object indices) become words, people named by where they stand (`person_names`); `answer_label` is
0-based in the file and stored +1; image and metadata paths are relative to `vcr1images/`; the
metadata (boxes, width) is read when the record refers to a person, the only use of it.

Which part of a file is read (spec §3.1): an optional id list (`subset`, VCR's annot_id YAML), then
the partition "start_end", an inclusive slice over the file's non-blank lines in file order. The
slice counts lines before they are validated, so a bad line does not shift which questions a
partition holds. A partition must be a string: YAML reads an unquoted 440_499 as the integer 440499.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Mapping, Sequence

import pandas as pd
import yaml

from groundflow.io.fields import field_problem
from groundflow.io.lines import JsonLine, read_json_document, read_json_lines
from groundflow.io.stage import StageResult, check_accounting, rejects_frame
from groundflow.tsst.prompts import LETTERS

STAGE = "tsst_questions"
KINDS = ("scienceqa", "vcr")
SOURCES = ("scienceqa", "vcr", "fixture")
QUESTION_COLUMNS = ["id", "source", "question", "choices", "answer_label", "answer", "image"]


class QuestionFileError(ValueError):
    """A problem of the whole file or of the job's settings, not of one record."""


class RecordError(ValueError):
    """Why one record is rejected."""


# ---------------------------------------------------------------------------------------------
# reading lines


# One non-blank line of a JSONL file: its 1-based number and the decoded value, or why it could not
# be decoded (the shared reader's entry, under the name TSST's readers have always used).
RawLine = JsonLine


def parse_jsonl_bytes(data: bytes) -> list[RawLine]:
    """Each non-blank line decoded on its own, so a line of bad bytes or bad JSON costs that line."""
    return list(read_json_lines(data))


def read_jsonl(path: str | Path, *, what: str = "question file") -> list[RawLine]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    return list(read_json_lines(path))


def line_id(line: int) -> str:
    """The id a line is accounted under when its own id is unusable or already taken."""
    return f"line:{line}"


# ---------------------------------------------------------------------------------------------
# partitions and subsets


_PARTITION = re.compile(r"(\d+)_(\d+)")


def parse_partition(partition: Any) -> tuple[int, int] | None:
    """"start_end" -> (start, end), both inclusive; None -> None (the whole file)."""
    if partition is None:
        return None
    if isinstance(partition, bool) or not isinstance(partition, str):
        hint = ""
        if isinstance(partition, int):
            hint = (f" YAML reads an unquoted 440_499 as the integer 440499 (underscores are digit"
                    f" separators), so {partition} may be such a partition:")
        raise QuestionFileError(
            f"a partition is a string \"start_end\", not the {type(partition).__name__} {partition!r};"
            f"{hint} quote it in the config, e.g. partition: \"440_499\"")
    match = _PARTITION.fullmatch(partition.strip())
    if not match:
        raise QuestionFileError(f"partition {partition!r} is not \"start_end\" (two non-negative integers, "
                                f"an inclusive range, e.g. \"0_999\")")
    start, end = int(match.group(1)), int(match.group(2))
    if end < start:
        raise QuestionFileError(f"partition {partition!r} ends before it starts")
    return start, end


def apply_partition(items: Sequence, partition: Any, *, what: str = "lines") -> list:
    """The inclusive slice `partition` of `items`; an end past the last item is refused, as the
    original's ScienceQA loader does, rather than silently giving fewer questions."""
    bounds = parse_partition(partition)
    if bounds is None:
        return list(items)
    start, end = bounds
    if end >= len(items):
        raise QuestionFileError(f"partition {partition!r} ends past the last of the {len(items)} {what} "
                                f"(available: 0_{len(items) - 1})" if items else
                                f"partition {partition!r}: there are no {what} to take it from")
    return list(items[start:end + 1])


def read_subset(path: str | Path) -> list[str]:
    """An id list: a YAML (or JSON) list, as the original's `vcr_val_random500_annoid.yaml`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"subset file not found: {path}")
    try:
        ids = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise QuestionFileError(f"subset file {path} is not a YAML list: {error}") from error
    if not isinstance(ids, list) or not ids:
        raise QuestionFileError(f"subset file {path} must hold a non-empty YAML list of ids")
    bad = [i for i in ids if isinstance(i, (bool, dict, list)) or i is None]
    if bad:
        raise QuestionFileError(f"subset file {path}: entries must be ids, not {bad[:3]}")
    return [str(i) for i in ids]


# ---------------------------------------------------------------------------------------------
# field checks shared by both kinds


def text_field(value: Mapping, key: str) -> str:
    problem = field_problem(value, key)
    if problem is not None:
        raise RecordError(problem)
    return value[key].strip()


def integer_field(value: Mapping, key: str) -> int:
    if key not in value or value[key] is None:
        raise RecordError(f"missing field {key!r}")
    number = value[key]
    if isinstance(number, bool) or not isinstance(number, int):
        raise RecordError(f"field {key!r} is {number!r}, not an integer")
    return number


def record_id(value: Any, key: str) -> str | None:
    """The record's own id, or None when it has no usable one."""
    if not isinstance(value, dict):
        return None
    raw = value.get(key)
    if isinstance(raw, bool) or not isinstance(raw, (str, int)) or not str(raw).strip():
        return None
    return str(raw).strip()


def check_choices(choices: Any, key: str = "answer_choices") -> list[str]:
    if choices is None:
        raise RecordError(f"missing field {key!r}")
    if not isinstance(choices, list):
        raise RecordError(f"field {key!r} is a {type(choices).__name__}, not a list")
    if not choices:
        raise RecordError("empty choices")
    if any(not isinstance(c, str) for c in choices):
        raise RecordError(f"field {key!r} holds a non-string choice")
    cleaned = [c.strip() for c in choices]
    if any(not c for c in cleaned):
        raise RecordError(f"choice {cleaned.index('') + 1} is empty")
    if len(cleaned) > len(LETTERS):
        raise RecordError(f"{len(cleaned)} choices; at most {len(LETTERS)} have option letters")
    return cleaned


def check_label(label: int, n_choices: int, *, base: int = 1) -> int:
    """The 1-based label of a `base`-based one, or why it is out of range."""
    if not base <= label < n_choices + base:
        raise RecordError(f"answer_label {label} out of range {base}..{n_choices - 1 + base} "
                          f"({n_choices} choices, {'1' if base == 1 else '0'}-based)")
    return label - base + 1


def image_path(relative: Any, image_root: str | Path | None, *, key: str) -> str | None:
    """The image's path relative to the image folder, checked to be a file; None for no image."""
    if relative is None or (isinstance(relative, str) and not relative.strip()):
        return None
    if not isinstance(relative, str):
        raise RecordError(f"field {key!r} is a {type(relative).__name__}, not a path")
    relative = relative.strip()
    posix = PurePosixPath(relative.replace("\\", "/"))
    if posix.is_absolute() or ".." in posix.parts:
        raise RecordError(f"image path {relative!r} must lie inside the image folder (relative, no '..')")
    if image_root is None:
        raise QuestionFileError("questions with images need the set's image folder")
    if not (Path(image_root) / posix).is_file():
        raise RecordError(f"missing image file {posix} (in {image_root})")
    return str(posix)


# ---------------------------------------------------------------------------------------------
# ScienceQA


def scienceqa_question(value: Any, image_root: str | Path | None) -> dict:
    """One ScienceQA-style record as a question row (without `source`), or RecordError."""
    if not isinstance(value, dict):
        raise RecordError(f"a {type(value).__name__}, not an object")
    question = text_field(value, "question")
    hint = value.get("hint")
    if hint is not None and not isinstance(hint, str):
        raise RecordError(f"field 'hint' is a {type(hint).__name__}, not a string")
    if hint and hint.strip():  # the original also prefixed an empty hint, giving " question"
        question = f"{hint.strip()} {question}"
    choices = check_choices(value.get("answer_choices"))
    label = check_label(integer_field(value, "answer_label"), len(choices))
    answer = choices[label - 1]
    stated = value.get("answer_str")
    if stated is not None:
        if not isinstance(stated, str):
            raise RecordError(f"field 'answer_str' is a {type(stated).__name__}, not a string")
        if stated.strip() != answer:
            raise RecordError(f"answer_str {stated.strip()!r} is not choice {label} {answer!r}")
    return {"question": question, "choices": choices, "answer_label": label, "answer": answer,
            "image": image_path(value.get("img_path"), image_root, key="img_path")}


# ---------------------------------------------------------------------------------------------
# VCR


def tag_indices(token: Any) -> list[int] | None:
    """The object indices of a VCR tag (`[0]`, `[1, 2]`), or None for a word token."""
    if isinstance(token, str):
        return None
    if not isinstance(token, list) or not token:
        raise RecordError(f"token {token!r} is neither a word nor a list of object indices")
    if any(isinstance(i, bool) or not isinstance(i, int) for i in token):
        raise RecordError(f"tag {token!r} holds a non-integer object index")
    return list(token)


def referred_people(token_lists: Iterable[Sequence], objects: Sequence[str]) -> list[int]:
    """Indices of the people the question and its answers refer to, in order of first mention.

    Every index of a multi-index tag counts; the original looked at the first only (spec §11.9),
    so the others stayed "person" and could not be told apart.
    """
    people: list[int] = []
    for tokens in token_lists:
        for token in tokens:
            for index in tag_indices(token) or ():
                if objects[index] == "person" and index not in people:
                    people.append(index)
    return people


def _third(x: float, width: float) -> str:
    # the original's thirds: [0, w/3] left, (w/3, 2w/3] middle, (2w/3, w] right; positions outside
    # the image (boxes can overhang) go to the nearer side instead of staying unnamed
    if x <= width / 3:
        return "left"
    if x <= width * 2 / 3:
        return "middle"
    return "right"


def _place(where: str) -> str:
    return "in the middle" if where == "middle" else f"on the {where}"


def person_names(people: Sequence[int], boxes: Sequence[Sequence[float]], width: float) -> dict[int, str]:
    """Names by position for the referred people (spec §3.1).

    One person: the third of the image its box's left edge lies in. Two or three: ordered by box
    centre, left / (middle) / right. More: each binned by its box centre's third, in order of
    mention; the second and later in a third become "another person ..." (the original wrote a
    double space into "person  on the right" there; not kept).
    """
    if not people:
        return {}
    centres = [(boxes[i][0] + boxes[i][2]) / 2 for i in people]
    if len(people) == 1:
        return {people[0]: f"person {_place(_third(boxes[people[0]][0], width))}"}
    if len(people) <= 3:
        places = ["left", "right"] if len(people) == 2 else ["left", "middle", "right"]
        # sorted() is stable: people at the same centre keep their order of mention
        order = sorted(range(len(people)), key=lambda k: centres[k])
        return {people[k]: f"person {_place(places[rank])}" for rank, k in enumerate(order)}
    names, taken = {}, set()
    for person, centre in zip(people, centres):
        where = _third(centre, width)
        names[person] = f"{'another person' if where in taken else 'person'} {_place(where)}"
        taken.add(where)
    return names


def _join_names(names: Sequence[str]) -> str:
    if len(names) == 1:
        return names[0]
    return f"{', '.join(names[:-1])} and {names[-1]}"


_SPACE_BEFORE_PUNCT = re.compile(r" ([,.?!;:])")


def tokens_to_text(tokens: Sequence, names: Sequence[str]) -> str:
    """VCR tokens as a sentence: a tag becomes the names of ALL its objects ("person on the left and
    person on the right"; the original kept only the first index's name), words joined by spaces,
    no space before punctuation."""
    words = []
    for token in tokens:
        indices = tag_indices(token)
        words.append(token if indices is None else _join_names([names[i] for i in indices]))
    return _SPACE_BEFORE_PUNCT.sub(r"\1", " ".join(words)).strip()


def _vcr_metadata(value: Mapping, image_root: str | Path | None, need: int) -> tuple[list, float]:
    relative = text_field(value, "metadata_fn")
    posix = PurePosixPath(relative.replace("\\", "/"))
    if posix.is_absolute() or ".." in posix.parts:
        raise RecordError(f"metadata path {relative!r} must lie inside the image folder")
    path = Path(image_root) / posix if image_root is not None else None
    if path is None or not path.is_file():
        raise RecordError(f"missing metadata file {posix} (in {image_root})")
    try:
        # only boxes and width are read, so bytes that are not UTF-8 in a name cost nothing
        metadata = read_json_document(path).value
    except json.JSONDecodeError as error:
        raise RecordError(f"metadata file {posix} is not JSON ({error})") from None
    if not isinstance(metadata, dict):
        raise RecordError(f"metadata file {posix} is not a JSON object")
    boxes, width = metadata.get("boxes"), metadata.get("width")
    if not isinstance(boxes, list) or len(boxes) < need:
        raise RecordError(f"metadata file {posix} has no box for object {need - 1}")
    for index in range(need):
        box = boxes[index]
        if (not isinstance(box, list) or len(box) < 4
                or any(isinstance(c, bool) or not isinstance(c, (int, float)) for c in box[:4])):
            raise RecordError(f"metadata file {posix}: box {index} is not [x1, y1, x2, y2, ...]")
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not width > 0 or not math.isfinite(width):
        raise RecordError(f"metadata file {posix} has no positive width")
    return boxes, float(width)


def vcr_question(value: Any, image_root: str | Path | None) -> dict:
    """One VCR record (Q->A) as a question row (without `source`), or RecordError."""
    if not isinstance(value, dict):
        raise RecordError(f"a {type(value).__name__}, not an object")
    objects = value.get("objects")
    if objects is None:
        raise RecordError("missing field 'objects'")
    if not isinstance(objects, list) or any(not isinstance(o, str) for o in objects):
        raise RecordError("field 'objects' is not a list of class names")
    question_tokens = value.get("question")
    if question_tokens is None:
        raise RecordError("missing field 'question'")
    if not isinstance(question_tokens, list) or not question_tokens:
        raise RecordError("field 'question' is not a non-empty token list")
    answer_tokens = value.get("answer_choices")
    if answer_tokens is None:
        raise RecordError("missing field 'answer_choices'")
    if not isinstance(answer_tokens, list):
        raise RecordError(f"field 'answer_choices' is a {type(answer_tokens).__name__}, not a list")
    if not answer_tokens:
        raise RecordError("empty choices")
    if any(not isinstance(a, list) or not a for a in answer_tokens):
        raise RecordError("field 'answer_choices' holds a choice that is not a non-empty token list")
    if len(answer_tokens) > len(LETTERS):
        raise RecordError(f"{len(answer_tokens)} choices; at most {len(LETTERS)} have option letters")
    label = check_label(integer_field(value, "answer_label"), len(answer_tokens), base=0)
    token_lists = [question_tokens, *answer_tokens]
    for tokens in token_lists:
        for token in tokens:
            for index in tag_indices(token) or ():
                if not 0 <= index < len(objects):
                    raise RecordError(f"tag {token!r} names object {index}, but there are {len(objects)} objects")
    image = image_path(text_field(value, "img_fn"), image_root, key="img_fn")
    people = referred_people(token_lists, objects)
    names = list(objects)
    if people:
        boxes, width = _vcr_metadata(value, image_root, need=max(people) + 1)
        for index, name in person_names(people, boxes, width).items():
            names[index] = name
    choices = [tokens_to_text(tokens, names) for tokens in answer_tokens]
    if any(not c for c in choices):
        raise RecordError("a choice is empty once its tokens are joined")
    return {"question": tokens_to_text(question_tokens, names), "choices": choices, "answer_label": label,
            "answer": choices[label - 1], "image": image}


# ---------------------------------------------------------------------------------------------
# one file into the table


KIND_READERS: dict[str, tuple[str, Callable[[Any, str | Path | None], dict]]] = {
    "scienceqa": ("id", scienceqa_question),
    "vcr": ("annot_id", vcr_question),
}


@dataclass
class QuestionSet:
    """Kept question rows, rejects and the counts (in = out + rejected over the lines read)."""

    kept: pd.DataFrame
    rejects: pd.DataFrame
    counts: dict = field(default_factory=dict)


def named_entries(entries, id_key: str, accounted: list, rejected: list):
    """Each decoded entry of a file with the name it is accounted under (its id, else `line:N`)
    and its own id (None when it has no usable one). Every entry's name goes into `accounted`; a
    repeated id (named by its line) and an undecodable line go into `rejected` with the reason
    and are not yielded."""
    first_line: dict[str, int] = {}
    for entry in entries:
        own_id = record_id(entry.value, id_key) if entry.error is None else None
        if own_id is not None and own_id in first_line:
            accounted.append(line_id(entry.line))
            rejected.append((line_id(entry.line), f"line {entry.line}: duplicate id {own_id!r} "
                                                  f"(first at line {first_line[own_id]})"))
            continue
        name = own_id if own_id is not None else line_id(entry.line)
        if own_id is not None:
            first_line[own_id] = entry.line
        accounted.append(name)
        if entry.error is not None:
            rejected.append((name, entry.error))
            continue
        yield entry, name, own_id


def questions_from_lines(entries: Sequence[RawLine], *, kind: str, image_root: str | Path | None,
                         source: str | None = None) -> QuestionSet:
    """Validate lines into question rows; the first line with an id owns it, a later line with the
    same id is rejected as `line:N` (under its own id it would be both kept and rejected)."""
    if kind not in KIND_READERS:
        raise QuestionFileError(f"question kind must be one of {list(KIND_READERS)}, not {kind!r}")
    source = source or kind
    if source not in SOURCES:
        raise QuestionFileError(f"question source must be one of {list(SOURCES)}, not {source!r}")
    id_key, reader = KIND_READERS[kind]
    kept, rejected, accounted = [], [], []
    for entry, name, own_id in named_entries(entries, id_key, accounted, rejected):
        if own_id is None:
            what = (f"is a {type(entry.value).__name__}, not an object" if not isinstance(entry.value, dict)
                    else f"has no usable {id_key!r}")
            rejected.append((name, f"line {entry.line} {what}"))
            continue
        try:
            row = reader(entry.value, image_root)
        except RecordError as error:
            rejected.append((name, f"line {entry.line} ({id_key} {own_id!r}): {error}"))
            continue
        kept.append({"id": own_id, "source": source, **row})
    if len(set(accounted)) != len(accounted):
        taken = sorted({i for i in accounted if accounted.count(i) > 1})
        raise QuestionFileError(f"ids {taken[:5]} are both a record's own id and the line id of another line")
    frame = pd.DataFrame(kept, columns=QUESTION_COLUMNS).astype({"answer_label": "int64"})
    # pandas' string dtype would turn a text-only question's None into NaN
    frame["image"] = pd.Series([row["image"] for row in kept], index=frame.index, dtype=object)
    rejects = rejects_frame(STAGE, rejected)
    counts = check_accounting(STAGE, accounted, StageResult(kept=frame, rejects=rejects))
    return QuestionSet(kept=frame, rejects=rejects, counts=counts)


def load_questions(path: str | Path, *, kind: str, image_root: str | Path | None,
                   partition: str | None = None, subset: Sequence[str] | None = None,
                   source: str | None = None) -> QuestionSet:
    """One set's questions: the lines of `path` whose id is in `subset` (when given; a line whose id
    cannot be read stays, to be rejected), then the inclusive `partition` of those, validated.

    `counts` adds the file's non-blank lines, the lines selected, and the subset ids the file lacks.
    """
    if kind not in KIND_READERS:
        raise QuestionFileError(f"question kind must be one of {list(KIND_READERS)}, not {kind!r}")
    parse_partition(partition)  # a bad partition fails before the file is read
    entries = read_jsonl(path, what=f"{kind} question file")
    id_key = KIND_READERS[kind][0]
    candidates = entries
    missing: list[str] = []
    if subset is not None:
        wanted = set(subset)
        candidates = [e for e in entries if e.error is not None or record_id(e.value, id_key) is None
                      or record_id(e.value, id_key) in wanted]
        present = {record_id(e.value, id_key) for e in entries if e.error is None}
        missing = [i for i in subset if i not in present]
    selected = apply_partition(candidates, partition, what="selected lines" if subset is not None else "lines")
    result = questions_from_lines(selected, kind=kind, image_root=image_root, source=source)
    result.counts.update({"kind": kind, "source": source or kind, "path": str(path), "lines": len(entries),
                          "selected": len(selected), "partition": partition,
                          "subset_ids": None if subset is None else len(subset), "subset_missing": missing})
    return result

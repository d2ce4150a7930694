"""CINGS data: Self-RAG training records -> the marker form -> the assistant text of each mode.

Three steps, all pure (no model, no disk):

1. `parse_selfrag_output` reads a Self-RAG `output`: text interleaved with reflection tokens and
   retrieved passages, `[Retrieval]<paragraph>PASSAGE</paragraph>[Relevant]ANSWER[Fully supported]
   ...[Utility:5]`. It yields the text before the first passage and one (passage, answer) segment
   per passage. The paper's filter ("a filtered version of Self-RAG") is applied here: a passage
   judged `[Irrelevant]` or one with no relevance judgement rejects the record, and so does a record
   without any passage unless no-retrieval records are asked for.
2. `to_marker_output` writes the filtered files' marker form (specs/cings.md §2.2):
   `{prefix} [Ex] {passage} [Cs] {answer} [Ce] ...`. Records may also arrive in that form.
3. `convert_markers` is the original's `do_convert`: `## Context {passage} ## Answer {answer}` for
   CINGS and the no-mask baseline, `{prefix} {answer ...}` with every passage removed for standard
   IT. Unlike the original it handles several passages in the no-context text and collapses runs
   of spaces to one space (the original raised on a second passage and glued words together).

Each bad record raises `RecordError`, whose message is the reason the record is rejected. The
records of a file are named first (`read_source_records`: the `id` field, else `line:N`), so the
convert stage's accounting is checked against ids that do not depend on the conversion. A reason
names the field that is wrong ("missing field 'instruction'", "field 'output' is empty").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from groundflow.io.fields import field_problem
from groundflow.io.lines import JsonLine, read_json_lines

CONTEXT_MARKER = "## Context"
ANSWER_MARKER = "## Answer"
PASSAGE_OPEN, ANSWER_OPEN, SEGMENT_CLOSE = "[Ex]", "[Cs]", "[Ce]"
MODES = ("no_context", "context", "no_mask")

RELEVANT, IRRELEVANT = "[Relevant]", "[Irrelevant]"
NO_RETRIEVAL = "[No Retrieval]"
# Every Self-RAG reflection token; all but the relevance ones carry nothing CINGS keeps.
REFLECTION_TOKENS = (
    "[Retrieval]",
    NO_RETRIEVAL,
    RELEVANT,
    IRRELEVANT,
    "[Fully supported]",
    "[Partially supported]",
    "[No support / Contradictory]",
    "[Continue to Use Evidence]",
    *(f"[Utility:{score}]" for score in range(1, 6)),
)
_SELFRAG_PIECES = re.compile(
    "(<paragraph>|</paragraph>|" + "|".join(re.escape(token) for token in REFLECTION_TOKENS) + ")"
)
_MARKER_PIECES = re.compile("(" + "|".join(re.escape(m) for m in (PASSAGE_OPEN, ANSWER_OPEN, SEGMENT_CLOSE)) + ")")
_SPACES = re.compile(" {2,}")
# The original finds each block as `## Context(.*?)## Answer` (DOTALL); labels do the same.
CONTEXT_BLOCK = re.compile(re.escape(CONTEXT_MARKER) + "(.*?)" + re.escape(ANSWER_MARKER), re.DOTALL)


class RecordError(ValueError):
    """A record that cannot become a training example; str(error) is the reason."""


@dataclass(frozen=True)
class Segment:
    passage: str
    answer: str


@dataclass(frozen=True)
class ParsedResponse:
    prefix: str
    segments: tuple[Segment, ...]

    @property
    def n_passages(self) -> int:
        return len(self.segments)


def collapse_spaces(text: str) -> str:
    """Runs of spaces become one space (newlines are kept), ends stripped."""
    return _SPACES.sub(" ", text).strip()


def _check_no_markers(text: str, what: str) -> None:
    """The assistant text is cut at the markers, so they must not occur inside a passage or answer."""
    for marker in (CONTEXT_MARKER, ANSWER_MARKER, PASSAGE_OPEN, ANSWER_OPEN, SEGMENT_CLOSE):
        if marker in text:
            raise RecordError(f"{what} contains the marker {marker!r}")


def parse_selfrag_output(output: str, *, keep_no_retrieval: bool = False) -> ParsedResponse:
    """The prefix and the (passage, answer) segments of a Self-RAG `output`, or RecordError."""
    if not isinstance(output, str) or not output.strip():
        raise RecordError("empty output")
    pieces = [p for p in _SELFRAG_PIECES.split(output) if p]
    prefix_parts: list[str] = []
    segments: list[tuple[str, list[str]]] = []
    index = 0
    while index < len(pieces):
        piece = pieces[index]
        if piece == "<paragraph>":
            try:
                close = pieces.index("</paragraph>", index + 1)
            except ValueError:
                raise RecordError(f"passage {len(segments) + 1} has an unclosed <paragraph>") from None
            inner = pieces[index + 1 : close]
            if any(p in ("<paragraph>",) or p in REFLECTION_TOKENS for p in inner):
                raise RecordError(f"passage {len(segments) + 1} holds a tag or reflection token")
            passage = collapse_spaces("".join(inner))
            number = len(segments) + 1
            if not passage:
                raise RecordError(f"passage {number} is empty")
            judgement = pieces[close + 1] if close + 1 < len(pieces) else None
            if judgement == IRRELEVANT:
                raise RecordError(f"passage {number} is judged {IRRELEVANT}")
            if judgement != RELEVANT:
                raise RecordError(f"passage {number} has no relevance judgement")
            _check_no_markers(passage, f"passage {number}")
            segments.append((passage, []))
            index = close + 2
            continue
        if piece == "</paragraph>":
            raise RecordError("</paragraph> without <paragraph>")
        if piece in (RELEVANT, IRRELEVANT):
            raise RecordError(f"{piece} outside a passage judgement")
        if piece not in REFLECTION_TOKENS:  # text; other reflection tokens are dropped
            (segments[-1][1] if segments else prefix_parts).append(piece)
        index += 1

    prefix = collapse_spaces(" ".join(prefix_parts))
    _check_no_markers(prefix, "the text before the first passage")
    parsed_segments = []
    for number, (passage, parts) in enumerate(segments, start=1):
        answer = collapse_spaces(" ".join(parts))
        if not answer:
            raise RecordError(f"passage {number} is followed by no answer text")
        _check_no_markers(answer, f"answer segment {number}")
        parsed_segments.append(Segment(passage, answer))
    if not parsed_segments:
        if not keep_no_retrieval:
            reason = "no retrieved passage" + (f" ({NO_RETRIEVAL})" if NO_RETRIEVAL in pieces else "")
            raise RecordError(reason)
        if not prefix:
            raise RecordError("no answer text")
    return ParsedResponse(prefix, tuple(parsed_segments))


def to_marker_output(parsed: ParsedResponse) -> str:
    """The filtered files' form: `{prefix} [Ex] {passage} [Cs] {answer} [Ce] ...`."""
    parts = [parsed.prefix] if parsed.prefix else []
    for segment in parsed.segments:
        parts.append(f"{PASSAGE_OPEN} {segment.passage} {ANSWER_OPEN} {segment.answer} {SEGMENT_CLOSE}")
    return " ".join(parts)


def parse_marker_output(output: str, *, keep_no_retrieval: bool = False) -> ParsedResponse:
    """Read the marker form back (records that arrive already filtered), checking its structure."""
    if not isinstance(output, str) or not output.strip():
        raise RecordError("empty output")
    pieces = [p for p in _MARKER_PIECES.split(output)]
    prefix = collapse_spaces(pieces[0])
    segments = []
    index = 1
    while index < len(pieces):
        number = len(segments) + 1
        if pieces[index] != PASSAGE_OPEN or index + 2 >= len(pieces) or pieces[index + 2] != ANSWER_OPEN:
            raise RecordError(f"segment {number}: markers out of order (expected {PASSAGE_OPEN} passage {ANSWER_OPEN})")
        passage = collapse_spaces(pieces[index + 1])
        answer_parts = [pieces[index + 3]] if index + 3 < len(pieces) else []
        index += 4
        if index < len(pieces) and pieces[index] == SEGMENT_CLOSE:
            answer_parts.append(pieces[index + 1] if index + 1 < len(pieces) else "")
            index += 2
        answer = collapse_spaces(" ".join(answer_parts))
        if not passage:
            raise RecordError(f"passage {number} is empty")
        if not answer:
            raise RecordError(f"passage {number} is followed by no answer text")
        _check_no_markers(passage, f"passage {number}")
        _check_no_markers(answer, f"answer segment {number}")
        segments.append(Segment(passage, answer))
    _check_no_markers(prefix, "the text before the first passage")
    if not segments and not keep_no_retrieval:
        raise RecordError("no retrieved passage")
    if not segments and not prefix:
        raise RecordError("no answer text")
    return ParsedResponse(prefix, tuple(segments))


def convert_markers(output: str, *, remove_context: bool) -> str:
    """The assistant text from the marker form (the original's `do_convert` with `remove_sp`).

    remove_context=False: `[Ex]` -> `## Context`, `[Cs]` -> `## Answer`, `[Ce]` dropped.
    remove_context=True: every `[Ex] passage [Cs]` dropped, whatever the number of passages.
    Runs of spaces become one space either way.
    """
    if remove_context:
        text = re.sub(re.escape(PASSAGE_OPEN) + ".*?" + re.escape(ANSWER_OPEN), " ", output, flags=re.DOTALL)
        if PASSAGE_OPEN in text or ANSWER_OPEN in text:
            raise RecordError("unbalanced [Ex]/[Cs] markers")
        text = text.replace(SEGMENT_CLOSE, " ")
    else:
        text = (
            output.replace(PASSAGE_OPEN, f" {CONTEXT_MARKER} ")
            .replace(ANSWER_OPEN, f" {ANSWER_MARKER} ")
            .replace(SEGMENT_CLOSE, " ")
        )
    return collapse_spaces(text)


def assistant_text(marker_output: str, mode: str) -> str:
    """What the assistant turn holds in `mode` (specs/cings.md §4.2)."""
    if mode not in MODES:
        raise ValueError(f"unknown CINGS mode {mode!r}; one of {MODES}")
    return convert_markers(marker_output, remove_context=mode == "no_context")


def user_text(instruction: str, extra_input: str | None, separator: str = "\n\n") -> str:
    """The user turn: Self-RAG `instruction`, with a non-empty `input` appended."""
    instruction = (instruction or "").strip()
    extra = (extra_input or "").strip()
    return f"{instruction}{separator}{extra}" if extra else instruction


def training_conversation(record: dict, mode: str, system_prompt: str) -> list[dict]:
    """A converted record (`input`, marker-form `output`) as the conversation of `mode`."""
    conversation = [{"from": "human", "value": record["input"]}, {"from": "gpt", "value": assistant_text(record["output"], mode)}]
    if system_prompt:
        conversation.insert(0, {"from": "system", "value": system_prompt})
    return conversation


# ---------------------------------------------------------------- records


@dataclass(frozen=True)
class ConvertedRecord:
    id: str
    input: str
    output: str  # marker form
    n_passages: int
    dataset_name: str
    source_format: str  # "selfrag" or "markers"

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def convert_record(
    record: object,
    *,
    variant: str = "multi",
    keep_no_retrieval: bool = False,
    input_separator: str = "\n\n",
    record_id: str,
) -> ConvertedRecord:
    """One input record -> ConvertedRecord, or RecordError naming why not.

    A Self-RAG record has `instruction` (and optional `input`) and a Self-RAG `output`; a record
    already in the filtered form has `input` (the user turn) and a marker-form `output`.
    variant "single" keeps only records with exactly one passage.
    """
    if variant not in ("multi", "single"):
        raise ValueError(f"unknown variant {variant!r}; one of 'multi', 'single'")
    if not isinstance(record, dict):
        raise RecordError(f"not a JSON object but {type(record).__name__}")
    _require(record, "output")
    output = record["output"]
    if "instruction" in record or field_problem(record, "input") is not None:
        # a Self-RAG record: a filtered one has a non-empty `input` and no `instruction`, so a
        # record with neither is a Self-RAG record that lacks its instruction
        _require(record, "instruction")
        extra = record.get("input")
        if extra is not None and not isinstance(extra, str):
            raise RecordError(field_problem(record, "input", empty_ok=True))
        parsed = parse_selfrag_output(output, keep_no_retrieval=keep_no_retrieval)
        user = user_text(record["instruction"], extra, input_separator)
        source = "selfrag"
    else:
        user = record["input"].strip()
        parsed = parse_marker_output(output, keep_no_retrieval=keep_no_retrieval)
        source = "markers"
    if variant == "single" and parsed.n_passages != 1:
        raise RecordError(f"{parsed.n_passages} passages; the single variant keeps exactly one")
    return ConvertedRecord(
        id=record_id,
        input=user,
        output=to_marker_output(parsed),
        n_passages=parsed.n_passages,
        dataset_name=str(record.get("dataset_name") or ""),
        source_format=source,
    )


def _require(record: dict, key: str) -> None:
    problem = field_problem(record, key)
    if problem is not None:
        raise RecordError(problem)


@dataclass(frozen=True)
class SourceRecord:
    """One record of the input file, named before it is converted: its `id` field, else `line:N`
    (also for a line that is not JSON and for the second record of a repeated id, whose `error`
    then says why it is rejected without being converted)."""

    id: str
    line: int
    value: object = None
    error: str | None = None


def read_source_records(entries: Iterable[JsonLine]) -> list[SourceRecord]:
    """The records of a file's entries (`groundflow.io.lines.read_json_records`), each with the id
    the stage accounts for it under.

    The accounting of the convert stage is checked against these ids, which are fixed before any
    record is converted.
    """
    records: list[SourceRecord] = []
    seen: set[str] = set()
    for entry in entries:
        fallback = f"line:{entry.line}"
        if entry.error is not None:
            records.append(SourceRecord(fallback, entry.line, error=entry.error))
            continue
        value = entry.value
        raw_id = value.get("id") if isinstance(value, dict) else None
        record_id = str(raw_id) if raw_id not in (None, "") else fallback
        if record_id in seen:
            records.append(SourceRecord(fallback, entry.line, error=f"line {entry.line}: duplicate id {record_id!r}"))
            continue
        seen.add(record_id)
        records.append(SourceRecord(record_id, entry.line, value))
    return records


def convert_source_records(
    records: Iterable[SourceRecord], **options
) -> tuple[list[ConvertedRecord], list[tuple[str, str]]]:
    """(kept, rejects as (id, reason)): each source record converted (`convert_record`) or rejected."""
    kept: list[ConvertedRecord] = []
    rejects: list[tuple[str, str]] = []
    for source in records:
        if source.error is not None:
            rejects.append((source.id, source.error))
            continue
        try:
            kept.append(convert_record(source.value, record_id=source.id, **options))
        except RecordError as error:
            rejects.append((source.id, f"record {source.id}: {error}"))
    return kept, rejects


def convert_lines(
    lines: Iterable[str], **options
) -> tuple[list[ConvertedRecord], list[tuple[str, str]], int]:
    """(kept, rejects as (id, reason), number of records read) over the text lines of a JSONL file
    (`read_source_records`, then `convert_source_records`)."""
    sources = read_source_records(read_json_lines("\n".join(lines).encode("utf-8")))
    kept, rejects = convert_source_records(sources, **options)
    return kept, rejects, len(sources)


def context_blocks(text: str) -> list[tuple[int, int]]:
    """Character spans of each passage in an assistant text: strictly between the end of
    `## Context` and the start of ` ## Answer` (the group of the original's regex)."""
    return [match.span(1) for match in CONTEXT_BLOCK.finditer(text)]

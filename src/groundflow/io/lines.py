"""Users' text files, read as bytes and decoded line by line, so a bad line costs itself only.

Users' files come merged from several tools, some written on Windows: a byte-order mark at the
start, CRLF line endings, now and then a line holding bytes that are not UTF-8. Every reader of a
user file (CVC captions, CINGS records and evaluation files, TSST questions and CoT chains) goes
through here, so all of them accept and reject the same things:

- `read_lines`: every line with its 1-based number, the byte offset where its text starts, and the
  text without its line ending, or, for a line that is not UTF-8, why not (the bad byte's offset
  in the file); the lines after it are read as usual. A byte-order mark is dropped at the start
  of the file only: anywhere else it is a character of its line.
- `read_json_lines`: the non-blank lines of a JSON Lines file, each its JSON value or the reason it
  has none; streamed: a block of lines (256 KiB) in memory at a time, not the file.
- `read_json_document`: a whole file as one JSON value (a JSON list, a COCO captions file). Bytes
  that are not UTF-8 do not stop it: they are kept as lone surrogates (Python's "surrogateescape"),
  so the document still parses and `undecodable_field` names the field of the record holding them.
- `read_json_records`: a JSON array's elements when the file starts with "[", else its JSON lines.

A source is a path (str or PathLike) or the file's bytes. Reasons name the line and, for bytes that
are not UTF-8, the offending byte and its offset in the file: "line 3 is not UTF-8 text (byte 0xe9
at offset 57 of the file: invalid continuation byte)", "line 4 is not valid JSON (Expecting value)".
"""

from __future__ import annotations

import codecs
import io
import itertools
import json
import os
import re
from contextlib import contextmanager
from typing import Any, BinaryIO, Iterator, NamedTuple, Union

Source = Union[str, os.PathLike, bytes]

_BOM = codecs.BOM_UTF8
_JSON_SPACE = b" \t\r\n"
_BLOCK = 1 << 18
# What surrogateescape makes of undecodable bytes, and what a JSON "\udc80" escape gives: neither
# can be written back as UTF-8, so a record holding one cannot be kept.
_NOT_UTF8 = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class Line(NamedTuple):
    """One line: its 1-based number, the byte offset where its text starts, the text without its
    line ending (None when it is not UTF-8) and, then, why not."""

    number: int
    offset: int
    text: str | None
    error: str | None = None


class JsonLine(NamedTuple):
    """One entry of a JSON file: its line (JSON Lines) or 1-based position (JSON array), and its
    value or the reason it has none (a whole reject reason, naming the line and, for bytes that
    are not UTF-8, their offset in the file)."""

    line: int
    value: Any = None
    error: str | None = None


class JsonDocument(NamedTuple):
    """A whole file's JSON value; `has_undecodable`: some string in it may not be UTF-8 text (bytes
    that were not, or a JSON escape of half a surrogate pair), for `undecodable_field` to find."""

    value: Any
    has_undecodable: bool


@contextmanager
def _binary(source: Source) -> Iterator[BinaryIO]:
    if isinstance(source, (bytes, bytearray)):
        yield io.BytesIO(source)
        return
    with open(source, "rb") as file:
        yield file


def read_lines(source: Source) -> Iterator[Line]:
    """Each line of `source` (see the module docstring); a last line without a newline counts."""
    for first, offset, pieces in _blocks(source):
        yield from _block_lines(first, offset, pieces)


def _blocks(source: Source) -> Iterator[tuple[int, int, list]]:
    """(number of its first line, byte offset, its lines) of each block of whole lines: the lines
    as text, or as bytes when the block is not all UTF-8; "\r" endings still on."""
    # Decoding a block at once and splitting the text costs a fraction of decoding line by line;
    # only a block holding a bad byte is left to be decoded line by line.
    number = 1
    with _binary(source) as file:
        head = file.read(len(_BOM))
        offset, unended = (len(_BOM), []) if head == _BOM else (0, [head])
        while True:
            block = file.read(_BLOCK)
            if block:
                cut = block.rfind(b"\n") + 1
                if not cut:  # a line longer than a block (COCO's one-line file): gathered, not re-copied
                    unended.append(block)
                    continue
                data, unended = b"".join([*unended, block[:cut]]), [block[cut:]]
            else:
                data = b"".join(unended)
                if not data:
                    return
            try:
                pieces = data.decode("utf-8").split("\n")
            except UnicodeDecodeError:
                pieces = data.split(b"\n")
            if not pieces[-1]:  # the block ends with a newline, not with a line
                pieces.pop()
            yield number, offset, pieces
            number += len(pieces)
            offset += len(data)
            if not block:
                return


def _block_lines(first: int, offset: int, pieces: list) -> Iterator[Line]:
    for number, piece in enumerate(pieces, first):
        if isinstance(piece, str):
            size = len(piece) + 1 if piece.isascii() else len(piece.encode("utf-8")) + 1
            yield Line(number, offset, piece.removesuffix("\r"))
        else:
            size = len(piece) + 1
            piece = piece.removesuffix(b"\r")
            try:
                yield Line(number, offset, piece.decode("utf-8"))
            except UnicodeDecodeError as error:
                yield Line(number, offset, None, (
                    f"line {number} is not UTF-8 text (byte 0x{piece[error.start]:02x} at offset "
                    f"{offset + error.start} of the file: {error.reason})"))
        offset += size


def read_json_lines(source: Source) -> Iterator[JsonLine]:
    """The non-blank lines of a JSON Lines file, each decoded on its own."""
    loads = json.loads
    for first, offset, pieces in _blocks(source):
        if isinstance(pieces[0], str):
            lines = zip(itertools.count(first), pieces, itertools.repeat(None))
        else:
            lines = ((line.number, line.text, line.error) for line in _block_lines(first, offset, pieces))
        for number, text, error in lines:
            if error is not None:
                yield JsonLine(number, None, error)
                continue
            if not text:
                continue
            try:
                value = loads(text)  # a "\r" left by CRLF is JSON whitespace
            except json.JSONDecodeError as bad:
                # whether the line is blank is asked only of lines that fail, which is cheaper
                if not text.isspace():
                    yield JsonLine(number, None, f"line {number} is not valid JSON ({bad.msg})")
                continue
            if "\\u" in text and _SURROGATE_ESCAPE.search(text):
                # JSON may escape half of a surrogate pair alone ("\udc80"): valid JSON, but no character
                field = undecodable_field(value)
                if field is not None:
                    what = f"field {field!r}" if field else "its text"
                    yield JsonLine(number, None, f"line {number}: {what} holds an unpaired surrogate escape, "
                                                 f"not UTF-8 text")
                    continue
            yield JsonLine(number, value)


def read_json_document(source: Source) -> JsonDocument:
    """The whole file as one JSON value; json.JSONDecodeError when it is not one."""
    with _binary(source) as file:
        data = file.read()
    if data.startswith(_BOM):
        data = data[len(_BOM):]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return JsonDocument(json.loads(data.decode("utf-8", "surrogateescape")), True)
    return JsonDocument(json.loads(text), "\\u" in text and _SURROGATE_ESCAPE.search(text) is not None)


def first_byte(source: Source) -> bytes:
    """The first byte after the byte-order mark and JSON whitespace (b"" for an empty file): which
    of the JSON layouts a file is in, told without reading it all."""
    with _binary(source) as file:
        chunk = file.read(len(_BOM))
        if chunk == _BOM:
            chunk = b""
        while True:
            rest = chunk.lstrip(_JSON_SPACE)
            if rest:
                return rest[:1]
            chunk = file.read(1 << 16)
            if not chunk:
                return b""


def undecodable_field(value: Any, path: str = "") -> str | None:
    """The path ("caption", "docs[2].text") of the first string in `value` that cannot be written as
    UTF-8 (see `read_json_document`), "" when `value` itself is that string; None when there is none."""
    if isinstance(value, str):
        return path if _NOT_UTF8.search(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            inner = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and _NOT_UTF8.search(key):
                return inner
            found = undecodable_field(item, inner)
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = undecodable_field(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def read_json_records(source: Source) -> Iterator[JsonLine]:
    """The records of a file that is either one JSON array or JSON Lines (told by its first byte).

    An array is parsed whole (json.JSONDecodeError when it does not parse); its elements are
    numbered from 1, and one holding bytes that are not UTF-8 gets an error naming the field.
    """
    if first_byte(source) != b"[":
        yield from read_json_lines(source)
        return
    document = read_json_document(source)
    for position, value in enumerate(document.value, start=1):
        field = undecodable_field(value) if document.has_undecodable else None
        if field is None:
            yield JsonLine(position, value)
        else:
            what = f"field {field!r}" if field else "its text"
            yield JsonLine(position, error=f"entry {position} of the array: {what} is not UTF-8 text")

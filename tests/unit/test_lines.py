"""The shared reader of users' files: line numbers, byte offsets, a byte-order mark, CRLF, lines that
are not UTF-8 or are cut short, mixed scripts; JSON Lines streamed, JSON arrays salvaged per element."""

import json
import tracemalloc

import pytest

from groundflow.io.lines import (
    Line,
    first_byte,
    read_json_document,
    read_json_lines,
    read_json_records,
    read_lines,
    undecodable_field,
)

BOM = b"\xef\xbb\xbf"


def test_numbers_offsets_and_a_last_line_without_newline():
    assert list(read_lines(b"ab\n\ncd\nef")) == [
        Line(1, 0, "ab"), Line(2, 3, ""), Line(3, 4, "cd"), Line(4, 7, "ef")]


def test_crlf_and_lf_endings_mixed():
    lines = list(read_lines(b"one\r\ntwo\nthree\r\nfour\r"))
    assert [line.text for line in lines] == ["one", "two", "three", "four"]
    assert [line.offset for line in lines] == [0, 5, 9, 16]


def test_a_byte_order_mark_is_dropped_at_the_start_only():
    lines = list(read_lines(BOM + b"first\n" + BOM + b"second\n"))
    assert lines[0] == Line(1, 3, "first")
    assert lines[1].text == "\ufeffsecond" and lines[1].offset == 9
    entries = list(read_json_lines(BOM + b'{"a": 1}\n' + BOM + b'{"b": 2}\n'))
    assert entries[0].value == {"a": 1}
    assert entries[1].error.startswith("line 2 is not valid JSON (Unexpected UTF-8 BOM")


def test_a_line_that_is_not_utf8_names_its_line_and_byte_and_the_rest_goes_on():
    data = b'{"a": 1}\n{"b": "caf\xe9"}\n{"c": "\xce\xb1"}\n'
    entries = list(read_json_lines(data))
    assert [e.line for e in entries] == [1, 2, 3]
    assert entries[0].value == {"a": 1} and entries[2].value == {"c": "α"}
    bad_at = data.index(b"\xe9")
    assert entries[1].value is None
    assert entries[1].error == (f"line 2 is not UTF-8 text (byte 0xe9 at offset {bad_at} of the file: "
                                f"invalid continuation byte)")


def test_a_truncated_last_line_is_rejected_alone():
    cut_character = b'{"a": 1}\n{"b": "\xe2\x82'  # the euro sign cut after two of its three bytes
    entries = list(read_json_lines(cut_character))
    assert entries[0].value == {"a": 1}
    cut_at = cut_character.index(b"\xe2")
    assert entries[1].error == f"line 2 is not UTF-8 text (byte 0xe2 at offset {cut_at} of the file: unexpected end of data)"
    cut_record = list(read_json_lines(b'{"a": 1}\r\n{"b": "x'))
    assert cut_record[0].value == {"a": 1} and cut_record[1].error.startswith("line 2 is not valid JSON (")


def test_mixed_scripts_are_decoded_and_offsets_count_bytes():
    texts = ["Ελληνικά", "漢字かな", "emoji 🐈‍⬛ ok", "plain"]
    data = "\n".join(json.dumps({"caption": t}, ensure_ascii=False) for t in texts).encode("utf-8")
    assert [e.value["caption"] for e in read_json_lines(data)] == texts
    lines = list(read_lines(data))
    assert [line.offset for line in lines] == [0, *[data.index(b"\n", line.offset) + 1 for line in lines[:-1]]]


def test_blank_lines_are_not_records_but_keep_the_numbering(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_bytes(b'\n  \r\n{"a": 1}\n\t\n{"b": 2}')
    assert [(e.line, e.value) for e in read_json_lines(path)] == [(3, {"a": 1}), (5, {"b": 2})]
    assert [(e.line, e.value) for e in read_json_lines(str(path))] == [(3, {"a": 1}), (5, {"b": 2})]


def test_json_lines_are_streamed_not_read_whole(tmp_path):
    path = tmp_path / "big.jsonl"
    line = json.dumps({"image": "x.jpg", "caption": "a caption of some length " * 4}).encode() + b"\n"
    path.write_bytes(line * 64_000)  # about 8 MB
    tracemalloc.start()
    try:
        count = sum(1 for _ in read_json_lines(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 64_000
    assert peak < path.stat().st_size / 4


def test_first_byte_skips_the_mark_and_whitespace():
    assert first_byte(BOM + b" \r\n\t[1]") == b"["
    assert first_byte(b"\n\n{") == b"{"
    assert first_byte(BOM + b"  \n") == b"" and first_byte(b"") == b""


def test_an_array_is_salvaged_per_element_naming_the_field_that_is_not_utf8():
    data = BOM + b'[{"id": "a", "docs": [{"text": "ok"}, {"text": "bad \xff"}]},\r\n {"id": "b"}, "\xfe"]'
    entries = list(read_json_records(data))
    assert [e.line for e in entries] == [1, 2, 3]
    assert entries[0].error == "entry 1 of the array: field 'docs[1].text' is not UTF-8 text"
    assert entries[1].value == {"id": "b"}
    assert entries[2].error == "entry 3 of the array: its text is not UTF-8 text"


def test_a_broken_array_is_an_error_and_json_lines_go_line_by_line():
    with pytest.raises(json.JSONDecodeError):
        list(read_json_records(b'[{"id": "a"},'))
    assert [e.value for e in read_json_records(b'{"id": "a"}\n{"id": "b"}')] == [{"id": "a"}, {"id": "b"}]


def test_a_document_keeps_bytes_that_are_not_utf8_for_its_records_to_reject():
    document = read_json_document(BOM + b'{"images": [{"file_name": "\xe9t\xe9.jpg"}], "n": 1}')
    assert document.has_undecodable and document.value["n"] == 1
    assert undecodable_field(document.value) == "images[0].file_name"
    clean = read_json_document(BOM + '{"caption": "ο γάτος 猫 🐈"}'.encode())
    assert not clean.has_undecodable and undecodable_field(clean.value) is None
    assert undecodable_field({"caption": "\udcff"}) == "caption"  # a JSON "\udcff" escape is no better


@pytest.mark.parametrize("block", [1, 2, 3, 7, 64])
def test_lines_are_the_same_whatever_the_block_they_are_read_in(monkeypatch, block):
    """Lines cut across blocks, longer than a block, a character cut by a block's end, a bad byte."""
    data = BOM + "αβγ\r\n漢字かな🐈\n\nlong line ".encode() + b"x" * 40 + b"\ncaf\xe9\r\n\xf0\x9f\x90\x88 end"
    expected = []
    offset = len(BOM)
    for number, raw in enumerate(data[len(BOM):].split(b"\n"), start=1):
        text = raw.removesuffix(b"\r").decode("utf-8", "replace")
        expected.append((number, offset, None if "\ufffd" in text else text))
        offset += len(raw) + 1
    monkeypatch.setattr("groundflow.io.lines._BLOCK", block)
    got = list(read_lines(data))
    assert [(line.number, line.offset, line.text) for line in got] == expected
    assert got[4].error.startswith("line 5 is not UTF-8 text (byte 0xe9 at offset")


def test_an_escaped_half_surrogate_is_rejected_and_an_escaped_pair_kept():
    data = b'{"caption": "\\ud83d\\ude00 ok"}\n{"caption": "bad \\udc80 half"}\n"\\uDFFF"\n'
    entries = list(read_json_lines(data))
    assert entries[0].value == {"caption": "😀 ok"}
    assert entries[1].error == "line 2: field 'caption' holds an unpaired surrogate escape, not UTF-8 text"
    assert entries[2].error == "line 3: its text holds an unpaired surrogate escape, not UTF-8 text"


def test_a_document_with_an_escaped_half_surrogate_is_marked_for_its_records_to_reject():
    document = read_json_document(b'[{"caption": "ok \\ud83d\\ude00"}, {"caption": "half \\udc80"}]')
    assert document.has_undecodable
    assert [undecodable_field(record) for record in document.value] == [None, "caption"]
    assert not read_json_document(b'[{"path": "C:\\\\users\\\\d8"}]').has_undecodable

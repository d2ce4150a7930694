"""The JSON-lines files that several processes append to (the judge caches): appended whole,
read back with every torn or foreign line skipped, never failing the reader."""

from groundflow.io.artifacts import append_json_lines, read_appended_json_lines


def test_entries_come_back_in_order_and_a_torn_line_is_skipped(tmp_path, caplog):
    path = tmp_path / "cache.jsonl"
    append_json_lines(path, [{"id": "a", "answer": "café"}, {"id": "b", "answer": "x"}])
    append_json_lines(path, [{"id": "c", "answer": "y"}])
    with path.open("ab") as f:  # a killed writer's last line, cut inside the two bytes of "é"
        f.write('{"id": "d", "answer": "caf'.encode() + "é".encode()[:1])
    assert list(read_appended_json_lines(path, ("id", "answer"))) == [
        {"id": "a", "answer": "café"}, {"id": "b", "answer": "x"}, {"id": "c", "answer": "y"}]
    assert "line 4 is unreadable" in caplog.text


def test_lines_without_the_fields_are_skipped_and_no_file_reads_as_empty(tmp_path):
    path = tmp_path / "cache.jsonl"
    assert list(read_appended_json_lines(path, ("id",))) == []
    path.write_text('{"id": "a"}\n[1, 2]\n{"other": 1}\n\n{"id": "b", "extra": true}\n')
    assert [entry["id"] for entry in read_appended_json_lines(path, ("id",))] == ["a", "b"]

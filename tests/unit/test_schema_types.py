"""Column types of the artifact schemas (groundflow.io.schemas), the nested ones in particular."""

import pyarrow as pa
import pytest

from groundflow.io.artifacts import read_table, write_table
from groundflow.io.schemas import arrow_type, table_schema


def test_struct_and_nested_types():
    assert arrow_type("list<struct<title: string, score: float64, gold: bool>>") == pa.list_(
        pa.struct([pa.field("title", pa.string()), pa.field("score", pa.float64()), pa.field("gold", pa.bool_())]))
    # commas inside an inner type belong to it
    assert arrow_type("struct<a: list<struct<x: int64, y: list<string>>>, b: string>") == pa.struct([
        pa.field("a", pa.list_(pa.struct([pa.field("x", pa.int64()), pa.field("y", pa.list_(pa.string()))]))),
        pa.field("b", pa.string())])


@pytest.mark.parametrize("name, message", [("struct<>", "without fields"), ("struct<a string>", "not `name: type`"),
                                           ("struct<a: decimal>", "unknown column type 'decimal'")])
def test_bad_struct_types_are_refused(name, message):
    with pytest.raises(ValueError, match=message):
        arrow_type(name)


def test_eval_records_round_trip_their_passages(tmp_path):
    import pandas as pd

    docs = [{"title": "France", "text": "Paris.", "score": None, "gold": True},
            {"title": "Rome", "text": "Italy.", "score": 1.5, "gold": False}]
    frame = pd.DataFrame([{"id": "q1", "question": "Q?", "answers": ["Paris"], "docs": docs, "line": 1}])
    write_table(frame, tmp_path / "records.parquet", schema=table_schema("cings_eval_records"))
    back = read_table(tmp_path / "records.parquet")
    assert [dict(d) for d in back.iloc[0]["docs"]] == docs
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError)):
        bad = frame.assign(docs=[[{"title": "T", "text": "x", "score": "gold", "gold": True}]])
        write_table(bad, tmp_path / "bad.parquet", schema=table_schema("cings_eval_records"))

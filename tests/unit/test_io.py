import os

import pandas as pd
import pytest

from groundflow.io import StageResult, atomic_path, check_accounting, read_table, rejects_frame, run_chunked, write_table
from groundflow.io.stage import AccountingError


def test_atomic_path_leaves_nothing_when_the_block_fails(tmp_path):
    target = tmp_path / "out.parquet"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert os.listdir(tmp_path) == []


def test_atomic_path_replaces_only_on_success(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with atomic_path(target) as tmp:
        tmp.write_text("new")
        assert target.read_text() == "old"
    assert target.read_text() == "new"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_a_killed_writes_temp_file_goes_with_the_next_write_of_that_path_only(tmp_path):
    target = tmp_path / "out.parquet"
    # what SIGKILL between writing and renaming leaves: the temp file, no `finally`
    (tmp_path / ".out.parquet.k1ll3d.tmp.parquet").write_text("half")
    (tmp_path / ".other.parquet.k1ll3d.tmp.parquet").write_text("another path's")
    with atomic_path(target) as tmp:
        tmp.write_text("whole")
    assert sorted(os.listdir(tmp_path)) == [".other.parquet.k1ll3d.tmp.parquet", "out.parquet"]
    assert target.read_text() == "whole"


def test_atomic_artifacts_get_the_mode_of_a_plain_write(tmp_path):
    from groundflow.io.artifacts import atomic_directory

    umask = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "table.parquet") as tmp:
            tmp.write_text("x")
        with atomic_directory(tmp_path / "model") as folder:
            (folder / "config.json").write_text("{}")
    finally:
        os.umask(umask)
    assert (tmp_path / "table.parquet").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "model").stat().st_mode & 0o777 == 0o755


def test_accounting_counts_and_detects_lost_and_double_records():
    kept = pd.DataFrame({"id": ["a", "b"]})
    ok = StageResult(kept, rejects_frame("s", [("c", "bad")]))
    assert check_accounting("s", ["a", "b", "c"], ok) == {"stage": "s", "in": 3, "out": 2, "rejected": 1}
    with pytest.raises(AccountingError, match="neither kept nor rejected"):
        check_accounting("s", ["a", "b", "c", "d"], ok)
    with pytest.raises(AccountingError, match="both kept and rejected"):
        check_accounting("s", ["a", "b"], StageResult(kept, rejects_frame("s", [("b", "x")])))


def test_accounting_with_list_parent_column():
    kept = pd.DataFrame({"id": ["img-dog"], "caption_ids": [["c1", "c2"]]})
    result = StageResult(kept, rejects_frame("e", [("c3", "none")]), parent_column="caption_ids")
    assert check_accounting("e", ["c1", "c2", "c3"], result)["out"] == 2


def _halve(chunk):
    even = chunk[chunk["n"] % 2 == 0]
    odd = chunk[chunk["n"] % 2 == 1]
    return StageResult(even.assign(half=even["n"] // 2), rejects_frame("h", [(i, "odd") for i in odd["id"]]))


def test_run_chunked_resumes_from_finished_chunks(tmp_path):
    records = pd.DataFrame({"id": [f"r{i}" for i in range(10)], "n": range(10)})
    calls = []

    def flaky(chunk):
        calls.append(len(chunk))
        if len(calls) == 3:
            raise KeyboardInterrupt("killed mid-shard")
        return _halve(chunk)

    with pytest.raises(KeyboardInterrupt):
        run_chunked(records, flaky, chunk_size=3, progress_dir=tmp_path, params={"p": 1})
    result, stats = run_chunked(records, _halve, chunk_size=3, progress_dir=tmp_path, params={"p": 1})
    assert stats == {"chunks": 4, "chunks_reused": 2, "items_recomputed": 4}
    assert list(result.kept["half"]) == [0, 1, 2, 3, 4]
    assert list(result.rejects["id"]) == ["r1", "r3", "r5", "r7", "r9"]


def test_run_chunked_discards_progress_made_under_other_params(tmp_path):
    records = pd.DataFrame({"id": ["a", "b"], "n": [2, 4]})
    run_chunked(records, _halve, chunk_size=1, progress_dir=tmp_path, params={"threshold": 1})
    _, stats = run_chunked(records, _halve, chunk_size=1, progress_dir=tmp_path, params={"threshold": 2})
    assert stats["chunks_reused"] == 0 and stats["items_recomputed"] == 2


def test_write_then_read_table_roundtrip(tmp_path):
    df = pd.DataFrame({"id": ["a"], "boxes": [[[1.0, 2.0, 3.0, 4.0]]]})
    write_table(df, tmp_path / "t.parquet")
    back = read_table(tmp_path / "t.parquet")
    assert back["id"].tolist() == ["a"] and list(back["boxes"][0][0]) == [1.0, 2.0, 3.0, 4.0]


def test_chunks_never_split_a_group(tmp_path):
    from groundflow.io.stage import chunk_bounds

    groups = pd.Series(["a", "a", "a", "b", "c", "c", "d"])
    assert chunk_bounds(groups, 2) == [(0, 3), (3, 6), (6, 7)]
    assert chunk_bounds(7, 3) == [(0, 3), (3, 6), (6, 7)]

    records = pd.DataFrame({"id": ["1", "2", "3", "4"], "img": ["x", "y", "x", "y"]})
    seen = []

    def per_image(chunk):
        seen.append(sorted(set(chunk["img"])))
        return StageResult(chunk.drop_duplicates("img").assign(id=lambda d: d["img"]).assign(parents=lambda d: [list(chunk.loc[chunk["img"] == i, "id"]) for i in d["img"]]), rejects_frame("g"), parent_column="parents")

    result, _ = run_chunked(records, per_image, chunk_size=1, progress_dir=None, params={}, parent_column="parents", group_column="img")
    assert seen == [["x"], ["y"]]
    assert check_accounting("g", records["id"], result)["out"] == 4


def test_accounting_rejects_duplicate_output_ids():
    kept = pd.DataFrame({"id": ["img-dog", "img-dog"], "caption_ids": [["c1"], ["c2"]]})
    with pytest.raises(AccountingError, match="output ids not unique"):
        check_accounting("e", ["c1", "c2"], StageResult(kept, rejects_frame("e"), parent_column="caption_ids"))

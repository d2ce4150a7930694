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


def test_a_group_function_keeps_groups_together_in_first_seen_order_and_adds_no_column():
    records = pd.DataFrame({"id": list("abcde"), "n": [4, 2, 6, 8, 10]})
    seen = []

    def record(chunk):
        seen.append(list(chunk["id"]))
        assert list(chunk.columns) == ["id", "n"]
        return _halve(chunk)

    # a and d form one group, b, c and e their own; the group of a is seen first
    groups = lambda df: [0, 1, 2, 0, 4]  # noqa: E731
    result, _ = run_chunked(records, record, chunk_size=1, progress_dir=None, params={}, group_column=groups)
    assert seen == [["a", "d"], ["b"], ["c"], ["e"]]
    assert list(result.kept.columns) == ["id", "n", "half"]


def _write_files(chunk, files_dir):
    for rid in chunk["id"]:
        (files_dir / f"{rid}.txt").write_text(f"file of {rid}")
    return _halve(chunk)


def test_chunk_files_of_a_killed_chunk_are_discarded_and_finished_ones_published(tmp_path):
    from groundflow.io.stage import chunk_files_dir, publish_chunk_files

    records = pd.DataFrame({"id": [f"r{i}" for i in range(6)], "n": range(0, 12, 2)})
    progress = tmp_path / "progress"

    def killed_in_chunk_2(chunk, files_dir):
        if "r4" in set(chunk["id"]):
            (files_dir / "r4.txt").write_text("half")
            (files_dir / "stray.txt").write_text("never asked for")
            raise KeyboardInterrupt("killed")
        return _write_files(chunk, files_dir)

    with pytest.raises(KeyboardInterrupt):
        run_chunked(records, killed_in_chunk_2, chunk_size=2, progress_dir=progress, params={}, chunk_files=True)
    assert sorted(p.name for p in chunk_files_dir(progress, 2).iterdir()) == ["r4.txt", "stray.txt"]
    result, stats = run_chunked(records, _write_files, chunk_size=2, progress_dir=progress, params={}, chunk_files=True)
    assert (stats["chunks"], stats["chunks_reused"]) == (3, 2)
    assert publish_chunk_files(progress, stats["chunks"], tmp_path / "out") == 6
    assert {p.name: p.read_text() for p in (tmp_path / "out").iterdir()} == {
        f"r{i}.txt": f"file of r{i}" for i in range(6)}
    # published as links or copies: the checkpoint keeps its own until the progress folder goes
    assert (chunk_files_dir(progress, 0) / "r0.txt").read_text() == "file of r0"


def test_two_chunks_publishing_one_name_is_an_error(tmp_path):
    from groundflow.io.stage import chunk_files_dir, publish_chunk_files

    for index in (0, 1):
        chunk_files_dir(tmp_path, index).mkdir(parents=True)
        (chunk_files_dir(tmp_path, index) / "same.png").write_text(str(index))
    with pytest.raises(RuntimeError, match="chunks 0 and 1 both wrote same.png"):
        publish_chunk_files(tmp_path, 2, tmp_path / "out")


def test_chunk_files_need_a_progress_dir():
    with pytest.raises(ValueError, match="progress_dir"):
        run_chunked(pd.DataFrame({"id": ["a"], "n": [2]}), _write_files, chunk_size=1, progress_dir=None,
                    params={}, chunk_files=True)


def test_a_shard_is_written_the_same_however_many_chunks_were_reused(tmp_path):
    # object strings computed in memory come back from a checkpoint as another string type
    records = pd.DataFrame({"id": ["a", "b", "c"], "n": [2, 4, 6]})

    def labelled(chunk):
        result = _halve(chunk)
        result.kept["label"] = pd.Series([f"x{i}" for i in result.kept["id"]], index=result.kept.index, dtype=object)
        return result

    computed, stats = run_chunked(records, labelled, chunk_size=1, progress_dir=tmp_path, params={})
    assert stats["chunks_reused"] == 0
    reused, stats = run_chunked(records, labelled, chunk_size=1, progress_dir=tmp_path, params={})
    assert stats["chunks_reused"] == 3
    write_table(computed.kept, tmp_path / "computed.parquet")
    write_table(reused.kept, tmp_path / "reused.parquet")
    assert (tmp_path / "computed.parquet").read_bytes() == (tmp_path / "reused.parquet").read_bytes()


def test_a_killed_builds_temp_folder_goes_with_the_next_build_of_that_folder_only(tmp_path):
    from groundflow.io.artifacts import atomic_directory

    # what SIGKILL inside a model build leaves: its temp folder, no `finally`
    (tmp_path / ".tiny-sam.k1ll3d_0.tmp").mkdir()
    (tmp_path / ".tiny-sam.k1ll3d_0.tmp" / "config.json").write_text("{}")
    (tmp_path / ".tiny-sam-hq.k1ll3d_0.tmp").mkdir()  # another folder's build
    (tmp_path / ".tiny-sam.v2.k1ll3d_0.tmp").mkdir()  # the folder `tiny-sam.v2`'s build
    with atomic_directory(tmp_path / "tiny-sam") as tmp:
        (tmp / "config.json").write_text('{"model_type": "sam"}')
    assert sorted(os.listdir(tmp_path)) == [".tiny-sam-hq.k1ll3d_0.tmp", ".tiny-sam.v2.k1ll3d_0.tmp", "tiny-sam"]
    assert (tmp_path / "tiny-sam" / "config.json").read_text() == '{"model_type": "sam"}'

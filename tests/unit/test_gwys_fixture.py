"""The GWYS demo fixture: its files load through GWYS' own loaders, every planted bad record is
rejected with its reason (and nothing else is), in = out + rejected; same seed, same bytes."""

import json

import pytest
from PIL import Image

from groundflow.gwys.data import load_pool, load_sft_records
from groundflow.gwys.fixture import (N_COT, N_CONVERTED, N_EVAL_EACH, N_POOL, POOL_BAD_KINDS, SFT_BAD_KINDS,
                                     FixturePaths, fixture_texts, make_gwys_fixture)
from groundflow.gwys.rewards import FORMAT_PATTERNS, extract_answer


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    root = tmp_path_factory.mktemp("gwys") / "fixture"
    return root, make_gwys_fixture(root, seed=0)


def _check_rejects(loaded, planted: list[dict]) -> None:
    reasons = dict(zip(loaded.rejects["id"], loaded.rejects["reason"]))
    assert sorted(reasons) == sorted(case["id"] for case in planted)  # exactly the planted ones
    for case in planted:
        reason = reasons[case["id"]]
        assert case["reason"] in reason, (case, reason)
        assert f"line {case['line']}:" in reason or f"entry {case['line']} of the array" in reason, (case, reason)
    counts = loaded.counts
    assert counts["in"] == counts["out"] + counts["rejected"] and counts["rejected"] == len(planted)


def test_sft_file_rejects_exactly_the_planted_records(fixture):
    root, summary = fixture
    written = summary["files"]["cot"]
    assert sorted(case["case"] for case in written["bad"]) == sorted(SFT_BAD_KINDS)
    loaded = load_sft_records(root / "cot.json", image_root=root)
    _check_rejects(loaded, written["bad"])
    assert loaded.counts["out"] == written["good"] == N_COT + N_CONVERTED
    assert len(json.loads((root / "cot.json").read_bytes().decode("utf-8", "replace"))) == written["entries"]
    by_form = [r["id"].startswith("line:") for r in loaded.records]
    assert sum(by_form) == N_CONVERTED  # the converted form has no id: named by its position
    for record in loaded.records:
        answer = record["conversations"][1]["value"]
        assert FORMAT_PATTERNS["four_tag"].fullmatch(answer) and extract_answer(answer)
        assert (root / record["image"]).is_file()


@pytest.mark.parametrize("name, size", [("pool", N_POOL), ("eval", 3 * N_EVAL_EACH)])
def test_video_r1_files_reject_exactly_the_planted_records(fixture, name, size):
    root, summary = fixture
    written = summary["files"][name]
    assert sorted(case["case"] for case in written["bad"]) == sorted(POOL_BAD_KINDS)
    loaded = load_pool(root / f"{name}.json", media_root=root)
    _check_rejects(loaded, written["bad"])
    kept = loaded.kept
    assert len(kept) == written["good"] == size
    assert loaded.counts["by_type"] == written["by_type"]
    assert set(kept["problem_type"]) == {"multiple choice", "numerical"}
    for media in kept["media"]:
        with Image.open(root / media) as image:
            assert image.size == (120, 80)
    mc = kept[kept["problem_type"] == "multiple choice"]
    assert all(a in "ABCD"[:len(o)] for a, o in zip(mc["answer"], mc["options"]))
    assert all(a.isdigit() and 1 <= int(a) <= 5 for a in kept.loc[kept["problem_type"] == "numerical", "answer"])


def test_eval_set_has_a_pope_style_yes_no_subset(fixture):
    root, _ = fixture
    rows = json.loads((root / "eval.json").read_bytes().decode("utf-8", "replace"))
    pope = [r for r in rows if r.get("data_source") == "pope" and r["data_type"] == "image"]
    assert len(pope) >= N_EVAL_EACH
    assert all(r["options"] == ["A. yes", "B. no"] and r["problem_type"] == "multiple choice" for r in pope)
    answers = {extract_answer(r["solution"]) for r in pope}
    assert answers == {"A", "B"}  # both answers occur


def test_same_seed_same_bytes_and_texts(tmp_path):
    first = make_gwys_fixture(FixturePaths.under(tmp_path / "a"), seed=3)
    second = make_gwys_fixture(FixturePaths.under(tmp_path / "b"), seed=3)
    for name in ("cot.json", "pool.json", "eval.json", "images/pool_000.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert first["files"] == second["files"]
    other = make_gwys_fixture(tmp_path / "c", seed=4, include_bad=False)
    assert (tmp_path / "c" / "pool.json").read_bytes() != (tmp_path / "a" / "pool.json").read_bytes()
    assert all(not written["bad"] for written in other["files"].values())
    assert load_pool(tmp_path / "c" / "pool.json", media_root=tmp_path / "c").counts["rejected"] == 0
    assert fixture_texts(3) == fixture_texts(3) != fixture_texts(4)


def test_fixture_texts_cover_both_forms_and_the_answers():
    texts = fixture_texts(0)
    joined = "\n".join(texts)
    assert "<prethink>" in joined and "<think>" in joined and "Options:\nA. " in joined
    assert any(FORMAT_PATTERNS["four_tag"].fullmatch(t) for t in texts)
    assert any(FORMAT_PATTERNS["think_answer"].fullmatch(t) for t in texts)
    assert "write only the number" in joined and "write only the letter" in joined  # type instructions

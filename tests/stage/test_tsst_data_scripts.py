"""The TSST data scripts as Snakemake runs them (tests/stage/script_harness.py), on the demo fixture:
fixture -> question tables (ScienceQA-style train and eval, VCR-style) and warm-up policy/value JSON.
Counts add up, every bad line the fixture planted is rejected with its reason, images exist."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from groundflow.io import read_table
from groundflow.io.schemas import table_schema
from groundflow.tsst.fixture import BAD_KINDS, VCR_BAD_KINDS
from groundflow.tsst.questions import QuestionFileError
from script_harness import FakeSnakemake, run_script


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tsst") / "fixture"
    out = {"train": folder / "train.jsonl", "eval": folder / "eval.jsonl", "images": folder / "images",
           "vcr": folder / "vcr" / "val.jsonl", "vcr_images": folder / "vcr" / "vcr1images",
           "cot": folder / "cot.jsonl", "summary": folder / "summary.json"}
    run_script("tsst_fixture.py", FakeSnakemake(input={}, output={k: str(v) for k, v in out.items()},
                                                params={"seed": 0, "include_bad": True},
                                                log=[str(folder.parent / "logs" / "fixture.log")]))
    return {**out, "summary_data": json.loads(out["summary"].read_text()), "root": folder.parent}


def _questions(root: Path, name: str, path, images, kind, **params) -> dict:
    out = {"questions": str(root / name / "questions.parquet"), "rejects": str(root / name / "rejects.parquet"),
           "counts": str(root / name / "counts.json")}
    inputs = {"questions": str(path), "images": str(images)}
    if "subset" in params:
        inputs["subset"] = params.pop("subset")
    run_script("tsst_questions.py", FakeSnakemake(input=inputs, output=out,
                                                  params={"kind": kind, "name": name, "image_root": str(images), **params},
                                                  log=[str(root / "logs" / f"{name}.log")]))
    return out


def _check_rejects(out: dict, expected: list[dict]) -> dict:
    rejects = read_table(out["rejects"])
    reasons = dict(zip(rejects["id"], rejects["reason"]))
    for case in expected:
        assert case["id"] in reasons, case
        assert case["reason"] in reasons[case["id"]] and f"line {case['line']}" in reasons[case["id"]], (case, reasons)
    assert len(reasons) == len(expected) == len(rejects)
    return reasons


def test_fixture_files_images_and_bad_lines(fixture):
    summary = fixture["summary_data"]
    assert summary["good"] == {"train": 16, "eval": 8, "vcr": 6, "cot": 17}
    assert {name: sorted(c["case"] for c in cases) for name, cases in summary["bad"].items()} == {
        "train": sorted(BAD_KINDS), "eval": sorted(BAD_KINDS), "vcr": sorted(VCR_BAD_KINDS), "cot": sorted(BAD_KINDS)}
    assert summary["text_only"] == 6 and summary["correct_chains"] == 14 and summary["incorrect_chains"] == 3
    for name in ("train", "eval", "vcr", "cot"):
        assert len(fixture[name].read_bytes().splitlines()) == summary["lines"][name]
    with Image.open(next(fixture["images"].iterdir())) as image:
        assert image.mode == "RGB"
    assert "must be rejected" in (fixture["root"] / "logs" / "fixture.log").read_text()


def test_same_seed_same_bytes(fixture, tmp_path):
    from groundflow.tsst.fixture import make_tsst_fixture

    make_tsst_fixture(tmp_path, seed=0)
    for name in ("train.jsonl", "eval.jsonl", "cot.jsonl"):
        assert (tmp_path / name).read_bytes() == fixture[name.split(".")[0]].read_bytes()
    assert (tmp_path / "images" / "scene_000.png").read_bytes() == (fixture["images"] / "scene_000.png").read_bytes()


@pytest.mark.parametrize("name", ["train", "eval"])
def test_scienceqa_sets(fixture, tmp_path, name):
    out = _questions(tmp_path, name, fixture[name], fixture["images"], "scienceqa", source="fixture")
    assert pq.read_table(out["questions"]).schema.equals(table_schema("tsst_questions"), check_metadata=False)
    kept = read_table(out["questions"])
    counts = json.loads(Path(out["counts"]).read_text())
    summary = fixture["summary_data"]
    assert counts["in"] == summary["lines"][name] == counts["out"] + counts["rejected"]
    assert counts["out"] == summary["good"][name] == len(kept) and kept["id"].is_unique
    _check_rejects(out, summary["bad"][name])
    assert set(kept["source"]) == {"fixture"}
    with_image = kept[kept["image"].notna()]
    assert 0 < len(kept) - len(with_image) < len(kept) / 2  # about a quarter without an image
    for image in with_image["image"]:
        assert (fixture["images"] / image).is_file()
    for _, row in kept.iterrows():
        assert 2 <= len(row["choices"]) <= 4 and row["choices"][row["answer_label"] - 1] == row["answer"]
    log = (tmp_path / "logs" / f"{name}.log").read_text()
    assert "rejected line:" in log and f"in {counts['in']} = out {counts['out']} + rejected {counts['rejected']}" in log


def test_vcr_set_names_people(fixture, tmp_path):
    out = _questions(tmp_path, "vcr", fixture["vcr"], fixture["vcr_images"], "vcr")
    kept = read_table(out["questions"]).set_index("id")
    summary = fixture["summary_data"]
    counts = json.loads(Path(out["counts"]).read_text())
    assert counts["in"] == summary["lines"]["vcr"] == counts["out"] + counts["rejected"]
    assert len(kept) == summary["good"]["vcr"]
    _check_rejects(out, summary["bad"]["vcr"])
    assert kept.loc["val-0", "question"] == "What colour is person on the right wearing?"
    assert list(kept.loc["val-3", "choices"])[:2] == ["person on the left.", "another person on the left."]
    assert kept.loc["val-3", "answer_label"] == 2
    assert "person on the left and person on the right" in kept.loc["val-5", "question"]
    for image in kept["image"]:
        assert (fixture["vcr_images"] / image).is_file()


def test_partition_and_subset_through_the_script(fixture, tmp_path):
    subset = tmp_path / "subset.yaml"
    subset.write_text("- val-4\n- val-2\n- val-1\n")
    out = _questions(tmp_path, "vcr-part", fixture["vcr"], fixture["vcr_images"], "vcr", partition="0_1",
                     subset=str(subset))
    # positions count the subset's lines and the lines whose id cannot be read (here the bad JSON at
    # line 3), so such a line is rejected by exactly one partition, never silently skipped
    bad_json = next(c for c in fixture["summary_data"]["bad"]["vcr"] if c["case"] == "bad_json")
    assert bad_json["line"] < next(i for i, line in enumerate(fixture["vcr"].read_text(errors="replace").splitlines(), 1)
                                   if '"val-2"' in line)
    assert list(read_table(out["questions"])["id"]) == ["val-1"]
    assert list(read_table(out["rejects"])["id"]) == [bad_json["id"]]
    out = _questions(tmp_path, "vcr-part2", fixture["vcr"], fixture["vcr_images"], "vcr", partition="2_4",
                     subset=str(subset))
    assert list(read_table(out["questions"])["id"]) == ["val-2", "val-4"]
    with pytest.raises(QuestionFileError, match="quote it"):
        _questions(tmp_path, "train-int", fixture["train"], fixture["images"], "scienceqa", partition=440499)


def test_warmup_script(fixture, tmp_path):
    out = {"policy": str(tmp_path / "policy.json"), "value": str(tmp_path / "value.json"),
           "rejects": str(tmp_path / "rejects.parquet"), "counts": str(tmp_path / "counts.json")}
    run_script("tsst_warmup_data.py", FakeSnakemake(
        input={"cot": str(fixture["cot"]), "images": str(fixture["images"])}, output=out,
        params={"prompts": {"with_image": None, "text_only": None}, "cut": "sentence",
                "image_root": str(fixture["images"])},
        log=[str(tmp_path / "logs" / "warmup.log")]))
    summary = fixture["summary_data"]
    counts = json.loads(Path(out["counts"]).read_text())
    assert counts["in"] == summary["lines"]["cot"] == counts["out"] + counts["rejected"]
    assert counts["out"] == summary["good"]["cot"]
    _check_rejects(out, summary["bad"]["cot"])
    policy, value = json.loads(Path(out["policy"]).read_text()), json.loads(Path(out["value"]).read_text())
    assert len(policy) == summary["correct_chains"]
    for record in policy + value:
        human, gpt = record["conversations"]
        assert (human["from"], gpt["from"]) == ("human", "gpt")
        assert human["value"].startswith("<image>\n") == ("image" in record)
        if "image" in record:
            # named as the training job opens it: under the warm-up's image folder
            assert record["image"].startswith(str(fixture["images"])) and Path(record["image"]).is_file()
        assert "  " not in gpt["value"].split("\n\n", 1)[-1]
    assert any("image" not in r for r in policy) and all(r["conversations"][1]["value"].rstrip().split(
        "Final Answer: ")[-1] for r in policy)
    targets = [r["value"] for r in value]
    assert all(0.0 <= t <= 1.0 for t in targets) and targets.count(1.0) == summary["correct_chains"]
    assert sum(1 for r in value if r["id"].endswith("-wrong:1")) == summary["incorrect_chains"]
    assert all(r["value"] == 0.0 for r in value if "-wrong:" in r["id"])


def test_without_bad_lines_nothing_is_rejected(tmp_path):
    from groundflow.tsst.fixture import fixture_texts, make_tsst_fixture
    from groundflow.tsst.prompts import load_question_prompts
    from groundflow.tsst.questions import load_questions
    from groundflow.tsst.warmup import warmup_from_file

    summary = make_tsst_fixture(tmp_path, seed=3, include_bad=False)
    paths = summary["paths"]
    assert summary["lines"] == summary["good"] and all(not cases for cases in summary["bad"].values())
    for name, kind, images in [("train", "scienceqa", "images"), ("eval", "scienceqa", "images"), ("vcr", "vcr", "vcr_images")]:
        result = load_questions(paths[name], kind=kind, image_root=paths[images])
        assert result.counts["rejected"] == 0 and result.counts["out"] == summary["good"][name]
    data = warmup_from_file(paths["cot"], image_root=paths["images"], prompts=load_question_prompts())
    assert data.counts["rejected"] == 0 and len(data.policy) == summary["correct_chains"]
    texts = fixture_texts(seed=3)  # what a tiny tokenizer for the demo learns from
    assert data.policy[0]["conversations"][0]["value"] in texts
    assert data.policy[0]["conversations"][1]["value"] in texts

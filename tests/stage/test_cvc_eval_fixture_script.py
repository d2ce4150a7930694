"""workflow/scripts/cvc_eval_fixture.py as Snakemake runs it (tests/stage/script_harness.py)."""

import json

import pytest

from script_harness import FakeSnakemake, run_script

PARAMS = {"seed": 0, "n_images": 3, "include_bad": True}


def outputs(folder, **renamed):
    return {"yes_no": str(folder / "yes_no.jsonl"), "multiple_choice": str(folder / "multiple_choice.jsonl"),
            "images": str(folder / "images"), **renamed}


def test_script_writes_the_benchmark_files(tmp_path):
    folder = tmp_path / "eval"
    run_script("cvc_eval_fixture.py", FakeSnakemake(input={}, output=outputs(folder), params=PARAMS,
                                                    log=[str(tmp_path / "fixture.log")]))
    yes_no = [json.loads(line) for line in (folder / "yes_no.jsonl").read_text().splitlines()]
    choice = [json.loads(line) for line in (folder / "multiple_choice.jsonl").read_text().splitlines()]
    assert len(yes_no) == 2 * 3 + 1 and len(choice) == 3 + 1
    assert sorted(p.name for p in (folder / "images").iterdir()) == [f"scene_{i:04d}.png" for i in range(3)]
    assert "CVC eval fixture: 3 images" in (tmp_path / "fixture.log").read_text()


def test_script_refuses_outputs_it_would_not_write(tmp_path):
    folder = tmp_path / "eval"
    smk = FakeSnakemake(input={}, output=outputs(folder, multiple_choice=str(tmp_path / "elsewhere.jsonl")),
                        params=PARAMS, log=[str(tmp_path / "fixture.log")])
    with pytest.raises(ValueError, match="elsewhere.jsonl"):
        run_script("cvc_eval_fixture.py", smk)
    assert not folder.exists()

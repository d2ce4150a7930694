"""GLIP as an external command: the grounding rule runs it and reads back the same box table."""
import json
import sys

import pandas as pd
import pytest

from snakemake_runner import ROOT, make_run_dir, snakemake

pytestmark = pytest.mark.workflow


def test_grounding_rule_runs_the_external_command(tmp_path):
    command = (f"{sys.executable} {ROOT / 'tests/data/fake_glip.py'} --requests {{requests}} "
               f"--boxes {{boxes}} --threshold {{threshold}}")
    run = make_run_dir(tmp_path, {
        "shards": 1,
        "cvc": {"fixture": {"n_images": 6, "include_bad": False},
                "causality": {"ppl_low": 1.0, "ppl_high": 1.0e9},
                "grounding": {"backend": "glip", "glip_command": command, "glip_threshold": 0.7}},
    })
    snakemake(run, "--cores", "2", "results/cvc/grounding/0.parquet")
    kept = pd.read_parquet(run / "results/cvc/grounding/0.parquet")
    rejects = pd.read_parquet(run / "results/cvc/grounding/0.rejects.parquet")
    candidates = pd.read_parquet(run / "results/cvc/causality/0.parquet")
    assert len(kept) + len(rejects) == len(candidates) and len(kept) and len(rejects)
    for row in kept.itertuples():  # the fake's centred box over the middle half of the image
        assert list(row.box) == [row.width / 4, row.height / 4, 3 * row.width / 4, 3 * row.height / 4]
        assert row.box_score >= 0.7
    assert rejects["reason"].str.contains("no box scoring >= 0.7").all()
    produced_by = json.loads((run / "results/cvc/grounding/0.counts.json").read_text())["produced_by"]
    assert produced_by["backend"] == "glip"
    assert not (run / "resources/models/tiny-grounding-dino").exists()  # no detector needed

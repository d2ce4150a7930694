"""The CINGS evaluation rules through the real snakemake CLI, on checkpoints this test builds.

The run folder's Snakefile includes the repository's rule files for configuration, tiny models and
evaluation only, so the evaluation runs on the checkpoints placed at `results/cings/train/{mode}/model`
(tiny random Llamas with the Llama-3.1 chat-template layout) instead of retraining them; the whole
chain, training included, is the cings workflow test's.
"""
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from groundflow.cings.eval_fixture import BAD_LINES, eval_fixture_texts, eval_records
from groundflow.cings.inference import RawEntry, build_prompt, prompt_token_counts, validate_records
from groundflow.generate.backends import ChatPrompt
from groundflow.io.schemas import table_schema
from groundflow.models.causal_lm import build_tiny_causal_lm
from snakemake_runner import ROOT, make_run_dir

pytestmark = pytest.mark.workflow

MODES = ["context", "no_mask"]
SETTINGS = ["prefilled_1doc", "prefilled_kdocs", "closed_book", "context_in_input"]
N_QUESTIONS = 8
NDOCS = 2

SNAKEFILE = f"""
configfile: "config.yaml"
include: "{ROOT}/rules/common.smk"
include: "{ROOT}/rules/models.smk"
include: "{ROOT}/rules/cings_eval.smk"
rule all:
    input: cings_eval_targets()
"""


def _snakemake(run: Path, *args: str) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=run, capture_output=True, text=True)
    if out.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{out.stdout[-4000:]}\n{out.stderr[-6000:]}")
    return out


SYSTEM = "Answer with the context."


def _prompt_lengths(model_dir: Path, ndocs: int) -> dict[str, dict[str, int]]:
    """setting -> question id -> prompt tokens, as the checkpoint's tokenizer counts them."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    records = validate_records(RawEntry(i + 1, r) for i, r in enumerate(eval_records(N_QUESTIONS))).kept
    lengths = {}
    for setting in SETTINGS:
        parts = [build_prompt(r, setting, ndocs=ndocs, system_prompt=SYSTEM) for r in records.to_dict("records")]
        counts = prompt_token_counts(SimpleNamespace(tokenizer=tokenizer),
                                     [ChatPrompt(list(p.messages), assistant_prefix=p.assistant_prefix) for p in parts])
        lengths[setting] = dict(zip(records["id"], counts))
    return lengths


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = tmp_path_factory.mktemp("cings-eval")
    texts = eval_fixture_texts()
    for seed, mode in enumerate(MODES):  # the same tokenizer for every mode: same texts
        build_tiny_causal_lm(run / "results/cings/train" / mode / "model", seed=seed, texts=texts, flavor="llama3")
    lengths = _prompt_lengths(run / "results/cings/train" / MODES[0] / "model", NDOCS)
    # the median prompt of the longest setting: some prompts of the passage settings are rejected
    limit = sorted(lengths["context_in_input"].values())[N_QUESTIONS // 2]
    make_run_dir(run, {
        "methods": ["cings"],
        "models": {"cings_lm": {"path": "resources/models/tiny-llama", "device": "cpu"}},
        "cings": {
            "modes": MODES,
            "data": {"system_prompt": SYSTEM},
            "inference": {"settings": SETTINGS, "ndocs": NDOCS, "max_new_tokens": 6, "max_prompt_tokens": limit,
                          "fixture": {"n_questions": N_QUESTIONS, "n_retrieved": 3, "include_bad": True}},
        },
    })
    (run / "Snakefile").write_text(SNAKEFILE)
    _snakemake(run, "--cores", "2")
    return run, lengths, limit


def test_table_compares_every_mode_and_setting(run):
    run, lengths, limit = run
    table = pq.read_table(run / "results/cings/eval/table.parquet")
    assert table.schema.equals(table_schema("cings_eval_table"), check_metadata=False)
    table = table.to_pandas()
    assert list(zip(table["mode"], table["setting"])) == [(m, s) for m in MODES for s in SETTINGS]
    assert (table["dataset"] == "demo").all()
    # every valid question is answered or rejected in every setting
    assert ((table["n"] + table["rejected"]) == N_QUESTIONS).all()
    over = {setting: sum(n > limit for n in per_id.values()) for setting, per_id in lengths.items()}
    assert list(table["rejected"]) == [over[s] for m in MODES for s in SETTINGS]
    assert table["rejected"].sum() > 0 and (table["n"] > 0).all()
    for column in ["exact_match", "accuracy", "rouge_l"]:
        assert table[column].between(0, 1).all()
    tsv = pd.read_csv(run / "results/cings/eval/table.tsv", sep="\t")
    assert list(tsv.columns) == list(table.columns) and len(tsv) == len(table)


def test_scores_trace_back_to_predictions_and_rejects(run):
    run, lengths, limit = run
    scores = pd.read_parquet(run / "results/cings/eval/scores.parquet")
    table = pd.read_parquet(run / "results/cings/eval/table.parquet")
    for row in table.itertuples():
        base = run / "results/cings/eval" / row.dataset / row.mode
        predictions = pd.read_parquet(base / f"{row.setting}.parquet")
        rejects = pd.read_parquet(base / f"{row.setting}.rejects.parquet")
        counts = json.loads((base / f"{row.setting}.counts.json").read_text())
        assert counts["in"] == N_QUESTIONS == len(predictions) + len(rejects)
        assert (counts["out"], counts["rejected"]) == (row.n, row.rejected)
        assert set(rejects["id"]) == {i for i, n in lengths[row.setting].items() if n > limit}
        assert all(reason.endswith(f"over max_prompt_tokens={limit}") for reason in rejects["reason"])
        mine = scores[(scores["mode"] == row.mode) & (scores["setting"] == row.setting)]
        assert sorted(mine["id"]) == sorted(predictions["id"])
        assert mine["exact_match"].mean() == pytest.approx(row.exact_match)
    assert set(scores.loc[scores["setting"] == "closed_book", "n_docs"]) == {0}
    assert set(scores.loc[scores["setting"] == "prefilled_1doc", "n_docs"]) == {1}


def test_bad_records_are_rejected_with_reasons(run):
    run, _, _ = run
    counts = json.loads((run / "results/cings/eval/demo/records.counts.json").read_text())
    assert counts["in"] == N_QUESTIONS + len(BAD_LINES) + 1
    assert (counts["out"], counts["rejected"]) == (N_QUESTIONS, len(BAD_LINES) + 1)
    reasons = list(pd.read_parquet(run / "results/cings/eval/demo/records.rejects.parquet")["reason"])
    for expected in [reason for reason, _ in BAD_LINES] + ["duplicate id"]:
        assert sum(expected in reason for reason in reasons) == 1, (expected, reasons)
    for mode in MODES:
        for setting in SETTINGS:
            assert (run / f"logs/cings/eval/demo/{mode}/{setting}.log").stat().st_size > 0
        assert (run / f"benchmarks/cings/eval/demo/{mode}.tsv").is_file()


def test_rerun_has_nothing_to_do_and_a_changed_setting_reruns_inference(run):
    run, _, _ = run
    out = _snakemake(run, "--cores", "2", "-n")
    assert "Nothing to be done" in out.stdout + out.stderr
    config = (run / "config.yaml").read_text().replace(f"ndocs: {NDOCS}", f"ndocs: {NDOCS + 1}")
    (run / "config.yaml").write_text(config)
    out = _snakemake(run, "--cores", "2", "-n")
    planned = out.stdout + out.stderr
    assert "cings_infer" in planned and "cings_eval_records" not in planned

"""CINGS training and the vision-language step through the real snakemake CLI.

The checks read the session's demo run (conftest.py `demo`): its `methods: [cvc, cings]` builds
these CINGS targets with the very jobs and params that a `methods: [cings]` run plans, which
test_a_cings_only_run_would_reuse_the_demos_outputs proves; a dry run shows that `methods: [cings]`
alone plans no CVC job and no CVC model.
"""
import json

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from groundflow.cings.fixture import make_selfrag_fixture
from groundflow.generate.text import generate_texts, render_prompts
from groundflow.generate.vision import generate_vision_texts, render_vision_prompts
from groundflow.models.llava import load_llava
from groundflow.models.spec import ModelSpec
from snakemake_runner import ROOT, make_run_dir, snakemake

pytestmark = pytest.mark.workflow

MODES = ["no_context", "context", "no_mask"]
OVERRIDES = {"methods": ["cings"]}  # CVC's tiny models are then not built either
TARGETS = ["results/cings/stage_counts.tsv", "results/cings/rejects.parquet", "results/cings/vl/context/stage2/model"] + [
    f"results/cings/train/{mode}/model" for mode in MODES
]


@pytest.fixture(scope="module")
def run(demo):
    """The session's demo run folder: no CINGS training of this module's own (see the docstring)."""
    return demo


def _summary(run, *args) -> list[tuple[str, str]]:
    """(output file, rule) of every job in the DAG of `args` (`snakemake --summary`)."""
    lines = snakemake(run, *args, "--summary").stdout.splitlines()
    assert lines[0].startswith("output_file\t"), lines[:3]
    return [(f[0], f[2]) for f in (line.split("\t") for line in lines[1:] if line.strip())]


def test_cings_alone_plans_no_cvc_job_or_model(tmp_path):
    folder = make_run_dir(tmp_path, OVERRIDES)
    planned = _summary(folder)  # the default target, `all`
    rules = {rule for _, rule in planned}
    assert {"cings_train", "cings_vl_stage2", "cings_infer"} <= rules
    assert not [rule for rule in rules if not rule.startswith(("cings_", "plot_cings_")) and rule != "build_tiny_model"], rules
    # CVC's tiny models are not built for CINGS: only its LM and vision tower
    assert {out for out, rule in planned if rule == "build_tiny_model"} == {
        "resources/models/tiny-llama3", "resources/models/tiny-clip"}
    assert set(TARGETS) <= {out for out, _ in planned}


def test_counts_add_up_and_bad_records_are_rejected_with_reasons(run, tmp_path):
    counts = pd.read_csv(run / "results/cings/stage_counts.tsv", sep="\t").set_index("stage")
    assert list(counts.index) == ["convert"] + [f"tokenize:{m}" for m in MODES] + [f"train:{m}" for m in MODES]
    assert (counts["in"] == counts["out"] + counts["rejected"]).all()
    expected = make_selfrag_fixture(tmp_path, seed=0, n_records=16)  # the demo's fixture, same seed
    assert counts.loc["convert", "in"] == expected["n_lines"]
    assert counts.loc["convert", "rejected"] == len(expected["bad_cases"]) > 0
    for mode in MODES:
        assert counts.loc[f"tokenize:{mode}", "in"] == counts.loc["convert", "out"]
        assert counts.loc[f"train:{mode}", "in"] == counts.loc[f"tokenize:{mode}", "out"] > 0
    rejects = pd.read_parquet(run / "results/cings/rejects.parquet").set_index("id")
    assert len(rejects) == counts["rejected"].sum()
    for case in expected["bad_cases"]:
        assert rejects.loc[case["id"], "stage"] == "convert"
        assert case["reason"] in rejects.loc[case["id"], "reason"], case


def test_the_cache_masks_passages_only_in_the_cings_mode(run):
    masked = {}
    for mode in MODES:
        table = pq.read_table(run / f"results/cings/tokenized/{mode}.parquet").to_pandas()
        masked[mode] = int(table["n_masked_in_assistant"].sum())
        summary = json.loads((run / f"results/cings/train/{mode}/train_summary.json").read_text())
        assert summary["examples"] == len(table) and summary["steps"] > 0
    assert masked["context"] > 0 and masked["no_mask"] == 0 and masked["no_context"] == 0


def test_one_checkpoint_per_mode_loads_and_generates(run):
    weights = {}
    for mode in MODES:
        path = run / f"results/cings/train/{mode}/model"
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        prompt = render_prompts(tokenizer, [[{"role": "user", "content": "Into which sea does the Danube flow?"}]],
                                assistant_prefix="## Context Danube\nThe Danube empties into the Black Sea. ## Answer")
        assert prompt[0].startswith("<|begin_of_text|><|start_header_id|>system")
        texts = generate_texts(model, tokenizer, prompt, max_new_tokens=4)
        assert len(texts) == 1 and isinstance(texts[0][0], str)
        weights[mode] = load_file(path / "model.safetensors")
    for a, b in [("context", "no_mask"), ("context", "no_context"), ("no_mask", "no_context")]:
        assert not torch.equal(weights[a]["lm_head.weight"], weights[b]["lm_head.weight"]), (a, b)


def test_vl_checkpoint_loads_and_generates(run):
    stage1 = json.loads((run / "results/cings/vl/context/stage1/train_summary.json").read_text())
    stage2 = json.loads((run / "results/cings/vl/context/stage2/train_summary.json").read_text())
    assert stage1["is_llava"] and stage2["is_llava"]
    assert stage1["trainable_parameters"] < stage2["trainable_parameters"]  # projector alone, then LM + projector
    model, processor = load_llava(ModelSpec(str(run / "results/cings/vl/context/stage2/model")))
    prompts = render_vision_prompts(processor, [[{"role": "user", "content": "What shape is in the image?"}]], [True])
    image = Image.open(run / "resources/fixtures/cings/vl/images/shape_000.png")
    texts = generate_vision_texts(model, processor, prompts, [image], max_new_tokens=4)
    assert len(texts) == 1 and isinstance(texts[0][0], str)


def test_a_cings_only_run_would_reuse_the_demos_outputs(run, tmp_path):
    # Snakemake reruns a job whose params, code or inputs changed: nothing to do for a
    # `methods: [cings]` config means its CINGS jobs are the demo's, so the checks above hold
    # for a CINGS-only run. (Also the second-run check: the demo's own config has nothing to do.)
    cings_only = tmp_path / "cings_only.yaml"
    cings_only.write_text(yaml.safe_dump(OVERRIDES))
    for extra in ([], ["--configfile", str(cings_only)]):
        out = snakemake(run, "-n", "--cores", "2", *TARGETS, *extra)  # --configfile takes 1+ files
        assert "Nothing to be done" in out.stdout + out.stderr, (extra, out.stdout[-3000:])


def test_paper_preset_plans_three_trainings_and_two_llavas(tmp_path):
    import re

    run = make_run_dir(tmp_path)
    (run / "preset.yaml").write_text((ROOT / "configs" / "cings-paper.yaml").read_text())
    targets = TARGETS[:2] + [f"results/cings/vl/{mode}/stage2/model" for mode in ("context", "no_context")]
    out = snakemake(run, *targets, "-n", "--configfile", "preset.yaml", "--quiet", "rules")
    text = out.stdout + out.stderr
    table = text[text.index("Job stats:"):]
    counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}
    assert counts["cings_convert"] == 1 and counts["cings_tokenize"] == 1 and counts["cings_train"] == 3
    assert counts["cings_vl_stage1"] == 2 and counts["cings_vl_stage2"] == 2
    assert "build_tiny_model" not in counts and "cings_fixture" not in counts  # hub ids, the user's data


def test_the_demo_evaluates_every_set_in_its_settings_and_metrics_and_pope(run):
    """The demo's table holds a row per set x mode x (the set's settings) x (its metrics), one set
    built by retrieval; POPE scores the VL checkpoint on every split."""
    from groundflow.cings.inference import resolve_dataset

    config = yaml.safe_load((run / "config.yaml").read_text())
    inference = {"settings": config["cings"]["inference"]["settings"], "ndocs": config["cings"]["inference"]["ndocs"]}
    table = pd.read_parquet(run / "results/cings/eval/table.parquet")
    expected = []
    for entry in config["cings"]["inference"]["datasets"]:
        dataset = resolve_dataset(entry, inference)
        expected += [(dataset.name, mode, setting, metric)
                     for mode in MODES for setting in dataset.settings for metric in dataset.metrics]
    assert sorted(map(tuple, table[["dataset", "mode", "setting", "metric"]].values.tolist())) == sorted(expected)
    assert {"label_accuracy", "rouge_l", "exact_match", "accuracy"} <= set(table["metric"])
    assert table["score"].between(0, 1).all() and (table["n"] > 0).all()
    built = [e["name"] for e in config["cings"]["inference"]["datasets"] if e.get("questions")]
    assert built, "the demo builds a set by retrieval"
    for name in built:
        counts = json.loads((run / f"results/cings/eval/{name}/built.counts.json").read_text())
        assert counts["in"] == counts["out"] + counts["rejected"] and counts["rejected"] > 0
        assert counts["produced_by"]["top_k"] == config["cings"]["retrieval"]["top_k"]
    pope = pd.read_parquet(run / "results/cings/eval/pope/table.parquet")
    assert sorted(zip(pope["model"], pope["split"])) == sorted(
        (mode, split) for mode in config["cings"]["vl"]["modes"] for split in ["random", "popular", "adversarial"])
    assert ((pope["tp"] + pope["fp"] + pope["tn"] + pope["fn"]) == pope["n"]).all()

"""GWYS' data, selection and evaluation scripts as Snakemake runs them (tests/stage/script_harness.py),
on the demo fixture and a tiny Qwen2.5-VL fitted to its texts: fixture -> SFT records and pool/eval
tables (every planted bad record rejected) -> K rollouts -> selection + plot -> evaluation of every set
-> the evaluation table."""

import json

import pytest
from PIL import Image

from groundflow.gwys.fixture import fixture_texts
from groundflow.io import read_table
from groundflow.io.schemas import table_schema
from groundflow.models.qwen_vl import build_tiny_qwen_vl
from script_harness import FakeSnakemake, run_script, stage_outputs

K = 4


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("gwys")
    folder = root / "fixture"
    out = {"cot": folder / "cot.json", "pool": folder / "pool.json", "eval": folder / "eval.json",
           "images": folder / "images", "summary": folder / "summary.json"}
    run_script("gwys_fixture.py", FakeSnakemake(input={}, output={k: str(v) for k, v in out.items()},
                                                params={"seed": 0, "include_bad": True}, log=[str(root / "fixture.log")]))
    model = build_tiny_qwen_vl(root / "tiny-gwys-qwen", seed=0, texts=fixture_texts(0))
    generation = {"backend": "hf", "model": {"path": str(model), "device": "cpu"}, "batch_size": 8}
    return {"root": root, "fixture": folder, "summary": json.loads(out["summary"].read_text()), "generation": generation}


def _log(run, name):
    return [str(run["root"] / "logs" / f"{name}.log")]


def _pool(run, name):
    out = {"pool": str(run["root"] / name / "pool.parquet"), "rejects": str(run["root"] / name / "rejects.parquet"),
           "counts": str(run["root"] / name / "counts.json")}
    if not (run["root"] / name / "pool.parquet").exists():
        run_script("gwys_pool.py", FakeSnakemake(
            input={"rows": str(run["fixture"] / f"{name}.json")}, output=out,
            params={"name": name, "media_root": str(run["fixture"]), "settings": {"problem_types": ["multiple choice", "numerical"]}},
            log=_log(run, f"pool_{name}")))
    return out


def _check_planted(rejects_path, planted):
    rejects = read_table(rejects_path)
    reasons = dict(zip(rejects["id"], rejects["reason"]))
    assert sorted(reasons) == sorted(case["id"] for case in planted)
    for case in planted:
        assert case["reason"] in reasons[case["id"]], (case, reasons[case["id"]])


def test_sft_data_script(run):
    out = {"records": str(run["root"] / "sft" / "records.json"), "rejects": str(run["root"] / "sft" / "rejects.parquet"),
           "counts": str(run["root"] / "sft" / "counts.json")}
    run_script("gwys_sft_data.py", FakeSnakemake(input={"records": str(run["fixture"] / "cot.json")}, output=out,
                                                 params={"image_root": str(run["fixture"])}, log=_log(run, "sft")))
    written = run["summary"]["files"]["cot"]
    records = json.loads(open(out["records"]).read())
    counts = json.loads(open(out["counts"]).read())
    assert len(records) == written["good"] and (counts["in"], counts["rejected"]) == (written["entries"], len(written["bad"]))
    assert all((run["fixture"] / r["image"]).is_file() and r["conversations"][0]["value"].startswith("<image>\n")
               for r in records)
    _check_planted(out["rejects"], written["bad"])


@pytest.mark.parametrize("name", ["pool", "eval"])
def test_pool_script(run, name):
    out = _pool(run, name)
    written = run["summary"]["files"][name]
    pool = read_table(out["pool"])
    assert len(pool) == written["good"] and json.loads(open(out["counts"]).read())["in"] == written["entries"]
    assert table_schema("gwys_pool").names == list(pool.columns)
    _check_planted(out["rejects"], written["bad"])


def test_rollouts_selection_and_plot(run):
    pool = _pool(run, "pool")
    folder = run["root"] / "rollouts"
    rollouts = stage_outputs(folder, "shard0")
    settings = {"k": K, "max_new_tokens": 12, "format_weight": 0.1, "seed": 1}
    run_script("gwys_rollouts.py", FakeSnakemake(
        input={"records": pool["pool"]}, output=rollouts,
        params={"settings": settings, "generation": run["generation"], "media_root": str(run["fixture"]),
                "chunk_size": 10, "progress_dir": str(folder / "progress")},
        log=_log(run, "rollouts")))
    table = read_table(rollouts["kept"])
    counts = json.loads(open(rollouts["counts"]).read())
    assert len(table) == counts["in"] == len(read_table(pool["pool"])) and counts["rejected"] == 0
    assert table["completions"].map(len).eq(K).all() and table["reward"].map(len).eq(K).all()
    assert (table["distinct"] > 1).all()  # sampling really samples: no group of one text
    sampling = counts["produced_by"]["sampling"]
    assert (sampling["temperature"], sampling["top_p"], sampling["top_k"], sampling["repetition_penalty"]) == (1.0, 0.95, 50, 1.0)
    assert counts["produced_by"]["generator"]["pad_square"] is False

    selected = {"table": str(run["root"] / "selection" / "table.parquet"),
                "train_pool": str(run["root"] / "selection" / "train_pool.parquet"),
                "summary": str(run["root"] / "selection" / "summary.json")}
    # the random tiny model answers nothing right: every variance is 0, so only a 0 threshold keeps any
    selection_settings = {"variance_threshold": 0.0, "mean_threshold": 0.5, "keep_frac": 0.5}
    run_script("gwys_select.py", FakeSnakemake(input={"rollouts": [rollouts["kept"]], "pool": pool["pool"]},
                                               output=selected, params={"selection": selection_settings},
                                               log=_log(run, "select")))
    selection = read_table(selected["table"])
    train_pool = read_table(selected["train_pool"])
    assert len(selection) == len(table) and set(selection["class"]) == {"medium"}
    assert len(train_pool) == (len(table) + 1) // 2 and set(train_pool["id"]) == set(selection.loc[selection["kept"], "id"])
    assert json.loads(open(selected["summary"]).read())["kept"] == len(train_pool)

    plot = run["root"] / "report" / "selection.png"
    run_script("plot_gwys_selection.py", FakeSnakemake(input={"table": selected["table"]}, output={"plot": str(plot)},
                                                       params={"selection": selection_settings}, log=_log(run, "plot")))
    with Image.open(plot) as image:
        assert image.format == "PNG"


def test_eval_every_set_and_the_table(run):
    sets = [{"name": "fixture_eval", "media_root": str(run["fixture"])}, {"name": "pool", "media_root": str(run["fixture"])}]
    tables = [_pool(run, "eval")["pool"], _pool(run, "pool")["pool"]]
    folder = run["root"] / "eval" / "sft"
    out = {"predictions": str(folder / "predictions.parquet"), "rejects": str(folder / "rejects.parquet"),
           "scores": str(folder / "scores.json")}
    run_script("gwys_eval.py", FakeSnakemake(
        input={"sets": tables}, output=out,
        params={"form": "four_tag", "max_new_tokens": 10, "sets": sets, "generation": run["generation"], "model": "sft",
                "chunk_size": 16, "progress_dir": str(folder / "progress")},
        log=_log(run, "eval")))
    predictions = read_table(out["predictions"])
    scores = json.loads(open(out["scores"]).read())
    n_eval, n_pool = (len(read_table(t)) for t in tables)
    assert scores["counts"] == {"stage": "gwys_eval", "in": n_eval + n_pool, "out": n_eval + n_pool, "rejected": 0}
    assert predictions.groupby("set").size().to_dict() == {"fixture_eval": n_eval, "pool": n_pool}
    assert scores["sets"]["fixture_eval"]["n"] == n_eval
    assert set(scores["sets"]["fixture_eval"]["by_source"]) == {"pope", "shapes", "count"}
    assert scores["produced_by"]["sampling"]["do_sample"] is False
    assert not (folder / "progress").exists()
    # the random model's outputs score as the rules say
    from groundflow.gwys.evaluate import EvalSettings, score_output
    pool_rows = read_table(tables[0]).set_index("id")
    for row in predictions[predictions["set"] == "fixture_eval"].head(5).itertuples():
        expected = score_output(row.output, pool_rows.loc[row.sample], EvalSettings(form="four_tag"))
        assert (row.prediction, row.score, row.formatted) == (expected["prediction"], expected["score"], expected["formatted"])

    table = {"table": str(run["root"] / "eval" / "table.tsv"), "markdown": str(run["root"] / "eval" / "table.md")}
    run_script("gwys_eval_table.py", FakeSnakemake(input={"scores": [out["scores"], out["scores"]]}, output=table,
                                                   params={"rows": ["base", "sft"]}, log=_log(run, "table")))
    lines = open(table["table"]).read().splitlines()
    assert lines[0] == "model\tfixture_eval\tpool" and [l.split("\t")[0] for l in lines[1:]] == ["base", "sft"]
    assert open(table["markdown"]).read().startswith("| model | fixture_eval | pool |")

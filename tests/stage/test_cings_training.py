"""CINGS training on the tiny Llama-3-style model: convert, tokenize and the counts through their
workflow scripts and the shared stage machinery (declared tables, accounting, a resumed
tokenisation), the tokenisation cache through the shared trainer (LoRA with embeddings and LM
head trained in full, the per-epoch step decay, batches by length), and the vision-language step
(LLaVA on the trained LM, projector-only stage 1, stage 2)."""
import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPVisionModel, LlavaForConditionalGeneration

from groundflow.cings import training
from groundflow.cings.fixture import make_selfrag_fixture, make_vl_fixture
from groundflow.cings.labels import LabelSettings
from groundflow.cings.training import (
    TokenizeStep,
    convert_records,
    load_tokenizer,
    same_layout,
    stage_counts,
    tokenize_mode,
    train_mode,
    train_vl_stage,
    write_tokenized,
)
from groundflow.config import load_schema
from groundflow.io.schemas import table_schema
from groundflow.io.stage import AccountingError
from groundflow.generate.text import generate_texts, render_prompts
from groundflow.generate.vision import generate_vision_texts, render_vision_prompts
from groundflow.models.llava import build_tiny_clip_vision, compose_llava, load_llava
from groundflow.models.spec import ModelSpec
from groundflow.demo import build_demo_model
from groundflow.train.config import epoch_step_factor
from script_harness import FakeSnakemake, run_script

SYSTEM = "You are a helpful language assistant."
LORA = {"r": 16, "alpha": 32, "dropout": 0.05,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "modules_to_save": ["embed_tokens", "lm_head"]}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return build_demo_model("llama3", tmp_path_factory.mktemp("models") / "tiny-llama3", seed=0)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cings-data")
    make_selfrag_fixture(folder, seed=0, n_records=10)
    frame, rejects, counts = convert_records(folder / "selfrag.jsonl", variant="multi", keep_no_retrieval=False, input_separator="\n\n")
    assert counts["in"] == counts["out"] + counts["rejected"] and counts["out"] == 10
    return frame


def _cache(tmp_path, records, base, mode, max_length=512):
    table, rejects, counts = tokenize_mode(
        records, load_tokenizer(str(base)), settings=LabelSettings(mode), system_prompt=SYSTEM, max_length=max_length, batch_size=4
    )
    write_tokenized(table, tmp_path / f"{mode}.parquet")
    (tmp_path / f"{mode}.counts.json").write_text(json.dumps(counts))
    return table, rejects, counts


def _llava_state(path):
    return LlavaForConditionalGeneration.from_pretrained(path).state_dict()


def test_epoch_step_factor():
    factor = epoch_step_factor(steps_per_epoch=3, gamma=0.85)
    assert [round(factor(step), 6) for step in range(7)] == [1, 1, 1, 0.85, 0.85, 0.85, 0.7225]
    warm = epoch_step_factor(steps_per_epoch=4, gamma=0.5, warmup_steps=2)
    assert [warm(step) for step in range(6)] == [0, 0.5, 1, 1, 0.5, 0.5]


def test_cache_rejects_overlong_records_with_their_length(tmp_path, records, base):
    table, rejects, counts = _cache(tmp_path, records, base, "context", max_length=90)
    assert counts["in"] == len(records) == counts["out"] + counts["rejected"]
    assert counts["rejected"] > 0 and table.num_rows == counts["out"]
    assert all("more than max_length 90" in reason for reason in rejects["reason"])
    assert max(table.column("n_tokens").to_pylist()) <= 90


def test_lora_training_from_the_cache_with_step_decay(tmp_path, records, base):
    table, _, counts = _cache(tmp_path, records, base, "context")
    assert counts["masked_assistant_tokens"] > 0
    train = {
        "learning_rate": 1e-3, "lr_scheduler_type": "epoch_step", "lr_scheduler_kwargs": {"gamma": 0.85},
        "warmup_ratio": 0.0, "num_train_epochs": 3, "per_device_batch_size": 4, "max_length": 512,
        "save_steps": 100, "group_by_length": True, "lora": LORA, "report_to": "none",
    }
    out = tmp_path / "train"
    model_dir = train_mode(tokenized_path=str(tmp_path / "context.parquet"), tokenize_counts_path=str(tmp_path / "context.counts.json"),
                           model={"path": str(base)}, train=train, out_dir=str(out))
    summary = json.loads((out / "train_summary.json").read_text())
    # 10 examples, batch 4: 3 optimizer steps per epoch (the last one partial), 3 epochs
    assert summary["steps"] == 9 and summary["examples"] == 10 and not summary["skipped"]
    # the LR each step took: the original's StepLR stepped per epoch, lr * 0.85**epoch
    rates = [round(e["learning_rate"], 9) for e in summary["learning_rates"]]
    assert rates == [1e-3] * 3 + [8.5e-4] * 3 + [7.225e-4] * 3
    base_model = AutoModelForCausalLM.from_pretrained(base)
    embeddings = base_model.get_input_embeddings().weight.numel()
    assert summary["trainable_parameters"] > 2 * embeddings  # embed_tokens and lm_head in full, plus LoRA

    trained = load_file(Path(model_dir) / "model.safetensors")
    assert not torch.equal(trained["model.embed_tokens.weight"], base_model.model.embed_tokens.weight)
    assert not torch.equal(trained["lm_head.weight"], base_model.lm_head.weight)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert "Cutting Knowledge Date" in tokenizer.chat_template
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    prompt = render_prompts(tokenizer, [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Which sea?"}]],
                            assistant_prefix="## Context Danube\nThe Danube flows into the Black Sea. ## Answer")
    texts = generate_texts(model, tokenizer, prompt, max_new_tokens=6)
    assert len(texts) == 1 and isinstance(texts[0][0], str)


def test_a_separate_tokenizer_trains_and_a_different_one_is_refused(tmp_path, records, base):
    """CINGS trains the base model with the Instruct tokenizer (`train.tokenizer`); the cache must
    have been made with the tokenizer the trainer loads."""
    _cache(tmp_path, records, base, "no_context")
    instruct = tmp_path / "instruct-tokenizer"
    AutoTokenizer.from_pretrained(base).save_pretrained(instruct)
    cache = {"tokenized_path": str(tmp_path / "no_context.parquet"), "tokenize_counts_path": str(tmp_path / "no_context.counts.json")}
    train = {"tokenizer": str(instruct), "max_steps": 1, "per_device_batch_size": 2, "report_to": "none", "save_steps": 5}
    model_dir = train_mode(**cache, model={"path": str(base)}, train=train, out_dir=str(tmp_path / "full"))
    assert (Path(model_dir) / "tokenizer.json").is_file()
    assert json.loads((tmp_path / "full" / "train_summary.json").read_text())["config"]["lora"] is None  # full fine-tuning

    other = AutoTokenizer.from_pretrained(instruct)
    other.chat_template = other.chat_template.replace("26 Jul 2024", "01 Jan 2025")
    other.save_pretrained(tmp_path / "other-tokenizer")
    with pytest.raises(ValueError, match="re-run tokenisation"):
        train_mode(**cache, model={"path": str(base)}, train={**train, "tokenizer": str(tmp_path / "other-tokenizer")},
                   out_dir=str(tmp_path / "refused"))
    rows = pq.read_table(tmp_path / "no_context.parquet").to_pylist()
    assert all(r["n_masked_in_assistant"] == 0 for r in rows)  # no passage in the text, nothing masked


def test_vl_step_stage1_trains_only_the_projector_then_stage2_the_lm(tmp_path, base):
    vision = build_tiny_clip_vision(tmp_path / "tiny-clip", seed=0)
    make_vl_fixture(tmp_path / "vl", seed=0, n_images=4)
    composed = compose_llava(base, vision, tmp_path / "base", seed=0)
    before = _llava_state(composed)
    lm = AutoModelForCausalLM.from_pretrained(base).state_dict()
    for name, tensor in lm.items():
        saved = before[name.replace("model.", "model.language_model.", 1)] if name.startswith("model.") else before[name]
        assert torch.equal(saved, tensor), name
    vision_weights = CLIPVisionModel.from_pretrained(vision).state_dict()
    assert all(torch.equal(before[f"model.vision_tower.{k}"], v) for k, v in vision_weights.items())

    common = {"learning_rate": 1e-2, "max_steps": 2, "per_device_batch_size": 2, "max_length": 256, "save_steps": 2, "report_to": "none"}
    with pytest.raises(ValueError, match="projector alone"):
        train_vl_stage(stage=1, base_model={"path": str(composed)}, records_path=str(tmp_path / "vl/pretrain.json"),
                       image_folder=str(tmp_path / "vl/images"), train=common, out_dir=str(tmp_path / "s1"))
    stage1 = train_vl_stage(stage=1, base_model={"path": str(composed)}, records_path=str(tmp_path / "vl/pretrain.json"),
                            image_folder=str(tmp_path / "vl/images"), train={**common, "train_language_model": False},
                            out_dir=str(tmp_path / "s1"))
    after1 = _llava_state(stage1)
    changed = {k for k in before if not torch.equal(before[k], after1[k])}
    assert changed and all(k.startswith("model.multi_modal_projector.") for k in changed)

    stage2 = train_vl_stage(stage=2, base_model={"path": str(stage1)}, records_path=str(tmp_path / "vl/instruct.json"),
                            image_folder=str(tmp_path / "vl/images"), train=common, out_dir=str(tmp_path / "s2"),
                            system_prompt="You are a helpful language and vision assistant.")
    prepared = json.loads((tmp_path / "s2" / "records.json").read_text())
    assert all(r["conversations"][0]["from"] == "system" for r in prepared)
    after2 = _llava_state(stage2)
    assert not torch.equal(after1["model.language_model.layers.0.mlp.up_proj.weight"], after2["model.language_model.layers.0.mlp.up_proj.weight"])
    assert torch.equal(after1["model.vision_tower.embeddings.patch_embedding.weight"], after2["model.vision_tower.embeddings.patch_embedding.weight"])

    model, processor = load_llava(ModelSpec(str(stage2)))
    prompts = render_vision_prompts(processor, [[{"role": "user", "content": "What shape is in the image?"}]], [True])
    texts = generate_vision_texts(model, processor, prompts, [Image.open(tmp_path / "vl/images/shape_000.png")], max_new_tokens=5)
    assert len(texts) == 1 and len(texts[0]) == 1


# ---------------------------------------------------------------- the stage scripts

MODES = ["no_context", "context", "no_mask"]
CINGS_SCHEMA = load_schema()["properties"]["cings"]["properties"]
DATA = {key: spec["default"] for key, spec in CINGS_SCHEMA["data"]["properties"].items()}
LABELS = {key: spec["default"] for key, spec in CINGS_SCHEMA["labels"]["properties"].items()}


def _convert(folder: Path, records: str, log: Path) -> dict:
    outputs = {"table": folder / "records.parquet", "filtered": folder / "filtered.jsonl",
               "rejects": folder / "rejects.parquet", "counts": folder / "counts.json"}
    run_script("cings_convert.py", FakeSnakemake(input={"records": records}, output={k: str(v) for k, v in outputs.items()},
                                                 params={"records": records, "opts": DATA}, log=[str(log)]))
    return outputs


def _tokenize(folder: Path, table: Path, base, *, modes=MODES, max_length=512, progress=True, batch_size=4):
    outputs = {"tables": [str(folder / f"{m}.parquet") for m in modes],
               "rejects": [str(folder / f"{m}.rejects.parquet") for m in modes],
               "counts": [str(folder / f"{m}.counts.json") for m in modes]}
    params = {"modes": list(modes), "model": {"path": str(base)}, "labels": LABELS, "system_prompt": SYSTEM,
              "tokenize": {"batch_size": batch_size}, "train": {"max_length": max_length}}
    if progress:
        params["progress_dirs"] = [str(folder / f".progress-{m}") for m in modes]
    run_script("cings_tokenize.py", FakeSnakemake(input={"table": str(table), "model": str(base), "tokenizer": []},
                                                  output=outputs, params=params,
                                                  log=[str(folder / "logs" / f"{m}.log") for m in modes]))
    return outputs


def test_convert_tokenize_and_counts_scripts_write_declared_tables_and_account_for_every_record(tmp_path, base):
    fixture = make_selfrag_fixture(tmp_path / "fixture", seed=0, n_records=10)
    converted = _convert(tmp_path / "data", fixture["records"], tmp_path / "logs/convert.log")
    records = pq.read_table(converted["table"])
    assert records.schema.equals(table_schema("cings_records"), check_metadata=False)
    assert pq.read_schema(converted["rejects"]).equals(table_schema("rejects"), check_metadata=False)
    convert_counts = json.loads(converted["counts"].read_text())
    assert (convert_counts["in"], convert_counts["out"]) == (fixture["n_lines"], 10)
    assert convert_counts["rejected"] == len(fixture["bad_cases"]) > 0
    assert convert_counts["produced_by"] == {k: DATA[k] for k in ("variant", "keep_no_retrieval", "input_separator")}
    filtered = [json.loads(line) for line in converted["filtered"].read_text().splitlines()]
    assert [r["id"] for r in filtered] == records.column("id").to_pylist()

    tokenized = _tokenize(tmp_path / "tokenized", converted["table"], base)
    fingerprint = training.tokenizer_fingerprint(load_tokenizer(str(base)))
    for mode, table, counts in zip(MODES, tokenized["tables"], tokenized["counts"]):
        assert same_layout(pq.read_schema(table), table_schema("cings_tokenized"))
        counts = json.loads(Path(counts).read_text())
        assert counts["stage"] == f"tokenize:{mode}" and counts["in"] == 10 == counts["out"] + counts["rejected"]
        assert counts["chunks"] == 3  # batch_size 4: the job ran in chunks through StageJob
        assert counts["produced_by"]["tokenizer"] == fingerprint and counts["produced_by"]["mode"] == mode
        assert not (tmp_path / "tokenized" / f".progress-{mode}").exists()  # removed once the mode is written
        log = (tmp_path / "tokenized" / "logs" / f"{mode}.log").read_text()
        assert f"tokenize:{mode}: in 10 = out 10 + rejected 0" in log and "supervised_tokens" in log
    masked = {m: int(pd.read_parquet(t)["n_masked_in_assistant"].sum()) for m, t in zip(MODES, tokenized["tables"])}
    assert masked["context"] > 0 and masked["no_mask"] == masked["no_context"] == 0

    # the trainer's summaries as cings_train writes them; one record skipped in no_mask
    summaries = []
    for mode in MODES:
        path = tmp_path / "train" / mode / "train_summary.json"
        path.parent.mkdir(parents=True)
        skipped = [{"id": "selfrag-0001", "reason": "no token left"}] if mode == "no_mask" else []
        path.write_text(json.dumps({"records": 10, "examples": 10 - len(skipped), "skipped": skipped}))
        summaries.append(str(path))
    out = {"counts": str(tmp_path / "stage_counts.tsv"), "rejects": str(tmp_path / "rejects.parquet")}
    run_script("cings_counts.py", FakeSnakemake(
        input={"convert": str(converted["counts"]), "convert_rejects": str(converted["rejects"]),
               "tokenize": tokenized["counts"], "tokenize_rejects": tokenized["rejects"], "summaries": summaries},
        output=out, params={"modes": MODES}, log=[str(tmp_path / "logs/counts.log")]))
    counts = pd.read_csv(out["counts"], sep="\t")
    assert list(counts.columns) == table_schema("cings_stage_counts").names
    assert list(counts["stage"]) == ["convert"] + [f"tokenize:{m}" for m in MODES] + [f"train:{m}" for m in MODES]
    rejects = pd.read_parquet(out["rejects"])
    assert len(rejects) == counts["rejected"].sum() == len(fixture["bad_cases"]) + 1
    assert rejects.loc[rejects["stage"] == "train:no_mask", "id"].tolist() == ["selfrag-0001"]


def test_a_killed_tokenisation_resumes_from_its_finished_chunks(tmp_path, base, records, monkeypatch):
    records_path = tmp_path / "records.parquet"
    records.to_parquet(records_path)
    fresh = _tokenize(tmp_path / "fresh", records_path, base, modes=["context"])
    calls = {"n": 0}
    real_call = TokenizeStep.__call__

    def dies_on_the_second_chunk(self, chunk):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")  # as a job killed part way
        return real_call(self, chunk)

    monkeypatch.setattr(TokenizeStep, "__call__", dies_on_the_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        _tokenize(tmp_path / "resumed", records_path, base, modes=["context"])
    assert (tmp_path / "resumed" / ".progress-context" / "chunk-00000.kept.parquet").is_file()
    monkeypatch.setattr(TokenizeStep, "__call__", real_call)
    resumed = _tokenize(tmp_path / "resumed", records_path, base, modes=["context"])
    counts = json.loads(Path(resumed["counts"][0]).read_text())
    assert counts["chunks_reused"] == 1 and counts["items_recomputed"] == len(records) - 4
    assert Path(resumed["tables"][0]).read_bytes() == Path(fresh["tables"][0]).read_bytes()


def test_a_mode_with_every_record_rejected_fails_its_job_with_the_reason(tmp_path, base, records):
    records.to_parquet(tmp_path / "records.parquet")
    with pytest.raises(ValueError, match="tokenize:context: every record was rejected"):
        _tokenize(tmp_path / "tok", tmp_path / "records.parquet", base, modes=["context"], max_length=20, progress=False)
    rejects = pd.read_parquet(tmp_path / "tok" / "context.rejects.parquet")
    assert len(rejects) == len(records) and rejects["reason"].str.contains("more than max_length 20").all()


def test_convert_accounting_is_checked_against_the_input_ids(tmp_path, monkeypatch):
    fixture = make_selfrag_fixture(tmp_path, seed=0, n_records=4)
    real = training.convert_source_records

    def loses_the_last_record(sources, **options):
        kept, rejects = real(sources, **options)
        return kept[:-1], rejects

    monkeypatch.setattr(training, "convert_source_records", loses_the_last_record)
    with pytest.raises(AccountingError, match="1 input ids neither kept nor rejected"):
        convert_records(fixture["records"], variant="multi", keep_no_retrieval=False, input_separator="\n\n")


def test_stage_counts_check_the_steps_form_one_chain():
    convert = {"stage": "convert", "in": 12, "out": 10, "rejected": 2}
    tokenize = [{"stage": "tokenize:context", "in": 10, "out": 9, "rejected": 1}]
    frame = stage_counts(convert, tokenize, {"context": {"records": 9, "examples": 9, "skipped": []}})
    assert frame.to_dict("records")[-1] == {"stage": "train:context", "in": 9, "out": 9, "rejected": 0}
    with pytest.raises(AssertionError, match="train:context read 10 records, tokenize:context kept 9"):
        stage_counts(convert, tokenize, {"context": {"records": 10, "examples": 10, "skipped": []}})
    with pytest.raises(AssertionError, match="tokenize:context read 11 records, convert kept 10"):
        stage_counts(convert, [{**tokenize[0], "in": 11, "rejected": 2}], {})
    with pytest.raises(AssertionError, match=r"convert: in 12 != out 10 \+ rejected 1"):
        stage_counts({**convert, "rejected": 1}, tokenize, {})


def test_a_cache_counted_before_produced_by_held_the_fingerprint_is_refused_as_stale(tmp_path, records, base):
    _cache(tmp_path, records, base, "no_context")
    old = json.loads((tmp_path / "no_context.counts.json").read_text())
    old["tokenizer"] = old.pop("produced_by")["tokenizer"]  # where the fingerprint used to be
    (tmp_path / "no_context.counts.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match="re-run tokenisation"):
        train_mode(tokenized_path=str(tmp_path / "no_context.parquet"), tokenize_counts_path=str(tmp_path / "no_context.counts.json"),
                   model={"path": str(base)}, train={"max_steps": 1, "report_to": "none"}, out_dir=str(tmp_path / "out"))

"""The TSST training scripts in-process on the fixture's warm-up data and a tiny LLaVA: round 0 from
the base model, round 1 from round 0's checkpoints; the policy trains LoRA on the language model only
(vision tower and projector come out unchanged), the value model saves its head and round 1 starts
from it."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from groundflow.io.artifacts import atomic_write_json
from groundflow.models.llava import build_tiny_llava
from groundflow.models.value_model import VALUE_CONFIG_FILE, VALUE_HEAD_FILE, ValueScorer, load_value_model
from groundflow.train.chat_formats import VICUNA_V1_CHAT_TEMPLATE
from groundflow.tsst.fixture import FixturePaths, fixture_texts, make_tsst_fixture
from groundflow.tsst.prompts import load_question_prompts
from groundflow.tsst.training import tsst_train_settings
from groundflow.tsst.warmup import warmup_from_file

from script_harness import SCRIPTS, FakeSnakemake, run_script

TRAIN = {"learning_rate": 1e-3, "max_steps": 2, "per_device_batch_size": 4, "lr_scheduler_type": "constant",
         "warmup_ratio": 0.0, "save_steps": 1000, "report_to": "none",
         "lora": {"r": 4, "alpha": 8, "dropout": 0.05, "target_modules": "all-linear"}}


@pytest.fixture(scope="module")
def warmup(tmp_path_factory):
    root = tmp_path_factory.mktemp("tsst-train")
    paths = FixturePaths.under(root / "fixture")
    make_tsst_fixture(paths, seed=0)
    data = warmup_from_file(paths.cot, image_root=paths.images, prompts=load_question_prompts())
    for record in data.policy + data.value:  # as tsst_warmup_data writes them: opened from the run folder
        if record.get("image"):
            record["image"] = str(Path(paths.images) / record["image"])
    atomic_write_json(root / "policy.json", data.policy)
    atomic_write_json(root / "value.json", data.value)
    base = build_tiny_llava(root / "base", seed=0, texts=fixture_texts(0))
    return {"root": root, "images": paths.images, "policy": root / "policy.json", "value": root / "value.json",
            "base": base, "n_value": len(data.value), "n_policy": len(data.policy)}


def _smk(records, images, out_dir, *, start=None, value=None):
    inputs = {"records": str(records)}  # images: paths in the records (absolute here)
    if start:
        inputs["start"] = str(start)
    params = {"model": {"path": "unused-when-start-is-given" if start else None, "device": "cpu"}, "train": dict(TRAIN),
              "out_dir": str(out_dir)}
    if value is not None:
        params["value"] = value
    smk = FakeSnakemake(input=inputs, output={"model": str(out_dir / "model"), "summary": str(out_dir / "train_summary.json")},
                        params=params, log=[str(out_dir.parent / f"{out_dir.name}.log")])
    smk.scriptdir = str(SCRIPTS)
    return smk


def test_policy_script_trains_lora_on_the_language_model_only_and_a_round_starts_from_the_last(warmup):
    root = warmup["root"]
    round0 = root / "policy0"
    run_script("tsst_train_policy.py", _smk(warmup["policy"], warmup["images"], round0, start=warmup["base"]))
    summary = json.loads((round0 / "train_summary.json").read_text())
    assert summary["steps"] == 2 and summary["examples"] == warmup["n_policy"] and summary["skipped"] == []
    assert summary["config"]["chat_template"] == "vicuna_v1" and summary["config"]["train_projector"] is False
    base, trained = load_file(warmup["base"] / "model.safetensors"), load_file(round0 / "model" / "model.safetensors")
    frozen = [k for k in base if "vision_tower" in k or "multi_modal_projector" in k]
    changed = [k for k in base if "language_model" in k and not torch.equal(base[k], trained[k])]
    assert frozen and all(torch.equal(base[k], trained[k]) for k in frozen)
    assert changed and all(k.split(".")[-2].endswith("proj") for k in changed)
    assert json.loads((round0 / "model" / "processor_config.json").read_text()) is not None
    saved_template = (round0 / "model" / "chat_template.jinja").read_text()
    assert saved_template == VICUNA_V1_CHAT_TEMPLATE

    round1 = root / "policy1"
    run_script("tsst_train_policy.py", _smk(warmup["policy"], warmup["images"], round1, start=round0 / "model"))
    assert json.loads((round1 / "train_summary.json").read_text())["model"]["path"] == str(round0 / "model")
    assert (round1 / "model" / "model.safetensors").is_file()


def test_value_script_round_zero_gets_a_seeded_head_and_round_one_starts_from_the_saved_one(warmup):
    root = warmup["root"]
    round0 = root / "value0"
    run_script("tsst_train_value.py", _smk(warmup["value"], warmup["images"], round0, start=warmup["base"],
                                           value={"head_seed": 3, "bounded": False}))
    summary = json.loads((round0 / "train_summary.json").read_text())
    reload_check = summary["value"].pop("reload_check")
    assert summary["examples"] == warmup["n_value"] and summary["value"] == {"bounded": False, "head_seed": 3, "loss": "mse"}
    # the saved (LoRA-merged) checkpoint, reloaded, gives the trained model's values
    assert reload_check["rows"] == 8 and reload_check["max_abs_difference"] < 1e-5
    model_dir = round0 / "model"
    assert (model_dir / VALUE_HEAD_FILE).is_file()
    assert json.loads((model_dir / VALUE_CONFIG_FILE).read_text())["conversation_format"] == "vicuna_v1"
    head0 = load_file(model_dir / VALUE_HEAD_FILE)

    round1 = root / "value1"
    run_script("tsst_train_value.py", _smk(warmup["value"], warmup["images"], round1, start=model_dir))
    # round 1 started from round 0's trained head (a fresh head from the default seed 0 would differ)
    from groundflow.models.value_model import new_value_head

    assert not torch.allclose(head0["1.weight"], new_value_head(64, 0)[1].weight)
    start_model, processor = load_value_model({"path": str(model_dir), "device": "cpu"})
    assert torch.equal(start_model.score_head[1].weight.detach(), head0["1.weight"])
    values = ValueScorer(start_model, processor).score(["Which is warmer?\nA. ice\nB. fire"], ["Step 1: fire."], [None], [0])
    assert len(values) == 1


def test_tsst_settings_fill_the_recipe_and_refuse_another_format():
    assert tsst_train_settings({}) == {"chat_template": "vicuna_v1", "train_projector": False}
    assert tsst_train_settings({"train_projector": True})["train_projector"] is True
    with pytest.raises(ValueError, match="vicuna_v1"):
        tsst_train_settings({"chat_template": "model"})


def test_policy_loss_covers_the_assistant_chain_and_its_closing_eos_only(warmup):
    from transformers import AutoProcessor

    from groundflow.train.conversations import IGNORE_INDEX, assistant_only_labels

    processor = AutoProcessor.from_pretrained(warmup["base"])
    record = next(r for r in json.loads(warmup["policy"].read_text()) if r.get("image"))
    ids, labels = assistant_only_labels(record["conversations"], processor, chat_template="vicuna_v1", max_length=4096)
    supervised = [i for i, label in zip(ids, labels) if label != IGNORE_INDEX]
    tokenizer = processor.tokenizer
    assert supervised[-1] == tokenizer.eos_token_id == ids[-1]
    assert tokenizer.decode(supervised[:-1]).strip() == record["conversations"][1]["value"].strip()
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    assert image_id in ids and image_id not in supervised

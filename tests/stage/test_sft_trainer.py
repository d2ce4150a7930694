import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from groundflow.models.causal_lm import build_tiny_causal_lm
from groundflow.models.llava import build_tiny_llava, load_llava
from groundflow.models.spec import ModelSpec
from groundflow.models.vision_families import LLAVA
from groundflow.train.conversations import IGNORE_INDEX, assistant_mask_fn, assistant_only_labels
from groundflow.train.config import SFTConfig
from groundflow.train.data import SFTCollator, build_examples
from groundflow.train.model_prep import lora_target_names
from groundflow.train.sft import train_sft

REPO = Path(__file__).resolve().parents[2]
TEXTS = ["What colour is the sky?", "The sky is blue.", "Name an animal that barks.", "A dog barks."]
TEXT_RECORDS = [
    {"id": "sky", "conversations": [{"from": "human", "value": TEXTS[0]}, {"from": "gpt", "value": TEXTS[1]}]},
    {"id": "dog", "conversations": [{"from": "human", "value": TEXTS[2]}, {"from": "gpt", "value": TEXTS[3]}]},
]


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    return build_tiny_causal_lm(tmp_path_factory.mktemp("lm") / "tiny-lm", seed=0, texts=TEXTS)


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("llava") / "tiny-llava", seed=0, texts=TEXTS)


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 70, 3), dtype=np.uint8)).save(root / "a.png")
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / "b.jpg")
    return root


def _summary(out_dir):
    return json.loads((Path(out_dir) / "train_summary.json").read_text())


def test_loss_falls_on_a_repeated_small_batch(tiny_lm, tmp_path):
    config = SFTConfig(
        learning_rate=3e-3, max_steps=30, per_device_batch_size=2, lr_scheduler_type="constant",
        warmup_ratio=0.0, save_steps=1000, report_to="tensorboard",
    )
    model_dir = train_sft(model_spec={"path": str(tiny_lm), "device": "cpu"}, records=TEXT_RECORDS,
                          image_root=None, out_dir=tmp_path, config=config)
    summary = _summary(tmp_path)
    losses = [entry["loss"] for entry in summary["losses"]]
    assert summary["steps"] == 30 and len(losses) == 30
    assert losses[-1] < 0.5 * losses[0]
    # every step saw both records, padding excluded
    lengths = [len(assistant_only_labels(r["conversations"], _tokenizer(tiny_lm), max_length=2048)[0]) for r in TEXT_RECORDS]
    assert summary["tokens_seen"] == 30 * sum(lengths)
    assert summary["skipped"] == [] and summary["examples"] == 2
    assert (model_dir / "model.safetensors").is_file() and (model_dir / "tokenizer.json").is_file()
    assert list((tmp_path / "runs").glob("events.out.tfevents.*"))
    assert (tmp_path / "checkpoints" / "checkpoint-30").is_dir()


def _tokenizer(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def test_resume_continues_the_step_counter(tiny_lm, tmp_path):
    config = SFTConfig(learning_rate=1e-3, max_steps=3, per_device_batch_size=1, save_steps=1000, report_to="none")
    spec = {"path": str(tiny_lm), "device": "cpu"}
    train_sft(model_spec=spec, records=TEXT_RECORDS, image_root=None, out_dir=tmp_path, config=config)
    first = _summary(tmp_path)
    assert first["steps"] == 3 and first["resumed_from"] is None
    assert (tmp_path / "checkpoints" / "checkpoint-3").is_dir()

    config.max_steps = 5
    train_sft(model_spec=spec, records=TEXT_RECORDS, image_root=None, out_dir=tmp_path, config=config)
    second = _summary(tmp_path)
    assert second["resumed_from"].endswith("checkpoint-3")
    assert second["steps"] == 5
    assert [e["step"] for e in second["losses"]] == [1, 2, 3, 4, 5]
    assert second["losses"][:3] == first["losses"]  # history restored from the checkpoint, not retrained
    assert second["tokens_seen"] > first["tokens_seen"]
    state = json.loads((tmp_path / "checkpoints" / "checkpoint-5" / "trainer_state.json").read_text())
    assert state["global_step"] == 5


@pytest.mark.parametrize("lora", [None, {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"],
                                          "modules_to_save": ["lm_head"]}], ids=["full", "lora"])
def test_a_job_killed_after_its_last_checkpoint_gives_the_uninterrupted_model(tiny_lm, tmp_path, lora):
    """Killed between saving the final checkpoint and writing the model (found by bench/kill_soak.py):
    the restarted job takes the finished weights. Resuming there would train one step more in
    transformers when max_steps is not a whole number of epochs (2 records, batch 1, 3 steps)."""
    from safetensors.torch import load_file

    config = SFTConfig(learning_rate=1e-3, max_steps=3, per_device_batch_size=1, save_steps=1000, report_to="none",
                       lora=lora)
    spec = {"path": str(tiny_lm), "device": "cpu"}
    whole = train_sft(model_spec=spec, records=TEXT_RECORDS, image_root=None, out_dir=tmp_path / "whole", config=config)
    killed = tmp_path / "killed"
    train_sft(model_spec=spec, records=TEXT_RECORDS, image_root=None, out_dir=killed, config=config)
    shutil.rmtree(killed / "model")  # the state a kill inside the final save leaves
    (killed / "train_summary.json").unlink()

    resumed = train_sft(model_spec=spec, records=TEXT_RECORDS, image_root=None, out_dir=killed, config=config)
    summary = _summary(killed)
    assert summary["steps"] == 3 and summary["resumed_from"].endswith("checkpoint-3")
    assert summary["losses"] == _summary(tmp_path / "whole")["losses"]
    assert sorted(p.name for p in (killed / "checkpoints").iterdir() if p.is_dir()) == ["checkpoint-3"]
    expected, got = load_file(whole / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    initial = load_file(tiny_lm / "model.safetensors")
    assert any(not torch.equal(initial[k], got[k]) for k in got if k in initial)  # trained, then taken


def test_a_resumed_llava_full_fine_tune_trains_on_from_its_checkpoint_weights(tiny_llava, tmp_path):
    """LLaVA's checkpoints hold its original key names (`language_model.model.*`); transformers'
    resume loaded them by the model's own names, non-strictly, and trained on from the base weights
    with a warning. Killed after checkpoint-2 of 4, the resumed run must log the uninterrupted run's
    losses; killed in the final save, it must give the uninterrupted run's weights."""
    from safetensors.torch import load_file

    records = [dict(r, id=f"{r['id']}{i}") for i in range(4) for r in TEXT_RECORDS]
    config = SFTConfig(learning_rate=1e-2, max_steps=4, per_device_batch_size=2, save_steps=2, report_to="none", seed=5)
    spec = {"path": str(tiny_llava), "device": "cpu"}
    whole = train_sft(model_spec=spec, records=records, image_root=None, out_dir=tmp_path / "whole", config=config)
    killed = tmp_path / "killed"
    train_sft(model_spec=spec, records=records, image_root=None, out_dir=killed, config=config)
    shutil.rmtree(killed / "model")
    shutil.rmtree(killed / "checkpoints" / "checkpoint-4")  # killed during step 3

    train_sft(model_spec=spec, records=records, image_root=None, out_dir=killed, config=config)
    summary = _summary(killed)
    assert summary["resumed_from"].endswith("checkpoint-2")
    expected = [e["loss"] for e in _summary(tmp_path / "whole")["losses"]]
    assert [e["loss"] for e in summary["losses"]] == pytest.approx(expected, rel=1e-5)

    shutil.rmtree(killed / "model")  # killed in the final save: checkpoint-4 is the result
    resumed = train_sft(model_spec=spec, records=records, image_root=None, out_dir=killed, config=config)
    assert _summary(killed)["resumed_from"].endswith("checkpoint-4")
    want, got = load_file(whole / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert want.keys() == got.keys()
    assert max((want[k] - got[k]).abs().max().item() for k in want) < 1e-6


def test_a_rerun_with_other_data_or_fewer_steps_never_takes_the_other_runs_checkpoints(tiny_lm, tmp_path):
    """Snakemake re-runs a training job whose data or settings changed in the same folder: the old
    run's checkpoints must not be continued (other data) or taken as finished (a longer run)."""
    from safetensors.torch import load_file

    spec = {"path": str(tiny_lm), "device": "cpu"}
    config = SFTConfig(learning_rate=1e-3, max_steps=4, per_device_batch_size=1, save_steps=2, report_to="none")
    run = tmp_path / "run"
    train_sft(model_spec=spec, records=TEXT_RECORDS, image_root=None, out_dir=run, config=config)
    assert (run / "checkpoints" / "checkpoint-4").is_dir()

    config.max_steps = 2  # fewer steps: checkpoint-2 is this run's result, never checkpoint-4
    short = train_sft(model_spec=spec, records=TEXT_RECORDS, image_root=None, out_dir=run, config=config)
    assert _summary(run)["resumed_from"].endswith("checkpoint-2") and _summary(run)["steps"] == 2
    fresh = train_sft(model_spec=spec, records=TEXT_RECORDS, image_root=None, out_dir=tmp_path / "fresh", config=config)
    want, got = load_file(fresh / "model.safetensors"), load_file(short / "model.safetensors")
    assert all(torch.equal(want[k], got[k]) for k in want)

    swapped = [TEXT_RECORDS[1], TEXT_RECORDS[0]]  # other data: nothing of the old run is reused
    train_sft(model_spec=spec, records=swapped, image_root=None, out_dir=run, config=config)
    summary = _summary(run)
    assert summary["resumed_from"] is None and summary["steps"] == 2
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir()) == ["checkpoint-2"]
    config.learning_rate = 2e-3  # another setting: the same
    train_sft(model_spec=spec, records=swapped, image_root=None, out_dir=run, config=config)
    assert _summary(run)["resumed_from"] is None


def test_tiny_llava_lora_trains_and_the_merged_checkpoint_generates(tiny_llava, image_root, tmp_path):
    records = [
        {"id": "a", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\n" + TEXTS[0]}, {"from": "gpt", "value": TEXTS[1]}]},
        {"id": "b", "image": "b.jpg", "conversations": [{"from": "human", "value": "<image>\n" + TEXTS[2]}, {"from": "gpt", "value": TEXTS[3]}]},
        {"id": "t", "conversations": [{"from": "human", "value": TEXTS[2]}, {"from": "gpt", "value": TEXTS[3]}]},
        {"id": "gone", "image": "missing.png", "conversations": [{"from": "human", "value": "<image>\nhi"}, {"from": "gpt", "value": "yo"}]},
    ]
    config = SFTConfig(
        learning_rate=5e-3, max_steps=4, per_device_batch_size=3, warmup_ratio=0.0, save_steps=1000, report_to="none",
        lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}, merge_lora=True,
        gradient_checkpointing=True,
    )
    model_dir = train_sft(model_spec={"path": str(tiny_llava), "device": "cpu"}, records=records,
                          image_root=image_root, out_dir=tmp_path, config=config)
    summary = _summary(tmp_path)
    assert summary["steps"] == 4 and summary["examples"] == 3
    assert summary["skipped"] == [{"id": "gone", "reason": f"record gone: missing image file {image_root / 'missing.png'}"}]
    # LoRA on the language model only; the projector in full
    assert 0 < summary["trainable_parameters"] < summary["parameters"]

    assert not list(model_dir.glob("adapter_*")), "merged checkpoint must be plain HF weights"
    merged, processor = load_llava(ModelSpec(str(model_dir), device="cpu"))
    base, _ = load_llava(ModelSpec(str(tiny_llava), device="cpu"))
    merged_state, base_state = merged.state_dict(), base.state_dict()
    assert merged_state.keys() == base_state.keys()
    changed = {k for k in base_state if not torch.equal(base_state[k], merged_state[k])}
    assert any("language_model" in k and "q_proj" in k for k in changed)
    assert any("multi_modal_projector" in k for k in changed)
    assert not any("vision_tower" in k for k in changed)
    assert not any("k_proj" in k and "language_model" in k for k in changed)

    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": TEXTS[0]}]}], add_generation_prompt=True
    )
    inputs = processor(images=[Image.open(image_root / "b.jpg").convert("RGB")], text=[prompt], return_tensors="pt")
    with torch.inference_mode():
        out = merged.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]


def test_lora_targets_only_the_language_model(tiny_llava):
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava)
    names = lora_target_names(model, "all-linear", vision=LLAVA)
    assert names and all(".language_model." in n for n in names)
    assert len(names) == 2 * 7  # 2 layers x (q, k, v, o, gate, up, down)
    assert lora_target_names(model, ["q_proj"], vision=LLAVA) == [
        "model.language_model.layers.0.self_attn.q_proj", "model.language_model.layers.1.self_attn.q_proj"]


def test_collator_labels_equal_assistant_only_labels_and_padding_is_ignored(tiny_llava, image_root):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_llava)
    records = [
        {"id": "long", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\n" + TEXTS[2]}, {"from": "gpt", "value": TEXTS[3] + " " + TEXTS[1]}]},
        {"id": "short", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yes."}]},
    ]
    examples, skipped = build_examples(records, processor, assistant_mask_fn(max_length=512), max_length=512,
                                       image_root=image_root, vision=LLAVA)
    assert skipped == []
    collator = SFTCollator(processor.tokenizer.pad_token_id, processor=processor, image_root=image_root)
    batch = collator([{"input_ids": e.input_ids, "labels": e.labels, "image": e.image} for e in examples])
    width = batch["input_ids"].shape[1]
    for row, record in enumerate(records):
        ids, labels = assistant_only_labels(record["conversations"], processor, max_length=512)
        n = len(ids)
        assert batch["input_ids"][row, :n].tolist() == ids
        assert batch["labels"][row, :n].tolist() == labels
        assert batch["labels"][row, n:].tolist() == [IGNORE_INDEX] * (width - n)
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (width - n)
    assert batch["pixel_values"].shape == (1, 3, 64, 64)  # only the image record

    # the attention mask comes from lengths: genuine tokens equal to the pad id (or 0) stay attended
    pad = processor.tokenizer.pad_token_id
    batch = collator([{"input_ids": [0, pad, 9], "labels": [-100, pad, 9]}, {"input_ids": [0], "labels": [-100]}])
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, pad, 9], [-100, -100, -100]]


def test_text_only_model_skips_image_records_with_a_reason(tiny_lm):
    records = TEXT_RECORDS + [{"id": "img", "image": "x.png", "conversations": TEXT_RECORDS[0]["conversations"]},
                              {"id": "empty", "conversations": []}]
    examples, skipped = build_examples(records, _tokenizer(tiny_lm), assistant_mask_fn(max_length=512),
                                       max_length=512, image_root=None, vision=None)
    assert [e.id for e in examples] == ["sky", "dog"]
    assert skipped == [
        {"id": "img", "reason": "record img has image 'x.png' but the model is text-only"},
        {"id": "empty", "reason": "record empty has no conversations"},
    ]


def test_config_validation():
    with pytest.raises(ValueError, match="unknown training settings"):
        SFTConfig.from_dict({"learning_rate": 1e-5, "epochs": 3})
    with pytest.raises(ValueError, match="unknown LoRA settings"):
        SFTConfig.from_dict({"lora": {"rank": 8}})
    assert SFTConfig.from_dict({"lora": {"r": 8}, "max_steps": 2}).lora == {"r": 8}


def test_accelerate_and_deepspeed_files_are_valid():
    from accelerate.commands.config.config_args import ClusterConfig

    configs = [("single_gpu", "NO"), ("multi_gpu_ddp", "MULTI_GPU"), ("cpu_2proc", "MULTI_GPU"), ("zero2", "DEEPSPEED"), ("zero3", "DEEPSPEED"),
               ("zero3_4gpu", "DEEPSPEED")]
    assert sorted(name for name, _ in configs) == sorted(p.stem for p in (REPO / "configs" / "accelerate").glob("*.yaml"))
    for name, distributed_type in configs:
        config = ClusterConfig.from_yaml_file(REPO / "configs" / "accelerate" / f"{name}.yaml")
        assert str(config.distributed_type).endswith(distributed_type)
        if distributed_type == "DEEPSPEED":
            ds_file = REPO / config.deepspeed_config["deepspeed_config_file"]
            ds = json.loads(ds_file.read_text())
            assert ds["zero_optimization"]["stage"] == int(name.split("_")[0][-1])  # zero3_4gpu: stage 3
            assert ds["bf16"]["enabled"] == "auto" and ds["train_micro_batch_size_per_gpu"] == "auto"
            # with a DeepSpeed file, accelerate refuses these keys in the yaml
            assert not set(config.deepspeed_config) & {"zero_stage", "gradient_accumulation_steps", "mixed_precision"}
            assert config.mixed_precision is None


def _benchmark_module():
    spec = importlib.util.spec_from_file_location("gpu_train_decode", REPO / "bench" / "gpu_train_decode.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_gpu_benchmark_tiny_runs_on_cpu(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert _benchmark_module().main(["--tiny", "--steps", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["tiny"] is True and report["peak_tflops"] > 0
    modes = {run["mode"]: run for run in report["train"]}
    assert modes["lora"]["ok"] and modes["lora"]["tokens_per_second"] > 0 and 0 < modes["lora"]["mfu"] <= 1
    assert modes["full"]["ok"] and modes["full"]["trainable_parameters"] > modes["lora"]["trainable_parameters"]
    assert [d["batch_size"] for d in report["decode"]] == [1, 16, 64]
    assert all(d["ok"] and d["new_tokens"] == 4 and d["tokens_per_second"] > 0 for d in report["decode"])
    assert "tokens/s" in capsys.readouterr().out


def test_gpu_benchmark_refuses_to_run_without_cuda(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _benchmark_module().main(["--out", str(tmp_path / "x.json")]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_command_line_entry_point_reads_records_and_yaml_config(tiny_lm, tmp_path, capsys):
    from groundflow.train import sft

    records = tmp_path / "records.json"
    records.write_text(json.dumps(TEXT_RECORDS))
    config = tmp_path / "train.yaml"
    config.write_text("train:\n  max_steps: 2\n  per_device_batch_size: 2\n  learning_rate: 0.001\n  report_to: none\n")
    out = tmp_path / "out"
    assert sft.main(["--records", str(records), "--model", str(tiny_lm), "--device", "cpu", "--out", str(out), "--config", str(config)]) == 0
    assert capsys.readouterr().out.strip().endswith(str(out / "model"))
    summary = _summary(out)
    assert summary["steps"] == 2 and summary["config"]["per_device_batch_size"] == 2
    assert not (out / "runs").exists()  # report_to: none

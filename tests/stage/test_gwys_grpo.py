"""GWYS's GRPO on tiny models (groundflow.gwys.grpo): TRL's GRPOTrainer end to end on Qwen2.5-VL and
LLaVA, sampling that really samples whatever the checkpoint's generation defaults, the conflict term
once per unique prompt, judge failures counted, resume, skipped rows, the identical-group guard."""

import importlib.util
import json
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForImageTextToText, AutoProcessor, GenerationConfig

from groundflow.gwys.grpo import (apply_pixel_bounds, build_rewards, build_trainer, grpo_dataset, load_policy,
                                  pin_sampling, run_grpo, train_grpo)
from groundflow.gwys.grpo_settings import GRPOSettings
from groundflow.gwys.prompts import load_question_prompts
from groundflow.io.artifacts import read_table
from groundflow.models.llava import build_tiny_llava
from groundflow.models.qwen_vl import build_tiny_qwen_vl
from groundflow.models.spec import ModelSpec
from groundflow.models.vision_families import LLAVA, QWEN2_5_VL

from gwys_grpo_support import draw, pool_row, tokenizer_texts, write_drawn_pool
from script_harness import SCRIPTS, FakeSnakemake, run_script

# Small and quick; a learning rate that moves the weights visibly in two steps.
FAST = {"num_generations": 4, "max_completion_length": 12, "max_steps": 2, "learning_rate": 1e-3,
        "lr_scheduler_type": "constant", "save_steps": 1}
CONFLICT = {"enabled": True, "partners": 3}
# Qwen2.5-VL-Instruct's generation_config.json (spec §10.12): near-greedy decoding
QWEN_GENERATION_DEFAULTS = {"do_sample": True, "top_k": 1, "top_p": 0.001, "temperature": 0.1, "repetition_penalty": 1.05}


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    """A tiny Qwen2.5-VL whose generation config holds the real checkpoint's near-greedy defaults."""
    path = build_tiny_qwen_vl(tmp_path_factory.mktemp("qwen") / "model", seed=0, texts=tokenizer_texts())
    generation = GenerationConfig.from_pretrained(path)
    generation.update(**QWEN_GENERATION_DEFAULTS)
    generation.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("llava") / "model", seed=0, texts=tokenizer_texts())


def summary_of(out):
    return json.loads((out / "train_summary.json").read_text())


def weights(folder):
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def changed(before, after, part):
    names = [k for k in before if part in k]
    assert names, part
    return any(not torch.equal(before[k], after[k]) for k in names)


def test_grpo_trains_tiny_qwen_with_lora_and_saves_a_plain_checkpoint(tmp_path, qwen):
    pool, media = write_drawn_pool(tmp_path)
    out = tmp_path / "out"
    model_dir = train_grpo(model={"path": str(qwen)}, reference=None, pool_path=pool, media_root=media, out_dir=out,
                           settings={**FAST, "lora": {"r": 4, "alpha": 8}, "conflict": CONFLICT},
                           form="four_tag", rewards=["accuracy", "format"])
    summary = summary_of(out)
    assert summary["steps"] == 2 and summary["trained_records"] == 6 and summary["skipped"] == []
    assert summary["reward_weights"] == [1.0, 0.1]
    history = summary["log_history"]
    assert [e["step"] for e in history] == [1, 2]
    for entry in history:
        for key in ("reward", "rewards/accuracy/mean", "rewards/format/mean", "kl", "infoNCE", "infoNCE/positives",
                    "infoNCE/mean_cos", "identical_groups"):
            assert key in entry, key
        assert entry["identical_groups"] == 0
    assert summary["conflict"]["forwards"] == 2 and summary["conflict"]["anchors"] == 2
    # plain HF weights: the adapter merged into the language model, the vision side untouched
    assert not (model_dir / "adapter_config.json").exists()
    start, trained = weights(qwen), weights(model_dir)
    assert set(start) == set(trained) and not any("lora" in k for k in trained)
    assert changed(start, trained, "self_attn.q_proj.weight") and not changed(start, trained, "visual.")
    # the start model's generation config goes back into the checkpoint; it loads and generates
    saved = json.loads((model_dir / "generation_config.json").read_text())
    assert {k: saved[k] for k in QWEN_GENERATION_DEFAULTS} == QWEN_GENERATION_DEFAULTS
    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir)
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}],
                                         tokenize=False, add_generation_prompt=True)
    batch = processor(text=[text], images=[draw("red", "circle")], return_tensors="pt")
    generated = model.generate(**batch, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] > batch["input_ids"].shape[1]


def test_grpo_trains_tiny_llava_in_full_against_its_start_model(tmp_path, llava):
    pool, media = write_drawn_pool(tmp_path)
    out = tmp_path / "out"
    model_dir = train_grpo(model=str(llava), reference=None, pool_path=pool, media_root=media, out_dir=out,
                           settings={**FAST, "freeze_vision": True, "conflict": CONFLICT, "beta": 0.04},
                           form="think_answer", rewards=["accuracy", "format"])
    summary = summary_of(out)
    assert summary["steps"] == 2 and summary["reference"] == str(llava)
    assert all("kl" in e and "infoNCE" in e for e in summary["log_history"])
    assert summary["pixel_bounds_applied"] is False  # CLIP's processor resizes to a fixed square
    start, trained = weights(llava), weights(model_dir)
    assert changed(start, trained, "self_attn.q_proj.weight")
    assert not changed(start, trained, "vision_tower.") and not changed(start, trained, "multi_modal_projector.")


def test_sampling_samples_although_the_checkpoint_defaults_to_near_greedy(tmp_path, qwen):
    """Spec §10.12: the tiny model's generation config is Qwen2.5-VL's (top_k 1, top_p 0.001, T 0.1).
    Left to it, a group's completions are one text; the run's own settings must reach generate."""
    processor = AutoProcessor.from_pretrained(qwen)
    model = AutoModelForImageTextToText.from_pretrained(qwen)
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}],
                                         tokenize=False, add_generation_prompt=True)
    batch = processor(text=[text], images=[draw("red", "circle")], return_tensors="pt")
    left_to_defaults = model.generate(**batch, generation_config=GenerationConfig(do_sample=True, max_new_tokens=8, num_return_sequences=4))
    # temperature, top_k, top_p left unset come from the checkpoint: near-greedy, one text (the trap is armed)
    assert len({tuple(row.tolist()) for row in left_to_defaults}) == 1

    pool, media = write_drawn_pool(tmp_path)
    settings = GRPOSettings.from_dict({**FAST, "conflict": {"enabled": False}})
    policy, processor, family = load_policy(ModelSpec(str(qwen)), use_bf16=False)
    pin_sampling(policy, settings)
    data = grpo_dataset(read_table(pool), media_root=media, prompts=load_question_prompts("four_tag"))
    trainer = build_trainer(policy, processor, family, data, build_rewards(["format"], form="four_tag", rules="fixed"),
                            settings=settings, reward_names=["format"], out_dir=tmp_path / "out", device=torch.device("cpu"))
    seen = []
    generate = policy.generate

    def spy(*args, **kwargs):
        config = policy.generation_config
        seen.append({"model": (config.top_k, config.top_p, config.temperature, config.repetition_penalty),
                     "passed": (kwargs["generation_config"].top_k, kwargs["generation_config"].top_p,
                                kwargs["generation_config"].temperature)})
        output = generate(*args, **kwargs)
        seen[-1]["distinct"] = len({tuple(row.tolist()) for row in output})
        return output

    policy.generate = spy
    trainer.train()
    assert len(seen) == 2
    for call in seen:
        assert call["model"] == (50, 0.95, 1.0, 1.0) and call["passed"] == (50, 0.95, 1.0)
        assert call["distinct"] == 4  # one group of four completions, all different
    assert all(e["identical_groups"] == 0 for e in trainer.state.log_history if "identical_groups" in e)


def test_every_group_identical_stops_the_run(tmp_path, qwen):
    pool, media = write_drawn_pool(tmp_path)
    with pytest.raises(RuntimeError, match="identical in 2 generation batches in a row"):
        train_grpo(model=str(qwen), reference=None, pool_path=pool, media_root=media, out_dir=tmp_path / "out",
                   settings={**FAST, "max_steps": 4, "top_k": 1, "max_identical_steps": 2},  # top_k 1: greedy
                   form="four_tag", rewards=["format"])


@pytest.mark.parametrize("accumulation", [1, 2])
def test_the_conflict_term_is_computed_once_per_unique_prompt(tmp_path, qwen, accumulation):
    """Two prompts per step, four completions each: one anchor per prompt, not one per completion."""
    pool, media = write_drawn_pool(tmp_path)
    out = tmp_path / "out"
    train_grpo(model=str(qwen), reference=None, pool_path=pool, media_root=media, out_dir=out,
               settings={**FAST, "per_device_prompts": 2, "gradient_accumulation_steps": accumulation,
                         "conflict": CONFLICT, "beta": 0.0},
               form="four_tag", rewards=["format"])
    conflict = summary_of(out)["conflict"]
    prompts_seen = 2 * 2 * accumulation  # steps x prompts per micro-batch x micro-batches
    assert conflict["anchors"] == prompts_seen  # the completions numbered 4 x that
    # one forward per micro-batch that holds anchor rows (all of them with one micro-batch per step)
    assert conflict["forwards"] <= 2 * accumulation and (accumulation > 1 or conflict["forwards"] == 2)
    assert conflict["rows_embedded"] <= prompts_seen * (1 + CONFLICT["partners"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_judge_scores_zero_and_is_counted(tmp_path, qwen, monkeypatch):
    monkeypatch.setenv("GWYS_TEST_JUDGE_KEY", "unused")
    pool, media = write_drawn_pool(tmp_path)
    out = tmp_path / "out"
    judge = {"generator": {"backend": "openai", "base_url": f"http://127.0.0.1:{free_port()}/v1", "served_model": "judge",
                           "api_key_env": "GWYS_TEST_JUDGE_KEY", "max_retries": 0, "timeout_s": 2},
             # the tiny model writes no <caption>: ask with the empty caption, as the original did
             "judge_empty_captions": True}
    train_grpo(model=str(qwen), reference=None, pool_path=pool, media_root=media, out_dir=out, settings=FAST,
               form="four_tag", rewards=["accuracy", "caption"], judge=judge)
    summary = summary_of(out)
    assert summary["judge_failures"] == 2 * FAST["num_generations"]  # every completion of both steps
    assert summary["judge"]["generator"]["backend"] == "openai" and summary["reward_weights"] == [1.0, 1.0]
    for entry in summary["log_history"]:
        assert entry["caption/judge_failures"] == FAST["num_generations"]
        assert entry["rewards/caption/mean"] == 0.0


def test_a_rerun_takes_the_finished_checkpoint_and_a_longer_run_resumes(tmp_path, qwen):
    pool, media = write_drawn_pool(tmp_path)
    out = tmp_path / "out"
    run = dict(model=str(qwen), reference=None, pool_path=pool, media_root=media, out_dir=out, form="four_tag",
               rewards=["format"])
    settings = {**FAST, "conflict": CONFLICT}
    first = weights(train_grpo(**run, settings=settings))
    assert summary_of(out)["resumed_from"] is None
    # the job re-run (its model saved, then killed, say): the last checkpoint's weights are the result
    again = weights(train_grpo(**run, settings=settings))
    assert summary_of(out)["resumed_from"].endswith("checkpoint-2")
    assert all(torch.equal(first[k], again[k]) for k in first)
    longer = train_grpo(**run, settings={**settings, "max_steps": 3})
    summary = summary_of(out)
    assert summary["resumed_from"].endswith("checkpoint-2") and summary["steps"] == 3
    assert changed(first, weights(longer), "self_attn.q_proj.weight")
    # other settings: the old checkpoints are another run's, and training starts over
    train_grpo(**run, settings={**settings, "max_steps": 1, "beta": 0.0})
    assert summary_of(out)["resumed_from"] is None and summary_of(out)["steps"] == 1


def test_rows_that_cannot_train_are_listed_with_their_reason(tmp_path, qwen):
    extra = [pool_row(90, "clip.mp4", data_type="video"), pool_row(91, "gone.png")]
    pool, media = write_drawn_pool(tmp_path, extra_rows=extra)
    out = tmp_path / "out"
    train_grpo(model=str(qwen), reference=None, pool_path=pool, media_root=media, out_dir=out,
               settings={**FAST, "max_steps": 1}, form="four_tag", rewards=["format"])
    summary = summary_of(out)
    assert summary["records"] == 8 and summary["trained_records"] == 6
    reasons = {s["id"]: s["reason"] for s in summary["skipped"]}
    assert set(reasons) == {"q90", "q91"}
    assert "images only" in reasons["q90"] and "missing image file" in reasons["q91"]


def test_dataset_rows_carry_prompt_image_partners_and_index(tmp_path):
    pool, media = write_drawn_pool(tmp_path, n=5)
    prompts = load_question_prompts("four_tag")
    data = grpo_dataset(read_table(pool), media_root=media, prompts=prompts,
                        conflict=GRPOSettings.from_dict({"conflict": CONFLICT}).conflict_settings)
    row = data.dataset[0]
    assert row["image"].mode == "RGB" and row["image"].size == (64, 64)
    assert row["prompt"] == [{"role": "user", "content": prompts.user_text(row["format_question"], "multiple choice")}]
    assert row["sample_index"] == 0 and row["solution"] == "<answer>A</answer>"
    partners = np.asarray(data.dataset["partner_ids"])
    assert partners.shape == (5, 3) and all(i not in partners[i] for i in range(5))
    assert np.array_equal(partners, data.partner_ids)


def test_pixel_bounds_reach_the_qwen_image_processor(qwen):
    processor = AutoProcessor.from_pretrained(qwen)
    image = draw("red", "circle", size=200)
    assert apply_pixel_bounds(processor, QWEN2_5_VL, min_pixels=56 * 56, max_pixels=56 * 56)
    assert not apply_pixel_bounds(processor, LLAVA, min_pixels=56 * 56, max_pixels=56 * 56)
    grid = processor.image_processor(images=[image], return_tensors="pt")["image_grid_thw"]
    assert grid.tolist() == [[1, 4, 4]]  # 56 x 56 px: 4 x 4 patches of 14


def test_a_separate_reference_model_is_the_kl_reference(tmp_path, qwen):
    other = build_tiny_qwen_vl(tmp_path / "reference", seed=1, texts=tokenizer_texts())
    pool, media = write_drawn_pool(tmp_path)
    settings = GRPOSettings.from_dict({**FAST, "beta": 0.04})
    policy, processor, family = load_policy(ModelSpec(str(qwen)), use_bf16=False)
    data = grpo_dataset(read_table(pool), media_root=media, prompts=load_question_prompts("four_tag"))
    trainer = build_trainer(policy, processor, family, data, build_rewards(["format"], form="four_tag", rules="fixed"),
                            settings=settings, reward_names=["format"], out_dir=tmp_path / "out",
                            device=torch.device("cpu"), reference_path=str(other))
    reference = weights(other)
    loaded = {k: v for k, v in trainer.ref_model.state_dict().items() if k.endswith("q_proj.weight")}
    assert loaded and all(torch.equal(v, reference[k.replace("model.language_model.", "model.")]) for k, v in loaded.items())
    assert policy.config._name_or_path == str(qwen)
    with pytest.raises(ValueError, match="adapter-disabled start model"):
        build_trainer(policy, processor, family, data, [], settings=GRPOSettings.from_dict({"lora": {"r": 2}}),
                      reward_names=["format"], out_dir=tmp_path / "out2", device=torch.device("cpu"),
                      reference_path=str(other))


def test_the_workflow_script_trains_from_its_inputs(tmp_path, qwen):
    pool, media = write_drawn_pool(tmp_path)
    out = tmp_path / "grpo"
    smk = FakeSnakemake(
        input={"pool": str(pool), "start": str(qwen)},
        output={"model": str(out / "model"), "summary": str(out / "train_summary.json")},
        params={"model": {"path": "replaced-by-input.start", "dtype": "auto", "device": "cpu"}, "reference": None,
                "media_root": str(media), "settings": {**FAST, "max_steps": 1, "conflict": CONFLICT},
                "form": "four_tag", "rewards": ["accuracy", "format"], "judge": None, "prompts": None},
        log=[str(tmp_path / "grpo.log")])
    smk.scriptdir = str(SCRIPTS)  # Snakemake's own attribute; training scripts find the checkout by it
    run_script("gwys_grpo.py", smk)
    summary = summary_of(out)
    assert summary["steps"] == 1 and summary["model"]["path"] == str(qwen) and summary["form"] == "four_tag"
    assert (out / "model" / "model.safetensors").is_file()


def _bench(name):
    path = Path(__file__).resolve().parents[2] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_gpu_benchmark_runs_its_code_path_on_cpu(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert _bench("gpu_gwys_grpo").main(["--tiny", "--steps", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["tiny"] is True and [r["max_completion_length"] for r in report["runs"]] == [24, 8]
    for run in report["runs"]:
        assert run["ok"] and run["steps_per_second"] > 0 and run["generation_seconds"] > 0
        assert run["mean_completion_tokens"] == run["max_completion_length"]  # a random policy never stops
        assert run["conflict_forwards"] == 2 and run["identical_groups"] == 0 and len(run["infoNCE"]) == 2
    assert report["step_time_ratio_first_to_last"] > 0 and "steps/s" in capsys.readouterr().out


def test_the_gpu_benchmark_refuses_to_run_without_cuda(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _bench("gpu_gwys_grpo").main(["--out", str(tmp_path / "x.json")]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_two_cpu_processes_train_under_accelerate_launch(tmp_path, qwen):
    """DDP over gloo (configs/accelerate/cpu_2proc.yaml), started as the workflow starts it: each
    process its own prompt and group, the conflict term's second forward on the wrapped module."""
    pool, media = write_drawn_pool(tmp_path)
    out = tmp_path / "ddp"
    model_dir = run_grpo(model={"path": str(qwen), "device": "cpu"}, reference=None, pool_path=pool, media_root=media,
                         out_dir=out, settings={**FAST, "conflict": CONFLICT, "lora": {"r": 4, "alpha": 8},
                                                "accelerate_config": "configs/accelerate/cpu_2proc.yaml",
                                                "workflow_dir": str(Path(__file__).resolve().parents[2])},
                         form="four_tag", rewards=["accuracy", "format"])
    summary = summary_of(out)
    assert summary["processes"] == 2 and summary["steps"] == 2
    # one prompt per process per step: two anchors (and two forwards) per step over the processes
    assert summary["conflict"]["anchors"] == 4 and summary["conflict"]["forwards"] == 4
    assert summary["groups"] == 4 and all("infoNCE" in e for e in summary["log_history"])
    assert changed(weights(qwen), weights(model_dir), "self_attn.q_proj.weight")

"""`groundflow preflight`: where each model's config.json comes from, the ZeRO stage of a training
job, the table and its verdicts, and the paper presets sized by it. Offline: real-size config.json
files are written by the tests or bundled with the package."""

import json
from pathlib import Path

import pytest
import yaml

from groundflow import preflight
from groundflow.cli import main
from groundflow.models import memory
from groundflow.models.memory import GIB

ROOT = Path(__file__).resolve().parents[2]
LLAMA2_7B = {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 32, "intermediate_size": 11008, "vocab_size": 32000}
LLAVA_7B = {"model_type": "llava", "text_config": {**LLAMA2_7B, "vocab_size": 32064},
            "vision_config": {"model_type": "clip_vision_model", "hidden_size": 1024, "intermediate_size": 4096,
                              "num_attention_heads": 16, "num_hidden_layers": 24, "image_size": 336, "patch_size": 14}}


def model_dir(path: Path, config: dict) -> str:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config))
    return str(path)


def paper_config(name: str) -> dict:
    return preflight.load_config(ROOT / "configs" / f"{name}.yaml")


# ---------------------------------------------------------------- where config.json comes from

def test_a_local_model_folder_is_read_first(tmp_path):
    path = model_dir(tmp_path / "m", LLAMA2_7B)
    config, source = preflight.model_config(path)
    assert config == LLAMA2_7B and source == str(tmp_path / "m" / "config.json")


def test_a_local_folder_without_config_json_cannot_be_sized(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(preflight.CannotSize, match="no config.json"):
        preflight.model_config(str(tmp_path / "m"))


def test_the_hugging_face_cache_comes_before_the_bundled_copy(tmp_path, monkeypatch):
    import huggingface_hub.constants

    snapshot = tmp_path / "models--meta-llama--Llama-2-7b-chat-hf" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({**LLAMA2_7B, "num_hidden_layers": 2}))
    (tmp_path / "models--meta-llama--Llama-2-7b-chat-hf" / "refs").mkdir()
    (tmp_path / "models--meta-llama--Llama-2-7b-chat-hf" / "refs" / "main").write_text("abc")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    config, source = preflight.model_config("meta-llama/Llama-2-7b-chat-hf")
    assert config["num_hidden_layers"] == 2 and source.startswith(str(tmp_path))


def test_the_presets_hub_ids_fall_back_to_bundled_copies(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache
    for name in ("cvc-paper", "cings-paper"):
        config = paper_config(name)
        hub_ids = [spec["path"] for spec in config["models"].values() if spec["path"].count("/") == 1]
        assert len(hub_ids) >= 2
        for path in hub_ids:
            found, source = preflight.model_config(path)
            assert source.startswith("bundled"), (path, source)
            assert memory.param_count(found) > 1e8
        checks = preflight.plan(config, run_dir=tmp_path)
        assert all(check.estimate is not None for check in checks), [c.failure() for c in checks if c.failed]


def test_a_hub_id_it_does_not_know_cannot_be_sized(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(preflight.CannotSize, match="someone/unknown-13b"):
        preflight.model_config("someone/unknown-13b")


def test_an_official_sam_checkpoint_is_sized_by_its_file_name():
    config, source = preflight.model_config("resources/checkpoints/sam_vit_h_4b8939.pth")
    assert config["vision_config"]["hidden_size"] == 1280 and "vit_h" in source
    with pytest.raises(preflight.CannotSize, match="vit_b"):
        preflight.model_config("sam_vit_b_01ec64.pth")


# ---------------------------------------------------------------- ZeRO stage

def test_zero_stage_from_the_accelerate_config_and_its_deepspeed_file(tmp_path):
    (tmp_path / "ds.json").write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    (tmp_path / "ds.yaml").write_text(yaml.safe_dump(
        {"distributed_type": "DEEPSPEED", "deepspeed_config": {"deepspeed_config_file": "ds.json"}}))
    (tmp_path / "inline.yaml").write_text(yaml.safe_dump(
        {"distributed_type": "DEEPSPEED", "deepspeed_config": {"zero_stage": 3}}))
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump({"distributed_type": "MULTI_GPU"}))
    assert preflight.zero_stage("ds.yaml", run_dir=tmp_path) == 2
    assert preflight.zero_stage("inline.yaml", run_dir=tmp_path) == 3
    assert preflight.zero_stage("ddp.yaml", run_dir=tmp_path) == 0
    assert preflight.zero_stage(None, run_dir=tmp_path) == 0
    with pytest.raises(FileNotFoundError, match="nowhere.yaml"):
        preflight.zero_stage("nowhere.yaml", run_dir=tmp_path)


def test_the_presets_accelerate_files_are_read_from_the_workflow_outside_it(tmp_path):
    assert preflight.zero_stage("configs/accelerate/zero3.yaml", run_dir=tmp_path) == 3
    assert preflight.zero_stage("configs/accelerate/zero2.yaml", run_dir=tmp_path) == 2
    assert preflight.zero_stage("configs/accelerate/multi_gpu_ddp.yaml", run_dir=tmp_path) == 0


# ---------------------------------------------------------------- the command

def run_config(tmp_path: Path, *, vision_batch: int, llava: dict = LLAVA_7B) -> Path:
    """A CVC config whose models are local folders holding real-size config.json files."""
    config = yaml.safe_load((ROOT / "configs" / "cvc-paper.yaml").read_text())
    models = tmp_path / "models"
    config["models"]["llava"]["path"] = model_dir(models / "llava", llava)
    config["models"]["text_llm"]["path"] = model_dir(models / "llama", LLAMA2_7B)
    config["generation"]["vision"]["batch_size"] = vision_batch
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_preflight_fails_naming_the_job_and_the_setting(tmp_path, capsys):
    assert main(["preflight", str(run_config(tmp_path, vision_batch=32))]) == 1
    out, err = capsys.readouterr()
    assert "cvc_trials" in out and "DOES NOT FIT" in out
    line = next(line for line in err.splitlines() if "cvc_trials" in line)
    assert "> 80 GiB (resources.model_job.gpu_memory_gib): lower generation.vision.batch_size (fits at <= 6)" in line
    assert not any("cvc_entities" in line for line in err.splitlines())


def test_preflight_passes_a_config_that_fits(tmp_path, capsys):
    assert main(["preflight", str(run_config(tmp_path, vision_batch=6))]) == 0
    out = capsys.readouterr().out
    header, *rows = out.splitlines()[1:]
    for column in ("job", "model", "gpus", "weights", "kv_cache", "logits", "optimizer", "total", "limit", "verdict"):
        assert column in header
    trials = next(row for row in rows if row.startswith("cvc_trials"))
    assert "fits" in trials and " 1 " in trials


def test_a_model_it_cannot_size_fails_the_check(tmp_path, capsys):
    path = run_config(tmp_path, vision_batch=6, llava={"model_type": "mamba"})
    assert main(["preflight", str(path)]) == 1
    err = capsys.readouterr().err
    assert "cvc_trials: cannot size: cannot count the parameters of model_type 'mamba'" in err


def test_a_served_model_is_the_servers_memory():
    config = paper_config("cvc-paper")
    config["generation"]["vision"] = {**config["generation"]["vision"], "backend": "openai", "batch_size": 64}
    check = preflight.trials_check(config)
    assert check.estimate is None and not check.failed and "server" in check.note


@pytest.mark.parametrize("name", ["cvc-paper", "cings-paper"])
def test_both_paper_presets_pass_preflight(name, capsys):
    assert main(["preflight", str(ROOT / "configs" / f"{name}.yaml")]) == 0, capsys.readouterr().err


def test_the_paper_trial_batch_is_the_largest_that_fits():
    """Sized by preflight, not picked: one prompt more would not fit in 80 GiB."""
    config = paper_config("cvc-paper")
    check = preflight.trials_check(config)
    assert check.fits and config["resources"]["model_job"]["gpu_memory_gib"] == 80
    config["generation"]["vision"]["batch_size"] += 1
    assert not preflight.trials_check(config).fits


def test_cings_inference_asks_for_a_gpu_in_its_preset():
    config = paper_config("cings-paper")
    checks = {c.job: c for c in preflight.plan(config)}
    assert checks["cings_infer"].gpus == 1 and checks["cings_infer"].job_class == "infer_job"
    assert checks["cings_infer"].limit_setting == "resources.infer_job.gpu_memory_gib"
    assert checks["cings_vl_stage2"].note == "ZeRO 3, loss chunks of 4096"
    assert checks["cings_train"].note == "DDP, loss chunks of 4096"


def test_cings_inference_falls_back_to_the_model_job_class():
    config = paper_config("cings-paper")
    del config["resources"]["infer_job"]
    check = next(c for c in preflight.plan(config) if c.job == "cings_infer")
    assert check.job_class == "model_job" and check.limit_setting == "resources.model_job.gpu_memory_gib"


def test_cings_inference_prompt_is_sized_by_the_largest_ndocs_of_any_set():
    config = paper_config("cings-paper")
    before = next(c for c in preflight.plan(config) if c.job == "cings_infer").estimate.components["activations"]
    config["cings"]["inference"]["datasets"][0] = {**config["cings"]["inference"]["datasets"][0], "ndocs": 20}
    after = next(c for c in preflight.plan(config) if c.job == "cings_infer").estimate.components["activations"]
    assert after > 2 * before


@pytest.mark.parametrize("job, section, full_fits", [("cings_train", ("train",), False),
                                                     ("cings_vl_stage1", ("vl", "stage1"), False),
                                                     ("cings_vl_stage2", ("vl", "stage2"), True)])
def test_the_paper_batch_fits_80_gib_only_with_the_chunked_loss(job, section, full_fits):
    """8 x 4096 tokens (stage 1: 32 x 2048) of 128k-vocabulary logits: the full-logits loss does
    not fit an 80 GiB GPU, the preset's chunks do. Stage 2 (16 x 2048 under ZeRO-3) fits either
    way, 2 GiB short of the limit without chunks."""
    config = paper_config("cings-paper")
    train = config["cings"]
    for key in section:
        train = train[key]
    assert train["loss_chunk_tokens"] == 4096
    chunked = next(c for c in preflight.plan(config) if c.job == job)
    train["loss_chunk_tokens"] = None
    full = next(c for c in preflight.plan(config) if c.job == job)
    assert chunked.fits and full.fits == full_fits, (chunked.estimate.gib(), full.estimate.gib())
    tokens = train["per_device_batch_size"] * train["max_length"]
    assert full.estimate.components["logits"] == tokens * 128256 * 12
    assert full.estimate.total - chunked.estimate.total > 40 * GIB
    assert "full logits" in full.note
    if not full_fits:
        assert f"lower {full.batch_setting}" in full.failure()


# ---------------------------------------------------------------- DeepSpeed jobs: the import check

def test_deepspeed_jobs_of_the_cings_preset_are_found(tmp_path):
    jobs, failures = preflight.deepspeed_check(paper_config("cings-paper"), run_dir=tmp_path)
    assert jobs == ["cings_vl_stage1", "cings_vl_stage2"] and failures == []
    assert preflight.uses_deepspeed("configs/accelerate/zero2.yaml", run_dir=tmp_path)
    assert not preflight.uses_deepspeed("configs/accelerate/multi_gpu_ddp.yaml", run_dir=tmp_path)
    assert not preflight.uses_deepspeed(None, run_dir=tmp_path)


def test_a_deepspeed_file_alone_selects_deepspeed(tmp_path):
    (tmp_path / "ds.json").write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({"deepspeed_config": {"deepspeed_config_file": "ds.json"}}))
    assert preflight.uses_deepspeed("a.yaml", run_dir=tmp_path)


def test_a_missing_deepspeed_fails_preflight_naming_module_version_and_error(monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "deepspeed", None)  # what `import deepspeed` meets when it is absent
    assert main(["preflight", str(ROOT / "configs" / "cings-paper.yaml")]) == 1
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if "DeepSpeed" in line]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("groundflow preflight: cings_vl_stage1, cings_vl_stage2 (DeepSpeed): deepspeed (installed: ")
    assert "cannot be imported: ModuleNotFoundError" in lines[0] and "pip install -r requirements.txt" in lines[0]
    assert "imports fail" in captured.out
    assert "cings_train" not in lines[0]  # DDP needs no DeepSpeed


def test_a_broken_deepspeed_install_is_reported_with_its_error(monkeypatch):
    import importlib

    real = importlib.import_module

    def broken(name, *args, **kwargs):
        if name == "deepspeed":
            raise OSError("CUDA_HOME does not exist, unable to compile CUDA op(s)")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", broken)
    monkeypatch.setattr(importlib.metadata, "version", lambda name: {"deepspeed": "0.19.8"}.get(name, "1.0"))
    assert preflight.import_check() == [
        "deepspeed (installed: 0.19.8) cannot be imported: OSError: CUDA_HOME does not exist, unable to compile CUDA op(s)"]


def test_accelerate_not_seeing_deepspeed_is_a_failure(monkeypatch):
    import accelerate.utils

    monkeypatch.setattr(accelerate.utils, "is_deepspeed_available", lambda: False)
    (problem,) = preflight.import_check()
    assert "is_deepspeed_available() is False" in problem


def test_a_config_without_deepspeed_jobs_imports_nothing(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "deepspeed", None)
    config = paper_config("cings-paper")
    for stage in ("stage1", "stage2"):
        config["cings"]["vl"][stage]["accelerate_config"] = "configs/accelerate/multi_gpu_ddp.yaml"
    assert preflight.deepspeed_check(config, run_dir=tmp_path) == ([], [])


# ---------------------------------------------------------------- the trials stage's own check

def generation(tmp_path, batch, config=LLAVA_7B):
    return {"backend": "hf", "batch_size": batch, "model": {"path": model_dir(tmp_path / "llava", config),
                                                            "dtype": "bf16"}}


TRIALS = {"n": 16, "max_new_tokens": 384}


def test_the_trials_stage_refuses_a_batch_that_cannot_fit(tmp_path):
    with pytest.raises(preflight.BatchDoesNotFit,
                       match=r"cvc_trials: 3\d\d\.\d GiB > 80 GiB \(resources.model_job.gpu_memory_gib\): "
                             r"lower generation.vision.batch_size \(fits at <= 6\)"):
        preflight.refuse_unfit_trial_batch(generation(tmp_path, 32), TRIALS, gpu_memory_gib=80)


def test_the_gpu_it_runs_on_overrides_the_configured_memory(tmp_path):
    spec = generation(tmp_path, 6)
    assert preflight.refuse_unfit_trial_batch(spec, TRIALS, gpu_memory_gib=80).fits
    # 14.2 GiB weights and runtime, then 8.5 GiB of KV cache and 1.0 of prefill a prompt: 2 fit in 40
    with pytest.raises(preflight.BatchDoesNotFit, match=r"> 40 GiB \(this GPU's memory\).*fits at <= 2\)"):
        preflight.refuse_unfit_trial_batch(spec, TRIALS, gpu_memory_gib=80, device_memory_bytes=40 * GIB)
    assert preflight.refuse_unfit_trial_batch(generation(tmp_path / "b", 12), TRIALS, gpu_memory_gib=80,
                                              device_memory_bytes=141 * GIB).fits


def test_a_tiny_model_passes_the_trials_check(tmp_path):
    tiny = {"model_type": "llava", "text_config": {**LLAMA2_7B, "hidden_size": 64, "intermediate_size": 128,
                                                   "num_hidden_layers": 2, "num_attention_heads": 4,
                                                   "num_key_value_heads": 4},
            "vision_config": {**LLAVA_7B["vision_config"], "hidden_size": 32, "intermediate_size": 64,
                              "num_hidden_layers": 2, "num_attention_heads": 2}}
    assert preflight.refuse_unfit_trial_batch(generation(tmp_path, 16, tiny), TRIALS, gpu_memory_gib=4).fits


def test_the_trials_check_refuses_a_model_it_cannot_size(tmp_path):
    with pytest.raises(preflight.BatchDoesNotFit, match="cannot size"):
        preflight.refuse_unfit_trial_batch(generation(tmp_path, 1, {"model_type": "mamba"}), TRIALS, gpu_memory_gib=80)

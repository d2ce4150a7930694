"""`groundflow preflight <config>`: will every model job of a config fit the memory it asks for?

For each model job the config plans (the rules' job classes and models, as rules/*.smk wire
them), the architecture comes from the model's `config.json` (a local model folder, the offline
Hugging Face cache, or a copy bundled here for the hub ids the presets name:
groundflow/models/known_configs), and groundflow.models.memory estimates its peak memory by
component at the job's shapes. A job asking for GPUs is compared with
`resources.<job class>.gpu_memory_gib`, a CPU job with its `mem_mb`. A job that cannot fit, or
whose model cannot be sized, fails the check, naming the setting to change. A training job's loss
is sized by its `loss_chunk_tokens` (the logits of one chunk; null: of the whole batch).

When a training job's accelerate config selects DeepSpeed, preflight also imports deepspeed and
accelerate in this environment (the one the jobs run in) and fails naming the module, its
installed version and the error, before any job starts (`import_check`).

The trials stage runs the same check on its own batch before loading the model
(`refuse_unfit_trial_batch`).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from groundflow.config import validate_config
from groundflow.models import memory
from groundflow.models.memory import GIB, Estimate

KNOWN_CONFIGS = Path(__file__).resolve().parent / "models" / "known_configs"
WORKFLOW_ROOT = Path(__file__).resolve().parents[2]

# LLaVA-1.5 turns a 336 px image into 24 x 24 = 576 tokens in the prompt.
IMAGE_TOKENS = 576
# Token allowances for prompts the config does not bound. Our prompt files (prompts/cvc/*.txt)
# with their few-shot examples stay under the text allowance; a trial prompt is a question and
# the reasoning request; an answer to embed, a caption to score, is one short sentence.
TEXT_PROMPT_TOKENS = 1024
TEXT_NEW_TOKENS = 256
TRIAL_PROMPT_TEXT_TOKENS = 128
SENTENCE_TOKENS = 64
# A KILT passage (Contriever's 100-word chunks) with its title, and the question and template.
PASSAGE_TOKENS = 200
QUESTION_TOKENS = 256
# A benchmark question with its options and instructions (MMBench's hint + four options is the
# longest of the CVC benchmarks), and the largest answer budget of their lmms-eval tasks (MM-Vet's).
EVAL_PROMPT_TOKENS = 256
EVAL_NEW_TOKENS = 1024
POPE_QUESTION_TOKENS = 64  # system prompt + one yes/no question about one object
TSST_QUESTION_TOKENS = 320  # system sentence + the step-by-step instructions + question + options
# A GWYS prompt: the default system turn, the image (at most max_pixels / 28^2 merged tokens: 512
# at RL's 401,408 px) and the four-tag instructions + question + options + type instruction.
GWYS_PROMPT_TEXT_TOKENS = 384
QWEN_MERGED_PATCH_PIXELS = 28 * 28
GWYS_SFT_IMAGE_TOKENS = 16384  # no max_pixels in the original's SFT: the processor's 12.8 MP cap
# Grounding DINO resizes to a shorter side of 800 (longer at most 1333); Swin's first stage
# works on stride-4 patches in 12 x 12 windows. (SAM's encoder sees one image of
# image_size / patch_size squared patches; its global blocks attend over all of them.)
DETECTOR_IMAGE = (800, 1333)

SERVED = "served over HTTP"

# `plan` lists every rule that runs a model (inference or training): each needs a GPU at paper
# scale. These rules are also handed a model but only read its files on the CPU, so they need
# none. tests/workflow/test_preset_gpus.py holds the workflow to the two: a rule handed a model
# that is in neither fails there.
CPU_MODEL_RULES = {
    "build_tiny_model": "writes a tiny random model",
    "build_tiny_projector": "writes a tiny projector file",
    "compose_llava_base": "joins the LM, CLIP and projector files into one checkpoint",
    "cings_tokenize": "reads the tokenizer only",
}


class CannotSize(ValueError):
    """A model whose config.json cannot be found or whose architecture cannot be counted."""


@dataclass(frozen=True)
class JobCheck:
    job: str
    job_class: str
    model: str
    gpus: int
    estimate: Estimate | None
    limit_bytes: int | None
    limit_setting: str
    batch_setting: str | None = None
    batch: int | None = None
    fits_at: int | None = None
    note: str = ""

    @property
    def fits(self) -> bool:
        return self.estimate is not None and self.limit_bytes is not None and self.estimate.total <= self.limit_bytes

    @property
    def failed(self) -> bool:
        """Does not fit, or cannot be sized; a served model's memory is its server's."""
        if self.estimate is None:
            return not self.note.startswith(SERVED)
        return not self.fits

    def failure(self) -> str:
        if self.estimate is None:
            return f"{self.job}: {self.note} (models: {self.model})"
        line = (f"{self.job}: {self.estimate.total / GIB:.1f} GiB > {_gib(self.limit_bytes)} GiB "
                f"({self.limit_setting})")
        if self.batch_setting and self.fits_at:
            return f"{line}: lower {self.batch_setting} (fits at <= {self.fits_at})"
        if self.batch_setting:
            return f"{line}: not even a batch of 1 fits; raise {self.limit_setting} or give the job more GPUs"
        return f"{line}: raise {self.limit_setting}"


# ---------------------------------------------------------------- where config.json comes from

def model_config(path: str, *, base_dir: Path | None = None) -> tuple[dict, str]:
    """(config.json as a dict, where it came from) for a model path or hub id: the local folder's
    config.json, the Hugging Face cache (offline), or the copy bundled for the presets' hub ids."""
    local = Path(path) if Path(path).is_absolute() or base_dir is None else base_dir / path
    if local.is_dir():
        file = local / "config.json"
        if not file.is_file():
            raise CannotSize(f"cannot size {path}: no config.json in that folder")
        return json.loads(file.read_text()), str(file)
    if path.endswith(".pth"):
        from groundflow.models.sam import checkpoint_model_type

        try:
            kind = checkpoint_model_type(path)
        except ValueError as e:
            raise CannotSize(f"cannot size {path}: {e}") from None
        bundled = {"vit_h": "facebook--sam-vit-huge"}.get(kind)
        if bundled is None:
            raise CannotSize(f"cannot size {path}: no bundled config for SAM {kind}")
        return _bundled(bundled), f"bundled SAM {kind} ({bundled}.json)"
    cached = _hf_cache_config(path)
    if cached:
        return json.loads(Path(cached).read_text()), cached
    name = path.replace("/", "--")
    if (KNOWN_CONFIGS / f"{name}.json").is_file():
        return _bundled(name), f"bundled ({name}.json)"
    raise CannotSize(f"cannot size {path}: not a local model folder, not in the Hugging Face cache, "
                     f"and no bundled config.json (groundflow/models/known_configs)")


def _bundled(name: str) -> dict:
    return json.loads((KNOWN_CONFIGS / f"{name}.json").read_text())


def _hf_cache_config(repo_id: str) -> str | None:
    if repo_id.count("/") != 1:
        return None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json")
    return found if isinstance(found, str) else None


# ---------------------------------------------------------------- ZeRO stage of a training job

def zero_stage(accelerate_config: str | None, *, run_dir: Path, workflow_dir: Path | None = WORKFLOW_ROOT) -> int:
    """The DeepSpeed ZeRO stage an accelerate config selects (0: plain DDP or one process), its
    files found as the training launcher finds them (the run folder's, else the workflow's)."""
    if not accelerate_config:
        return 0
    from groundflow.train.launch import resolved_accelerate_settings

    _, settings = resolved_accelerate_settings(accelerate_config, run_dir=run_dir, workflow_dir=workflow_dir)
    if settings.get("distributed_type") != "DEEPSPEED":
        return 0
    deepspeed = settings.get("deepspeed_config") or {}
    if deepspeed.get("deepspeed_config_file"):
        ds = json.loads(Path(deepspeed["deepspeed_config_file"]).read_text())
        return int(ds.get("zero_optimization", {}).get("stage", 0))
    return int(deepspeed.get("zero_stage", 0))


# ---------------------------------------------------------------- the jobs of a config

def _limit(config: dict, job_class: str) -> tuple[int, int, str]:
    """(gpus, bytes, setting) a job of `job_class` may use: its GPU memory, or host memory when
    it asks for no GPU."""
    spec = config["resources"][job_class]
    if spec["gpu"] > 0:
        return spec["gpu"], int(spec["gpu_memory_gib"] * GIB), f"resources.{job_class}.gpu_memory_gib"
    return 0, spec["mem_mb"] * 1024**2, f"resources.{job_class}.mem_mb"


def _on_gpu(config: dict, job_class: str) -> bool:
    return config["resources"][job_class]["gpu"] > 0


def _check(config, job, job_class, model_label, estimate_for, batch_setting, batch, note="") -> JobCheck:
    gpus, limit, setting = _limit(config, job_class)
    estimate = estimate_for(batch)
    fits_at = None
    if batch_setting and estimate.total > limit:
        fits_at = memory.largest_fitting(estimate_for, limit, batch)
    return JobCheck(job, job_class, model_label, gpus, estimate, limit, setting, batch_setting, batch, fits_at, note)


def _unsized(config, job, job_class, model_label, error) -> JobCheck:
    gpus, limit, setting = _limit(config, job_class)
    note = str(error)
    return JobCheck(job, job_class, model_label, gpus, None, limit, setting,
                    note=note if note.startswith("cannot size") else f"cannot size: {note}")


def _served(config, job, job_class, model_label) -> JobCheck:
    gpus, limit, setting = _limit(config, job_class)
    return JobCheck(job, job_class, model_label, gpus, None, limit, setting,
                    note=f"{SERVED}: the server's memory (vLLM --gpu-memory-utilization)")


def generation_check(config, job, model_name, kind, *, n, prompt_tokens, max_new_tokens, base_dir,
                     job_class: str = "model_job", arch_for=None, batch_setting: str | None = None) -> JobCheck:
    """A generation job of `models.<model_name>`; `arch_for` () -> (label, config) where the job's
    model is composed rather than configured (a CINGS VL checkpoint: cings_lm + vision_tower);
    `batch_setting` names the config key of its batch where that is not generation.<kind>.batch_size."""
    spec = config["models"][model_name]
    label = spec["path"]
    generation = config["generation"][kind]
    if generation["backend"] != "hf":
        return _served(config, job, job_class, label)
    try:
        if arch_for is None:
            arch, _ = model_config(spec["path"], base_dir=base_dir)
        else:
            label, arch = arch_for()
        dtype = memory.dtype_bytes(spec.get("dtype"), on_gpu=_on_gpu(config, job_class))
        memory.param_count(arch)
    except (CannotSize, memory.UnknownArchitecture) as e:
        return _unsized(config, job, job_class, label, e)
    return _check(config, job, job_class, label,
                  lambda b: memory.generation_memory(arch, dtype=dtype, batch=b, n=n, prompt_tokens=prompt_tokens,
                                                     max_new_tokens=max_new_tokens),
                  batch_setting or f"generation.{kind}.batch_size", generation["batch_size"])


def trials_check(config: dict, *, base_dir: Path | None = None) -> JobCheck:
    trials = config["cvc"]["trials"]
    return generation_check(config, "cvc_trials", "llava", "vision", n=trials["n"],
                            prompt_tokens=IMAGE_TOKENS + TRIAL_PROMPT_TEXT_TOKENS,
                            max_new_tokens=trials["max_new_tokens"], base_dir=base_dir)


def encoder_check(config, job, model_name, batch_setting, batch, shapes, base_dir) -> JobCheck:
    spec = config["models"][model_name]
    try:
        path = _embedder_folder(spec["path"]) if model_name in ("embedder", "retriever") else spec["path"]
        arch, _ = model_config(path, base_dir=base_dir)
        dtype = memory.dtype_bytes(spec.get("dtype"), on_gpu=_on_gpu(config, "model_job"))
        memory.param_count(arch)
        dims = shapes(arch)
    except (CannotSize, memory.UnknownArchitecture, KeyError) as e:
        return _unsized(config, job, "model_job", spec["path"], e)
    return _check(config, job, "model_job", spec["path"],
                  lambda b: memory.encoder_memory(arch, dtype=dtype, batch=b, **dims), batch_setting, batch)


def _embedder_folder(path: str) -> str:
    from groundflow.embed.embedders import resolve_embedder_path  # torch: only for this job

    return resolve_embedder_path(path)


def _text_dims(tokens):
    return lambda arch: {"tokens": tokens, "hidden": arch["hidden_size"], "intermediate": arch["intermediate_size"],
                         "heads": arch["num_attention_heads"]}


def _detector_dims(arch):
    swin = arch["backbone_config"]
    tokens = (DETECTOR_IMAGE[0] // swin.get("patch_size", 4)) * (DETECTOR_IMAGE[1] // swin.get("patch_size", 4))
    width = swin["embed_dim"]
    return {"tokens": tokens, "hidden": width, "intermediate": int(width * swin.get("mlp_ratio", 4.0)),
            "heads": swin["num_heads"][0], "attention_span": swin.get("window_size", 7) ** 2}


def _sam_dims(arch):
    if arch.get("architecture") == "segment_anything.Sam":
        arch = memory.segment_anything_config(arch)
    vision = arch["vision_config"]
    return {"tokens": (vision["image_size"] // vision["patch_size"]) ** 2, "hidden": vision["hidden_size"],
            "intermediate": vision["mlp_dim"], "heads": vision["num_attention_heads"]}


def _trainable(arch: dict, train: dict, *, train_language_model: bool = True) -> int:
    parts = memory.vision_language_parts(arch) or {"language_model": memory.param_count(arch)}
    lora = train.get("lora")
    total = 0
    if train_language_model:
        total += (memory.lora_params(arch, rank=lora["r"], target_modules=lora["target_modules"],
                                     modules_to_save=lora.get("modules_to_save", []))
                  if lora else parts["language_model"])
    if train.get("train_projector", True) and "projector" in parts:
        total += parts["projector"]
    if not train.get("freeze_vision_tower", True) and "vision_tower" in parts:
        total += parts["vision_tower"]
    return total


def compose_llava(text: dict, vision: dict) -> dict:
    """The LLaVA config a CINGS VL job builds from its LM and the CLIP vision tower."""
    vision = vision.get("vision_config", vision) if vision.get("model_type") == "clip" else vision
    return {"model_type": "llava", "text_config": text, "vision_config": vision}


def plan(config: dict, *, run_dir: Path = Path(), base_dir: Path | None = None) -> list[JobCheck]:
    """Every model job of a validated config, checked; launch files are looked up in `run_dir`,
    then in the workflow."""
    checks: list[JobCheck] = []
    if "cvc" in config["methods"]:
        cvc = config["cvc"]
        for job, stage in (("cvc_entities", "entities"), ("cvc_instructions", "instructions")):
            checks.append(generation_check(config, job, "text_llm", "text", n=1, prompt_tokens=TEXT_PROMPT_TOKENS,
                                           max_new_tokens=cvc[stage].get("max_new_tokens") or TEXT_NEW_TOKENS,
                                           base_dir=base_dir))
        checks.append(encoder_check(config, "cvc_causality", "masked_lm", "cvc.causality.batch_size",
                                    cvc["causality"]["batch_size"], _text_dims(SENTENCE_TOKENS), base_dir))
        if cvc["grounding"]["backend"] == "grounding_dino":
            checks.append(encoder_check(config, "cvc_grounding", "detector", "cvc.grounding.batch_size",
                                        cvc["grounding"]["batch_size"], _detector_dims, base_dir))
        # the image encoder sees one image at a time; batch_boxes only feeds the small mask decoder
        checks.append(encoder_check(config, "cvc_segmentation", "sam", None, 1, _sam_dims, base_dir))
        checks.append(trials_check(config, base_dir=base_dir))
        checks.append(generation_check(config, "cvc_extraction", "text_llm", "text", n=1,
                                       prompt_tokens=TEXT_PROMPT_TOKENS + cvc["trials"]["max_new_tokens"],
                                       max_new_tokens=cvc["extraction"]["max_new_tokens"], base_dir=base_dir))
        checks.append(encoder_check(config, "cvc_checking", "embedder", "cvc.checking.batch_size",
                                    cvc["checking"]["batch_size"], _text_dims(SENTENCE_TOKENS), base_dir))
        base = "llava_base" if "llava_base" in config["models"] else "llava"
        checks.append(_training(config, "cvc_train", lambda: _cvc_train_base(config, base, base_dir),
                                config["models"][base], cvc["train"], run_dir,
                                "cvc.train.per_device_batch_size"))
        checks += cvc_eval_checks(config, base, base_dir=base_dir)
    if "cings" in config["methods"]:
        cings = config["cings"]
        lm = config["models"]["cings_lm"]
        checks.append(_training(config, "cings_train", lambda: _model_arch(config, "cings_lm", base_dir), lm,
                                cings["train"], run_dir, "cings.train.per_device_batch_size"))
        for stage, trains_lm in (("stage1", False), ("stage2", True)):
            if cings["vl"]["modes"]:
                train = {**cings["vl"][stage], "train_language_model": cings["vl"][stage].get("train_language_model", trains_lm)}
                checks.append(_training(config, f"cings_vl_{stage}", lambda: _cings_llava(config, base_dir), lm, train,
                                        run_dir, f"cings.vl.{stage}.per_device_batch_size"))
        inference = cings["inference"]
        ndocs = max([inference["ndocs"]] + [d["ndocs"] for d in inference["datasets"]
                                            if isinstance(d, dict) and d.get("ndocs")])
        prompt = inference["max_prompt_tokens"] or ndocs * PASSAGE_TOKENS + QUESTION_TOKENS
        # cings_infer's own job class where the config has one (rules: resources.infer_job)
        infer_class = "infer_job" if config["resources"].get("infer_job") else "model_job"
        checks.append(generation_check(config, "cings_infer", "cings_lm", "text", n=1, prompt_tokens=prompt,
                                       max_new_tokens=inference["max_new_tokens"], base_dir=base_dir,
                                       job_class=infer_class))
        # the rule exists wherever a retriever is configured, used by a dataset or not
        if "retriever" in config["models"]:
            checks.append(encoder_check(config, "cings_build_eval", "retriever", "cings.retrieval.batch_size",
                                        cings["retrieval"]["batch_size"], _text_dims(PASSAGE_TOKENS), base_dir))
        if cings["vl"]["modes"]:
            checks.append(generation_check(config, "cings_pope_answer", "cings_lm", "vision", n=1,
                                           prompt_tokens=IMAGE_TOKENS + POPE_QUESTION_TOKENS,
                                           max_new_tokens=cings["vl"]["pope"]["max_new_tokens"], base_dir=base_dir,
                                           arch_for=lambda: _cings_llava(config, base_dir)))
    if "tsst" in config["methods"]:
        checks += tsst_checks(config, run_dir=run_dir, base_dir=base_dir)
    if "gwys" in config["methods"]:
        checks += gwys_checks(config, run_dir=run_dir, base_dir=base_dir)
    return checks


def cvc_eval_checks(config: dict, train_base: str, *, base_dir: Path | None) -> list[JobCheck]:
    """CVC's evaluation jobs (infer_job) of the largest compared checkpoint: lmms-eval always loads
    the model in its own process (whatever generation.vision says), batch cvc.eval.batch_size, up
    to EVAL_NEW_TOKENS; the probe answers through generation.vision."""
    cvc = config["cvc"]
    job_class = "infer_job" if config["resources"].get("infer_job") else "model_job"
    trained = lambda: _cvc_train_base(config, train_base, base_dir)  # noqa: E731
    compared = [(name, None) for name in cvc["eval"]["models"].values()] + [(train_base, trained)]
    lmms_config = {**config, "generation": {**config["generation"],
                                            "lmms_eval": {"backend": "hf", "batch_size": cvc["eval"]["batch_size"]}}}
    # the probe generates through generation.vision at its own batch size (rules/cvc_eval.smk)
    probe_config = {**config, "generation": {**config["generation"], "vision": {
        **config["generation"]["vision"], "batch_size": cvc["probe"]["batch_size"]}}}
    checks = []
    for job, kind, settings, new_tokens, batch_setting in (
            ("cvc_eval", "lmms_eval", lmms_config, EVAL_NEW_TOKENS, "cvc.eval.batch_size"),
            ("cvc_probe_eval", "vision", probe_config, cvc["probe"]["max_new_tokens"], "cvc.probe.batch_size")):
        if job == "cvc_eval" and not cvc["eval"]["benchmarks"] or job == "cvc_probe_eval" and not cvc["probe"]["fraction"]:
            continue
        candidates = [generation_check(settings, job, name, kind, n=1, prompt_tokens=IMAGE_TOKENS + EVAL_PROMPT_TOKENS,
                                       max_new_tokens=new_tokens, base_dir=base_dir, job_class=job_class,
                                       arch_for=arch_for, batch_setting=batch_setting)
                      for name, arch_for in compared]
        # one line per job: a checkpoint that fails, else the largest
        failed = [c for c in candidates if c.failed]
        checks.append(failed[0] if failed else max(candidates, key=lambda c: c.estimate.total if c.estimate else 0))
    return checks


def tsst_checks(config: dict, *, run_dir: Path, base_dir: Path | None) -> list[JobCheck]:
    """TSST's model jobs: both trainings, the search (policy and value model in one job) and direct
    evaluation; the judge is an endpoint (or a local model) of its own."""
    tsst = config["tsst"]
    base = config["models"]["tsst_policy"]
    arch_for = lambda: _model_arch(config, "tsst_policy", base_dir)  # noqa: E731
    checks = [_training(config, "tsst_train_policy", arch_for, base, tsst["policy_train"], run_dir,
                        "tsst.policy_train.per_device_batch_size")]
    # the value model reads the last hidden state: no LM logits, whatever loss_chunk_tokens says
    checks.append(_training(config, "tsst_train_value", arch_for, base, {**tsst["value_train"], "loss_chunk_tokens": 1},
                            run_dir, "tsst.value_train.per_device_batch_size", loss_note="no LM logits (value head)"))
    job = tsst["search_job"]
    widths = [{**tsst["search"], **(d.get("search") or {})} for d in tsst["datasets"]]
    longest = max(w.get("max_chars", 1000) for w in widths) // 3  # ~3 characters a token
    step = max(w.get("max_step_tokens", 256) for w in widths)
    prompt = IMAGE_TOKENS + TSST_QUESTION_TOKENS + longest
    for name, job_class in (("tsst_search", "model_job"), ("tsst_eval_search", "infer_job")):
        job_class = job_class if config["resources"].get(job_class) else "model_job"
        checks.append(_search_check(config, name, job_class, base, arch_for, job, prompt, step))
    checks.append(generation_check(config, "tsst_eval_direct", "tsst_policy", "vision", n=1,
                                   prompt_tokens=IMAGE_TOKENS + TSST_QUESTION_TOKENS,
                                   max_new_tokens=tsst["direct"]["max_new_tokens"], base_dir=base_dir,
                                   job_class="infer_job" if config["resources"].get("infer_job") else "model_job"))
    if "tsst_judge" in config["models"]:
        generation = tsst["judge"]["generation"]
        if generation["backend"] != "hf":  # the rules then place the judging jobs on CPU nodes
            checks += [_served(config, name, "cpu_job", config["models"]["tsst_judge"]["path"])
                       for name in ("tsst_verify", "tsst_eval_verify")]
        else:
            for name in ("tsst_verify", "tsst_eval_verify"):
                checks.append(generation_check({**config, "generation": {**config["generation"], "judge": generation}},
                                               name, "tsst_judge", "judge", n=1, prompt_tokens=TSST_QUESTION_TOKENS + 128,
                                               max_new_tokens=tsst["judge"]["max_new_tokens"], base_dir=base_dir))
    return checks


def gwys_image_tokens(max_pixels: int | None) -> int:
    """Qwen2.5-VL's merged image tokens of an image at most `max_pixels` large."""
    return GWYS_SFT_IMAGE_TOKENS if max_pixels is None else max(1, max_pixels // QWEN_MERGED_PATCH_PIXELS)


def gwys_checks(config: dict, *, run_dir: Path, base_dir: Path | None) -> list[JobCheck]:
    """Cold-start SFT and each GRPO variant (train_job), the rollouts (model_job), the evaluation
    (infer_job); the caption judge is served (no GPU) unless its backend is hf."""
    from groundflow.gwys.grpo_settings import GRPOSettings

    gwys = config["gwys"]
    spec = config["models"]["gwys_policy"]
    arch_for = lambda: _model_arch(config, "gwys_policy", base_dir)  # noqa: E731
    sft = gwys["sft"]["train"]
    checks = [_training(config, "gwys_sft", arch_for, spec, sft, run_dir, "gwys.sft.train.per_device_batch_size")]
    # GRPO: one micro-batch is per_device_prompts x G completions of prompt + max_completion_length
    # tokens, with full logits for the per-token log-probabilities; the KL reference (beta > 0, full
    # fine-tuning) is a second copy of the weights, sharded like the policy under ZeRO-3.
    worst = None
    for name, variant in gwys["variants"].items():
        values = {**gwys["grpo"], **(variant.get("grpo") or {})}
        accelerate_config = values.pop("accelerate_config", None)
        settings = GRPOSettings.from_dict(values)
        train = {"per_device_batch_size": settings.per_device_prompts * settings.num_generations,
                 "max_length": gwys_image_tokens(settings.max_pixels) + GWYS_PROMPT_TEXT_TOKENS + settings.max_completion_length,
                 "gradient_checkpointing": settings.gradient_checkpointing, "lora": settings.lora,
                 "accelerate_config": accelerate_config}
        check = _training(config, "gwys_grpo", arch_for, spec, train, run_dir, "gwys.grpo.per_device_prompts x num_generations")
        if check.estimate is not None and settings.beta > 0 and settings.lora is None:
            weights = check.estimate.components["weights"]
            check = _check(config, "gwys_grpo", "train_job", check.model,
                           lambda b, t=train, w=weights: _with_reference(config, "gwys_grpo", arch_for, spec, t, run_dir, b, w),
                           "gwys.grpo.per_device_prompts x num_generations", train["per_device_batch_size"],
                           note=check.note + ", + KL reference")
        if worst is None or (check.estimate and worst.estimate and check.estimate.total > worst.estimate.total):
            worst = check
    checks.append(worst)
    rollouts = {"k": 64, "max_new_tokens": 768, **gwys["rollouts"]["settings"]}
    image = gwys_image_tokens(gwys["grpo"].get("max_pixels", 401408))
    # the rollout jobs generate with gwys.rollouts.generation over generation.vision (rules/gwys.smk)
    rollout_config = {**config, "generation": {**config["generation"], "vision": {
        **config["generation"]["vision"], **(gwys["rollouts"].get("generation") or {})}}}
    checks.append(generation_check(rollout_config, "gwys_rollouts", "gwys_policy", "vision", n=int(rollouts["k"]),
                                   prompt_tokens=image + GWYS_PROMPT_TEXT_TOKENS,
                                   max_new_tokens=int(rollouts["max_new_tokens"]), base_dir=base_dir))
    checks.append(generation_check(config, "gwys_eval", "gwys_policy", "vision", n=1,
                                   prompt_tokens=image + GWYS_PROMPT_TEXT_TOKENS,
                                   max_new_tokens=gwys["eval"]["max_new_tokens"], base_dir=base_dir,
                                   job_class="infer_job"))
    return checks


def _with_reference(config, job, arch_for, spec, train, run_dir, batch, weights) -> memory.Estimate:
    """The training estimate of `train` at `batch` with a second copy of the (sharded) weights."""
    check = _training(config, job, arch_for, spec, {**train, "per_device_batch_size": batch}, run_dir, "")
    components = dict(check.estimate.components)
    components["weights"] = components["weights"] + weights
    return memory.Estimate(components)


def _search_check(config, name, job_class, spec, arch_for, job, prompt_tokens, step_tokens) -> JobCheck:
    """The policy generating `batch_rows` continuations at once plus the value model scoring
    `value_batch_size` prefixes, both loaded in the one job."""
    try:
        label, arch = arch_for()
        dtype = memory.dtype_bytes(spec.get("dtype"), on_gpu=_on_gpu(config, job_class))
        memory.param_count(arch)
    except (CannotSize, memory.UnknownArchitecture) as e:
        return _unsized(config, name, job_class, spec["path"], e)

    def estimate(rows: int) -> memory.Estimate:
        policy = memory.generation_memory(arch, dtype=dtype, batch=rows, n=1, prompt_tokens=prompt_tokens,
                                          max_new_tokens=step_tokens)
        value = memory.generation_memory(arch, dtype=dtype, batch=job["value_batch_size"], n=1,
                                         prompt_tokens=prompt_tokens + step_tokens, max_new_tokens=1)
        both = dict(policy.components)
        for key, size in value.components.items():
            both[key] = both.get(key, 0) + (0 if key in ("runtime", "logits") else size)
        return memory.Estimate(both)

    return _check(config, name, job_class, f"{label} x2 (policy + value)", estimate,
                  "tsst.search_job.batch_rows", job["batch_rows"])


def _model_arch(config, name, base_dir) -> tuple[str, dict]:
    path = config["models"][name]["path"]
    arch, _ = model_config(path, base_dir=base_dir)
    return path, arch


def _cvc_train_base(config, base, base_dir) -> tuple[str, dict]:
    """The model CVC training starts from; a stage-1 base that the workflow composes (not there
    yet when the plan is checked) is sized from the LM and CLIP it is composed of."""
    try:
        return _model_arch(config, base, base_dir)
    except CannotSize:
        if base != "llava_base" or not {"llava_base_lm", "llava_base_vision"} <= set(config["models"]):
            raise
    lm_path, lm = _model_arch(config, "llava_base_lm", base_dir)
    vision_path, vision = _model_arch(config, "llava_base_vision", base_dir)
    return f"{lm_path} + {vision_path}", compose_llava(lm, vision)


def _cings_llava(config, base_dir) -> tuple[str, dict]:
    lm_path, lm = _model_arch(config, "cings_lm", base_dir)
    vision_path, vision = _model_arch(config, "vision_tower", base_dir)
    return f"{lm_path} + {vision_path}", compose_llava(lm, vision)


def _training(config, job, arch_for, spec, train, run_dir, batch_setting, loss_note: str | None = None) -> JobCheck:
    try:
        dtype = memory.dtype_bytes(spec.get("dtype"), on_gpu=_on_gpu(config, "train_job"))
        label, arch = arch_for()
        trainable = _trainable(arch, train, train_language_model=train.get("train_language_model", True))
        stage = zero_stage(train.get("accelerate_config"), run_dir=run_dir)
    except (CannotSize, memory.UnknownArchitecture, FileNotFoundError) as e:
        return _unsized(config, job, "train_job", spec["path"], e)
    gpus = max(config["resources"]["train_job"]["gpu"], 1)
    chunk = train.get("loss_chunk_tokens")
    loss = loss_note or ("full logits" if chunk is None else f"loss chunks of {chunk}")
    return _check(config, job, "train_job", label,
                  lambda b: memory.training_memory(arch, dtype=dtype, trainable=trainable, batch=b,
                                                   seq=train["max_length"], zero_stage=stage, gpus=gpus,
                                                   gradient_checkpointing=train.get("gradient_checkpointing", False),
                                                   loss_chunk_tokens=chunk),
                  batch_setting, train["per_device_batch_size"],
                  note=f"{f'ZeRO {stage}' if stage else 'DDP'}, {loss}")


# ---------------------------------------------------------------- report

COLUMNS = ("weights", "kv_cache", "logits", "activations", "gradients", "optimizer", "runtime")


def render(checks: list[JobCheck]) -> str:
    header = ["job", "model", "gpus"] + list(COLUMNS) + ["total", "limit", "verdict"]
    rows = []
    for check in checks:
        parts = check.estimate.gib() if check.estimate else {}
        cells = [f"{parts[c]:.1f}" if c in parts else "-" for c in COLUMNS]
        total = f"{check.estimate.total / GIB:.1f}" if check.estimate else "-"
        limit = _gib(check.limit_bytes) if check.limit_bytes else "-"
        if check.estimate is None:
            verdict = check.note
        elif check.fits:
            verdict = "fits" + (f" ({check.note})" if check.note else "")
        else:
            verdict = "DOES NOT FIT" + (f" (fits at <= {check.fits_at})" if check.fits_at else "")
        rows.append([check.job, _short(check.model), str(check.gpus), *cells, total, limit, verdict])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1] for row in [header, *rows]]
    return "GiB per GPU (host memory for gpus 0)\n" + "\n".join(lines)


def _gib(size: int) -> str:
    return f"{size / GIB:.1f}".removesuffix(".0")


def _short(model: str) -> str:
    return model if len(model) <= 48 else "..." + model[-45:]


def load_config(path: str | Path) -> dict:
    config = yaml.safe_load(Path(path).read_text()) or {}
    return validate_config(config)


# ---------------------------------------------------------------- DeepSpeed jobs: can this environment run them?

# What a DeepSpeed job imports first: the engine, and the launcher that drives it
DEEPSPEED_MODULES = ("deepspeed", "accelerate")


def training_sections(config: dict) -> dict[str, dict]:
    """{job: its train settings} of every training job the config plans (as `plan` names them)."""
    sections = {}
    if "cvc" in config["methods"]:
        sections["cvc_train"] = config["cvc"]["train"]
    if "cings" in config["methods"]:
        sections["cings_train"] = config["cings"]["train"]
        if config["cings"]["vl"]["modes"]:
            for stage in ("stage1", "stage2"):
                sections[f"cings_vl_{stage}"] = config["cings"]["vl"][stage]
    if "tsst" in config["methods"]:
        sections["tsst_train_policy"] = config["tsst"]["policy_train"]
        sections["tsst_train_value"] = config["tsst"]["value_train"]
    return sections


def uses_deepspeed(accelerate_config: str | None, *, run_dir: Path, workflow_dir: Path | None = WORKFLOW_ROOT) -> bool:
    """Does this accelerate config launch DeepSpeed (distributed_type DEEPSPEED, or a DeepSpeed file)?"""
    if not accelerate_config:
        return False
    from groundflow.train.launch import resolved_accelerate_settings

    _, settings = resolved_accelerate_settings(accelerate_config, run_dir=run_dir, workflow_dir=workflow_dir)
    deepspeed = settings.get("deepspeed_config")
    return settings.get("distributed_type") == "DEEPSPEED" or bool(
        isinstance(deepspeed, dict) and deepspeed.get("deepspeed_config_file"))


def installed_version(module: str) -> str:
    try:
        return importlib.metadata.version(module)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def import_check(modules=DEEPSPEED_MODULES) -> list[str]:
    """One line per module that cannot be imported here: its name, installed version and the
    error; and accelerate's own verdict (`is_deepspeed_available`), which decides whether
    `accelerate launch` will start DeepSpeed at all. Empty when all is well."""
    problems = []
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as error:  # noqa: BLE001 - a broken install fails in many ways (ImportError, OSError for CUDA_HOME, ...)
            problems.append(f"{module} (installed: {installed_version(module)}) cannot be imported: "
                            f"{type(error).__name__}: {error}")
    if not problems and "deepspeed" in modules and "accelerate" in modules:
        from accelerate.utils import is_deepspeed_available

        if not is_deepspeed_available():
            problems.append(f"accelerate {installed_version('accelerate')} does not see deepspeed "
                            f"{installed_version('deepspeed')} (accelerate.utils.is_deepspeed_available() is False)")
    return problems


def deepspeed_check(config: dict, *, run_dir: Path) -> tuple[list[str], list[str]]:
    """(the DeepSpeed training jobs, one failure line per import problem naming those jobs)."""
    jobs = []
    for job, train in training_sections(config).items():
        try:
            if uses_deepspeed(train.get("accelerate_config"), run_dir=run_dir):
                jobs.append(job)
        except FileNotFoundError:
            continue  # the memory check already fails this job, naming the missing file
    if not jobs:
        return [], []
    names = ", ".join(jobs)
    return jobs, [f"{names} (DeepSpeed): {problem}; install with `pip install -r requirements.txt`"
                  for problem in import_check()]


def preflight(config_path: str | Path, run_dir: str | Path = ".") -> tuple[str, list[str]]:
    """(the table, one failure line per job that cannot fit or cannot be sized, and per module a
    DeepSpeed job cannot import). Relative model and launch-file paths are read from `run_dir`, as
    snakemake reads them there."""
    config = load_config(config_path)
    run_dir = Path(run_dir)
    checks = plan(config, run_dir=run_dir, base_dir=run_dir)
    failures = [check.failure() for check in checks if check.failed]
    table = render(checks)
    jobs, import_failures = deepspeed_check(config, run_dir=run_dir)
    if jobs:
        versions = ", ".join(f"{m} {installed_version(m)}" for m in DEEPSPEED_MODULES)
        verdict = "imports fail" if import_failures else "imported"
        table += f"\nDeepSpeed jobs ({', '.join(jobs)}): {versions} {verdict}"
    return table, failures + import_failures


# ---------------------------------------------------------------- the trials stage's own check

class BatchDoesNotFit(RuntimeError):
    pass


def refuse_unfit_trial_batch(generation: dict, trials: dict, *, gpu_memory_gib: float,
                             device_memory_bytes: int | None = None) -> JobCheck:
    """The trials stage's own check, before it loads its model: raise BatchDoesNotFit when
    `generation.batch_size` prompts x `trials.n` samples cannot fit on the GPU it runs on
    (`device_memory_bytes`), or, off a GPU, in the configured `gpu_memory_gib`. A served model
    passes (its memory is the server's); a model that cannot be sized raises too."""
    on_gpu = device_memory_bytes is not None
    limit_gib = device_memory_bytes / GIB if on_gpu else gpu_memory_gib
    stage_config = {
        "models": {"llava": generation["model"]},
        "generation": {"vision": generation},
        "cvc": {"trials": trials},
        "resources": {"model_job": {"gpu": 1, "gpu_memory_gib": limit_gib, "mem_mb": 0}},
    }
    check = trials_check(stage_config)
    if on_gpu:
        check = JobCheck(**{**check.__dict__, "limit_setting": "this GPU's memory"})
    if check.failed:
        detail = ", ".join(f"{k} {v:.1f}" for k, v in check.estimate.gib().items()) if check.estimate else ""
        raise BatchDoesNotFit(check.failure() + (f"; estimate by component, GiB: {detail}" if detail else ""))
    return check


def cuda_memory_bytes(device: str | None) -> int | None:
    """Total memory of the GPU a model spec's `device` lands on; None on a CPU-only run."""
    import torch

    if device == "cpu" or not torch.cuda.is_available():
        return None
    index = torch.device(device).index if device and device.startswith("cuda:") else 0
    return torch.cuda.get_device_properties(index or 0).total_memory

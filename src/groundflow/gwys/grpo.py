"""GWYS's GRPO (spec §4, §5, §11.1): TRL's `GRPOTrainer` with GWYS's rewards and conflict term.

One run (`train_grpo`): the RL pool table -> a `datasets.Dataset` of conversational prompts (the
user turn: the image, then the form's question prompt around the question with its options and the
per-type instruction, `gwys.prompts`; no system turn, so Qwen's template adds its default one as
the original) -> `ConflictGRPOTrainer` -> the final model (LoRA merged into plain HF weights) and
`train_summary.json`.

- Rewards are TRL callables from `gwys.rewards`: accuracy, format (the run's form), caption (a blind
  text judge built by the shared generator layer, `generate.backends.make_generator(kind="text")`:
  an OpenAI-compatible endpoint or a local HF model; its answers cached in memory and in
  `out_dir/judge_cache.jsonl` across restarts). A judge failure scores 0 and is counted: the
  `caption/judge_failures` metric per logged step, and the run's total in the summary.
- Sampling (§10.12): every sampling setting goes to TRL's config (`grpo_settings`), and the same
  values are written over the policy's own generation config for the run, so a checkpoint's
  defaults (Qwen2.5-VL's top_k 1, top_p 0.001, temperature 0.1) cannot replace them. The saved
  model gets the start model's generation config back. Each generation batch counts the groups
  whose completions are all one text (`identical_groups`, logged); after `max_identical_steps`
  batches in a row of nothing but such groups the run stops with an error.
- The conflict term (§5.2, `gwys.conflict`): the trainer carries each row's pool index
  (`sample_index`) through `_generate_and_score_completions`, and marks one row per unique prompt
  of the generation batch as its anchor row. In `_compute_loss`, the anchors of a micro-batch and
  their partners (`partner_ids`, seeded, same modality, never the sample itself) are embedded by
  one forward of the policy, with gradient, over "media + bare problem" chat texts (the default
  system turn, the user turn with the image and the problem, no assistant turn); the last hidden
  states are mean-pooled over the attended tokens. λ·L_NCE is added once per unique prompt, as a
  mean over the generation batch's prompts (with one micro-batch per generation, the default: the
  micro-batch's mean; with gradient accumulation each micro-batch adds its anchors' share, which is
  the mean over the batch's prompts divided over its micro-batches, as TRL scales its own loss).
  Logged: `infoNCE` (L_NCE), `infoNCE/positives` (partners at or below θ per anchor),
  `infoNCE/mean_cos`, `infoNCE/fallbacks` (share of anchors with no positive).
- The KL reference is the start model (for "ours": the SFT checkpoint): with LoRA the
  adapter-disabled policy; in full fine-tuning TRL loads it from the model's folder (so the start
  model must be a folder or hub id; another reference folder can be named).
- Resumable as the shared trainer: checkpoints in `out_dir/checkpoints` (`train.checkpoints`:
  another run's are removed, a finished run's last checkpoint is taken as the result).
- Pool rows TRL cannot train (video: TRL's trainer takes images only, §11.1) or whose image is
  missing or unreadable are listed in the summary's `skipped` with the reason (rows = trained +
  skipped).

Policies: the vision-language families of `models.vision_families`, Qwen2.5-VL
(`Qwen2_5_VLForConditionalGeneration`) and LLaVA (`LlavaForConditionalGeneration`).

`run_grpo` runs in this process, or, with `accelerate_config` among the settings (the shared
trainer's launch setting, `train.launch`), under `accelerate launch` (`python -m groundflow.gwys.grpo`
in each process: DDP, DeepSpeed ZeRO-2/3 by the file): every process builds the same dataset and
partners; the final model is saved through the shared trainer's `save_final_model` (ZeRO-3 gathers
the weights; LoRA merged from the saved adapter); the summary, from the main process, sums the
judge's counts and the conflict term's over the processes. Under DDP the conflict forward runs on
the wrapped module (`module`), so DDP's per-forward bookkeeping (its search for unused parameters
from the outputs) follows the policy forward alone, once per backward; the conflict forward uses
no parameter the policy forward does not, and the gradients of both reach the parameters in the one
backward and are reduced once (the two-process test runs either way; this keeps DDP's view simple).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from datasets import Dataset
from PIL import Image
from transformers import AutoProcessor, PreTrainedModel, TrainerCallback
from accelerate.utils import gather_object
from trl import GRPOConfig, GRPOTrainer

from groundflow.generate.backends import SamplingParams, make_generator
from groundflow.gwys.advantages import identical_groups
from groundflow.gwys.conflict import ConflictResult, ConflictSettings, conflict_term, mean_pool, sample_partners
from groundflow.gwys.grpo_settings import GRPOSettings, check_reward_names, grpo_config_kwargs
from groundflow.gwys.prompts import (QuestionPrompts, check_form, load_caption_judge_prompts,
                                     load_question_prompts)
from groundflow.gwys.rewards import AccuracyReward, CaptionReward, FormatReward, JudgeBackend
from groundflow.io.artifacts import atomic_path, atomic_write_json, read_table
from groundflow.models.spec import ModelSpec, resolve_dtype
from groundflow.models.vision_families import VISION_FAMILIES, VisionFamily, set_image_pixel_bounds
from groundflow.train.checkpoints import discard_other_runs, run_fingerprint
from groundflow.train.config import SFTConfig
from groundflow.train.launch import ACCELERATE_CONFIG, WORKFLOW_DIR, launch_accelerate
from groundflow.train.model_prep import lora_target_names, resolve_bf16, vision_family_of
from groundflow.train.trainer import full_weights_file, load_saved_weights, save_final_model, train_resuming
from groundflow.vision.image_io import load_rgb

log = logging.getLogger(__name__)

JUDGE_KEYS = frozenset({"generator", "max_new_tokens", "do_sample", "temperature", "top_p", "judge_empty_captions",
                        "cache_size", "disk_cache"})
PROMPT_KEYS = frozenset({"question", "type_instructions", "judge_user", "judge_system"})
JUDGE_CACHE = "judge_cache.jsonl"
SUMMARY = "train_summary.json"
# Per-step entries of the log history the summary keeps (TRL 1.16's names; rewards/<fn>/mean per reward)
STEP_KEYS = ("reward", "reward_std", "kl", "loss", "entropy", "learning_rate", "grad_norm", "identical_groups",
             "infoNCE", "infoNCE/positives", "infoNCE/mean_cos", "infoNCE/fallbacks", "caption/judge_failures",
             "caption/judge_requests", "completions/mean_length", "frac_reward_zero_std")


# ---------------------------------------------------------------- data


@dataclasses.dataclass
class GRPOData:
    """The trainer's dataset and what did not make it in."""

    dataset: Dataset  # images decoded on access (`image`: PIL RGB)
    records: list[dict]  # the trained rows as plain values (the run's fingerprint)
    skipped: list[dict]  # {id, reason}
    partner_ids: np.ndarray | None  # [rows, partners] pool indices, when the conflict term is on


def resolve_media(media: str, media_root: str | os.PathLike | None) -> Path:
    path = Path(media)
    if path.is_absolute() or media_root is None:
        return path
    return Path(media_root) / path


def _image_problem(path: Path) -> str | None:
    """Why the image cannot be used (None: it opens). Only the header is read here; a file that
    is cut short further in fails when it is decoded for training, naming the file."""
    if not path.is_file():
        return f"missing image file {path}"
    try:
        with Image.open(path) as image:
            image.size  # noqa: B018  (reading the size parses the header)
    except Exception as error:  # PIL raises several types for a bad file
        return f"unreadable image {path}: {error}"
    return None


def _decode_images(batch: dict) -> dict:
    """datasets' transform: image paths -> RGB images (16-bit, CMYK, alpha converted as every
    stage converts them, `vision.image_io`), decoded when a row is read."""
    return {**batch, "image": [load_rgb(path) for path in batch["image"]]}


def grpo_dataset(pool: pd.DataFrame, *, media_root: str | os.PathLike | None, prompts: QuestionPrompts,
                 conflict: ConflictSettings | None = None) -> GRPOData:
    """The trainer's dataset from the RL pool table (`schemas/gwys_pool`): one row per image row
    whose image opens; `partner_ids` drawn among the kept rows of the same modality when `conflict`."""
    missing = sorted({"id", "problem", "problem_type", "options", "solution", "data_type", "media",
                      "format_question"} - set(pool.columns))
    if missing:
        raise ValueError(f"the RL pool table lacks columns {missing}")
    columns: dict[str, list] = {k: [] for k in ("id", "prompt", "image", "problem", "problem_type", "options",
                                                "solution", "format_question", "data_type", "sample_index")}
    records, skipped = [], []
    for row in pool.to_dict(orient="records"):
        record_id = str(row["id"])
        if row["data_type"] != "image":
            skipped.append({"id": record_id, "reason": f"data_type {row['data_type']!r}: TRL's GRPOTrainer "
                            "takes images only (spec §11.1)"})
            continue
        path = resolve_media(str(row["media"]), media_root)
        problem = _image_problem(path)
        if problem is not None:
            skipped.append({"id": record_id, "reason": problem})
            continue
        options = [str(o) for o in (row["options"] if row["options"] is not None else [])]
        try:
            text = prompts.user_text(str(row["format_question"]), str(row["problem_type"]))
        except ValueError as error:  # a problem type without an instruction
            skipped.append({"id": record_id, "reason": str(error)})
            continue
        columns["id"].append(record_id)
        # string content: TRL puts the row's image before the text of the user turn
        columns["prompt"].append([{"role": "user", "content": text}])
        columns["image"].append(str(path))
        columns["problem"].append(str(row["problem"]))
        columns["problem_type"].append(str(row["problem_type"]))
        columns["options"].append(options)
        columns["solution"].append(str(row["solution"]))
        columns["format_question"].append(str(row["format_question"]))
        columns["data_type"].append(str(row["data_type"]))
        columns["sample_index"].append(len(records))
        records.append({"id": record_id, "problem": str(row["problem"]), "problem_type": str(row["problem_type"]),
                        "options": options, "solution": str(row["solution"]),
                        "format_question": str(row["format_question"]), "media": str(row["media"])})
    for item in skipped:
        log.warning("not trained on %s: %s", item["id"], item["reason"])
    if not records:
        first = skipped[0]["reason"] if skipped else "the pool is empty"
        raise ValueError(f"none of the {len(pool)} pool rows can be trained on; first reason: {first}")
    partner_ids = None
    if conflict is not None:
        partner_ids = sample_partners(columns["data_type"], partners=conflict.partners, seed=conflict.seed)
        columns["partner_ids"] = partner_ids.tolist()
    dataset = Dataset.from_dict(columns).with_transform(_decode_images)
    return GRPOData(dataset=dataset, records=records, skipped=skipped, partner_ids=partner_ids)


# ---------------------------------------------------------------- rewards


def check_keys(values: Mapping | None, known: frozenset, what: str) -> dict:
    values = dict(values or {})
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {what} keys {unknown}; known: {sorted(known)}")
    return values


def judge_sampling(judge: Mapping) -> SamplingParams:
    return SamplingParams(max_new_tokens=int(judge.get("max_new_tokens", 512)), do_sample=bool(judge.get("do_sample", False)),
                          temperature=float(judge.get("temperature", 1.0)), top_p=float(judge.get("top_p", 1.0)))


def build_rewards(names: Sequence[str], *, form: str, rules: str, judge: Mapping | None = None,
                  judge_backend: JudgeBackend | None = None, prompts: Mapping | None = None,
                  cache_file: str | os.PathLike | None = None) -> list:
    """TRL reward callables for `names`, in order. The caption reward's judge is `judge_backend`
    when given, else built from `judge["generator"]` by the shared generator layer."""
    check_reward_names(names)
    judge = check_keys(judge, JUDGE_KEYS, "judge")
    prompts = check_keys(prompts, PROMPT_KEYS, "prompts")
    rewards = []
    for name in names:
        if name == "accuracy":
            rewards.append(AccuracyReward(rules))
        elif name == "format":
            rewards.append(FormatReward(form))
        else:
            if judge_backend is None:
                if not judge.get("generator"):
                    raise ValueError("the caption reward needs judge.generator: a generator spec "
                                     "({backend: openai, base_url, served_model, api_key_env} or {backend: hf, model})")
                judge_backend = make_generator(dict(judge["generator"]), kind="text")
            judge_prompts = load_caption_judge_prompts(prompts.get("judge_user"), prompts.get("judge_system"),
                                                       prompts.get("type_instructions"))
            rewards.append(CaptionReward(judge_backend, prompts=judge_prompts, params=judge_sampling(judge), rules=rules,
                                         judge_empty_captions=bool(judge.get("judge_empty_captions", False)),
                                         cache_size=int(judge.get("cache_size", 8192)),
                                         cache_file=cache_file if judge.get("disk_cache", True) else None))
    return rewards


# ---------------------------------------------------------------- model


def apply_pixel_bounds(processor, family: VisionFamily, *, min_pixels: int | None, max_pixels: int | None) -> bool:
    """Bound the pixels a Qwen2.5-VL-style processor resizes images to; False for a family whose
    processor resizes to a fixed size (LLaVA's CLIP processor), where the bounds do not apply."""
    if not family.tokens_vary_per_image or (min_pixels is None and max_pixels is None):
        return False
    set_image_pixel_bounds(processor, min_pixels=min_pixels, max_pixels=max_pixels)
    return True


def pin_sampling(model, settings: GRPOSettings):
    """Write the run's sampling settings over the model's generation config (spec §10.12); returns
    the config as it was, for the saved model."""
    original = copy.deepcopy(model.generation_config)
    for key, value in settings.sampling_overrides().items():
        setattr(model.generation_config, key, value)
    return original


def load_policy(spec: ModelSpec, *, use_bf16: bool):
    """(model, processor, vision family) of a vision-language checkpoint for training (a family of
    `models.vision_families`: Qwen2.5-VL, LLaVA)."""
    family = vision_family_of(spec.path)
    if family is None:
        raise ValueError(f"{spec.path} is no vision-language model of a known family "
                         f"({', '.join(VISION_FAMILIES)}): GWYS's GRPO trains on images")
    if spec.dtype == "auto":
        dtype = torch.bfloat16 if use_bf16 else torch.float32
    else:
        dtype = resolve_dtype(spec.dtype, spec.torch_device())
    model = family.transformers_class().from_pretrained(spec.path, dtype=dtype)
    processor = AutoProcessor.from_pretrained(spec.path)
    processor.tokenizer.padding_side = "left"  # the conflict forward's batch, as the original's processor call
    model.config.use_cache = False
    return model, processor, family


def lora_config(model, lora: Mapping, family: VisionFamily):
    """peft LoRA on the language model's linear layers only (never the vision tower, its
    projector/merger or the LM head; `train.model_prep.lora_target_names`)."""
    from peft import LoraConfig

    return LoraConfig(r=int(lora.get("r", 8)), lora_alpha=int(lora.get("alpha", 16)),
                      lora_dropout=float(lora.get("dropout", 0.0)), task_type="CAUSAL_LM",
                      target_modules=lora_target_names(model, lora.get("target_modules"), vision=family))


def freeze_vision_side(model, family: VisionFamily) -> int:
    """Full fine-tuning with the vision tower and projector frozen; returns the frozen parameter count."""
    frozen = 0
    for name, parameter in model.named_parameters():
        if family.part_of(name) != "language_model":
            parameter.requires_grad = False
            frozen += parameter.numel()
    return frozen


# ---------------------------------------------------------------- trainer


class ConflictGRPOTrainer(GRPOTrainer):
    """TRL's GRPOTrainer with GWYS's conflict term and the identical-group check (module docstring).

    conflict: the InfoNCE settings (None: no term); partner_ids: [rows, partners] pool indices
    (the dataset's `partner_ids`); the dataset needs `sample_index`, `problem` and `image`."""

    def __init__(self, *args, conflict: ConflictSettings | None = None, partner_ids: np.ndarray | None = None,
                 max_identical_steps: int = 3, **kwargs):
        super().__init__(*args, **kwargs)
        if conflict is not None and partner_ids is None:
            raise ValueError("the conflict term needs partner_ids")
        self.conflict = conflict
        self.partner_ids = None if partner_ids is None else np.asarray(partner_ids)
        self.max_identical_steps = max_identical_steps
        self.conflict_forwards = 0  # policy forwards made for the conflict term
        self.conflict_rows = 0  # rows those forwards embedded
        self.conflict_anchors = 0  # anchors the term was computed for
        self.conflict_seconds = 0.0
        self.identical_groups_total = 0
        self.groups_total = 0
        self._identical_streak = 0
        self._anchors_in_generation = 1

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        # Full weights through from_pretrained (`train.trainer.load_saved_weights`): transformers' own
        # resume loads them by state-dict key, non-strictly, and a VLM's saved keys (Qwen2.5-VL's
        # `visual.*`, `model.*`) are not its loaded ones, so a resumed run silently kept the start weights.
        target = model if model is not None else self.model
        if (isinstance(target, PreTrainedModel) and not self.is_fsdp_enabled
                and full_weights_file(Path(resume_from_checkpoint)) is not None):
            load_saved_weights(target, Path(resume_from_checkpoint))
        else:  # LoRA adapters: peft's own loader
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    # -- generation: sample indices, anchor rows, identical groups

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        device = output["completion_ids"].device
        index = [int(x["sample_index"]) for x in inputs]
        seen: set[int] = set()
        first = []
        for i in index:
            first.append(i not in seen)
            seen.add(i)
        output["sample_index"] = torch.tensor(index, device=device)
        output["conflict_anchor"] = torch.tensor(first, device=device)
        self._anchors_in_generation = max(len(seen), 1)
        self._check_groups(index, output["completion_ids"], output["completion_mask"])
        return output

    def _check_groups(self, index: list[int], completion_ids: torch.Tensor, completion_mask: torch.Tensor) -> None:
        mode = "train" if self.model.training else "eval"
        texts = self.processing_class.batch_decode(
            [ids[mask.bool()] for ids, mask in zip(completion_ids.cpu(), completion_mask.cpu())], skip_special_tokens=True)
        by_sample: dict[int, list[str]] = {}
        for i, text in zip(index, texts):
            by_sample.setdefault(i, []).append(text)
        groups = [g for g in by_sample.values() if len(g) > 1]
        identical = sum(identical_groups(g, len(g)) for g in groups)
        counts = self.accelerator.gather(torch.tensor([identical, len(groups)], device=completion_ids.device))
        identical, total = (int(v) for v in counts.view(-1, 2).sum(dim=0).tolist())
        self._metrics[mode]["identical_groups"].append(float(identical))
        if mode != "train":
            return
        self.identical_groups_total += identical
        self.groups_total += total
        if identical:
            log.warning("%d of %d groups hold one completion text only (zero advantages; spec §10.12)", identical, total)
        self._identical_streak = self._identical_streak + 1 if total and identical == total else 0
        if self._identical_streak >= self.max_identical_steps:
            raise RuntimeError(
                f"every group's completions were identical in {self._identical_streak} generation batches in a row: "
                "sampling does not sample (the model's generation defaults replacing the run's temperature/top_k/top_p, "
                "spec §10.12) or the policy has collapsed; either way these steps teach nothing")

    # -- the loss: GRPO + λ·InfoNCE once per unique prompt

    def _compute_loss(self, model, inputs):
        loss = super()._compute_loss(model, inputs)
        if self.conflict is None:
            return loss
        anchors = inputs["sample_index"][inputs["conflict_anchor"].bool()]
        if anchors.numel() == 0:  # this micro-batch holds no prompt's anchor row
            return loss
        result = self.conflict_loss(model, anchors.tolist())
        mode = "train" if self.model.training else "eval"
        # the mean over the generation batch's prompts: this micro-batch adds its anchors' share
        share = result.prompts / (self._anchors_in_generation if mode == "train" else result.prompts)
        loss = loss + result.weighted * share
        self._log_conflict(result, mode)
        return loss

    def conflict_loss(self, model, anchors: Sequence[int]) -> ConflictResult:
        """λ·L_NCE for `anchors` (pool indices), their partners embedded in the same forward."""
        started = time.perf_counter()
        result = conflict_term(list(anchors), self.partner_ids, lambda rows: self.pooled_representations(model, rows),
                               self.conflict)
        self.conflict_anchors += result.prompts
        self.conflict_seconds += time.perf_counter() - started
        return result

    def conflict_inputs(self, rows: Sequence[int]) -> dict:
        """The processor's batch for pool rows: "media + bare problem" chat texts (the default system
        turn, the user turn with the image and the problem, no assistant turn; spec §5.2)."""
        examples = self.train_dataset[list(rows)]  # the transform decodes the images
        texts = [self.processing_class.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": problem}]}],
            tokenize=False, add_generation_prompt=False) for problem in examples["problem"]]
        batch = self.processing_class(text=texts, images=list(examples["image"]), padding=True, return_tensors="pt")
        return {k: v.to(self.accelerator.device) for k, v in batch.items() if isinstance(v, torch.Tensor)}

    def pooled_representations(self, model, rows: Sequence[int]) -> torch.Tensor:
        """[len(rows), hidden]: the policy's last hidden states (after the final norm), mean-pooled over
        each row's attended tokens, from one forward with gradient."""
        batch = self.conflict_inputs(rows)
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module  # DDP's bookkeeping follows the policy forward alone (module docstring)
        with self.accelerator.autocast():
            # logits of the last position only: the term needs the hidden states, not the vocabulary
            outputs = model(**batch, output_hidden_states=True, use_cache=False, logits_to_keep=1)
        self.conflict_forwards += 1
        self.conflict_rows += len(rows)
        return mean_pool(outputs.hidden_states[-1], batch["attention_mask"])

    def _log_conflict(self, result: ConflictResult, mode: str) -> None:
        device = self.accelerator.device
        stats = torch.tensor([result.loss.item() * result.prompts, result.positives, result.fallbacks,
                              result.mean_cos * result.prompts, result.prompts], device=device, dtype=torch.float64)
        loss_sum, positives, fallbacks, cos_sum, prompts = self.accelerator.gather(stats).view(-1, 5).sum(dim=0).tolist()
        self._metrics[mode]["infoNCE"].append(loss_sum / prompts)
        self._metrics[mode]["infoNCE/positives"].append(positives / prompts)
        self._metrics[mode]["infoNCE/fallbacks"].append(fallbacks / prompts)
        self._metrics[mode]["infoNCE/mean_cos"].append(cos_sum / prompts)


class StepClock(TrainerCallback):
    """Wall-clock seconds of each optimizer step (generation, rewards, loss and update)."""

    def __init__(self):
        self.seconds: list[float] = []
        self._started = None

    def on_step_begin(self, args, state, control, **kwargs):
        self._started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._started is not None:
            self.seconds.append(time.perf_counter() - self._started)


def checkpointing_names() -> tuple[str, str]:
    fields = GRPOConfig.__dataclass_fields__
    if "activation_checkpointing" in fields:  # transformers >= 5.2x
        return "activation_checkpointing", "activation_checkpointing_kwargs"
    return "gradient_checkpointing", "gradient_checkpointing_kwargs"


def grpo_config(settings: GRPOSettings, *, out_dir: str | os.PathLike, device: torch.device,
                rewards: Sequence[str]) -> GRPOConfig:
    use_bf16 = resolve_bf16(settings.bf16, device)
    return GRPOConfig(**grpo_config_kwargs(settings, output_dir=str(Path(out_dir) / "checkpoints"),
                                           use_cpu=device.type == "cpu", use_bf16=use_bf16,
                                           reward_weights=settings.weights_for(list(rewards)),
                                           checkpointing_names=checkpointing_names()))


def build_trainer(model, processor, family: VisionFamily, data: GRPOData, rewards: Sequence, *,
                  settings: GRPOSettings, reward_names: Sequence[str], out_dir: str | os.PathLike,
                  device: torch.device, reference_path: str | None = None, callbacks: Sequence = (),
                  trainer_class: type[ConflictGRPOTrainer] | None = None) -> ConflictGRPOTrainer:
    """The trainer for an in-memory policy; `reference_path`: the KL reference's folder when it is
    not the policy's own (full fine-tuning only); `trainer_class`: a subclass of ours (benchmarks)."""
    args = grpo_config(settings, out_dir=out_dir, device=device, rewards=reward_names)
    peft_config = None
    if settings.lora is not None:
        peft_config = lora_config(model, settings.lora, family)
    elif settings.freeze_vision:
        freeze_vision_side(model, family)
    conflict = settings.conflict_settings if settings.conflict_enabled else None
    if conflict is not None and data.partner_ids is None:
        raise ValueError("the conflict term is on but the dataset was built without partners")
    own_path = model.config._name_or_path
    if reference_path is not None and settings.beta > 0:
        if settings.lora is not None:
            raise ValueError("with LoRA the KL reference is the adapter-disabled start model; a separate "
                             "reference model needs full fine-tuning (lora: null)")
        # TRL builds the reference from the policy's config._name_or_path: point it at the reference
        model.config._name_or_path = str(reference_path)
    try:
        trainer = (trainer_class or ConflictGRPOTrainer)(
            model=model, reward_funcs=list(rewards), args=args, train_dataset=data.dataset, processing_class=processor,
            peft_config=peft_config, callbacks=list(callbacks), conflict=conflict, partner_ids=data.partner_ids,
            max_identical_steps=settings.max_identical_steps)
    finally:
        model.config._name_or_path = own_path
    return trainer


# ---------------------------------------------------------------- the run


def save_policy(trainer: ConflictGRPOTrainer, *, spec: ModelSpec, family: VisionFamily, settings: GRPOSettings,
                out_dir: Path, generation_config, use_bf16: bool) -> Path:
    """out_dir/model: the trained policy in plain HF weights (LoRA merged) with the start model's
    processor (not the run's pixel bounds) and generation config, written whole or not at all, by
    the shared trainer's save (every process takes part: ZeRO-3 gathers the weights)."""
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    base = unwrapped.get_base_model() if hasattr(unwrapped, "get_base_model") else unwrapped
    base.generation_config = generation_config
    processor = AutoProcessor.from_pretrained(spec.path)
    return save_final_model(trainer, SFTConfig(lora=settings.lora, merge_lora=True), spec, processor, vision=family,
                            out_dir=out_dir, use_bf16=use_bf16)


def step_history(log_history: Sequence[dict]) -> list[dict]:
    """The per-step entries of TRL's log history: the STEP_KEYS and every rewards/<fn>/... value."""
    steps = []
    for entry in log_history:
        if "reward" not in entry and "loss" not in entry:
            continue  # the final train_runtime entry
        kept = {k: v for k, v in entry.items() if k in STEP_KEYS or k.startswith("rewards/")}
        steps.append({"step": int(entry.get("step", 0)), **kept})
    return steps


def train_grpo(*, model: Mapping | str, reference: Mapping | str | None, pool_path: str | os.PathLike,
               media_root: str | os.PathLike | None, out_dir: str | os.PathLike, settings: Mapping | GRPOSettings,
               form: str, rewards: Sequence[str], judge: Mapping | None = None, prompts: Mapping | None = None,
               judge_backend: JudgeBackend | None = None, resume: bool = True) -> Path:
    """GRPO from the start model `model` on the RL pool (see the module docstring); returns out_dir/model.

    judge: {generator: a generator spec, max_new_tokens, do_sample, temperature, top_p,
    judge_empty_captions, cache_size, disk_cache}; `judge_backend`, when given, answers in place
    of the spec's generator (a caller holding one). prompts: {question, type_instructions: {type:
    path}, judge_user, judge_system}: files in place of ours."""
    started = time.perf_counter()
    settings = settings if isinstance(settings, GRPOSettings) else GRPOSettings.from_dict(settings)
    settings.validate()
    check_form(form)
    reward_names = check_reward_names(rewards)
    prompt_paths = check_keys(prompts, PROMPT_KEYS, "prompts")
    judge = check_keys(judge, JUDGE_KEYS, "judge")
    spec = ModelSpec.from_config(model)
    reference_spec = ModelSpec.from_config(reference) if reference is not None else None
    reference_path = reference_spec.path if reference_spec is not None and reference_spec.path != spec.path else None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = spec.torch_device()
    use_bf16 = resolve_bf16(settings.bf16, device)

    question_prompts = load_question_prompts(form, prompt_paths.get("question"), prompt_paths.get("type_instructions"))
    conflict = settings.conflict_settings if settings.conflict_enabled else None
    data = grpo_dataset(read_table(pool_path), media_root=media_root, prompts=question_prompts, conflict=conflict)
    reward_funcs = build_rewards(reward_names, form=form, rules=settings.answer_rules, judge=judge,
                                 judge_backend=judge_backend, prompts=prompt_paths, cache_file=out_dir / JUDGE_CACHE)
    caption = next((r for r in reward_funcs if isinstance(r, CaptionReward)), None)

    policy, processor, family = load_policy(spec, use_bf16=use_bf16)
    pixel_bounds = apply_pixel_bounds(processor, family, min_pixels=settings.min_pixels, max_pixels=settings.max_pixels)
    if not pixel_bounds:
        log.info("the image processor of %s has no pixel bounds: max_pixels/min_pixels do not apply", spec.path)
    start_generation = pin_sampling(policy, settings)
    clock = StepClock()
    trainer = build_trainer(policy, processor, family, data, reward_funcs, settings=settings, reward_names=reward_names,
                            out_dir=out_dir, device=device, reference_path=reference_path, callbacks=[clock])
    fingerprint_extra = {"form": form, "rewards": reward_names, "prompts": question_prompts.version,
                         "reference": reference_path, "judge": (caption.store.fingerprint if caption is not None
                                                                and caption.store is not None else None)}
    if trainer.is_world_process_zero():
        discard_other_runs(out_dir / "checkpoints", run_fingerprint(settings, spec.path, data.records, fingerprint_extra))
    trainer.accelerator.wait_for_everyone()
    result, resumed_from = train_resuming(trainer, out_dir / "checkpoints", resume=resume)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    model_dir = save_policy(trainer, spec=spec, family=family, settings=settings, out_dir=out_dir,
                            generation_config=start_generation, use_bf16=use_bf16)
    # every process's own counts (each asked the judge for its completions, embedded its anchors)
    counts = gather_object([{"requests": caption.requests if caption else 0, "failures": caption.failures if caption else 0,
                             "forwards": trainer.conflict_forwards, "rows": trainer.conflict_rows,
                             "anchors": trainer.conflict_anchors, "seconds": trainer.conflict_seconds}])
    totals = {key: sum(c[key] for c in counts) for key in counts[0]}
    if not trainer.is_world_process_zero():
        return model_dir

    history = step_history(trainer.state.log_history)
    atomic_write_json(out_dir / SUMMARY, {
        "model": spec.describe(),
        "reference": reference_path or spec.path,
        "model_dir": str(model_dir),
        "form": form,
        "rewards": reward_names,
        "reward_weights": settings.weights_for(reward_names),
        "steps": int(trainer.state.global_step),
        "seconds": round(time.perf_counter() - started, 3),
        "train_seconds": round(float(result.metrics.get("train_runtime", 0.0)), 3),
        "step_seconds": [round(s, 4) for s in clock.seconds],
        "resumed_from": resumed_from,
        "records": len(data.records) + len(data.skipped),
        "trained_records": len(data.records),
        "skipped": data.skipped,
        "final_metrics": history[-1] if history else {},
        "judge": None if caption is None else {
            "generator": caption.judge.describe() if hasattr(caption.judge, "describe") else type(caption.judge).__name__,
            "prompts": caption.prompts.version, "sampling": caption.params.describe(),
            "requests": totals["requests"], "failures": totals["failures"],
            "disk_cache": None if caption.store is None else str(caption.store.path)},
        "judge_failures": None if caption is None else totals["failures"],
        "processes": trainer.accelerator.num_processes,
        "identical_groups": trainer.identical_groups_total,
        "groups": trainer.groups_total,
        "conflict": None if trainer.conflict is None else {
            **dataclasses.asdict(trainer.conflict), "forwards": totals["forwards"],
            "rows_embedded": totals["rows"], "anchors": totals["anchors"],
            "seconds": round(totals["seconds"], 3)},
        "pixel_bounds_applied": pixel_bounds,
        "trainable_parameters": int(trainable),
        "bf16": use_bf16,
        "prompt_versions": {"question": question_prompts.version,
                            "judge": None if caption is None else caption.prompts.version},
        "settings": dataclasses.asdict(settings),
        "log_history": history,
    })
    return model_dir


# ---------------------------------------------------------------- in this process, or under accelerate launch


def run_grpo(*, model: Mapping | str, reference: Mapping | str | None, pool_path: str | os.PathLike,
             media_root: str | os.PathLike | None, out_dir: str | os.PathLike, settings: Mapping, form: str,
             rewards: Sequence[str], judge: Mapping | None = None, prompts: Mapping | None = None) -> Path:
    """`train_grpo` in this process, or under `accelerate launch` when `settings` name an
    `accelerate_config` (with `workflow_dir`, where a relative launch file is looked up after the
    run folder: `train.launch`); returns out_dir/model."""
    settings = dict(settings)
    accelerate_config = settings.pop(ACCELERATE_CONFIG, "") or ""
    workflow_dir = settings.pop(WORKFLOW_DIR, None)
    GRPOSettings.from_dict(settings)  # refused here, before any process starts
    run = {"form": form, "rewards": list(rewards), "judge": judge, "prompts": prompts, "reference": reference}
    if not accelerate_config:
        return train_grpo(model=model, pool_path=pool_path, media_root=media_root, out_dir=out_dir, settings=settings,
                          **run)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    run_file = out_dir.parent / f".{out_dir.name}.grpo_run.json"  # read by the launched processes
    with atomic_path(run_file) as tmp:
        Path(tmp).write_text(json.dumps(run, default=str))
    try:
        return launch_accelerate(__name__, accelerate_config=accelerate_config, workflow_dir=workflow_dir,
                                 model=dict(model) if isinstance(model, Mapping) else {"path": str(model)},
                                 records_path=str(pool_path), image_root=None if media_root is None else str(media_root),
                                 out_dir=str(out_dir), settings=settings, extra_args=("--run", str(run_file)))
    finally:
        run_file.unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line `train.launch` starts in each process (its SFT-style arguments, plus --run:
    a JSON file of form, rewards, judge, prompts and reference)."""
    import yaml

    parser = argparse.ArgumentParser(description="GWYS GRPO (TRL's GRPOTrainer) on an RL pool table")
    parser.add_argument("--records", required=True, help="the RL pool table (schemas/gwys_pool)")
    parser.add_argument("--image-root", default=None, help="the folder the pool's media paths are relative to")
    parser.add_argument("--model", required=True, help="the start model's folder or hub id")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", required=True, help="output folder (checkpoints/, model/, train_summary.json)")
    parser.add_argument("--config", required=True, help="YAML of GRPO settings (gwys.grpo_settings)")
    parser.add_argument("--run", required=True, help="JSON: form, rewards, judge, prompts, reference")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    settings = yaml.safe_load(Path(args.config).read_text()) or {}
    run = json.loads(Path(args.run).read_text())
    model_dir = train_grpo(model=ModelSpec(args.model, dtype=args.dtype, device=args.device), pool_path=args.records,
                           media_root=args.image_root, out_dir=args.out, settings=settings, **run)
    print(model_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

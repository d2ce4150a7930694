"""GWYS's GRPO settings (spec §4, §5, §11.1) and the TRL `GRPOConfig` arguments they make; pure Python.

`GRPOSettings` holds every setting of a GRPO run with the spec's values as defaults (the original's
`run_grpo.sh`; RL-OURS is the same recipe): G = 8 completions per prompt sampled at temperature 1.0,
top_p 0.95, top_k 50 (the HF default the original left in place), repetition penalty 1.0, at most
768 new tokens; β = 0.04 against the start model; TRL's `loss_type="grpo"` (a per-sequence token
mean, then a mean over sequences); lr 1e-6, cosine, no warm-up, weight decay 0.01, gradient norm
clipped at 5; one epoch of one prompt per device per step; images between 3136 and 401408 pixels.
`from_dict` refuses an unknown key, naming it.

`grpo_config_kwargs` writes every setting out for TRL's `GRPOConfig`. TRL 1.16's defaults differ
from the original's in `loss_type` ("dapo"), `beta` (0.0), `top_p` (1.0), `top_k` (0) and `bf16`
(on), so nothing is left to them: a TRL default never decides a sampling or loss setting here.
The model's own generation defaults are the other trap (spec §10.12: Qwen2.5-VL's
`generation_config.json` holds top_k 1, top_p 0.001, temperature 0.1, which transformers merges
into any value left at its global default); `sampling_overrides` is what the trainer writes over
the model's generation config for the run (`grpo.pin_sampling`).

Deviations and switches, all settings: `lora` (null = full fine-tuning, as the paper; a dict trains
LoRA adapters on the language model's linear layers only, the vision side frozen), `freeze_vision`
(full fine-tuning with the vision encoder and its merger/projector frozen), `answer_rules`
(`gwys.rewards`: "original" or "fixed"), `conflict` (the InfoNCE term, `gwys.conflict`; off unless
`enabled`), `max_identical_steps` (training stops after that many generation batches in a row in
which every group's completions are one text: the sign of sampling settings silently replaced,
§10.12).

No torch here: the workflow validates settings without loading a model.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from groundflow.gwys.conflict import ConflictSettings
from groundflow.gwys.rewards import check_rules

REWARD_NAMES = ("accuracy", "format", "caption")
# Spec §5: accuracy + 0.1·format + 1.0·caption (the baseline: accuracy + 0.1·format).
DEFAULT_REWARD_WEIGHTS = {"accuracy": 1.0, "format": 0.1, "caption": 1.0}
LORA_KEYS = frozenset({"r", "alpha", "dropout", "target_modules"})
CONFLICT_KEYS = frozenset({"enabled", *(f.name for f in dataclasses.fields(ConflictSettings))})
# TRL 1.16's loss aggregations (GRPOConfig.loss_type)
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo")


@dataclass
class GRPOSettings:
    # sampling (spec §4 step 5; §10.12)
    num_generations: int = 8
    temperature: float = 1.0
    top_p: float = 0.95
    top_k: int = 50
    repetition_penalty: float = 1.0
    max_completion_length: int = 768
    # the objective (§4 steps 9-13)
    beta: float = 0.04
    loss_type: str = "grpo"
    # optimisation (§4 hyper-parameters)
    learning_rate: float = 1e-6
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.0
    weight_decay: float = 0.01
    max_grad_norm: float = 5.0
    num_train_epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides num_train_epochs
    per_device_prompts: int = 1  # prompts per device per step; each brings num_generations completions
    gradient_accumulation_steps: int = 1
    bf16: bool | str = "auto"  # "auto": bf16 on a CUDA device that has it, fp32 elsewhere
    gradient_checkpointing: bool = True
    logging_steps: int = 1
    save_steps: int = 100
    save_total_limit: int = 2
    # None: full fine-tuning; {r, alpha, dropout, target_modules}: LoRA on the language model's linear layers
    lora: dict | None = None
    freeze_vision: bool = False  # full fine-tuning only: the vision encoder and projector/merger frozen
    seed: int = 0
    # by reward name; None: the spec's weights (DEFAULT_REWARD_WEIGHTS) for the rewards a run uses
    reward_weights: dict | None = None
    answer_rules: str = "fixed"
    # {enabled, weight, threshold, tau, partners, fallback, seed} (gwys.conflict.ConflictSettings)
    conflict: dict = field(default_factory=lambda: {"enabled": False})
    # the image processor's pixel bounds (Qwen2-VL-style processors; spec §4 step 3: RL's values)
    max_pixels: int | None = 401408
    min_pixels: int | None = 3136
    max_identical_steps: int = 3
    report_to: str = "none"

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> "GRPOSettings":
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown GRPO settings {unknown}; known: {sorted(known)}")
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        def need(condition: bool, message: str) -> None:
            if not condition:
                raise ValueError(message)

        need(isinstance(self.num_generations, int) and self.num_generations >= 2,
             f"num_generations must be an integer >= 2 (group advantages), not {self.num_generations!r}")
        need(self.temperature > 0, f"temperature must be > 0 (GRPO samples), not {self.temperature!r}")
        need(0 < self.top_p <= 1, f"top_p must be in (0, 1], not {self.top_p!r}")
        need(isinstance(self.top_k, int) and self.top_k >= 0, f"top_k must be an integer >= 0 (0: off), not {self.top_k!r}")
        need(self.repetition_penalty > 0, f"repetition_penalty must be > 0, not {self.repetition_penalty!r}")
        need(isinstance(self.max_completion_length, int) and self.max_completion_length >= 1,
             f"max_completion_length must be an integer >= 1, not {self.max_completion_length!r}")
        need(self.beta >= 0, f"beta must be >= 0, not {self.beta!r}")
        need(self.loss_type in LOSS_TYPES, f"loss_type must be one of {list(LOSS_TYPES)}, not {self.loss_type!r}")
        need(self.learning_rate > 0, f"learning_rate must be > 0, not {self.learning_rate!r}")
        need(0 <= self.warmup_ratio < 1, f"warmup_ratio must be in [0, 1), not {self.warmup_ratio!r}")
        need(self.max_grad_norm is None or self.max_grad_norm > 0,
             f"max_grad_norm must be > 0, or null for no clipping, not {self.max_grad_norm!r}")
        need(self.max_steps > 0 or self.num_train_epochs > 0, "set num_train_epochs > 0 or max_steps > 0")
        need(isinstance(self.per_device_prompts, int) and self.per_device_prompts >= 1,
             f"per_device_prompts must be an integer >= 1, not {self.per_device_prompts!r}")
        need(isinstance(self.gradient_accumulation_steps, int) and self.gradient_accumulation_steps >= 1,
             f"gradient_accumulation_steps must be an integer >= 1, not {self.gradient_accumulation_steps!r}")
        need(self.bf16 in (True, False, "auto"), f"bf16 must be true, false or 'auto', not {self.bf16!r}")
        need(self.logging_steps >= 1 and self.save_steps >= 1, "logging_steps and save_steps must be >= 1")
        need(isinstance(self.max_identical_steps, int) and self.max_identical_steps >= 1,
             f"max_identical_steps must be an integer >= 1, not {self.max_identical_steps!r}")
        if self.lora is not None:
            need(isinstance(self.lora, Mapping), f"lora must be a mapping or null, not {self.lora!r}")
            unknown = sorted(set(self.lora) - LORA_KEYS)
            need(not unknown, f"unknown LoRA settings {unknown}; known: {sorted(LORA_KEYS)}")
            need(not self.freeze_vision, "freeze_vision is for full fine-tuning; LoRA always leaves the vision side frozen")
        if self.reward_weights is not None:
            unknown = sorted(set(self.reward_weights) - set(REWARD_NAMES))
            need(not unknown, f"reward_weights for unknown rewards {unknown}; known: {list(REWARD_NAMES)}")
            need(all(isinstance(w, (int, float)) and math.isfinite(w) for w in self.reward_weights.values()),
                 f"reward weights must be finite numbers: {self.reward_weights}")
        check_rules(self.answer_rules)
        unknown = sorted(set(self.conflict) - CONFLICT_KEYS)
        need(not unknown, f"unknown conflict settings {unknown}; known: {sorted(CONFLICT_KEYS)}")
        self.conflict_settings  # ConflictSettings checks fallback, tau and partners
        for name in ("max_pixels", "min_pixels"):
            value = getattr(self, name)
            need(value is None or (isinstance(value, int) and value > 0), f"{name} must be a positive integer or null, not {value!r}")
        if self.max_pixels is not None and self.min_pixels is not None:
            need(self.min_pixels <= self.max_pixels, f"min_pixels {self.min_pixels} exceeds max_pixels {self.max_pixels}")

    @property
    def conflict_enabled(self) -> bool:
        return bool(self.conflict.get("enabled", False))

    @property
    def conflict_settings(self) -> ConflictSettings:
        return ConflictSettings(**{k: v for k, v in self.conflict.items() if k != "enabled"})

    def weights_for(self, rewards: list[str] | tuple[str, ...]) -> list[float]:
        """The weight of each of `rewards`, in order: the configured one, else the spec's."""
        check_reward_names(rewards)
        configured = dict(self.reward_weights or {})
        unused = sorted(set(configured) - set(rewards))
        if unused:
            raise ValueError(f"reward_weights name rewards this run does not use: {unused} (rewards: {list(rewards)})")
        return [float(configured.get(name, DEFAULT_REWARD_WEIGHTS[name])) for name in rewards]

    def sampling_overrides(self) -> dict:
        """The sampling fields written over the model's generation config for the run (spec §10.12)."""
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k,
                "min_p": None, "typical_p": 1.0, "repetition_penalty": self.repetition_penalty}


def check_reward_names(rewards) -> list[str]:
    rewards = list(rewards)
    if not rewards:
        raise ValueError(f"a GRPO run needs at least one reward among {list(REWARD_NAMES)}")
    unknown = [r for r in rewards if r not in REWARD_NAMES]
    if unknown:
        raise ValueError(f"unknown rewards {unknown}; known: {list(REWARD_NAMES)}")
    if len(set(rewards)) != len(rewards):
        raise ValueError(f"a reward is named twice: {rewards}")
    return rewards


def grpo_config_kwargs(settings: GRPOSettings, *, output_dir: str, use_cpu: bool, use_bf16: bool,
                       reward_weights: list[float], checkpointing_names: tuple[str, str] = (
                           "gradient_checkpointing", "gradient_checkpointing_kwargs")) -> dict:
    """Every argument of TRL's `GRPOConfig` that decides the run, written out (see the module docstring).

    `checkpointing_names`: the TrainingArguments fields of activation checkpointing and its kwargs
    (transformers >= 5.2x renamed `gradient_checkpointing` to `activation_checkpointing`)."""
    flag, flag_kwargs = checkpointing_names
    return {
        "output_dir": output_dir,
        # TRL's batch counts completions: per_device_prompts prompts x num_generations each
        "per_device_train_batch_size": settings.per_device_prompts * settings.num_generations,
        "gradient_accumulation_steps": settings.gradient_accumulation_steps,
        "steps_per_generation": settings.gradient_accumulation_steps,
        "num_generations": settings.num_generations,
        "num_iterations": 1,  # on-policy, one update per generation batch (the ratio is 1, §4 step 13)
        "max_completion_length": settings.max_completion_length,
        "temperature": settings.temperature,
        "top_p": settings.top_p,
        "top_k": settings.top_k,
        "min_p": None,
        "repetition_penalty": settings.repetition_penalty,
        "beta": settings.beta,
        "loss_type": settings.loss_type,
        "scale_rewards": "group",  # (r - mean_g) / (std_g + 1e-4), unbiased std (§4 step 12)
        "multi_objective_aggregation": "sum_then_normalize",
        "mask_truncated_completions": False,  # the original trained on truncated completions too
        "reward_weights": list(reward_weights),
        "learning_rate": settings.learning_rate,
        "lr_scheduler_type": settings.lr_scheduler_type,
        "warmup_steps": float(settings.warmup_ratio),  # < 1: a share of the total steps
        "weight_decay": settings.weight_decay,
        "max_grad_norm": 0.0 if settings.max_grad_norm is None else float(settings.max_grad_norm),
        "num_train_epochs": settings.num_train_epochs,
        "max_steps": settings.max_steps,
        "bf16": use_bf16,
        "fp16": False,
        "use_cpu": use_cpu,
        flag: settings.gradient_checkpointing,
        flag_kwargs: {"use_reentrant": False} if settings.gradient_checkpointing else None,
        "logging_strategy": "steps",
        "logging_steps": settings.logging_steps,
        "save_strategy": "steps",
        "save_steps": settings.save_steps,
        "save_total_limit": settings.save_total_limit,
        "seed": settings.seed,
        "data_seed": settings.seed,
        "shuffle_dataset": True,
        "report_to": settings.report_to,
        "use_vllm": False,  # rollouts with HF generate, as the original (vLLM's pins conflict with ours)
        "remove_unused_columns": False,  # the rewards read the dataset's columns
        "log_completions": False,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }

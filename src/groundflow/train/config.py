"""Training settings of the SFT trainer: `SFTConfig`, reading it from a YAML file, and the
`epoch_step` learning-rate schedule's factor.

Pure Python (no torch): the launcher and the workflow validate settings without loading a model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path


# The LR times gamma after every epoch, constant within one (torch StepLR(step_size=1) stepped per
# epoch: the CINGS original's schedule). Other names are transformers' schedulers.
EPOCH_STEP = "epoch_step"
EPOCH_STEP_GAMMA = 0.85

# How the loss of an accumulated batch is averaged. accumulated_tokens: summed over every
# micro-batch, divided by the labelled-token count of the whole accumulated batch (each supervised
# token weighs the same). micro_batch: the CINGS original's (llama-recipes): each micro-batch's
# mean over its own labelled tokens, divided by gradient_accumulation_steps (a token of a short
# micro-batch weighs more).
ACCUMULATED_TOKENS = "accumulated_tokens"
MICRO_BATCH = "micro_batch"
LOSS_AVERAGING = (ACCUMULATED_TOKENS, MICRO_BATCH)

# Which tokens the LM loss is taken on (train.conversations.LOSS_MASKS). assistant_only: the
# assistant turns and the token that ends each. all_but_pad_and_image: every token but padding and
# image tokens, system and user text included (GWYS' original cold-start SFT, spec §3).
ASSISTANT_ONLY = "assistant_only"
ALL_BUT_PAD_AND_IMAGE = "all_but_pad_and_image"
LOSS_MASK_NAMES = (ASSISTANT_ONLY, ALL_BUT_PAD_AND_IMAGE)


def epoch_step_factor(steps_per_epoch: int, gamma: float, warmup_steps: int = 0):
    """The LR multiplier after `step` optimizer steps: a linear warmup (as transformers' schedules),
    then gamma ** (completed epochs)."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, not {steps_per_epoch}")

    def factor(step: int) -> float:
        warm = min(1.0, step / warmup_steps) if warmup_steps > 0 else 1.0
        return warm * gamma ** (step // steps_per_epoch)

    return factor


@dataclass
class SFTConfig:
    learning_rate: float = 2e-5
    num_train_epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides num_train_epochs
    per_device_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    lr_scheduler_type: str = "cosine"
    lr_scheduler_kwargs: dict | None = None
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_length: int = 2048
    seed: int = 0
    # {r, alpha, dropout, target_modules, modules_to_save}; None = full fine-tuning
    lora: dict | None = None
    merge_lora: bool = True
    gradient_checkpointing: bool = False
    bf16: bool | str = "auto"  # "auto": bf16 on CUDA with bf16 support, fp32 elsewhere
    logging_steps: int = 1
    save_steps: int = 500
    save_total_limit: int = 2
    freeze_vision_tower: bool = True
    train_projector: bool = True
    train_language_model: bool = True  # False with lora=None: projector-only (LLaVA stage 1)
    group_by_length: bool = False
    # LLaVA's grouping: image and text-only examples in separate megabatches, each sorted by
    # estimated length (train.data.modality_length_grouped_indices)
    group_by_modality_length: bool = False
    dataloader_num_workers: int = 0  # processes that tokenise items and load images per rank
    chat_template: str | None = None  # None: the tokenizer's / processor's own
    # Hub id or folder of the tokenizer (and chat template) to train with, when it is not the
    # model's own (CINGS: the Instruct tokenizer on the base model); "": the model's.
    tokenizer: str = ""
    report_to: str = "tensorboard"
    # Labelled tokens whose LM-head logits and cross-entropy are computed at once, each chunk
    # recomputed in backward (train.trainer.chunked_causal_lm_loss_sum); None: the model's logits
    # over the whole batch (batch x length x vocabulary, upcast to fp32 in the loss).
    loss_chunk_tokens: int | None = None
    max_grad_norm: float | None = 1.0  # None: no clipping (the CINGS original never clips)
    loss_averaging: str = ACCUMULATED_TOKENS
    loss_mask: str = ASSISTANT_ONLY  # a name of LOSS_MASK_NAMES; a caller's own mask function replaces it
    # Pixel bounds an image is resized between, for a model family that resizes per image
    # (Qwen2.5-VL: tokens = pixels / 28**2); None: the processor's own. Saved with the processor.
    min_pixels: int | None = None
    max_pixels: int | None = None

    @classmethod
    def from_dict(cls, values: dict | None) -> "SFTConfig":
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training settings {unknown}; known: {sorted(known)}")
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        if self.lora is not None:
            unknown = sorted(set(self.lora) - {"r", "alpha", "dropout", "target_modules", "modules_to_save"})
            if unknown:
                raise ValueError(f"unknown LoRA settings {unknown}")
            if not self.train_language_model:
                raise ValueError("LoRA trains the language model; use lora: null with train_language_model: false")
        if self.group_by_length and self.group_by_modality_length:
            raise ValueError("group_by_length and group_by_modality_length are two batch orders; choose one")
        if self.dataloader_num_workers < 0:
            raise ValueError(f"dataloader_num_workers must be >= 0, not {self.dataloader_num_workers}")
        if self.bf16 not in (True, False, "auto"):
            raise ValueError(f"bf16 must be true, false or 'auto', not {self.bf16!r}")
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise ValueError("set num_train_epochs > 0 or max_steps > 0")
        if self.loss_chunk_tokens is not None and (
                isinstance(self.loss_chunk_tokens, bool) or not isinstance(self.loss_chunk_tokens, int)
                or self.loss_chunk_tokens < 1):
            raise ValueError(f"loss_chunk_tokens must be an integer >= 1 or null, not {self.loss_chunk_tokens!r}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0, or null for no clipping, not {self.max_grad_norm!r}")
        if self.loss_averaging not in LOSS_AVERAGING:
            raise ValueError(f"loss_averaging must be one of {list(LOSS_AVERAGING)}, not {self.loss_averaging!r}")
        if self.loss_mask not in LOSS_MASK_NAMES:
            raise ValueError(f"loss_mask must be one of {list(LOSS_MASK_NAMES)}, not {self.loss_mask!r}")
        for key in ("min_pixels", "max_pixels"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{key} must be an integer >= 1 or null, not {value!r}")
        if self.min_pixels is not None and self.max_pixels is not None and self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels {self.min_pixels} is above max_pixels {self.max_pixels}")
        if self.lr_scheduler_type == EPOCH_STEP:
            kwargs = dict(self.lr_scheduler_kwargs or {})
            unknown = sorted(set(kwargs) - {"gamma"})
            if unknown:
                raise ValueError(f"lr_scheduler_kwargs {unknown} do not apply to {EPOCH_STEP}; it takes gamma")
            if not 0 < float(kwargs.get("gamma", EPOCH_STEP_GAMMA)) <= 1:
                raise ValueError(f"{EPOCH_STEP} gamma must be in (0, 1], not {kwargs['gamma']}")


def load_config_file(path: str | None) -> SFTConfig:
    """SFTConfig from a YAML file whose settings sit at the top level or under `train`; defaults
    when no path is given."""
    if not path:
        return SFTConfig()
    import yaml

    values = yaml.safe_load(Path(path).read_text()) or {}
    if "train" in values and isinstance(values["train"], dict) and not set(values) & {f.name for f in dataclasses.fields(SFTConfig)}:
        values = values["train"]
    return SFTConfig.from_dict(values)

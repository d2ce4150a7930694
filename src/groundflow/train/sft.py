"""Supervised fine-tuning of LLaVA and causal LMs on LLaVA-format conversations.

One trainer for every method: records are `{id, image?, conversations}`; the loss is taken where a
`LossMaskFn` says (assistant turns by default; CINGS passes its own); LoRA through peft or full
fine-tuning; bf16 on CUDA and fp32 on CPU; checkpoints in `out_dir/checkpoints` (a second call
resumes from the last one); TensorBoard in `out_dir/runs`; the final model in `out_dir/model`, in
HF format with its processor or tokenizer, LoRA merged on request; `out_dir/train_summary.json`.

The same entry point runs under `accelerate launch` (DDP or DeepSpeed ZeRO-2/3 through the files
in configs/accelerate and configs/deepspeed):

    accelerate launch --config_file configs/accelerate/zero3.yaml -m groundflow.train.sft \\
        --records hybrid.json --image-root images/ --model llava-hf/llava-1.5-7b-hf \\
        --out results/train --config train.yaml
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoProcessor,
    AutoTokenizer,
    LlavaForConditionalGeneration,
    Trainer,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

from groundflow.io.artifacts import atomic_directory, atomic_write_json
from groundflow.models.llava import pad_to_square
from groundflow.models.spec import ModelSpec, resolve_dtype
from groundflow.train.conversations import (
    IGNORE_INDEX,
    ConversationError,
    LossMaskFn,
    assistant_mask_fn,
    num_image_tokens,
    text_tokenizer,
    truncate_example,
)
from groundflow.vision.image_io import ImageError, load_rgb

log = logging.getLogger(__name__)

LLAVA_MODEL_TYPES = {"llava"}
PROJECTOR = "multi_modal_projector"
LANGUAGE_MODEL = "language_model"


# The LR times gamma after every epoch, constant within one (torch StepLR(step_size=1) stepped per
# epoch: the CINGS original's schedule). Other names are transformers' schedulers.
EPOCH_STEP = "epoch_step"
EPOCH_STEP_GAMMA = 0.85


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
    chat_template: str | None = None  # None: the tokenizer's / processor's own
    # Hub id or folder of the tokenizer (and chat template) to train with, when it is not the
    # model's own (CINGS: the Instruct tokenizer on the base model); "": the model's.
    tokenizer: str = ""
    report_to: str = "tensorboard"

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
        if self.bf16 not in (True, False, "auto"):
            raise ValueError(f"bf16 must be true, false or 'auto', not {self.bf16!r}")
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise ValueError("set num_train_epochs > 0 or max_steps > 0")
        if self.lr_scheduler_type == EPOCH_STEP:
            kwargs = dict(self.lr_scheduler_kwargs or {})
            unknown = sorted(set(kwargs) - {"gamma"})
            if unknown:
                raise ValueError(f"lr_scheduler_kwargs {unknown} do not apply to {EPOCH_STEP}; it takes gamma")
            if not 0 < float(kwargs.get("gamma", EPOCH_STEP_GAMMA)) <= 1:
                raise ValueError(f"{EPOCH_STEP} gamma must be in (0, 1], not {kwargs['gamma']}")


# ---------------------------------------------------------------- data


@dataclass
class TrainExample:
    id: str
    input_ids: list[int]
    labels: list[int]
    image: str | None = None


def build_examples(
    records: Sequence[dict],
    tokenizer_or_processor,
    mask_fn: LossMaskFn,
    *,
    max_length: int,
    image_root: str | os.PathLike | None,
    is_llava: bool,
) -> tuple[list[TrainExample], list[dict]]:
    """Tokenise and mask every record once; (examples, skipped) where each skipped record has a reason.

    A record is skipped, never silently dropped, when it has no conversation, an image that a
    text-only model cannot take or that is missing, labels the mask function refuses, an image
    token count that does not match its images, or no supervised token within max_length.

    A record that carries `input_ids` and `labels` was tokenised ahead (a tokenisation cache, e.g.
    CINGS's per-mode tables): it is taken as it is, with the same checks and truncation.
    """
    image_token_id = None
    tokens_per_image = 0
    if is_llava:
        tok = text_tokenizer(tokenizer_or_processor)
        image_token_id = tok.convert_tokens_to_ids(tokenizer_or_processor.image_token)
        tokens_per_image = num_image_tokens(tokenizer_or_processor)
    root = Path(image_root) if image_root is not None else None

    examples, skipped = [], []
    for index, record in enumerate(records):
        record_id = str(record.get("id", index))

        def skip(reason: str) -> None:
            skipped.append({"id": record_id, "reason": reason})

        conversation = record.get("conversations")
        pretokenized = record.get("input_ids") is not None and record.get("labels") is not None
        if not pretokenized and (not isinstance(conversation, list) or not conversation):
            skip(f"record {record_id} has no conversations")
            continue
        image = record.get("image")
        if image and not is_llava:
            skip(f"record {record_id} has image {image!r} but the model is text-only")
            continue
        if image:
            if root is None:
                skip(f"record {record_id} has image {image!r} but no image_root was given")
                continue
            if not (root / image).is_file():
                skip(f"record {record_id}: missing image file {root / image}")
                continue
        try:
            if pretokenized:
                input_ids = [int(token) for token in record["input_ids"]]
                labels = [int(label) for label in record["labels"]]
            else:
                input_ids, labels = mask_fn(conversation, tokenizer_or_processor)
            input_ids, labels = truncate_example(input_ids, labels, max_length, image_token_id=image_token_id)
        except (ConversationError, ValueError) as error:
            skip(f"record {record_id}: {error}")
            continue
        if image_token_id is not None:
            found = sum(1 for t in input_ids if t == image_token_id)
            expected = tokens_per_image if image else 0
            if found != expected:
                skip(f"record {record_id} has {found} image tokens, expected {expected} for {1 if image else 0} image(s)")
                continue
        if all(label == IGNORE_INDEX for label in labels[1:]):
            skip(f"record {record_id} has no supervised token within max_length {max_length}")
            continue
        examples.append(TrainExample(record_id, list(input_ids), list(labels), image or None))
    return examples, skipped


class ExampleDataset(Dataset):
    def __init__(self, examples: Sequence[TrainExample]):
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        example = self.examples[index]
        return {"input_ids": example.input_ids, "labels": example.labels, "image": example.image, "id": example.id}


class SFTCollator:
    """Right-pads a batch; the attention mask comes from each row's length and padded labels are
    IGNORE_INDEX, so no token id (0 included) is ever taken for padding. For a LLaVA, the batch's
    images are loaded, padded to a square and processed together into `pixel_values` (one row per
    record with an image, in batch order, which is the order the model fills image tokens)."""

    def __init__(self, pad_token_id: int, *, processor=None, image_root: str | os.PathLike | None = None):
        if pad_token_id is None:
            raise ValueError("the tokenizer has no pad token id")
        self.pad_token_id = int(pad_token_id)
        self.processor = processor
        self.image_root = Path(image_root) if image_root is not None else None

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        input_ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(features), width), dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        for row, feature in enumerate(features):
            length = len(feature["input_ids"])
            input_ids[row, :length] = torch.as_tensor(feature["input_ids"], dtype=torch.long)
            labels[row, :length] = torch.as_tensor(feature["labels"], dtype=torch.long)
            attention_mask[row, :length] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        images = [f.get("image") for f in features if f.get("image")]
        if images:
            if self.processor is None:
                raise ValueError("records with images need a LLaVA processor")
            pictures = []
            for name in images:
                try:
                    pictures.append(pad_to_square(load_rgb(self.image_root / name)))
                except ImageError as error:
                    raise ImageError(f"training image {name}: {error}") from None
            batch["pixel_values"] = self.processor.image_processor(images=pictures, return_tensors="pt")["pixel_values"]
        return batch


# ---------------------------------------------------------------- model


def model_type_of(path: str) -> str:
    """config.json's model_type, read from a local folder or resolved through AutoConfig."""
    config_file = Path(path) / "config.json"
    if config_file.is_file():
        return json.loads(config_file.read_text())["model_type"]
    return AutoConfig.from_pretrained(path).model_type


def resolve_bf16(setting: bool | str, device: torch.device) -> bool:
    if setting == "auto":
        return device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return bool(setting)


def load_for_training(spec: ModelSpec, *, use_bf16: bool, tokenizer: str = ""):
    """(model, tokenizer or processor, is_llava) for training: right padding, no KV cache.

    tokenizer: where the tokenizer comes from when it is not the model's own (a causal LM only);
    its vocabulary must fit the model's embeddings, which grow to it when it is larger (as the
    original's `resize_token_embeddings(len(tokenizer))`, a no-op for Llama-3.1 base + Instruct)."""
    is_llava = model_type_of(spec.path) in LLAVA_MODEL_TYPES
    if tokenizer and is_llava:
        raise ValueError("a separate tokenizer is for causal LMs; a LLaVA trains with its processor")
    if spec.dtype == "auto":
        dtype = torch.bfloat16 if use_bf16 else torch.float32
    else:
        dtype = resolve_dtype(spec.dtype, spec.torch_device())
    if is_llava:
        processing = AutoProcessor.from_pretrained(spec.path)
        model = LlavaForConditionalGeneration.from_pretrained(spec.path, dtype=dtype)
    else:
        processing = AutoTokenizer.from_pretrained(tokenizer or spec.path)
        model = AutoModelForCausalLM.from_pretrained(spec.path, dtype=dtype)
        if len(processing) > model.get_input_embeddings().num_embeddings:
            log.warning("tokenizer %s has %d tokens, the model %d embeddings: resizing",
                        tokenizer, len(processing), model.get_input_embeddings().num_embeddings)
            model.resize_token_embeddings(len(processing))
    tok = text_tokenizer(processing)
    tok.padding_side = "right"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.config.use_cache = False
    if getattr(model.config, "text_config", None) is not None:
        model.config.text_config.use_cache = False
    return model, processing, is_llava


def lora_target_names(model, target_modules: str | Sequence[str] | None, *, is_llava: bool) -> list[str]:
    """Full names of the linear layers LoRA adapts: those of the language model only (never the
    vision tower, projector or LM head), whose last name part is in `target_modules`
    ("all-linear" or None: every linear layer of the language model)."""
    wanted = None if target_modules in (None, "all-linear") else set([target_modules] if isinstance(target_modules, str) else target_modules)
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        if is_llava and f".{LANGUAGE_MODEL}." not in f".{name}":
            continue
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "lm_head":
            continue
        if wanted is None or leaf in wanted:
            names.append(name)
    if not names:
        raise ValueError(f"no linear layer of the language model matches target_modules {target_modules!r}")
    return names


def apply_lora(model, lora: dict, *, is_llava: bool, train_projector: bool):
    """Wrap `model` with peft LoRA adapters; the projector is trained in full when asked."""
    from peft import LoraConfig, get_peft_model

    modules_to_save = list(lora.get("modules_to_save") or [])
    if is_llava and train_projector and PROJECTOR not in modules_to_save:
        modules_to_save.append(PROJECTOR)
    peft_config = LoraConfig(
        r=int(lora.get("r", 8)),
        lora_alpha=int(lora.get("alpha", 16)),
        lora_dropout=float(lora.get("dropout", 0.0)),
        target_modules=lora_target_names(model, lora.get("target_modules"), is_llava=is_llava),
        modules_to_save=modules_to_save or None,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_config)


def set_full_trainable(model, config: SFTConfig, *, is_llava: bool) -> None:
    """Full fine-tuning: the language model as configured; for a LLaVA the vision tower frozen and
    the projector trained unless configured otherwise."""
    for name, parameter in model.named_parameters():
        if not is_llava:
            parameter.requires_grad = True
        elif ".vision_tower." in f".{name}":
            parameter.requires_grad = not config.freeze_vision_tower
        elif f".{PROJECTOR}." in f".{name}":
            parameter.requires_grad = config.train_projector
        else:
            parameter.requires_grad = config.train_language_model
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("the configuration leaves no parameter to train")


def prepare_model(model, config: SFTConfig, *, is_llava: bool):
    if config.lora is not None:
        return apply_lora(model, config.lora, is_llava=is_llava, train_projector=config.train_projector)
    set_full_trainable(model, config, is_llava=is_llava)
    return model


def causal_lm_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy over labelled positions and their count."""
    shifted_labels = labels[:, 1:].to(logits.device)
    shifted_logits = logits[:, :-1, :].float()
    loss_sum = F.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.shape[-1]),
        shifted_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return loss_sum, (shifted_labels != IGNORE_INDEX).sum()


class SFTTrainer(Trainer):
    """Trainer whose loss is the causal-LM cross-entropy on the collated labels.

    With gradient accumulation (or several devices) Trainer passes `num_items_in_batch`, the
    labelled-token count of the whole accumulated batch; the summed loss is divided by it so that
    every supervised token weighs the same, whatever its micro-batch.
    """

    def __init__(self, *args, sft_config: SFTConfig | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.sft_config = sft_config
        self.update_steps_per_epoch: int | None = None

    def set_initial_training_values(self, *args, **kwargs):
        values = super().set_initial_training_values(*args, **kwargs)
        self.update_steps_per_epoch = int(values[1])  # optimizer steps per epoch, last partial window included
        return values

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        config = self.sft_config
        if config is None or config.lr_scheduler_type != EPOCH_STEP or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        gamma = float((config.lr_scheduler_kwargs or {}).get("gamma", EPOCH_STEP_GAMMA))
        factor = epoch_step_factor(
            self.update_steps_per_epoch or num_training_steps, gamma, self.args.get_warmup_steps(num_training_steps)
        )
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, factor)
        self._created_lr_scheduler = True
        return self.lr_scheduler

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        outputs = model(**inputs, use_cache=False)
        loss_sum, count = causal_lm_loss_sum(outputs.logits, labels)
        if num_items_in_batch is not None:
            loss = loss_sum / num_items_in_batch
            if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
                # DDP averages gradients over processes while the divisor counted all of them.
                loss = loss * self.accelerator.num_processes
            self.loss_is_scaled_for_ga = True
        else:
            loss = loss_sum / count.clamp(min=1)
            self.loss_is_scaled_for_ga = False
        return (loss, outputs) if return_outputs else loss


# ---------------------------------------------------------------- training


def _training_arguments(config: SFTConfig, out_dir: Path, *, use_bf16: bool, use_cpu: bool, find_unused: bool):
    report_to = "none" if config.report_to in ("tensorboard", "none", None) else config.report_to
    return TrainingArguments(
        output_dir=str(out_dir / "checkpoints"),
        learning_rate=config.learning_rate,
        num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.per_device_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        # epoch_step is built by SFTTrainer.create_scheduler; transformers gets a placeholder
        lr_scheduler_type="constant" if config.lr_scheduler_type == EPOCH_STEP else config.lr_scheduler_type,
        lr_scheduler_kwargs={} if config.lr_scheduler_type == EPOCH_STEP else config.lr_scheduler_kwargs,
        warmup_steps=float(config.warmup_ratio),  # < 1: a ratio of the total steps
        weight_decay=config.weight_decay,
        seed=config.seed,
        data_seed=config.seed,
        bf16=use_bf16,
        use_cpu=use_cpu,
        activation_checkpointing=config.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if config.gradient_checkpointing else None,
        logging_strategy="steps",
        logging_steps=config.logging_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        report_to=report_to,
        include_num_input_tokens_seen="non_padding",
        remove_unused_columns=False,
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
        ddp_find_unused_parameters=find_unused,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )


def _tensorboard_callback(runs_dir: Path):
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    runs_dir.mkdir(parents=True, exist_ok=True)
    return TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(runs_dir)))


def _model_class(is_llava: bool):
    return LlavaForConditionalGeneration if is_llava else AutoModelForCausalLM


def merge_lora_checkpoint(base_path: str, adapter_dir: Path, out_dir: Path, *, is_llava: bool, dtype: torch.dtype, processing) -> None:
    """Load the base model, apply the saved adapter, merge it into the weights and save HF format.

    Merging a fresh copy from the saved adapter works the same under DDP and ZeRO-3, where the
    training model's weights are sharded or wrapped.
    """
    from peft import PeftModel

    base = _model_class(is_llava).from_pretrained(base_path, dtype=dtype)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.config.use_cache = True
    with atomic_directory(out_dir) as tmp:
        merged.save_pretrained(tmp)
        processing.save_pretrained(tmp)


def train_sft(
    *,
    model_spec: ModelSpec | dict | str,
    records: Sequence[dict],
    image_root: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    config: SFTConfig,
    mask_fn: LossMaskFn | None = None,
    resume: bool = True,
) -> Path:
    """Fine-tune the model of `model_spec` on `records`; returns out_dir/model.

    mask_fn: (conversation, tokenizer or processor) -> (input_ids, labels); default: loss on
    assistant turns (`assistant_only_labels` with config.chat_template). Its output is cut to
    config.max_length here, so a custom mask need not truncate.
    """
    config.validate()
    spec = ModelSpec.from_config(model_spec)
    out_dir = Path(out_dir)
    checkpoints_dir = out_dir / "checkpoints"
    model_dir = out_dir / "model"
    started = time.perf_counter()

    device = spec.torch_device()
    use_bf16 = resolve_bf16(config.bf16, device)
    is_llava = model_type_of(spec.path) in LLAVA_MODEL_TYPES
    has_text_only = is_llava and any(not r.get("image") for r in records)
    # TrainingArguments first: under ZeRO-3 it must exist before the model is built (zero.Init).
    args = _training_arguments(
        config, out_dir, use_bf16=use_bf16, use_cpu=device.type == "cpu", find_unused=bool(has_text_only)
    )
    set_seed(config.seed)  # LoRA initialisation is random
    model, processing, is_llava = load_for_training(spec, use_bf16=use_bf16, tokenizer=config.tokenizer)
    mask_fn = mask_fn or assistant_mask_fn(chat_template=config.chat_template, max_length=config.max_length)
    examples, skipped = build_examples(
        records, processing, mask_fn, max_length=config.max_length, image_root=image_root, is_llava=is_llava
    )
    for item in skipped:
        log.warning("not trained on: %s", item["reason"])
    if not examples:
        raise ValueError(f"none of the {len(records)} records can be trained on; first reason: {skipped[0]['reason'] if skipped else '-'}")
    model = prepare_model(model, config, is_llava=is_llava)

    tok = text_tokenizer(processing)
    collator = SFTCollator(tok.pad_token_id, processor=processing if is_llava else None, image_root=image_root)
    callbacks = []
    if config.report_to == "tensorboard" and args.process_index == 0:
        callbacks.append(_tensorboard_callback(out_dir / "runs"))
    trainer = SFTTrainer(
        sft_config=config,
        model=model,
        args=args,
        train_dataset=ExampleDataset(examples),
        data_collator=collator,
        processing_class=processing,
        callbacks=callbacks,
    )
    last_checkpoint = None
    if resume and checkpoints_dir.is_dir():
        last_checkpoint = get_last_checkpoint(str(checkpoints_dir))
    if last_checkpoint:
        log.info("resuming from %s", last_checkpoint)
    result = trainer.train(resume_from_checkpoint=last_checkpoint)

    _save_final_model(trainer, config, spec, processing, is_llava=is_llava, out_dir=out_dir, use_bf16=use_bf16)

    if trainer.is_world_process_zero():
        state = trainer.state
        losses = [{"step": int(e["step"]), "loss": float(e["loss"])} for e in state.log_history if "loss" in e]
        learning_rates = [
            {"step": int(e["step"]), "learning_rate": float(e["learning_rate"])}
            for e in state.log_history
            if "loss" in e and "learning_rate" in e
        ]
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in trainer.model.parameters())
        atomic_write_json(
            out_dir / "train_summary.json",
            {
                "model": spec.describe(),
                "is_llava": is_llava,
                "model_dir": str(model_dir),
                "steps": int(state.global_step),
                "losses": losses,
                "learning_rates": learning_rates,  # the LR each logged step was taken with
                "final_loss": losses[-1]["loss"] if losses else None,
                "tokens_seen": int(state.num_input_tokens_seen),
                "seconds": round(time.perf_counter() - started, 3),
                "train_seconds": round(float(result.metrics.get("train_runtime", 0.0)), 3),
                "resumed_from": last_checkpoint,
                "records": len(records),
                "examples": len(examples),
                "skipped": skipped,
                "trainable_parameters": int(trainable),
                "parameters": int(total),
                "bf16": use_bf16,
                "config": dataclasses.asdict(config),
            },
        )
    trainer.accelerator.wait_for_everyone()
    return model_dir


def _save_final_model(trainer, config: SFTConfig, spec: ModelSpec, processing, *, is_llava: bool, out_dir: Path, use_bf16: bool) -> None:
    """Every process takes part in `save_model` (ZeRO-3 gathers the shards); the main process then
    completes the folder and moves it into place, so out_dir/model is whole or absent."""
    partial = out_dir / ".model.partial"
    if trainer.is_world_process_zero() and partial.exists():
        shutil.rmtree(partial)
    trainer.accelerator.wait_for_everyone()
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(unwrapped, "config"):
        unwrapped.config.use_cache = True  # saved for generation
    trainer.save_model(str(partial))
    if trainer.is_world_process_zero():
        model_dir = out_dir / "model"
        if config.lora is not None and config.merge_lora:
            dtype = torch.bfloat16 if use_bf16 else torch.float32
            if spec.dtype != "auto":
                dtype = resolve_dtype(spec.dtype, spec.torch_device())
            # Only this process loads the base copy: ZeRO-3's partitioned init must not run here.
            plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
            no_zero3 = plugin.zero3_init_context_manager(enable=False) if plugin is not None else contextlib.nullcontext()
            with no_zero3:
                merge_lora_checkpoint(spec.path, partial, model_dir, is_llava=is_llava, dtype=dtype, processing=processing)
            shutil.rmtree(partial)
        else:
            processing.save_pretrained(partial)
            (partial / "training_args.bin").unlink(missing_ok=True)  # a pickle; the summary holds the config
            if model_dir.exists():
                shutil.rmtree(model_dir)
            os.replace(partial, model_dir)
    trainer.accelerator.wait_for_everyone()


# ---------------------------------------------------------------- command line


def read_records(path: str | os.PathLike) -> list[dict]:
    """Training records: a LLaVA JSON list, or a Parquet table (e.g. tokenised `id, input_ids, labels`)."""
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    records = json.loads(path.read_text())
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of records")
    return records


def _load_config_file(path: str | None) -> SFTConfig:
    if not path:
        return SFTConfig()
    import yaml

    values = yaml.safe_load(Path(path).read_text()) or {}
    if "train" in values and isinstance(values["train"], dict) and not set(values) & {f.name for f in dataclasses.fields(SFTConfig)}:
        values = values["train"]
    return SFTConfig.from_dict(values)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Supervised fine-tuning on LLaVA-format conversations")
    parser.add_argument("--records", required=True, help="LLaVA JSON: a list of {id, image?, conversations}; or Parquet of tokenised {id, input_ids, labels}")
    parser.add_argument("--image-root", default=None, help="folder that record image paths are relative to")
    parser.add_argument("--model", required=True, help="hub id or local folder of a LLaVA or causal LM")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", required=True, help="output folder (checkpoints/, runs/, model/, train_summary.json)")
    parser.add_argument("--config", default=None, help="YAML of SFTConfig settings (top level or under 'train')")
    parser.add_argument("--no-resume", action="store_true", help="start over even if checkpoints exist")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        records = read_records(args.records)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    model_dir = train_sft(
        model_spec=ModelSpec(args.model, dtype=args.dtype, device=args.device),
        records=records,
        image_root=args.image_root,
        out_dir=args.out,
        config=_load_config_file(args.config),
        resume=not args.no_resume,
    )
    print(model_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Value-model training: the shared SFT trainer with a value head and an MSE loss.

Records are LLaVA-format value records, `{id, image?, conversations: [human, gpt], value}`: the gpt
turn is a reasoning prefix, `value` its target in [0, 1]. Everything but the loss is the SFT
trainer's (settings, loading, datasets and collation, LoRA, checkpoints and resuming, the summary):
the examples are rendered as `models.value_model.value_example` renders them for scoring (the
training chat template, the prefix closed by EOS), the collator adds the float targets, and
`ValueTrainer.compute_loss` is the MSE of the head read at each row's closing EOS. No token label
enters the loss.

The starting checkpoint is a plain LLaVA / causal LM (round 0: a fresh head from `head_seed`) or
an earlier value checkpoint (its head is loaded). With LoRA (on the language model's linear layers
only; vision tower and projector frozen) the head is in peft's `modules_to_save`: trained in full
and saved in the adapter, where the reference put a LoRA on a frozen random head and never saved
it. `out_dir/model` is the merged value checkpoint (`models.value_model.save_value_model`), which
reloads to the values the trained model gives.

The loss of a micro-batch is the mean over its rows (fully masked rows carry no weight), divided
by the accumulation steps, as the reference's MSE under DeepSpeed.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from groundflow.models.spec import ModelSpec, resolve_dtype
from groundflow.models.value_model import HEAD_NAME, ValueModel, save_value_model, value_example, wrap_value_model
from groundflow.train.config import SFTConfig, load_config_file
from groundflow.train.data import MASKED_KEY, LazyExampleDataset, SFTCollator, read_records, record_id
from groundflow.models.vision_families import LLAVA, VisionFamily
from groundflow.train.config import ASSISTANT_ONLY
from groundflow.train.model_prep import (
    apply_lora,
    load_for_training,
    set_full_trainable,
    vision_family_of,
)
from groundflow.train.sft import TrainingRecipe, run_training
from groundflow.train.trainer import SFTTrainer, adopt_training_template

log = logging.getLogger(__name__)

VALUE_KEY = "value"
WEIGHT_KEY = "value_weights"


@dataclass(frozen=True)
class ValueSettings:
    """What the value trainer takes beyond SFTConfig."""

    bounded: bool = False  # sigmoid on the output (the reference's value is unbounded)
    head_seed: int = 0  # the fresh head's initialisation when the start has none

    @classmethod
    def from_dict(cls, values: dict | None) -> "ValueSettings":
        values = dict(values or {})
        unknown = sorted(set(values) - {"bounded", "head_seed"})
        if unknown:
            raise ValueError(f"unknown value settings {unknown}; known: ['bounded', 'head_seed']")
        return cls(bounded=bool(values.get("bounded", False)), head_seed=int(values.get("head_seed", 0)))


def value_problem(record: dict, rid: str) -> str | None:
    """Why a record's target cannot be trained on; None when it can."""
    value = record.get(VALUE_KEY)
    if value is None:
        return f"record {rid} has no value"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"record {rid} has value {value!r}, not a number"
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        return f"record {rid} has value {value!r}, outside [0, 1]"
    return None


def value_mask_fn(*, chat_template: str | None, max_length: int):
    """The rows' tokenisation (`value_example`), as a LossMaskFn: the assistant labels it returns
    only let the dataset check that a prefix is there; they never reach the loss."""

    def mask(conversation, processing):
        return value_example(conversation, processing, chat_template=chat_template, max_length=max_length)

    return mask


class ValueExampleDataset(LazyExampleDataset):
    """LazyExampleDataset whose items carry their float target; records without a valid one are
    skipped up front with the reason."""

    def __init__(self, records: Sequence[dict], *args, **kwargs):
        valid, refused = [], []
        for index, record in enumerate(records):
            rid = record_id(record, index)
            problem = value_problem(record, rid)
            if problem is None:
                valid.append({**record, "id": rid})
            else:
                refused.append({"id": rid, "reason": problem})
        super().__init__(valid, *args, **kwargs)
        self.skipped = refused + self.skipped
        self.values = [float(r[VALUE_KEY]) for r in self.records]

    def __getitem__(self, index: int) -> dict:
        item = super().__getitem__(index)
        item[VALUE_KEY] = self.values[index]
        return item


class ValueCollator(SFTCollator):
    """SFTCollator's padded ids, mask and images, without token labels, plus `values` [B] and
    `value_weights` [B] (0 for an item trained fully masked, whose row is a filler token)."""

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        batch = super().__call__(features)
        batch.pop("labels")
        batch[VALUE_KEY + "s"] = torch.tensor([float(f[VALUE_KEY]) for f in features], dtype=torch.float32)
        batch[WEIGHT_KEY] = torch.tensor([0.0 if f.get(MASKED_KEY) else 1.0 for f in features], dtype=torch.float32)
        return batch


class ValueTrainer(SFTTrainer):
    """SFTTrainer whose loss is the MSE between the value head's outputs and the targets."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.masked_examples.extend(inputs.pop(MASKED_KEY, []))
        targets = inputs.pop(VALUE_KEY + "s")
        weights = inputs.pop(WEIGHT_KEY)
        outputs = model(**inputs)
        values = outputs.values
        targets, weights = targets.to(values.device, values.dtype), weights.to(values.device, values.dtype)
        # An all-masked micro-batch gives 0 that still reaches every trainable parameter.
        loss = (weights * (values - targets) ** 2).sum() / weights.sum().clamp(min=1.0)
        self.loss_is_scaled_for_ga = False
        return (loss, outputs) if return_outputs else loss


def prepare_value_model(model: ValueModel, config: SFTConfig, *, vision: VisionFamily | None):
    """LoRA on the backbone's language model with the head in modules_to_save, or full fine-tuning
    of what the config says plus the head."""
    if config.lora is not None:
        lora = dict(config.lora)
        lora["modules_to_save"] = list(dict.fromkeys([*(lora.get("modules_to_save") or []), HEAD_NAME]))
        return apply_lora(model, lora, vision=vision, train_projector=config.train_projector, task_type=None)
    set_full_trainable(model, config, vision=vision)
    for parameter in model.score_head.parameters():
        parameter.requires_grad = True
    return model


def load_value_for_training(spec: ModelSpec, *, settings: ValueSettings, use_bf16: bool, tokenizer: str = ""):
    """(ValueModel over the backbone at spec.path, processing, vision family or None): right
    padding, no cache; the head is the checkpoint's, or fresh from settings.head_seed. The value
    model reads a causal LM or a LLaVA (its forward passes no image grids)."""
    family = vision_family_of(spec.path)
    if family not in (None, LLAVA):
        raise ValueError(f"the value model is built over a causal LM or a LLaVA, not a {family.model_type} model")
    backbone, processing, vision = load_for_training(spec, use_bf16=use_bf16, tokenizer=tokenizer)
    model = wrap_value_model(backbone, spec.path, head_seed=settings.head_seed, bounded=settings.bounded)
    model.score_head.float()
    return model, processing, vision


def save_final_value_model(trainer, config: SFTConfig, spec: ModelSpec, processing, *, settings: ValueSettings,
                           out_dir: Path, use_bf16: bool, vision: VisionFamily | None = None) -> Path:
    """out_dir/model: the merged value checkpoint, whole or absent.

    With LoRA, the saved adapter (LoRA weights and the trained head) is merged into a fresh copy of
    the starting checkpoint, as the SFT trainer merges, so it works alike under DDP and ZeRO-3."""
    from peft import PeftModel

    model_dir = out_dir / "model"
    partial = out_dir / ".model.partial"
    if trainer.is_world_process_zero() and partial.exists():
        shutil.rmtree(partial)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(partial))
    if trainer.is_world_process_zero():
        adopt_training_template(processing, config.chat_template)
        dtype = torch.bfloat16 if use_bf16 else torch.float32
        if spec.dtype != "auto":
            dtype = resolve_dtype(spec.dtype, spec.torch_device())
        plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
        no_zero3 = plugin.zero3_init_context_manager(enable=False) if plugin is not None else contextlib.nullcontext()
        with no_zero3:
            if config.lora is not None:
                fresh, _, _ = load_value_for_training(ModelSpec(spec.path, dtype=str(dtype).removeprefix("torch."),
                                                                device="cpu"), settings=settings, use_bf16=use_bf16)
                merged = PeftModel.from_pretrained(fresh, str(partial)).merge_and_unload()
            else:
                merged = trainer.accelerator.unwrap_model(trainer.model)
            merged.backbone.config.use_cache = True
            merged.value_config = _with_format(merged.value_config, config.chat_template)
            save_value_model(merged, model_dir, processing)
        shutil.rmtree(partial, ignore_errors=True)
        zero3 = plugin is not None and plugin.zero_stage == 3
        trainer.reload_check = None if zero3 else reload_check(trainer, model_dir, dtype)
    trainer.accelerator.wait_for_everyone()
    return model_dir


RELOAD_ROWS = 8


def reload_check(trainer, model_dir: Path, dtype: torch.dtype) -> dict:
    """The largest |value| difference between the trained model and its saved checkpoint reloaded,
    over the first training rows: a save or merge that lost a weight shows here, not in the next
    round's search. Warns above the dtype's tolerance (the checkpoint is saved in `dtype`)."""
    from groundflow.models.value_model import load_value_model

    dataset = trainer.train_dataset
    batch = trainer.data_collator([dataset[i] for i in range(min(RELOAD_ROWS, len(dataset)))])
    device = trainer.args.device
    inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "pixel_values") if k in batch}
    # On the CPU: a second 7B copy beside the trained model and its optimizer state may not fit the GPU.
    reloaded, _ = load_value_model({"path": str(model_dir), "device": "cpu", "dtype": str(dtype).removeprefix("torch.")})
    trained = trainer.model
    was_training = trained.training
    trained.eval()
    with torch.no_grad():
        expected = trained(**inputs).values.float().cpu()
        got = reloaded(**{k: v.cpu() for k, v in inputs.items()}).values.float()
    del reloaded
    trained.train(was_training)
    difference = float((expected - got).abs().max())
    tolerance = 1e-4 if dtype == torch.float32 else 5e-2
    if difference > tolerance:
        log.warning("the saved value checkpoint %s gives values up to %.3g away from the trained model's (tolerance %g)",
                    model_dir, difference, tolerance)
    return {"rows": len(got), "max_abs_difference": difference, "tolerance": tolerance}


def check_conversation_format(chat_template: str | None) -> str:
    """The value checkpoint records the format its rows were rendered in, for scoring to render
    them alike: a named format of train.chat_formats ("model": the checkpoint's own template)."""
    from groundflow.train.chat_formats import FORMAT_NAMES

    if chat_template not in FORMAT_NAMES:
        raise ValueError(f"the value trainer's chat_template is a conversation format's name, one of "
                         f"{list(FORMAT_NAMES)} (TSST: vicuna_v1), not {str(chat_template)[:40]!r}")
    return chat_template


def _with_format(value_config, chat_template: str):
    import dataclasses

    return dataclasses.replace(value_config, conversation_format=check_conversation_format(chat_template))


def value_recipe(config: SFTConfig, settings: ValueSettings) -> TrainingRecipe:
    """The shared run's parts for the value model: the backbone with its head, the value rows and
    their float targets, the MSE trainer, the merged value checkpoint."""
    return TrainingRecipe(
        load=functools.partial(load_value_for_training, settings=settings),
        dataset=ValueExampleDataset,
        mask_fn=value_mask_fn(chat_template=config.chat_template, max_length=config.max_length),
        prepare=prepare_value_model,
        collator=ValueCollator,
        trainer=ValueTrainer,
        save=functools.partial(save_final_value_model, settings=settings),
        fingerprint={"bounded": settings.bounded, "head_seed": settings.head_seed},
        summary=lambda trainer: {"value": {"bounded": settings.bounded, "head_seed": settings.head_seed, "loss": "mse",
                                           "reload_check": getattr(trainer, "reload_check", None)}},
    )


def train_value(
    *,
    model_spec: ModelSpec | dict | str,
    records: Sequence[dict],
    image_root: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    config: SFTConfig,
    settings: ValueSettings | None = None,
    resume: bool = True,
) -> Path:
    """Train the value model that starts from `model_spec` on value `records`; returns out_dir/model."""
    config.validate()
    settings = settings or ValueSettings()
    check_conversation_format(config.chat_template)
    if config.loss_mask != ASSISTANT_ONLY:
        raise ValueError(f"loss_mask is for LM losses; the value model's loss is read at each row's last token "
                         f"(leave it at {ASSISTANT_ONLY!r}, not {config.loss_mask!r})")
    if config.loss_chunk_tokens is not None:
        raise ValueError("loss_chunk_tokens is for LM losses; the value model computes no logits (set it to null)")
    return run_training(value_recipe(config, settings), model_spec=model_spec, records=records, image_root=image_root,
                        out_dir=out_dir, config=config, resume=resume)


def run_value(*, model: dict, records_path: str, image_root: str | None, out_dir: str, train: dict,
              value: dict | None = None) -> Path:
    """`train.launch.run_sft` for the value model: in this process, or under `accelerate launch`
    when `train` names an accelerate_config."""
    from groundflow.train.launch import ACCELERATE_CONFIG, WORKFLOW_DIR, launch_accelerate

    settings = dict(train)
    accelerate_config = settings.pop(ACCELERATE_CONFIG, "") or ""
    workflow_dir = settings.pop(WORKFLOW_DIR, None)
    config = SFTConfig.from_dict(settings)
    value_settings = ValueSettings.from_dict(value)
    if not accelerate_config:
        return train_value(model_spec=ModelSpec.from_config(model), records=read_records(records_path),
                           image_root=image_root, out_dir=out_dir, config=config, settings=value_settings)
    extra = ["--head-seed", str(value_settings.head_seed)] + (["--bounded"] if value_settings.bounded else [])
    return launch_accelerate("groundflow.train.value", accelerate_config=accelerate_config, workflow_dir=workflow_dir,
                             model=model, records_path=records_path, image_root=image_root, out_dir=out_dir,
                             settings=settings, extra_args=tuple(extra))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Value-model training on LLaVA-format value records")
    parser.add_argument("--records", required=True, help="LLaVA JSON: a list of {id, image?, conversations, value}")
    parser.add_argument("--image-root", default=None)
    parser.add_argument("--model", required=True, help="a LLaVA / causal LM, or an earlier value checkpoint")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", required=True)
    parser.add_argument("--config", default=None, help="YAML of SFTConfig settings")
    parser.add_argument("--head-seed", type=int, default=0)
    parser.add_argument("--bounded", action="store_true", help="sigmoid on the value (the reference has none)")
    parser.add_argument("--no-resume", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        records = read_records(args.records)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    model_dir = train_value(
        model_spec=ModelSpec(args.model, dtype=args.dtype, device=args.device), records=records,
        image_root=args.image_root, out_dir=args.out, config=load_config_file(args.config),
        settings=ValueSettings(bounded=args.bounded, head_seed=args.head_seed), resume=not args.no_resume,
    )
    print(model_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

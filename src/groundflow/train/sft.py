"""Supervised fine-tuning of causal LMs and vision-language models (LLaVA, Qwen2.5-VL:
`models.vision_families`) on LLaVA-format conversations.

One trainer for every method: records are `{id, image?, conversations}`; the loss is taken where a
`LossMaskFn` says (config.loss_mask: assistant turns by default, or every token but padding and
image tokens as GWYS' original; CINGS passes its own); LoRA through peft or full
fine-tuning; bf16 on CUDA and fp32 on CPU; checkpoints in `out_dir/checkpoints` (a second call
resumes from the last one); TensorBoard in `out_dir/runs`; the final model in `out_dir/model`, in
HF format with its processor or tokenizer, LoRA merged on request; `out_dir/train_summary.json`.

The same entry point runs under `accelerate launch` (DDP or DeepSpeed ZeRO-2/3 through the files
in configs/accelerate and configs/deepspeed):

    accelerate launch --config_file configs/accelerate/zero3.yaml -m groundflow.train.sft \\
        --records hybrid.json --image-root images/ --model llava-hf/llava-1.5-7b-hf \\
        --out results/train --config train.yaml

The parts: settings in `train.config`, records to examples in `train.data`, the model's loading,
trainable parameters and LoRA merge in `train.model_prep`, the Trainer subclass and final save in
`train.trainer`; this module runs them in order and writes the summary.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from accelerate.utils import gather_object
from transformers import set_seed

from groundflow.io.artifacts import atomic_write_json
from groundflow.models.spec import ModelSpec
from groundflow.train.checkpoints import discard_other_runs, run_fingerprint
from groundflow.train.config import ASSISTANT_ONLY, SFTConfig, load_config_file
from groundflow.train.conversations import LossMaskFn, loss_mask_fn, text_tokenizer
from groundflow.train.data import LazyExampleDataset, SFTCollator, read_records
from groundflow.models.vision_families import LLAVA, VisionFamily
from groundflow.train.model_prep import (
    configure_processor,
    load_for_training,
    prepare_model,
    resolve_bf16,
    vision_family_of,
)
from groundflow.train.trainer import SFTTrainer, save_final_model, tensorboard_callback, train_resuming, training_arguments

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingRecipe:
    """What one trainer on the shared run (`run_training`) makes its own: how the model loads and
    which parameters train, how records become examples and batches, the Trainer subclass (its
    loss), the final save, and the summary's extra fields."""

    load: Callable  # (spec, *, use_bf16, tokenizer) -> (model, processing, vision family or None)
    dataset: type[LazyExampleDataset]
    mask_fn: LossMaskFn
    prepare: Callable  # (model, config, *, vision) -> the model to train
    collator: type[SFTCollator]
    trainer: type[SFTTrainer]
    save: Callable  # (trainer, config, spec, processing, *, vision, out_dir, use_bf16) -> out_dir/model
    summary: Callable | None = None  # (trainer) -> the summary's extra fields
    fingerprint: dict | None = None  # what else the checkpoints depend on (checkpoints.run_fingerprint)


def sft_recipe(config: SFTConfig, mask_fn: LossMaskFn | None = None) -> TrainingRecipe:
    if mask_fn is not None and config.loss_mask != ASSISTANT_ONLY:
        raise ValueError(f"loss_mask {config.loss_mask!r} and a mask function of the caller's were both given; "
                         "the caller's function decides the labels: leave loss_mask at its default")
    return TrainingRecipe(
        load=load_for_training,
        dataset=LazyExampleDataset,
        mask_fn=mask_fn or loss_mask_fn(config.loss_mask, chat_template=config.chat_template,
                                        max_length=config.max_length),
        prepare=prepare_model,
        collator=SFTCollator,
        trainer=SFTTrainer,
        save=save_final_model,
    )


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

    mask_fn: (conversation, tokenizer or processor) -> (input_ids, labels); default: the mask
    config.loss_mask names (`train.conversations.LOSS_MASKS`, rendered with config.chat_template).
    Its output is cut to config.max_length here, so a custom mask need not truncate.
    """
    config.validate()
    return run_training(sft_recipe(config, mask_fn), model_spec=model_spec, records=records, image_root=image_root,
                        out_dir=out_dir, config=config, resume=resume)


def run_training(
    recipe: TrainingRecipe,
    *,
    model_spec: ModelSpec | dict | str,
    records: Sequence[dict],
    image_root: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    config: SFTConfig,
    resume: bool = True,
) -> Path:
    """Load, train from the last checkpoint (or the start), save out_dir/model and write
    out_dir/train_summary.json, with the parts `recipe` names; returns out_dir/model."""
    spec = ModelSpec.from_config(model_spec)
    out_dir = Path(out_dir)
    started = time.perf_counter()

    device = spec.torch_device()
    use_bf16 = resolve_bf16(config.bf16, device)
    vision = vision_family_of(spec.path)
    has_text_only = bool(vision) and any(not r.get("image") for r in records)
    # TrainingArguments first: under ZeRO-3 it must exist before the model is built (zero.Init).
    args = training_arguments(
        config, out_dir, use_bf16=use_bf16, use_cpu=device.type == "cpu", find_unused=bool(has_text_only)
    )
    set_seed(config.seed)  # LoRA and fresh heads initialise at random
    model, processing, vision = recipe.load(spec, use_bf16=use_bf16, tokenizer=config.tokenizer)
    configure_processor(processing, vision, config)  # before tokenising: image token counts follow it
    dataset = recipe.dataset(
        records, processing, recipe.mask_fn, max_length=config.max_length, image_root=image_root, vision=vision
    )
    skipped = dataset.skipped
    for item in skipped:
        log.warning("not trained on: %s", item["reason"])
    if not len(dataset):
        raise ValueError(f"none of the {len(records)} records can be trained on; first reason: {skipped[0]['reason'] if skipped else '-'}")
    model = recipe.prepare(model, config, vision=vision)

    collator = recipe.collator(text_tokenizer(processing).pad_token_id, processor=processing if vision else None,
                               image_root=image_root, vision=vision)
    callbacks = []
    if config.report_to == "tensorboard" and args.process_index == 0:
        callbacks.append(tensorboard_callback(out_dir / "runs"))
    trainer = recipe.trainer(sft_config=config, model=model, args=args, train_dataset=dataset, data_collator=collator,
                             processing_class=processing, callbacks=callbacks)
    if trainer.is_world_process_zero():
        discard_other_runs(out_dir / "checkpoints", run_fingerprint(config, spec.path, records, recipe.fingerprint))
    trainer.accelerator.wait_for_everyone()
    result, last_checkpoint = train_resuming(trainer, out_dir / "checkpoints", resume=resume)

    model_dir = recipe.save(trainer, config, spec, processing, vision=vision, out_dir=out_dir, use_bf16=use_bf16)
    masked = first_per_id(gather_object(trainer.masked_examples))  # every process's, once per record

    if trainer.is_world_process_zero():
        write_train_summary(trainer, out_dir, spec=spec, vision=vision, model_dir=model_dir, started=started,
                            result=result, resumed_from=last_checkpoint, records=records, dataset=dataset,
                            skipped=skipped, masked=masked, use_bf16=use_bf16, config=config,
                            extra=recipe.summary(trainer) if recipe.summary else None)
    trainer.accelerator.wait_for_everyone()
    return model_dir


def write_train_summary(trainer, out_dir: Path, *, spec: ModelSpec, vision: VisionFamily | None, model_dir: Path,
                        started: float, result, resumed_from: str | None, records: Sequence[dict], dataset,
                        skipped: list[dict], masked: list[dict], use_bf16: bool, config: SFTConfig,
                        extra: dict | None = None) -> None:
    """out_dir/train_summary.json: losses and learning rates per logged step, counts, what was
    skipped or masked, the settings (`extra`: a caller's own fields, e.g. the value trainer's)."""
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
            "is_llava": vision is LLAVA,
            "vision_family": vision.model_type if vision else None,
            "model_dir": str(model_dir),
            "steps": int(state.global_step),
            "losses": losses,
            "learning_rates": learning_rates,  # the LR each logged step was taken with
            "final_loss": losses[-1]["loss"] if losses else None,
            "tokens_seen": int(state.num_input_tokens_seen),
            "seconds": round(time.perf_counter() - started, 3),
            "train_seconds": round(float(result.metrics.get("train_runtime", 0.0)), 3),
            "resumed_from": resumed_from,
            "records": len(records),
            "examples": len(dataset),
            "skipped": skipped,
            # examples that failed only when tokenised, trained fully masked (no loss; train.data)
            "masked": masked,
            "trainable_parameters": int(trainable),
            "parameters": int(total),
            "bf16": use_bf16,
            "config": dataclasses.asdict(config),
            **(extra or {}),
        },
    )


def first_per_id(items: Sequence[dict]) -> list[dict]:
    seen: dict[str, dict] = {}
    for item in items:
        seen.setdefault(item["id"], item)
    return list(seen.values())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Supervised fine-tuning on LLaVA-format conversations")
    parser.add_argument("--records", required=True, help="LLaVA JSON: a list of {id, image?, conversations}; or Parquet of tokenised {id, input_ids, labels}")
    parser.add_argument("--image-root", default=None, help="folder that record image paths are relative to")
    parser.add_argument("--model", required=True, help="hub id or local folder of a causal LM, LLaVA or Qwen2.5-VL")
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
        config=load_config_file(args.config),
        resume=not args.no_resume,
    )
    print(model_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The `transformers.Trainer` of the SFT trainer: its loss (summed token cross-entropy over the
labelled tokens, from the model's logits or in recomputed chunks of the LM head that never hold the
whole batch's logits; averaged over the accumulated batch's tokens or per micro-batch), the
`epoch_step` schedule, the batch order (LLaVA's grouping by modality and
length, or by length from estimated lengths), its TrainingArguments and TensorBoard callback, and
saving the final model from every process."""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from transformers import PreTrainedModel, Trainer, TrainerState, TrainingArguments
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import TrainOutput

from groundflow.models.spec import ModelSpec, resolve_dtype
from groundflow.models.vision_families import VisionFamily
from groundflow.train.config import EPOCH_STEP, EPOCH_STEP_GAMMA, MICRO_BATCH, SFTConfig, epoch_step_factor
from groundflow.train.conversations import IGNORE_INDEX, end_of_turn_token, text_tokenizer
from groundflow.train.chat_formats import resolve_chat_template
from groundflow.train.data import MASKED_KEY, ModalityLengthGroupedSampler
from groundflow.train.checkpoints import TRAINER_STATE, checkpoint_step, last_complete_checkpoint
from groundflow.train.model_prep import merge_lora_checkpoint

log = logging.getLogger(__name__)


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


def _chunk_loss_sum(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


def chunked_causal_lm_loss_sum(
    hidden_states: torch.Tensor, labels: torch.Tensor, head: torch.nn.Module, chunk_tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`causal_lm_loss_sum` from the decoder's final hidden states: the LM head and the fp32
    cross-entropy run on the labelled positions only, `chunk_tokens` of them at a time, each chunk
    under non-reentrant activation checkpointing, so its logits are recomputed in backward rather
    than kept. The largest logits tensor is chunk_tokens x vocabulary, whatever the batch.

    Non-reentrant: a parameter used by every chunk (the LM head) then gets one gradient
    accumulation per backward, which DDP's reducer requires."""
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, not {chunk_tokens}")
    shifted_labels = labels[:, 1:].to(hidden_states.device)
    labelled = shifted_labels != IGNORE_INDEX
    hidden = hidden_states[:, :-1][labelled]
    targets = shifted_labels[labelled]
    count = labelled.sum()
    # An all-masked batch still runs the head once on no rows: the loss (0) stays connected to every
    # parameter, as the full-logits loss is, so backward and DDP see the same graph.
    starts = range(0, max(len(targets), 1), chunk_tokens)
    loss_sum = sum(
        torch.utils.checkpoint.checkpoint(_chunk_loss_sum, head, hidden[start:start + chunk_tokens],
                                          targets[start:start + chunk_tokens], use_reentrant=False)
        for start in starts
    )
    return loss_sum, count


def decoder_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(the module whose output's last_hidden_state feeds the LM head, the LM head) of a causal LM
    or vision-language model (LLaVA, Qwen2.5-VL), through a peft wrapper. Both are the wrapped model's own submodules (LoRA layers and
    modules_to_save copies included), so calling the head trains what the model's forward would."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft
    get_decoder, get_head = getattr(base, "get_decoder", None), getattr(base, "get_output_embeddings", None)
    decoder = get_decoder() if get_decoder else None
    head = get_head() if get_head else None
    if decoder is None or decoder is base or head is None:
        raise TypeError(f"{type(base).__name__} has no separate decoder and LM head: "
                        "loss_chunk_tokens needs a causal LM or vision-language model (set it to null)")
    return decoder, head


@contextlib.contextmanager
def final_hidden_states(decoder: torch.nn.Module):
    """Captures the decoder's last_hidden_state during one forward (a list that holds it after)."""
    captured: list[torch.Tensor] = []

    def keep(module, args, output):
        captured.append(output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0])

    handle = decoder.register_forward_hook(keep)
    try:
        yield captured
    finally:
        handle.remove()


class SFTTrainer(Trainer):
    """Trainer whose loss is the causal-LM cross-entropy on the collated labels.

    With gradient accumulation (or several devices) Trainer passes `num_items_in_batch`, the
    labelled-token count of the whole accumulated batch; the summed loss is divided by it so that
    every supervised token weighs the same, whatever its micro-batch. loss_averaging micro_batch
    (the CINGS original's) divides each micro-batch's summed loss by its own count and by
    gradient_accumulation_steps instead (also in an epoch's last, shorter window, as the original).
    With loss_chunk_tokens the model's forward computes the logits of the last position only and
    the loss comes from the decoder's hidden states (`chunked_causal_lm_loss_sum`).
    """

    def __init__(self, *args, sft_config: SFTConfig | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.sft_config = sft_config
        self.update_steps_per_epoch: int | None = None
        # {id, reason} of the items this process trained fully masked (data.LazyExampleDataset)
        self.masked_examples: list[dict] = []

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        target = model if model is not None else self.model
        if (isinstance(target, PreTrainedModel) and not self.is_fsdp_enabled
                and full_weights_file(Path(resume_from_checkpoint)) is not None):
            load_saved_weights(target, Path(resume_from_checkpoint))
        else:  # adapters (peft's own loader), FSDP, and modules saved by their own state_dict keys
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        config = self.sft_config
        if config is not None and config.group_by_modality_length:
            if not hasattr(dataset, "has_image"):
                raise TypeError(f"group_by_modality_length needs a dataset with estimated lengths, not {type(dataset).__name__}")
            accumulated = self.args.train_batch_size * self.args.gradient_accumulation_steps
            return ModalityLengthGroupedSampler(
                dataset.lengths, dataset.has_image, megabatch_size=accumulated * self.args.world_size,
                seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
            )
        if self.args.train_sampling_strategy == "group_by_length" and hasattr(dataset, "lengths"):
            # transformers would measure each item's length by loading it: every record tokenised up front
            return LengthGroupedSampler(
                self.args.train_batch_size * self.args.gradient_accumulation_steps, lengths=list(dataset.lengths)
            )
        return super()._get_train_sampler(train_dataset)

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
        self.masked_examples.extend(inputs.pop(MASKED_KEY, []))
        chunk_tokens = self.sft_config.loss_chunk_tokens if self.sft_config is not None else None
        if chunk_tokens is None:
            outputs = model(**inputs, use_cache=False)
            loss_sum, count = causal_lm_loss_sum(outputs.logits, labels)
        else:
            # Through the (DDP / DeepSpeed) wrapper, whose forward sets up the gradient reduction; the
            # head and the cross-entropy then run on the captured hidden states.
            decoder, head = decoder_and_head(self.accelerator.unwrap_model(model))
            with final_hidden_states(decoder) as captured:
                outputs = model(**inputs, use_cache=False, logits_to_keep=1)
            if len(captured) != 1:
                raise RuntimeError(f"the decoder ran {len(captured)} times in one forward; expected once")
            with self.accelerator.autocast():  # the head under the forward's mixed precision
                loss_sum, count = chunked_causal_lm_loss_sum(captured[0], labels, head, chunk_tokens)
        if self.sft_config is not None and self.sft_config.loss_averaging == MICRO_BATCH:
            # The original's llama-recipes loop: HF's per-micro-batch token mean, divided by the
            # configured accumulation steps; DDP's average over processes then matches FSDP's.
            loss = loss_sum / count.clamp(min=1) / self.args.gradient_accumulation_steps
            self.loss_is_scaled_for_ga = True
        elif num_items_in_batch is not None:
            # an accumulated batch of fully masked items only has no labelled token: loss 0, not 0/0
            divisor = num_items_in_batch.clamp(min=1) if torch.is_tensor(num_items_in_batch) else max(num_items_in_batch, 1)
            loss = loss_sum / divisor
            if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
                # DDP averages gradients over processes while the divisor counted all of them.
                loss = loss * self.accelerator.num_processes
            self.loss_is_scaled_for_ga = True
        else:
            loss = loss_sum / count.clamp(min=1)
            self.loss_is_scaled_for_ga = False
        return (loss, outputs) if return_outputs else loss


def full_weights_file(checkpoint: Path) -> Path | None:
    for name in ("model.safetensors", "model.safetensors.index.json"):
        if (checkpoint / name).is_file():
            return checkpoint / name
    return None


def load_saved_weights(model: PreTrainedModel, checkpoint: Path) -> None:
    """Put a checkpoint's full weights into `model`, through `from_pretrained`.

    `save_pretrained` writes a model's weights in its original checkpoint format (LLaVA's
    `language_model.model.*`, not the loaded `model.language_model.*`); transformers' own resume
    loads them by state-dict key, non-strictly, so a resumed LLaVA trained on from its base weights
    with only a warning. Loading through `from_pretrained` applies the same key conversion as any
    load, and the strict copy refuses a checkpoint that does not cover the model."""
    saved = type(model).from_pretrained(checkpoint, dtype=next(model.parameters()).dtype)
    model.load_state_dict(saved.state_dict(), strict=True)
    del saved


def planned_steps(trainer: Trainer) -> int:
    """The optimizer steps this run takes, as Trainer works them out (max_steps, or epochs x updates
    per epoch of this process's dataloader)."""
    if trainer.args.max_steps > 0:
        return trainer.args.max_steps
    batches = len(trainer.get_train_dataloader())
    accumulation = trainer.args.gradient_accumulation_steps
    per_epoch = max(batches // accumulation + int(batches % accumulation > 0), 1)
    return math.ceil(trainer.args.num_train_epochs * per_epoch)


def train_resuming(trainer: Trainer, checkpoints_dir: Path, *, resume: bool) -> tuple[TrainOutput, str | None]:
    """Train from the newest complete checkpoint (or from the start); returns the output and the
    checkpoint resumed from.

    A checkpoint at the run's last step means only the final save was lost (the job was killed
    after it): its weights and state are the result. Handing it to `train()` instead would train
    one more step whenever the steps are not a whole number of epochs: transformers starts the
    unfinished epoch before it looks at the step count. Under DeepSpeed, whose engine loads
    checkpoints only inside `train()`, the run resumes from the checkpoint before it.
    """
    steps = planned_steps(trainer)
    # a checkpoint past this run's steps is a longer run's: not this run's result
    checkpoint = last_complete_checkpoint(checkpoints_dir, before_step=steps + 1) if resume else None
    if checkpoint is None:
        return trainer.train(), None
    if checkpoint_step(Path(checkpoint)) < steps:
        log.info("resuming from %s", checkpoint)
        return trainer.train(resume_from_checkpoint=checkpoint), checkpoint
    if trainer.is_deepspeed_enabled:
        earlier = last_complete_checkpoint(checkpoints_dir, before_step=steps)
        log.warning("%s holds the finished training, which DeepSpeed can only load by training on; "
                    "resuming from %s instead", checkpoint, earlier or "the start")
        return trainer.train(resume_from_checkpoint=earlier), earlier
    log.info("training finished at %s (step %d of %d): taking its weights", checkpoint, steps, steps)
    trainer._load_from_checkpoint(checkpoint)  # the loader train() uses when it resumes (adapters too)
    trainer.state = TrainerState.load_from_json(os.path.join(checkpoint, TRAINER_STATE))
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return TrainOutput(trainer.state.global_step, sum(losses) / len(losses) if losses else 0.0, {"train_runtime": 0.0}), checkpoint


def training_arguments(config: SFTConfig, out_dir: Path, *, use_bf16: bool, use_cpu: bool, find_unused: bool):
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
        # 0 turns clipping off in Trainer and, through "gradient_clipping": "auto", in DeepSpeed
        max_grad_norm=0.0 if config.max_grad_norm is None else float(config.max_grad_norm),
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
        # group_by_modality_length is SFTTrainer._get_train_sampler's, in place of "random"
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
        ddp_find_unused_parameters=find_unused,
        dataloader_num_workers=config.dataloader_num_workers,
        disable_tqdm=True,
    )


def tensorboard_callback(runs_dir: Path):
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    runs_dir.mkdir(parents=True, exist_ok=True)
    return TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(runs_dir)))

def stopping_generation_config(generation_config, processing, chat_template: str | None):
    """A copy of the model's generation config whose eos_token_id lists every token a turn can
    end with: the config's own EOS (Llama-3.1 base: <|end_of_text|>), the tokenizer's and the
    training template's end-of-turn token (<|eot_id|>). vLLM and `generate` stop on the saved
    list, so they stop where the trained model was taught to."""
    tokenizer = text_tokenizer(processing)
    eot = tokenizer.convert_tokens_to_ids(end_of_turn_token(processing, chat_template=chat_template))
    current = generation_config.eos_token_id
    ids: list[int] = []
    for token in [*(current if isinstance(current, (list, tuple)) else [current]), tokenizer.eos_token_id, eot]:
        if token is not None and int(token) not in ids:
            ids.append(int(token))
    updated = copy.deepcopy(generation_config)
    updated.eos_token_id = ids if len(ids) > 1 else ids[0]
    return updated


def adopt_training_template(processing, chat_template: str | None) -> None:
    """Make the configured training template the saved checkpoint's own (tokenizer and, for LLaVA,
    processor), so inference, vLLM and later stages render prompts as training did; None keeps the
    tokenizer's / processor's own template."""
    template = resolve_chat_template(chat_template)
    if template is None:
        return
    for holder in (processing, getattr(processing, "tokenizer", None)):
        if holder is not None:
            holder.chat_template = template


def save_final_model(trainer, config: SFTConfig, spec: ModelSpec, processing, *, vision: VisionFamily | None, out_dir: Path,
                     use_bf16: bool) -> Path:
    """Every process takes part in `save_model` (ZeRO-3 gathers the shards); the main process then
    completes the folder and moves it into place, so out_dir/model is whole or absent; returns it."""
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
        generation = stopping_generation_config(unwrapped.generation_config, processing, config.chat_template)
        adopt_training_template(processing, config.chat_template)
        if config.lora is not None and config.merge_lora:
            dtype = torch.bfloat16 if use_bf16 else torch.float32
            if spec.dtype != "auto":
                dtype = resolve_dtype(spec.dtype, spec.torch_device())
            # Only this process loads the base copy: ZeRO-3's partitioned init must not run here.
            plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
            no_zero3 = plugin.zero3_init_context_manager(enable=False) if plugin is not None else contextlib.nullcontext()
            with no_zero3:
                merge_lora_checkpoint(spec.path, partial, model_dir, vision=vision, dtype=dtype, processing=processing,
                                      generation_config=generation)
            shutil.rmtree(partial)
        else:
            processing.save_pretrained(partial)
            generation.save_pretrained(partial)
            (partial / "training_args.bin").unlink(missing_ok=True)  # a pickle; the summary holds the config
            if model_dir.exists():
                shutil.rmtree(model_dir)
            os.replace(partial, model_dir)
    trainer.accelerator.wait_for_everyone()
    return out_dir / "model"


"""GWYS GRPO steps/s on a Qwen2.5-VL-7B-shaped policy on one GPU (TRL's GRPOTrainer through gwys.grpo).

The policy is a Qwen2_5_VLForConditionalGeneration built from the configuration of
Qwen2.5-VL-7B-Instruct (text: hidden 3584, MLP 18944, 28 layers, 28 heads, 4 KV heads, vocabulary
152064, M-RoPE sections [16, 24, 24], rope theta 1e6; vision: 32 blocks, hidden 1280, MLP 3420,
16 heads, output 3584, full attention in blocks 7/15/23/31, 14 px patches merged 2 x 2) with random
weights, in bf16, directly on the GPU: nothing is downloaded. Its tokenizer and processor are the
tiny builder's (Qwen's special tokens, the real processor class with patch 14 / merge 2); prompt
ids stay below the tokenizer's size, sampled ids cover the model's whole vocabulary (a token the
tokenizer does not know decodes to nothing, which only the rewards see).

One run per completion length (768, the spec's, and a shorter one): the same code path as
training (`gwys.grpo.build_trainer` -> `ConflictGRPOTrainer`): 1 prompt x G = 8 completions per
step sampled by HF generate (temperature 1.0, top_p 0.95, top_k 50), accuracy + 0.1 x format
rewards, LoRA r 64 on the language model's linear layers (the KL reference is the adapter-disabled
policy, β 0.04), gradient checkpointing, the conflict term on (anchor + 7 partners in one forward
with gradient), images of 644 x 616 px (506 image tokens, under the RL cap of 401,408 px). A
random policy never emits its end of turn, so every completion runs to the length limit: the
slowest step of that setting.

Reported per setting: seconds per step (median of the timed steps after a warm-up step), steps/s,
the generation's and the conflict term's seconds per step, generated tokens/s, peak GPU memory;
and the ratio of the two settings' step times, measured in the same run.

Measured (2026-12-04, one H200, torch 2.11.0+cu130, transformers 5.23.0, trl 1.16.0, peft 0.21.2;
2 timed steps after a warm-up; a random policy runs every completion to the limit):

  new tokens  s/step  steps/s  generation s  conflict term s  rest s  generated tok/s  peak GiB
         768   57.61    0.017         48.19             1.30    8.13              128      27.1
         128   17.36    0.058          8.19             1.42    7.74              125      25.0

HF generate at 8 rows is 84 % of a 768-token step (16 tokens/s per row): rollouts are the
bottleneck, as the spec says of the original (§9); the conflict term (8 prompts with images, with
gradient) costs ~1.3 s, 2 % of the step. Step time 768 vs 128 new tokens: 3.32x.

Usage:  python bench/gpu_gwys_grpo.py --out results/bench/gpu_gwys_grpo.json
        python bench/gpu_gwys_grpo.py --tiny --out /tmp/tiny.json   (same code path on CPU, tiny config)
Needs trl and datasets (the project's pins) besides torch, transformers and peft.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from transformers import AutoProcessor, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, TrainerCallback  # noqa: E402

from groundflow.gwys.grpo import (ConflictGRPOTrainer, apply_pixel_bounds, build_rewards, build_trainer,  # noqa: E402
                                  grpo_dataset, pin_sampling)
from groundflow.gwys.grpo_settings import GRPOSettings  # noqa: E402
from groundflow.gwys.prompts import format_question, load_question_prompts  # noqa: E402
from groundflow.models.qwen_vl import build_tiny_qwen_vl  # noqa: E402
from groundflow.models.vision_families import QWEN2_5_VL  # noqa: E402


@dataclass(frozen=True)
class Shape:
    text: dict
    vision: dict
    image_size: tuple[int, int]  # drawn images, width x height
    min_pixels: int
    max_pixels: int
    lora_r: int
    lengths: tuple[int, ...]  # max_completion_length of each run, the spec's first
    tie_word_embeddings: bool = False
    pool_rows: int = 16
    extra: dict = field(default_factory=dict)


QWEN_7B = Shape(
    text=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
              num_key_value_heads=4, vocab_size=152064, max_position_embeddings=128000, rms_norm_eps=1e-6,
              hidden_act="silu",
              rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}),
    vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                fullatt_block_indexes=[7, 15, 23, 31], patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                window_size=112, hidden_act="silu", in_channels=3, tokens_per_second=2),
    image_size=(644, 616), min_pixels=3136, max_pixels=401408, lora_r=64, lengths=(768, 128),
)

# The tiny builder's shapes, with a vocabulary larger than its tokenizer, as the 7B's is.
TINY = Shape(
    text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              vocab_size=4096, max_position_embeddings=4096, hidden_act="silu",
              rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]}),
    vision=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, fullatt_block_indexes=[1],
                patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56),
    image_size=(120, 80), min_pixels=3136, max_pixels=12544, lora_r=8, lengths=(24, 8), pool_rows=10,
)
COLOURS = ("red", "blue", "green", "yellow")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_policy(shape: Shape, processor, device: torch.device, dtype: torch.dtype):
    tokenizer = processor.tokenizer
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in
           ("<|endoftext|>", "<|im_end|>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")}
    config = Qwen2_5_VLConfig(
        text_config={**shape.text, "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
                     "pad_token_id": ids["<|endoftext|>"], "tie_word_embeddings": shape.tie_word_embeddings},
        vision_config=shape.vision,
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=shape.tie_word_embeddings,
    )
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            torch.manual_seed(0)
            model = Qwen2_5_VLForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.config.use_cache = False
    return model


def write_pool(shape: Shape, media: Path) -> pd.DataFrame:
    """Multiple-choice rows over drawn scenes of the shape's image size, each scene its own."""
    media.mkdir(parents=True, exist_ok=True)
    width, height = shape.image_size
    options = [f"{chr(65 + k)}. {c}" for k, c in enumerate(COLOURS)]
    rows = []
    for i in range(shape.pool_rows):
        image = Image.new("RGB", (width, height), "white")
        pen = ImageDraw.Draw(image)
        left, top = (i * 37) % (width // 2), (i * 23) % (height // 2)
        pen.ellipse((left, top, left + width // 3, top + height // 3), fill=COLOURS[i % 4], outline="black")
        image.save(media / f"scene{i}.png")
        problem = "What colour is the circle?"
        rows.append({"id": f"q{i}", "problem": problem, "problem_type": "multiple choice", "options": options,
                     "solution": f"<answer>{chr(65 + i % 4)}</answer>", "data_type": "image",
                     "media": f"scene{i}.png", "format_question": format_question(problem, options)})
    return pd.DataFrame(rows)


class SyncedStepClock(TrainerCallback):
    """Seconds per optimizer step, the device synchronised at both ends."""

    def __init__(self, device: torch.device):
        self.device, self.seconds, self._started = device, [], None

    def on_step_begin(self, args, state, control, **kwargs):
        synchronize(self.device)
        self._started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        synchronize(self.device)
        self.seconds.append(time.perf_counter() - self._started)


class TimedTrainer(ConflictGRPOTrainer):
    """Ours, with the generation's and the conflict term's device time recorded per call."""

    generation_seconds: list[float]
    conflict_call_seconds: list[float]

    def _generate_single_turn(self, *args, **kwargs):
        synchronize(self.accelerator.device)
        started = time.perf_counter()
        result = super()._generate_single_turn(*args, **kwargs)
        synchronize(self.accelerator.device)
        self.generation_seconds.append(time.perf_counter() - started)
        return result

    def conflict_loss(self, model, anchors):
        synchronize(self.accelerator.device)
        started = time.perf_counter()
        result = super().conflict_loss(model, anchors)
        result.loss.detach().item()  # the forward has run
        self.conflict_call_seconds.append(time.perf_counter() - started)
        return result


def run_setting(shape: Shape, length: int, *, processor_dir: Path, pool: pd.DataFrame, media: Path, out_dir: Path,
                device: torch.device, dtype: torch.dtype, steps: int) -> dict:
    record = {"max_completion_length": length, "ok": False}
    model = trainer = None
    try:
        settings = GRPOSettings.from_dict({
            "num_generations": 8, "per_device_prompts": 1, "max_completion_length": length, "max_steps": 1 + steps,
            "learning_rate": 1e-6, "beta": 0.04, "lora": {"r": shape.lora_r, "alpha": 2 * shape.lora_r, "dropout": 0.0},
            "conflict": {"enabled": True, "partners": 7}, "gradient_checkpointing": True, "save_steps": 10**6,
            "bf16": dtype == torch.bfloat16, "min_pixels": shape.min_pixels, "max_pixels": shape.max_pixels,
            # a random policy's groups are never identical; the guard stays on
        })
        processor = AutoProcessor.from_pretrained(processor_dir)
        processor.tokenizer.padding_side = "left"
        apply_pixel_bounds(processor, QWEN2_5_VL, min_pixels=shape.min_pixels, max_pixels=shape.max_pixels)
        model = build_policy(shape, processor, device, dtype)
        pin_sampling(model, settings)
        data = grpo_dataset(pool, media_root=media, prompts=load_question_prompts("four_tag"),
                            conflict=settings.conflict_settings)
        clock = SyncedStepClock(device)
        TimedTrainer.generation_seconds, TimedTrainer.conflict_call_seconds = [], []
        trainer = build_trainer(model, processor, QWEN2_5_VL, data,
                                build_rewards(["accuracy", "format"], form="four_tag", rules="fixed"),
                                settings=settings, reward_names=["accuracy", "format"], out_dir=out_dir, device=device,
                                callbacks=[clock], trainer_class=TimedTrainer)
        watched = next(p for n, p in trainer.model.named_parameters() if p.requires_grad and "lora_B" in n)
        before = watched.detach().float().clone()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        trainer.train()
        if torch.equal(before, watched.detach().float()):
            raise AssertionError("the LoRA weights did not move")
        history = [e for e in trainer.state.log_history if "reward" in e]
        timed = clock.seconds[1:]
        step = statistics.median(timed)
        generation = statistics.median(trainer.generation_seconds[1:])
        conflict = statistics.median(trainer.conflict_call_seconds[1:])
        lengths = [e["completions/mean_length"] for e in history[1:]]
        grid = processor.image_processor(images=[Image.open(media / pool["media"][0]).convert("RGB")],
                                         return_tensors="pt")["image_grid_thw"]
        image_tokens = int(grid.prod().item()) // 4  # merged 2 x 2
        record.update(
            ok=True, steps_timed=len(timed), step_seconds=step, steps_per_second=1 / step,
            generation_seconds=generation, conflict_seconds=conflict, rest_seconds=step - generation - conflict,
            mean_completion_tokens=statistics.mean(lengths),
            generated_tokens_per_second=8 * statistics.mean(lengths) / generation,
            image_tokens=image_tokens, trainable_parameters=sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
            infoNCE=[e.get("infoNCE") for e in history], kl=[e.get("kl") for e in history],
            identical_groups=trainer.identical_groups_total, conflict_forwards=trainer.conflict_forwards,
            peak_memory_gib=torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        )
    except torch.OutOfMemoryError as error:
        record["error"] = f"out of memory: {str(error).splitlines()[0]}"
    finally:
        del model, trainer
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="JSON report path")
    parser.add_argument("--tiny", action="store_true", help="tiny config on CPU (fp32): checks the code path")
    parser.add_argument("--steps", type=int, default=2, help="timed GRPO steps per setting, after one warm-up step")
    parser.add_argument("--lengths", type=int, nargs="+", default=None, help="max_completion_length of each run")
    args = parser.parse_args(argv)
    if args.tiny:
        shape, device, dtype = TINY, torch.device("cpu"), torch.float32
    else:
        if not torch.cuda.is_available():
            print("gpu_gwys_grpo.py needs a CUDA GPU (none is visible); use --tiny to check the code path on CPU",
                  file=sys.stderr)
            return 2
        shape, device, dtype = QWEN_7B, torch.device("cuda"), torch.bfloat16
        torch.backends.cuda.matmul.allow_tf32 = True
    lengths = tuple(args.lengths or shape.lengths)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        processor_dir = build_tiny_qwen_vl(tmp / "processor", seed=0, texts=[format_question("What colour?", [])])
        pool = write_pool(shape, tmp / "media")
        for length in lengths:
            started = time.perf_counter()
            runs.append(run_setting(shape, length, processor_dir=processor_dir, pool=pool, media=tmp / "media",
                                    out_dir=tmp / f"run{length}", device=device, dtype=dtype, steps=args.steps))
            print(f"max_completion_length {length}: {time.perf_counter() - started:.1f} s in all", flush=True)
    ok = [r for r in runs if r["ok"]]
    ratio = ok[0]["step_seconds"] / ok[-1]["step_seconds"] if len(ok) > 1 else None
    report = {"tiny": args.tiny, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "dtype": str(dtype), "torch": torch.__version__,
              "transformers": __import__("transformers").__version__, "trl": __import__("trl").__version__,
              "shape": {"text": shape.text, "vision": shape.vision, "image_size": shape.image_size,
                        "max_pixels": shape.max_pixels, "lora_r": shape.lora_r},
              "generations": 8, "prompts_per_step": 1, "partners": 7, "runs": runs,
              "step_time_ratio_first_to_last": ratio}
    print(f"device: {report['device']}  {report['dtype']}  torch {report['torch']}  transformers "
          f"{report['transformers']}  trl {report['trl']}")
    print(f"{'new tokens':>10}{'s/step':>9}{'steps/s':>9}{'gen s':>8}{'term s':>8}{'rest s':>8}{'gen tok/s':>11}{'mem GiB':>9}")
    for r in runs:
        if not r["ok"]:
            print(f"{r['max_completion_length']:>10}  did not run: {r['error']}")
            continue
        memory = f"{r['peak_memory_gib']:.1f}" if r["peak_memory_gib"] is not None else "-"
        print(f"{r['max_completion_length']:>10}{r['step_seconds']:>9.2f}{r['steps_per_second']:>9.3f}"
              f"{r['generation_seconds']:>8.2f}{r['conflict_seconds']:>8.2f}{r['rest_seconds']:>8.2f}"
              f"{r['generated_tokens_per_second']:>11.0f}{memory:>9}")
    if ratio is not None:
        print(f"step time, {lengths[0]} vs {lengths[-1]} new tokens: {ratio:.2f}x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(f".{out.name}.tmp")
    tmp_out.write_text(json.dumps(report, indent=2))
    tmp_out.replace(out)
    return 0 if len(ok) == len(runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())

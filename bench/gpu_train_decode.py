"""Benchmark 4 of issue 3: training step and decoding of a LLaVA-1.5-7B-shaped model on one GPU.

The model is a LlavaForConditionalGeneration built from configs alone (CLIP ViT-L/14-336 vision
tower, 2-layer MLP projector, Llama-7B language model: hidden 4096, 32 layers, 32 heads, MLP
11008, vocabulary 32064) with random weights, in bf16, directly on the GPU: nothing is downloaded.

Measured:
- the bf16 matmul peak of this GPU, on the spot (large square torch.matmul in a loop);
- one training step (forward, backward, AdamW step), LoRA r=128 on every linear projection of the
  language model plus the projector in full (the trainer's `apply_lora`), then full fine-tuning
  when it fits in memory (a failed allocation is reported, not fatal): tokens/s and MFU, where
  MFU = model FLOPs per second / measured peak;
- greedy decoding of a fixed number of new tokens with one image per prompt at batch 1, 16, 64:
  generated tokens/s.

Model FLOPs per training step (the usual 2 per multiply-add, no recomputation counted):
  language model, per token: forward 2*N_lm + attention 4*L*S*d (scores and values, causal masking
  not discounted); backward twice the forward, except that frozen weights need no weight
  gradients, so LoRA's backward is one forward's worth for the frozen matmuls (input gradients
  only) plus the trainable parameters' own 6*N_trainable;
  vision tower, frozen: its forward only, 2*N_vit per patch token.

Usage:  python bench/gpu_train_decode.py --out results/bench/gpu_train_decode.json
        python bench/gpu_train_decode.py --tiny --out /tmp/tiny.json   (same code path on CPU, tiny config)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration  # noqa: E402

from groundflow.models.vision_families import LLAVA  # noqa: E402
from groundflow.train.model_prep import apply_lora  # noqa: E402
from groundflow.train.trainer import causal_lm_loss_sum  # noqa: E402


@dataclass(frozen=True)
class Shape:
    vision: dict
    text: dict
    image_size: int
    patch_size: int
    batch_size: int
    text_tokens: int  # text tokens per training sequence, after the image tokens
    new_tokens: int  # decoded tokens per prompt
    prompt_text_tokens: int
    lora_r: int
    peak_n: int  # side of the square matmul that measures the peak


LLAVA_7B = Shape(
    vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5),
    text=dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
              num_key_value_heads=32, vocab_size=32064, max_position_embeddings=4096, rms_norm_eps=1e-5),
    image_size=336, patch_size=14, batch_size=4, text_tokens=448, new_tokens=64, prompt_text_tokens=32,
    lora_r=128, peak_n=8192,
)

TINY = Shape(
    vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, projection_dim=32),
    text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=4, vocab_size=512, max_position_embeddings=1024),
    image_size=64, patch_size=16, batch_size=2, text_tokens=24, new_tokens=4, prompt_text_tokens=8,
    lora_r=8, peak_n=256,
)

IMAGE_TOKEN_ID = 32000  # llava-hf/llava-1.5's <image> id
TINY_IMAGE_TOKEN_ID = 500
DECODE_BATCHES = (1, 16, 64)


def build_model(shape: Shape, device: torch.device, dtype: torch.dtype, image_token_id: int) -> LlavaForConditionalGeneration:
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(image_size=shape.image_size, patch_size=shape.patch_size, **shape.vision),
        text_config=LlamaConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0, **shape.text),
        image_token_index=image_token_id,
        image_seq_length=(shape.image_size // shape.patch_size) ** 2,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlavaForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = 2
    return model


def image_tokens(shape: Shape) -> int:
    return (shape.image_size // shape.patch_size) ** 2  # CLS dropped by the "default" strategy


def make_batch(shape: Shape, batch_size: int, text_tokens: int, device, dtype, image_token_id: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    vocab = shape.text["vocab_size"]
    text = torch.randint(3, min(vocab, image_token_id), (batch_size, text_tokens), generator=generator)
    images = torch.full((batch_size, image_tokens(shape)), image_token_id)
    bos = torch.ones((batch_size, 1), dtype=torch.long)
    input_ids = torch.cat([bos, images, text], dim=1).to(device)
    labels = input_ids.clone()
    labels[:, : 1 + image_tokens(shape)] = -100
    pixel_values = torch.randn((batch_size, 3, shape.image_size, shape.image_size), generator=generator).to(device, dtype)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "pixel_values": pixel_values}, labels


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_peak_tflops(device: torch.device, dtype: torch.dtype, n: int, seconds: float = 2.0) -> float:
    """Sustained TFLOP/s of an n x n x n matmul, the best of a few timed loops."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        torch.matmul(a, b)
    synchronize(device)
    best = 0.0
    deadline = time.perf_counter() + seconds
    while True:
        iterations = 10
        start = time.perf_counter()
        for _ in range(iterations):
            torch.matmul(a, b)
        synchronize(device)
        elapsed = time.perf_counter() - start
        best = max(best, 2 * n**3 * iterations / elapsed / 1e12)
        if time.perf_counter() > deadline:
            break
    del a, b
    return best


def parameter_counts(model: LlavaForConditionalGeneration) -> dict:
    vision = sum(p.numel() for p in model.model.vision_tower.parameters())
    projector = sum(p.numel() for p in model.model.multi_modal_projector.parameters())
    # the language model's matmul weights: decoder layers + LM head (embeddings are lookups, no FLOPs)
    lm = sum(p.numel() for n, p in model.model.language_model.named_parameters() if "embed_tokens" not in n)
    lm += model.lm_head.weight.numel()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"vision": vision, "projector": projector, "language_matmul": lm, "trainable": trainable}


def train_step_flops(shape: Shape, counts: dict, batch_size: int, seq_len: int, *, full: bool) -> float:
    layers, hidden = shape.text["num_hidden_layers"], shape.text["hidden_size"]
    tokens = batch_size * seq_len
    forward_lm = tokens * (2 * counts["language_matmul"] + 4 * layers * seq_len * hidden)
    vision_tokens = batch_size * (image_tokens(shape) + 1)
    forward_vision = 2 * counts["vision"] * vision_tokens
    projector = 6 * counts["projector"] * batch_size * image_tokens(shape)
    if full:
        return 3 * forward_lm + forward_vision + projector
    # frozen weights: input gradients only (1x forward); trainable (LoRA) parameters: 6 per token
    return 2 * forward_lm + forward_vision + projector + 6 * (counts["trainable"] - counts["projector"]) * tokens


def run_training(shape: Shape, mode: str, device, dtype, image_token_id: int, steps: int, peak_tflops: float) -> dict:
    record = {"mode": mode, "ok": False}
    model = optimizer = None
    try:
        torch.manual_seed(0)
        model = build_model(shape, device, dtype, image_token_id)
        model.config.use_cache = False
        for parameter in model.model.vision_tower.parameters():
            parameter.requires_grad = False
        counts = parameter_counts(model)  # before peft, which keeps a second (trainable) projector copy
        if mode == "lora":
            lora = {"r": shape.lora_r, "alpha": 2 * shape.lora_r, "dropout": 0.0, "target_modules": "all-linear"}
            model = apply_lora(model, lora, vision=LLAVA, train_projector=True)
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        trainable = [p for p in model.parameters() if p.requires_grad]
        # AdamW states take the parameters' dtype: bf16 for the full model (fp32 states would not fit)
        optimizer = torch.optim.AdamW(trainable, lr=1e-5, fused=device.type == "cuda")
        inputs, labels = make_batch(shape, shape.batch_size, shape.text_tokens, device, dtype, image_token_id)
        seq_len = inputs["input_ids"].shape[1]
        watched = trainable[-1]
        before = watched.detach().float().clone()

        def step():
            outputs = model(**inputs, use_cache=False)
            loss_sum, count = causal_lm_loss_sum(outputs.logits, labels)
            loss = loss_sum / count
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss.detach()

        loss = step()  # warm-up: allocator, kernels, optimizer states
        synchronize(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        for _ in range(steps):
            loss = step()
        synchronize(device)
        seconds = (time.perf_counter() - start) / steps
        loss_value = float(loss)
        if not torch.isfinite(torch.tensor(loss_value)):
            raise AssertionError(f"{mode}: non-finite loss {loss_value}")
        if torch.equal(before, watched.detach().float()):
            raise AssertionError(f"{mode}: the optimizer step left the trainable weights unchanged")
        counts["trainable"] = sum(p.numel() for p in trainable)
        flops = train_step_flops(shape, counts, shape.batch_size, seq_len, full=mode == "full")
        tflops = flops / seconds / 1e12
        record.update(
            ok=True, batch_size=shape.batch_size, seq_len=seq_len, step_seconds=seconds,
            tokens_per_second=shape.batch_size * seq_len / seconds, model_tflops=tflops,
            mfu=tflops / peak_tflops, loss=loss_value, trainable_parameters=counts["trainable"],
            peak_memory_gib=torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        )
    except torch.OutOfMemoryError as error:
        record["error"] = f"out of memory: {str(error).splitlines()[0]}"
    finally:
        del model, optimizer
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return record


def run_decoding(shape: Shape, device, dtype, image_token_id: int, batches=DECODE_BATCHES) -> list[dict]:
    torch.manual_seed(0)
    model = build_model(shape, device, dtype, image_token_id).eval()
    results = []
    for batch_size in batches:
        inputs, _ = make_batch(shape, batch_size, shape.prompt_text_tokens, device, dtype, image_token_id, seed=batch_size)
        prompt_len = inputs["input_ids"].shape[1]
        kwargs = dict(max_new_tokens=shape.new_tokens, min_new_tokens=shape.new_tokens, do_sample=False,
                      pad_token_id=0, eos_token_id=2)
        try:
            with torch.inference_mode():
                model.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False, pad_token_id=0)  # warm-up
                synchronize(device)
                start = time.perf_counter()
                output = model.generate(**inputs, **kwargs)
                synchronize(device)
            seconds = time.perf_counter() - start
            new = output.shape[1] - prompt_len
            if output.shape[0] != batch_size or new != shape.new_tokens:
                raise AssertionError(f"batch {batch_size}: generated {tuple(output.shape)}, expected {shape.new_tokens} new tokens per row")
            results.append({"batch_size": batch_size, "prompt_tokens": prompt_len, "new_tokens": new, "seconds": seconds,
                            "tokens_per_second": batch_size * new / seconds, "ok": True})
        except torch.OutOfMemoryError as error:
            results.append({"batch_size": batch_size, "ok": False, "error": f"out of memory: {str(error).splitlines()[0]}"})
        if device.type == "cuda":
            torch.cuda.empty_cache()
    del model
    gc.collect()
    return results


def print_table(report: dict) -> None:
    print(f"device: {report['device']}   measured {report['dtype']} matmul peak: {report['peak_tflops']:.1f} TFLOP/s")
    print(f"{'train':<8}{'batch x seq':>14}{'step s':>10}{'tokens/s':>12}{'TFLOP/s':>10}{'MFU':>8}{'mem GiB':>9}")
    for run in report["train"]:
        if not run["ok"]:
            print(f"{run['mode']:<8}  did not run: {run['error']}")
            continue
        memory = f"{run['peak_memory_gib']:.1f}" if run["peak_memory_gib"] is not None else "-"
        print(f"{run['mode']:<8}{run['batch_size']:>6} x {run['seq_len']:<6}{run['step_seconds']:>10.3f}"
              f"{run['tokens_per_second']:>12.0f}{run['model_tflops']:>10.1f}{run['mfu']:>8.1%}{memory:>9}")
    print(f"{'decode':<8}{'batch':>6}{'new tokens':>12}{'seconds':>10}{'tokens/s':>12}")
    for run in report["decode"]:
        if not run["ok"]:
            print(f"{'':<8}{run['batch_size']:>6}  did not run: {run['error']}")
            continue
        print(f"{'':<8}{run['batch_size']:>6}{run['new_tokens']:>12}{run['seconds']:>10.2f}{run['tokens_per_second']:>12.0f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="JSON report path")
    parser.add_argument("--tiny", action="store_true", help="tiny config on CPU (fp32): checks the code path")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per mode")
    parser.add_argument("--skip-full", action="store_true", help="only the LoRA training step")
    args = parser.parse_args(argv)

    if args.tiny:
        shape, device, dtype, image_token_id = TINY, torch.device("cpu"), torch.float32, TINY_IMAGE_TOKEN_ID
    else:
        if not torch.cuda.is_available():
            print("gpu_train_decode.py needs a CUDA GPU (none is visible); use --tiny to check the code path on CPU",
                  file=sys.stderr)
            return 2
        shape, device, dtype, image_token_id = LLAVA_7B, torch.device("cuda"), torch.bfloat16, IMAGE_TOKEN_ID
        torch.backends.cuda.matmul.allow_tf32 = True

    peak = measure_peak_tflops(device, dtype, shape.peak_n, seconds=0.2 if args.tiny else 3.0)
    train = [run_training(shape, "lora", device, dtype, image_token_id, args.steps, peak)]
    if not args.skip_full:
        train.append(run_training(shape, "full", device, dtype, image_token_id, args.steps, peak))
    decode = run_decoding(shape, device, dtype, image_token_id)
    report = {
        "tiny": args.tiny,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(dtype),
        "torch": torch.__version__,
        "peak_tflops": peak,
        "shape": {"vision": shape.vision, "text": shape.text, "image_size": shape.image_size, "patch_size": shape.patch_size,
                  "image_tokens": image_tokens(shape), "lora_r": shape.lora_r},
        "train": train,
        "decode": decode,
    }
    print_table(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, out)
    if not train[0]["ok"]:
        print(f"the LoRA training step failed: {train[0].get('error')}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

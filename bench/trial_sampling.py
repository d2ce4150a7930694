"""Trial sampling on the tiny LLaVA: batched HFVisionGenerator against one prompt at a time.

    python bench/trial_sampling.py [--instances 32] [--n 4] [--max-new-tokens 32] [--batch-size 16]

Both arms do the same work: every instance's occluded image + CVC trial question, n sampled
rationales each (temperature 1.0, top_p 0.9, up to max-new-tokens tokens), images padded to square.
The baseline has the seed's loop shape: one generate call per instance (its n samples still share
that call, as vLLM's n does). The batched arm sends all instances through one generator call that
batches `batch_size` prompts (x n samples) per forward pass. Reported: wall time of each (best of
--repeats, arms interleaved), the generated text re-encoded to tokens (to show the work is the
same; sampling draws differ between the arms, so early stops do too), and the ratio.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from groundflow.cvc.instructions import build_question  # noqa: E402
from groundflow.cvc.prompts import REASONING_SUFFIX  # noqa: E402
from groundflow.generate.backends import ChatPrompt, SamplingParams, make_generator  # noqa: E402
from groundflow.models.llava import build_tiny_llava  # noqa: E402
from groundflow.models.spec import offline_hub  # noqa: E402

OBJECT_TYPES = ["animal", "vehicle", "food", "furniture", "plant", "tool", "appliance", "toy"]


def occluded_like_image(rng: np.random.Generator) -> Image.Image:
    """A picture of a few coloured shapes with a cluster of gray blocks over one of them."""
    height, width = rng.choice([(480, 640), (640, 480), (427, 640), (500, 375)])
    pixels = np.empty((height, width, 3), dtype=np.uint8)
    pixels[:] = rng.integers(0, 256, 3, dtype=np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    for _ in range(int(rng.integers(2, 6))):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry, rx = rng.uniform(20, height / 3), rng.uniform(20, width / 3)
        pixels[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = rng.integers(0, 256, 3, dtype=np.uint8)
    patch = int(rng.integers(12, 40))
    y0, x0 = int(rng.integers(0, height - 4 * patch)), int(rng.integers(0, width - 4 * patch))
    blocks = rng.random((4, 4)) < 0.6
    for by, bx in zip(*np.nonzero(blocks)):
        pixels[y0 + by * patch: y0 + (by + 1) * patch, x0 + bx * patch: x0 + (bx + 1) * patch] = 128
    return Image.fromarray(pixels)


def trial_prompts(count: int, seed: int) -> list[ChatPrompt]:
    rng = np.random.default_rng(seed)
    prompts = []
    for index in range(count):
        question = build_question(OBJECT_TYPES[index % len(OBJECT_TYPES)], plural=bool(index % 5 == 4))
        prompts.append(ChatPrompt(
            messages=[{"role": "user", "content": f"{question} {REASONING_SUFFIX}"}],
            image=occluded_like_image(rng),
        ))
    return prompts


def generated_tokens(tokenizer, results: list[list[str]]) -> int:
    texts = [text for samples in results for text in samples]
    return sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=32)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads for both arms (1: stable timings on a shared machine)")
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per arm; the fastest counts")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    offline_hub()
    torch.set_num_threads(args.threads)

    prompts = trial_prompts(args.instances, args.seed)
    params = SamplingParams(max_new_tokens=args.max_new_tokens, n=args.n, do_sample=True, temperature=1.0,
                            top_p=args.top_p, seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = build_tiny_llava(Path(tmp) / "tiny-llava", seed=0, texts=[p.messages[0]["content"] for p in prompts])
        model_spec = {"path": str(path), "device": "cpu"}
        batched = make_generator({"backend": "hf", "model": model_spec, "batch_size": args.batch_size}, kind="vision")
        one_at_a_time = make_generator({"backend": "hf", "model": model_spec, "batch_size": 1}, kind="vision")
        tokenizer = batched.processor.tokenizer

        batched.generate(prompts[:2], params)  # warm-up: first-call costs belong to neither arm
        batched_times, loop_times = [], []
        for _ in range(args.repeats):  # arms interleaved, so both see the same machine load
            start = time.perf_counter()
            batched_results = batched.generate(prompts, params)
            batched_times.append(time.perf_counter() - start)

            start = time.perf_counter()
            loop_results = [one_at_a_time.generate([prompt], params)[0] for prompt in prompts]
            loop_times.append(time.perf_counter() - start)
        batched_s, loop_s = min(batched_times), min(loop_times)

    for results in (batched_results, loop_results):
        assert len(results) == len(prompts) and all(len(samples) == args.n for samples in results)
    batched_tokens = generated_tokens(tokenizer, batched_results)
    loop_tokens = generated_tokens(tokenizer, loop_results)
    print(f"trial sampling: {args.instances} instances x n={args.n}, <= {args.max_new_tokens} new tokens, "
          f"temperature 1.0, top_p {args.top_p}, torch threads {args.threads}, device cpu, "
          f"best of {args.repeats}")
    print(f"{'arm':<28} {'wall s':>8} {'text tokens':>12} {'tokens/s':>9}")
    print(f"{'one prompt at a time':<28} {loop_s:>8.2f} {loop_tokens:>12d} {loop_tokens / loop_s:>9.0f}")
    print(f"{f'batched (batch {args.batch_size})':<28} {batched_s:>8.2f} {batched_tokens:>12d} "
          f"{batched_tokens / batched_s:>9.0f}")
    print(f"speed-up (wall time ratio): {loop_s / batched_s:.1f}x  (target >= 4x)")


if __name__ == "__main__":
    main()

"""GWYS selection rollouts on the tiny Qwen2.5-VL: K rollouts per pool sample, batched against one
sample at a time.

    python bench/gwys_rollouts.py [--samples 24] [--k 8] [--max-new-tokens 32] [--batch-size 8] [--json out.json]

Every arm does the same work: each pool sample of the GWYS demo fixture (drawn scenes, multiple
choice and counts) asked in the four-tag prompt with its type instruction, K sampled completions
(temperature 1.0, top_p 0.95, top_k 50, up to max-new-tokens tokens), through the shared vision
generator (`gwys.rollouts.roll_out` for the batched arm). Arms:
- per_rollout: one generate call per rollout (n=1), K x samples calls: a loop over samples and
  rollouts, as a script without batching would do it;
- per_sample: one call per sample, its K rollouts in that call (num_return_sequences=K, the
  image and prompt encoded once);
- batched: one call for all samples, `batch_size` samples x K rows per forward pass.
Reported: wall time of each (best of --repeats, arms interleaved so machine load hits all alike),
the completions' tokens (the work done; sampling draws differ between arms, so early stops do too),
and the batched arm's speed-up over the two others (target >= 4x over one sample at a time).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from groundflow.generate.backends import SamplingParams, make_generator  # noqa: E402
from groundflow.gwys.asking import ask_rows  # noqa: E402
from groundflow.gwys.data import load_pool  # noqa: E402
from groundflow.gwys.fixture import fixture_texts, make_gwys_fixture  # noqa: E402
from groundflow.gwys.prompts import load_question_prompts  # noqa: E402
from groundflow.gwys.rollouts import RolloutSettings, roll_out  # noqa: E402
from groundflow.io.artifacts import atomic_write_json  # noqa: E402
from groundflow.models.qwen_vl import build_tiny_qwen_vl  # noqa: E402
from groundflow.models.spec import offline_hub  # noqa: E402


def tokens(tokenizer, groups: list[list[str]]) -> int:
    texts = [text for group in groups for text in group]
    return sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=24, help="pool samples (the fixture has 24)")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8, help="samples per forward pass in the batched arm")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: stable timings on a shared machine)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per arm; the fastest counts")
    parser.add_argument("--skip-per-rollout", action="store_true", help="leave out the slowest arm")
    parser.add_argument("--json", default=None, help="write the numbers here")
    args = parser.parse_args()
    offline_hub()
    torch.set_num_threads(args.threads)

    settings = RolloutSettings(k=args.k, max_new_tokens=args.max_new_tokens)
    prompts = load_question_prompts(settings.form)
    with tempfile.TemporaryDirectory() as tmp:
        fixture = Path(tmp) / "fixture"
        make_gwys_fixture(fixture, seed=0, include_bad=False)
        pool = load_pool(fixture / "pool.json", media_root=fixture).kept.head(args.samples)
        if len(pool) < args.samples:
            raise SystemExit(f"the fixture pool has {len(pool)} samples, not {args.samples}")
        model = build_tiny_qwen_vl(Path(tmp) / "tiny-qwen", seed=0, texts=fixture_texts(0))
        spec = {"path": str(model), "device": "cpu"}
        batched = make_generator({"backend": "hf", "model": spec, "batch_size": args.batch_size}, kind="vision")
        single = make_generator({"backend": "hf", "model": spec, "batch_size": 1}, kind="vision")
        asked = ask_rows(pool, prompts, fixture)
        one_rollout = SamplingParams(**{**settings.sampling().describe(), "n": 1})
        tokenizer = batched.processor.tokenizer

        def run_batched():
            return roll_out(pool, batched, settings, prompts, fixture).kept["completions"].map(list).tolist()

        def run_per_sample():
            return [single.generate([prompt], settings.sampling())[0] for prompt in asked.prompts]

        def run_per_rollout():
            return [[single.generate([prompt], SamplingParams(**{**one_rollout.describe(), "seed": seed}))[0][0]
                     for seed in range(args.k)] for prompt in asked.prompts]

        arms = {"batched": run_batched, "per_sample": run_per_sample}
        if not args.skip_per_rollout:
            arms["per_rollout"] = run_per_rollout
        batched.generate(asked.prompts[:2], settings.sampling())  # warm-up: first-call costs belong to no arm
        times = {name: [] for name in arms}
        results = {}
        for _ in range(args.repeats):
            for name, arm in arms.items():
                start = time.perf_counter()
                results[name] = arm()
                times[name].append(time.perf_counter() - start)
    best = {name: min(values) for name, values in times.items()}
    work = {name: tokens(tokenizer, groups) for name, groups in results.items()}
    for groups in results.values():
        assert len(groups) == len(pool) and all(len(g) == args.k for g in groups)
    print(f"GWYS rollouts: {len(pool)} samples x K={args.k}, <= {args.max_new_tokens} new tokens, temperature 1.0, "
          f"top_p 0.95, top_k 50, tiny Qwen2.5-VL, torch threads {args.threads}, cpu, best of {args.repeats}")
    print(f"{'arm':<34} {'wall s':>8} {'tokens':>8} {'tokens/s':>9}")
    labels = {"per_rollout": "one rollout per call", "per_sample": "one sample (K rollouts) per call",
              "batched": f"batched ({args.batch_size} samples x K)"}
    for name in ("per_rollout", "per_sample", "batched"):
        if name in best:
            print(f"{labels[name]:<34} {best[name]:>8.2f} {work[name]:>8d} {work[name] / best[name]:>9.0f}")
    ratios = {f"batched_vs_{name}": best[name] / best["batched"] for name in best if name != "batched"}
    for name, ratio in ratios.items():
        print(f"speed-up {name}: {ratio:.1f}x")
    print("target: >= 4x over one sample at a time")
    if args.json:
        atomic_write_json(args.json, {"samples": len(pool), "k": args.k, "max_new_tokens": args.max_new_tokens,
                                      "batch_size": args.batch_size, "threads": args.threads, "repeats": args.repeats,
                                      "seconds": best, "tokens": work, "ratios": ratios})


if __name__ == "__main__":
    main()

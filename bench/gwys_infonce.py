"""GWYS's conflict term in GRPO on the tiny Qwen2.5-VL: computed once per unique prompt (ours) against
once per completion.

    python bench/gwys_infonce.py [--steps 6] [--generations 8] [--partners 7] [--max-new-tokens 32] [--json out.json]

Both arms run the same GRPO steps (`gwys.grpo.ConflictGRPOTrainer`, one prompt x G completions per
step, the pool of the GWYS demo fixture, LoRA off, β 0.04, the term on with λ 0.01, θ 0.5, τ 0.5):
- per_prompt: ours. One forward of the policy per step over the prompt's anchor and its partners
  (1 + partners rows), the term added once;
- per_completion: every completion row its own anchor, as a per-row loss computes it: G forwards
  of 1 + partners rows each, averaged. The value is the same (a prompt's G rows share their anchor
  and partners); the cost is G times the embedding work.
Reported: seconds per step (median over the steps after the first, best of --repeats, the arms
interleaved so machine load hits both alike), the conflict term's own seconds per step and its
forwards, and the ratios per_completion / per_prompt of both.

Measured (2-core CPU shared with other work, 1 thread, defaults: 24 pool rows, G=8, 7 partners, 32
new tokens, 6 steps, best of 2): per_prompt 0.254 s per step (the term 0.019 s, 1 forward of 8
rows), per_completion 0.458 s (the term 0.143 s, 8 forwards of 8 rows): 1.80x per step, 7.44x for
the term. bench/gpu_gwys_grpo.py measures the term's share of a step on the 7B-shaped policy.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from trl import GRPOTrainer  # noqa: E402

from groundflow.gwys.data import load_pool  # noqa: E402
from groundflow.gwys.fixture import fixture_texts, make_gwys_fixture  # noqa: E402
from groundflow.gwys.grpo import (ConflictGRPOTrainer, StepClock, build_rewards, build_trainer,  # noqa: E402
                                  grpo_dataset, load_policy, pin_sampling)
from groundflow.gwys.grpo_settings import GRPOSettings  # noqa: E402
from groundflow.gwys.prompts import load_question_prompts  # noqa: E402
from groundflow.io.artifacts import atomic_write_json  # noqa: E402
from groundflow.models.qwen_vl import build_tiny_qwen_vl  # noqa: E402
from groundflow.models.spec import ModelSpec, offline_hub  # noqa: E402


class PerCompletionTrainer(ConflictGRPOTrainer):
    """The conflict term once per completion row: one forward of (anchor + partners) per row."""

    def _compute_loss(self, model, inputs):
        loss = GRPOTrainer._compute_loss(self, model, inputs)
        rows = inputs["sample_index"].tolist()
        term = sum(self.conflict_loss(model, [row]).weighted for row in rows) / len(rows)
        return loss + term / self.current_gradient_accumulation_steps


def run_arm(trainer_class, model_dir: Path, pool, media_root: Path, settings: GRPOSettings, out_dir: Path) -> dict:
    policy, processor, family = load_policy(ModelSpec(str(model_dir), device="cpu"), use_bf16=False)
    pin_sampling(policy, settings)
    data = grpo_dataset(pool, media_root=media_root, prompts=load_question_prompts("four_tag"),
                        conflict=settings.conflict_settings)
    clock = StepClock()
    trainer = build_trainer(policy, processor, family, data,
                            build_rewards(["accuracy", "format"], form="four_tag", rules="fixed"),
                            settings=settings, reward_names=["accuracy", "format"], out_dir=out_dir,
                            device=torch.device("cpu"), callbacks=[clock], trainer_class=trainer_class)
    trainer.train()
    steps = trainer.state.global_step
    return {"step_seconds": statistics.median(clock.seconds[1:]), "conflict_seconds": trainer.conflict_seconds / steps,
            "forwards_per_step": trainer.conflict_forwards / steps, "rows_per_step": trainer.conflict_rows / steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--partners", type=int, default=7)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: stable timings on a shared machine)")
    parser.add_argument("--json", default=None, help="write the numbers here")
    args = parser.parse_args()
    offline_hub()
    torch.set_num_threads(args.threads)
    settings = GRPOSettings.from_dict({
        "num_generations": args.generations, "max_completion_length": args.max_new_tokens, "max_steps": args.steps,
        "learning_rate": 1e-5, "save_steps": 10_000, "gradient_checkpointing": False, "max_pixels": 12544,
        "conflict": {"enabled": True, "partners": args.partners}})
    arms = {"per_prompt": ConflictGRPOTrainer, "per_completion": PerCompletionTrainer}
    results: dict[str, list[dict]] = {name: [] for name in arms}
    with tempfile.TemporaryDirectory() as tmp:
        fixture = Path(tmp) / "fixture"
        make_gwys_fixture(fixture, seed=0, include_bad=False)
        pool = load_pool(fixture / "pool.json", media_root=fixture).kept
        model_dir = build_tiny_qwen_vl(Path(tmp) / "tiny-qwen", seed=0, texts=fixture_texts(0))
        for repeat in range(args.repeats):
            for name, trainer_class in arms.items():
                started = time.perf_counter()
                results[name].append(run_arm(trainer_class, model_dir, pool, fixture, settings,
                                             Path(tmp) / f"{name}-{repeat}"))
                print(f"{name} run {repeat}: {time.perf_counter() - started:.1f} s", flush=True)
    best = {name: min(runs, key=lambda r: r["step_seconds"]) for name, runs in results.items()}
    print(f"GWYS conflict term: {len(pool)} pool rows, 1 prompt x G={args.generations} per step, {args.partners} partners, "
          f"<= {args.max_new_tokens} new tokens, tiny Qwen2.5-VL, cpu, torch threads {args.threads}, "
          f"{args.steps} steps, best of {args.repeats}")
    print(f"{'arm':<16} {'s/step':>8} {'term s/step':>12} {'forwards/step':>14} {'rows/step':>10}")
    for name, r in best.items():
        print(f"{name:<16} {r['step_seconds']:>8.3f} {r['conflict_seconds']:>12.3f} {r['forwards_per_step']:>14.1f} "
              f"{r['rows_per_step']:>10.1f}")
    ratios = {"step": best["per_completion"]["step_seconds"] / best["per_prompt"]["step_seconds"],
              "conflict_term": best["per_completion"]["conflict_seconds"] / best["per_prompt"]["conflict_seconds"]}
    print(f"per_completion / per_prompt: step time {ratios['step']:.2f}x, conflict term {ratios['conflict_term']:.2f}x")
    if args.json:
        atomic_write_json(args.json, {"pool_rows": len(pool), "generations": args.generations, "partners": args.partners,
                                      "max_new_tokens": args.max_new_tokens, "steps": args.steps, "threads": args.threads,
                                      "repeats": args.repeats, "arms": best, "ratios": ratios})


if __name__ == "__main__":
    main()

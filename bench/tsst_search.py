"""TSST search, batched over questions, against the original's one-question loop (issue 13, target >= 3x).

    .venv/bin/python bench/tsst_search.py [--questions 8 --seed 0 --threads 1]

Models: a tiny random LLaVA as the policy, made to end sentences within a few tokens
(tests/reference/tsst_search.sentence_prone_checkpoint; a random one would never finish a chain),
and a tiny LLaVA with a fresh value head (groundflow.models.value_model) as the value model, on
CPU. Questions: half with an image (each its own colour and size), half text-only. Widths: the
ScienceQA beam config's (num_beams 5 -> G 10, branch 5, n_consistency 7, 30 rounds).

Measured (2-core CPU, 1 thread, 8 questions): batched 2.5 s, serial 21.0 s: 8.5x, same chains.
With G 4 / branch 3 / n_consistency 3: 2.9x (less per-call overhead and prefill to share).

Batched: `groundflow.tsst.search.search_questions` over all questions: per round one policy call
(every kept chain of every question in left-padded KV-cached batches, each image encoded once) and
one value call (every candidate prefix, `ValueScorer` batches), each request's prompt prefilled once
for its G rows. Serial: the reference (tests/reference/tsst_search.reference_search), the original's
loop: one question at a time, one policy call per kept chain (G rows each prefilling the prompt, the
image encoded each call), one value forward per candidate.
Both use the same seeds, so both find the same chains (checked: texts and ends equal, values to
1e-5); the time is the best of `--repeats`. One torch thread by default: on a shared CPU, many tiny
calls with several threads stall on preempted threads.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.append(str(ROOT / "tests"))  # last: tests/reference as `reference`, shadowing nothing installed

from PIL import Image  # noqa: E402

from groundflow.models.llava import build_tiny_llava, load_llava  # noqa: E402
from groundflow.models.spec import ModelSpec  # noqa: E402
from groundflow.models.value_model import ValueScorer, load_value_model  # noqa: E402
from groundflow.tsst.search import SearchConfig, SearchQuestion, search_questions  # noqa: E402
from groundflow.tsst.search_models import LlavaPolicy  # noqa: E402
from reference.tsst_search import reference_search, sentence_prone_checkpoint  # noqa: E402

TEXTS = ["Step 1: the cat is red. Step 2: the box is 3.5 cm wide. Final Answer: A. red",
         "The dog sits on a blue mat. It looks at the sky."]


def make_questions(n: int) -> list[SearchQuestion]:
    questions = []
    for i in range(n):
        image = Image.new("RGB", (64, 40 + 4 * i), ((50 * i) % 256, 30, 200)) if i % 2 == 0 else None
        questions.append(SearchQuestion(f"q{i}", f"Which colour is object number {i} in the picture?",
                                        ("red", "blue", "green", "yellow"), image))
    return questions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    # the ScienceQA beam config's widths (G = 10); steps shorter than the original's 256 tokens
    parser.add_argument("--branch", type=int, default=5)
    parser.add_argument("--n-consistency", type=int, default=7)
    parser.add_argument("--num-beams", type=int, default=5)
    parser.add_argument("--max-step-tokens", type=int, default=16)
    parser.add_argument("--max-rounds", type=int, default=30)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = SearchConfig(branch=args.branch, n_consistency=args.n_consistency, num_beams=args.num_beams,
                          max_step_tokens=args.max_step_tokens, max_rounds=args.max_rounds)
    with tempfile.TemporaryDirectory() as tmp:
        policy_dir = build_tiny_llava(Path(tmp) / "policy", seed=0, texts=TEXTS)
        sentence_prone_checkpoint(policy_dir)
        value_dir = build_tiny_llava(Path(tmp) / "value", seed=1, texts=TEXTS)
        model, processor = load_llava(ModelSpec.from_config({"path": str(policy_dir), "device": args.device}))
        value_model, value_processor = load_value_model({"path": str(value_dir), "device": args.device})
    scorer = ValueScorer(value_model, value_processor, batch_size=64)
    questions = make_questions(args.questions)
    print(f"{len(questions)} questions ({sum(q.image is not None for q in questions)} with an image), "
          f"G={config.width}, branch={config.branch}, n_consistency={config.n_consistency}, "
          f"max_step_tokens={config.max_step_tokens}, max_rounds={config.max_rounds}, threads={args.threads}")

    batched_times, serial_times = [], []
    for _ in range(args.repeats):
        policy = LlavaPolicy(model, processor, config, batch_rows=256)
        start = time.perf_counter()
        batched = search_questions(questions, policy, scorer, config, args.seed)
        batched_times.append(time.perf_counter() - start)
        batched_policy_calls = policy.calls
        serial_policy = LlavaPolicy(model, processor, config, share_prefill=False)
        start = time.perf_counter()
        serial = [reference_search(q, serial_policy, scorer, config, args.seed) for q in questions]
        serial_times.append(time.perf_counter() - start)

    same = all([(c["text"], c["end"]) for c in b["chains"]] == [(c["text"], c["end"]) for c in s["chains"]]
               and all(abs(x["score"] - y["score"]) < 1e-5 for x, y in zip(b["chains"], s["chains"]))
               for b, s in zip(batched, serial))
    chains = sum(len(r["chains"]) for r in batched)
    rounds = sum(r["rounds"] for r in batched)
    print(f"search work: {chains} finished chains, {rounds} question-rounds, "
          f"{sum(r['policy_calls'] for r in batched)} expansions, {sum(r['value_calls'] for r in batched)} prefixes scored")
    batched_best, serial_best = min(batched_times), min(serial_times)
    print(f"batched: {batched_best:.2f} s ({len(questions) / batched_best:.2f} questions/s; "
          f"{batched_policy_calls} policy calls)")
    print(f"serial (original loop): {serial_best:.2f} s ({len(questions) / serial_best:.2f} questions/s; "
          f"{serial_policy.calls // args.repeats} policy calls, one value forward per prefix)")
    print(f"speed-up: {serial_best / batched_best:.1f}x (target >= 3x); same chains: {same}")


if __name__ == "__main__":
    main()

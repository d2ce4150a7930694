"""TSST value scoring, batched, against the original's one forward per candidate (issue 13 bench).

    .venv/bin/python bench/value_scoring.py [--questions 8 --candidates 10 --batch-size 80]
    .venv/bin/python bench/value_scoring.py --model PATH --device cuda --dtype bfloat16   # a real LLaVA

Model: the tiny LLaVA of the demo (built here, random weights; a fresh seeded value head) unless
--model names a LLaVA or value checkpoint. Each question has a drawn image and `--candidates`
chain prefixes of one to six sentences, as one search round scores them. The original runs one
value forward per candidate, batch 1, the vision tower again each time (tests/reference/
value_scoring.py); `ValueScorer` encodes each question's image once and scores every candidate of
every question in padded batches. Both are checked equal (allclose) before timing. Times are the
best of `--repeats` alternating runs; on CPU with one torch thread by default, as the other
benches, so that a shared machine's load hits both paths alike. `--json` writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.append(str(ROOT / "tests"))  # last: tests/reference as `reference`, shadowing nothing installed

from groundflow.io.artifacts import atomic_write_json  # noqa: E402
from groundflow.models.llava import build_tiny_llava  # noqa: E402
from groundflow.models.value_model import ValueScorer, load_value_model  # noqa: E402
from groundflow.tsst.prompts import load_question_prompts  # noqa: E402
from groundflow.tsst.sentences import join_sentences  # noqa: E402
from reference.value_scoring import score_one_at_a_time  # noqa: E402

SENTENCES = ["Step 1: the picture shows a {c} {s}.", "Step 2: the {s} is on the {side}.",
             "Step 3: the question asks about its colour.", "Step 4: option {l} names {c}.",
             "Step 5: the other options do not match.", "Final Answer: {l}."]
COLOURS = [("red", (220, 40, 40)), ("blue", (40, 80, 220)), ("green", (40, 170, 60)), ("yellow", (230, 200, 30))]


def make_rows(questions: int, candidates: int, seed: int):
    rng = np.random.default_rng(seed)
    prompts_file = load_question_prompts()
    prompts, prefixes, images, groups, texts = [], [], [], [], []
    for q in range(questions):
        colour, rgb = COLOURS[q % len(COLOURS)]
        shape = ["circle", "square", "triangle"][q % 3]
        choices = [c for c, _ in COLOURS]
        prompt = prompts_file.render(f"What colour is the {shape} in picture {q}?", choices, has_image=True)
        image = Image.new("RGB", (96, 64), (255, 255, 255))
        image.paste(Image.new("RGB", (30, 30), rgb), (int(rng.integers(0, 60)), 20))
        texts.append(prompt)
        for c in range(candidates):
            steps = [s.format(c=colour, s=shape, side=["left", "right"][c % 2], l="ABCD"[q % 4]) for s in SENTENCES]
            prefix = join_sentences(steps[: 1 + int(rng.integers(0, len(steps)))])
            prompts.append(prompt)
            prefixes.append(prefix)
            images.append(image)
            groups.append(q)
            texts.append(prefix)
    return (prompts, prefixes, images, groups), texts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--questions", type=int, default=8)
    ap.add_argument("--candidates", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=80)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="best of this many runs of each path")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    ap.add_argument("--image-size", type=int, default=64,
                    help="the built tiny LLaVA's image side; 336 (with --patch-size 14) gives LLaVA-1.5's 576 image tokens")
    ap.add_argument("--patch-size", type=int, default=16)
    ap.add_argument("--model", default=None, help="a LLaVA or value checkpoint; default: the tiny LLaVA built here")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--json", default=None, help="write the numbers here")
    args = ap.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(args.threads)

    rows, texts = make_rows(args.questions, args.candidates, args.seed)
    with tempfile.TemporaryDirectory() as scratch:
        path = args.model or str(build_tiny_llava(Path(scratch) / "tiny-llava", seed=0, texts=texts,
                                                  image_size=args.image_size, patch_size=args.patch_size))
        model, processor = load_value_model({"path": path, "device": args.device, "dtype": args.dtype})
    scorer = ValueScorer(model, processor, batch_size=args.batch_size)
    lengths = scorer.encode_rows(rows[0], rows[1], [True] * len(rows[0]), rows[3])
    scorer.score(*(r[:2] for r in rows))  # warm up both paths
    score_one_at_a_time(model, processor, *(r[:2] for r in rows))

    def sync():
        if model.device.type == "cuda":
            torch.cuda.synchronize()

    t_batched = t_serial = float("inf")
    for _ in range(args.repeats):
        sync(); t = time.perf_counter()
        forwards_before = scorer.forwards
        batched = scorer.score(*rows)
        forwards = scorer.forwards - forwards_before
        sync(); t_batched = min(t_batched, time.perf_counter() - t)
        t = time.perf_counter()
        serial = score_one_at_a_time(model, processor, *rows)
        sync(); t_serial = min(t_serial, time.perf_counter() - t)
    tolerance = 1e-4 if model.dtype == torch.float32 else 5e-2
    max_diff = float(np.abs(np.asarray(batched) - np.asarray(serial)).max())
    n = len(rows[0])
    ratio = t_serial / t_batched
    print(f"model: {path} ({model.dtype}, {model.device}); torch threads: {torch.get_num_threads()}; "
          f"best of {args.repeats} runs of each path")
    image_tokens = getattr(model.backbone.config, "image_seq_length", None)
    print(f"{args.questions} questions x {args.candidates} candidates = {n} rows, batch size {args.batch_size}, "
          f"{image_tokens} image tokens, row lengths {min(map(len, lengths))}-{max(map(len, lengths))} tokens")
    print(f"{'original: one forward per candidate':<40} {t_serial:8.3f} s  ({n} forwards, {n} image encodings)")
    print(f"{'batched ValueScorer':<40} {t_batched:8.3f} s  ratio {ratio:6.1f}x "
          f"({forwards} forwards, {args.questions} image encodings)")
    print(f"equal: max |diff| {max_diff:.2e} (tolerance {tolerance})")
    if args.json:
        atomic_write_json(args.json, {"questions": args.questions, "candidates": args.candidates, "rows": n,
                                      "batch_size": args.batch_size, "image_tokens": image_tokens, "device": str(model.device),
                                      "dtype": str(model.dtype), "threads": torch.get_num_threads(),
                                      "serial_seconds": t_serial, "batched_seconds": t_batched, "ratio": ratio,
                                      "max_abs_diff": max_diff})
    if max_diff > tolerance:
        raise SystemExit("batched and one-at-a-time values disagree")


if __name__ == "__main__":
    main()

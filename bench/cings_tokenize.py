"""CINGS tokenisation and masking: batched and cached, against per example as the original does.

    .venv/bin/python bench/cings_tokenize.py [--records 2000 --repeats 3 --batch-size 1024]

Records: the demo's Self-RAG fixture (one, two and three passages; records with an input or text
before the first passage) repeated to `--records`, converted, in the `context` mode (the one with
passage masks). Tokenizer: the demo's tiny Llama-3-style one (Llama-3 pre-tokenizer, Llama-3.1
chat template), built locally; no hub access.

- per example (the original's `preprocess_llama3`): per record, one chat-template call for the
  system block and one per turn (tokenised, the default system block sliced off), two tokenizer
  calls per passage for the mask indices, a Python loop for the special tokens; compat mask.
- batched (`CingsLabeler.encode`): render every conversation, one tokenizer call with offsets per
  batch of `--batch-size`, masks as array operations; compat and intended masks.
- cached: reading the per-mode Parquet cache the trainer reads (what every later run, every rank
  and every epoch costs instead of tokenising again; the original tokenised on every rank, twice,
  since its "eval" set is the training file built again).

The compat outputs of the two paths are checked identical. Times are the best of `--repeats`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.append(str(ROOT / "tests"))  # last: tests/reference as `reference`, shadowing nothing installed

import pandas as pd  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from groundflow.cings.data import convert_lines, training_conversation  # noqa: E402
from groundflow.cings.fixture import fixture_texts, make_selfrag_fixture  # noqa: E402
from groundflow.cings.labels import CingsLabeler, LabelSettings  # noqa: E402
from groundflow.cings.training import tokenize_mode, write_tokenized  # noqa: E402
from groundflow.models.tokenizers import build_tokenizer  # noqa: E402
from reference.cings_labels import original_style_labels  # noqa: E402

SYSTEM = ("You are a helpful language assistant. You are able to understand the external context that the user "
          "provides, and assist the user with a variety of tasks using natural language.")


def best_of(repeats: int, fn):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1024)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="cings-bench-"))
    build_tokenizer("llama3", work / "tokenizer", fixture_texts())
    tokenizer = AutoTokenizer.from_pretrained(work / "tokenizer")
    make_selfrag_fixture(work, seed=0, n_records=60, include_bad=False)
    kept, _, _ = convert_lines((work / "selfrag.jsonl").read_text().splitlines())
    rows = [dict(kept[i % len(kept)].as_dict(), id=f"r{i}") for i in range(args.records)]
    records = pd.DataFrame(rows)
    conversations = [training_conversation(r, "context", SYSTEM) for r in rows]

    compat = LabelSettings("context", "compat")
    intended = LabelSettings("context", "intended")
    per_example_s, reference = best_of(args.repeats, lambda: [original_style_labels(c, tokenizer, compat) for c in conversations])

    def batched(settings):
        labeler = CingsLabeler(tokenizer, settings)
        out = []
        for start in range(0, len(conversations), args.batch_size):
            out += labeler.encode(conversations[start : start + args.batch_size])
        return out

    batched_compat_s, encoded = best_of(args.repeats, lambda: batched(compat))
    if [(e.input_ids, e.labels) for e in encoded] != reference:
        raise AssertionError("batched compat labels differ from the per-example construction")
    batched_intended_s, _ = best_of(args.repeats, lambda: batched(intended))

    table, _, counts = tokenize_mode(records, tokenizer, settings=intended, system_prompt=SYSTEM, max_length=100_000,
                                     batch_size=args.batch_size)
    write_tokenized(table, work / "context.parquet")
    cached_s, loaded = best_of(args.repeats, lambda: pq.read_table(work / "context.parquet").to_pylist())
    assert len(loaded) == args.records

    tokens = counts["tokens"]
    print(f"records: {args.records}  tokens: {tokens}  mean tokens/record: {tokens / args.records:.0f}  batch: {args.batch_size}")
    print(f"{'path':<34}{'seconds':>9}{'records/s':>12}{'vs per example':>16}")
    for name, seconds in [
        ("per example, as the original", per_example_s),
        ("batched, compat mask", batched_compat_s),
        ("batched, intended mask", batched_intended_s),
        ("cached (read Parquet)", cached_s),
    ]:
        print(f"{name:<34}{seconds:>9.3f}{args.records / seconds:>12.0f}{per_example_s / seconds:>15.1f}x")


if __name__ == "__main__":
    main()

"""The SFT trainer under `accelerate launch` with two CPU processes (DDP over gloo), started the way
the workflow starts it: `train.launch.run_sft` with `accelerate_config`
(configs/accelerate/cpu_2proc.yaml), which runs `python -m groundflow.train.sft` in each process."""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from groundflow.models.causal_lm import build_tiny_causal_lm
from groundflow.train.config import SFTConfig
from groundflow.train.conversations import assistant_only_labels
from groundflow.train.launch import run_sft
from groundflow.train.sft import train_sft

REPO = Path(__file__).resolve().parents[2]
CPU_2PROC = REPO / "configs" / "accelerate" / "cpu_2proc.yaml"
# Answers of different lengths: a rank that averaged its own tokens before DDP averaged the ranks
# would weigh tokens unequally, and the two-process run would no longer equal the one-process one.
QA = [
    ("What colour is the sky?", "Blue."),
    ("Name an animal that barks.", "A dog barks, and so does a fox now and then."),
    ("What is two plus two?", "Four."),
    ("Where does the Danube flow?", "The Danube flows east into the Black Sea."),
    ("What has rings?", "Saturn has rings."),
    ("Which animal purrs?", "A cat purrs when it is content and sometimes when it is not."),
    ("What colour is grass?", "Green."),
    ("What do bees make?", "Bees make honey and wax."),
]
RECORDS = [
    {"id": f"r{i}", "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}
    for i, (q, a) in enumerate(QA)
]
EPOCHS = 2
TRAIN = {
    "learning_rate": 1e-2, "num_train_epochs": EPOCHS, "per_device_batch_size": 1,
    "lr_scheduler_type": "constant", "warmup_ratio": 0.0, "save_steps": 1000, "report_to": "none", "seed": 3,
}


def test_two_cpu_processes_train_as_one_process_on_both_micro_batches(tmp_path):
    lm = build_tiny_causal_lm(tmp_path / "lm", seed=0, texts=[text for pair in QA for text in pair])
    records = tmp_path / "records.json"
    records.write_text(json.dumps(RECORDS))
    spec = {"path": str(lm), "device": "cpu"}

    ddp_model = run_sft(model=spec, records_path=str(records), image_root=None, out_dir=str(tmp_path / "ddp"),
                        train={**TRAIN, "accelerate_config": str(CPU_2PROC)})
    summary = json.loads((tmp_path / "ddp" / "train_summary.json").read_text())

    # One record per process per step: 8 records x 2 epochs over 2 processes is 8 optimizer steps
    # (one process would take 16).
    assert summary["steps"] == len(RECORDS) * EPOCHS // (TRAIN["per_device_batch_size"] * 2)
    # Tokens are gathered over both ranks: every record counted once per epoch, none twice.
    tokenizer = AutoTokenizer.from_pretrained(lm)
    lengths = [len(assistant_only_labels(r["conversations"], tokenizer, max_length=2048)[0]) for r in RECORDS]
    assert summary["tokens_seen"] == EPOCHS * sum(lengths)
    assert summary["examples"] == len(RECORDS) and summary["skipped"] == []

    initial = load_file(lm / "model.safetensors")
    trained = load_file(ddp_model / "model.safetensors")
    assert trained.keys() == initial.keys()
    assert any(not torch.equal(initial[k], trained[k]) for k in initial)

    # One process whose batch is the two ranks' micro-batches together (the same sampler order,
    # the same seed) takes the same optimizer steps: DDP's gradients are the whole batch's.
    single_model = train_sft(model_spec=spec, records=RECORDS, image_root=None, out_dir=tmp_path / "single",
                             config=SFTConfig.from_dict({**TRAIN, "per_device_batch_size": 2}))
    single = load_file(single_model / "model.safetensors")
    moved = max((trained[k] - initial[k]).abs().max().item() for k in initial)
    apart = max((trained[k] - single[k]).abs().max().item() for k in initial)
    # Measured: 1e-5 apart for a 0.08 move (float sums in another order); ranks that each average
    # their own tokens end 0.12 apart.
    assert apart < 0.01 * moved, (apart, moved)

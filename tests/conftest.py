import os

import torch

# Tiny models on a shared 2-core machine: one intra-op thread avoids OpenMP spinning, which made
# model tests up to 30x slower under load. Subprocesses (snakemake runs) keep their own settings.
torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

"""Model specs from config and the device / dtype policy.

A model is named in config by `{path, dtype, device}`. `path` is a hub id (paper presets) or a
local folder (the embedded default's tiny models, or a downloaded checkpoint); the same loaders
take either, so the demo exercises the real loading code.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

# torch is imported inside the functions that need it: pipeline.py and rules/common.smk import
# this module, and a top-level torch import cost every Snakefile parse and every light CPU job
# (ingest, plots, counts) 2-4 s. tests/unit/test_lazy_imports.py keeps it that way.
if TYPE_CHECKING:
    import torch

# Names of torch dtypes, resolved with getattr(torch, ...) so the table needs no torch import.
_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}


@dataclass(frozen=True)
class ModelSpec:
    path: str
    dtype: str = "auto"
    device: str = "auto"
    # Which loader family reads `path` where several could (embedders: FlagEmbedding or
    # sentence-transformers); "auto" lets the loader decide from the path.
    backend: str = "auto"

    @classmethod
    def from_config(cls, value: "ModelSpec | dict | str") -> "ModelSpec":
        if isinstance(value, ModelSpec):
            return value
        if isinstance(value, str):
            return cls(path=value)
        unknown = set(value) - {"path", "dtype", "device", "backend"}
        if unknown:
            raise ValueError(f"model spec has unknown keys {sorted(unknown)}: {value}")
        return cls(**value)

    @property
    def is_local(self) -> bool:
        return Path(self.path).exists()

    def torch_device(self) -> torch.device:
        return resolve_device(self.device)

    def torch_dtype(self) -> torch.dtype:
        return resolve_dtype(self.dtype, self.torch_device())

    def describe(self) -> dict:
        """What produced an output, stored beside model outputs."""
        return {
            "path": self.path,
            "dtype": str(self.torch_dtype()),
            "device": str(self.torch_device()),
            "backend": self.backend,
        }


def resolve_device(device: str = "auto") -> torch.device:
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """bf16 on GPU, fp32 on CPU unless the spec says otherwise."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return getattr(torch, _DTYPES[dtype])
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; one of {sorted(_DTYPES)} or 'auto'") from None


@contextlib.contextmanager
def seeded(seed: int):
    """Seed torch for a random initialisation without moving the caller's global RNG state."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def offline_hub() -> None:
    """Never reach a model hub from pipeline code unless the user explicitly allows it."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

"""The embedded default's tiny models, fitted where needed to the bundled fixtures.

The one place that ties a model builder to a method's fixture, so that `groundflow.models` never
imports a method.
"""

from __future__ import annotations

import os
from pathlib import Path

from groundflow.models.tiny import FITTED_KINDS, build_tiny_model


def demo_vocabulary(kind: str) -> list[str] | None:
    """The texts the demo fits a tiny tokenizer to: CINGS' fixture for its Llama-3 base model,
    TSST's questions and chains for its LLaVA, GWYS' prompts and answers for its Qwen2.5-VL."""
    if kind not in FITTED_KINDS:
        return None
    if kind == "tsst-llava":
        from groundflow.tsst.fixture import fixture_texts as tsst_texts

        return tsst_texts(0)
    if kind == "gwys-qwen-vl":
        from groundflow.gwys.fixture import fixture_texts as gwys_texts

        return gwys_texts(0)
    from groundflow.cings.fixture import fixture_texts

    return fixture_texts()


def build_demo_model(kind: str, out_dir: str | os.PathLike, seed: int = 0) -> Path:
    return build_tiny_model(kind, out_dir, seed=seed, vocabulary=demo_vocabulary(kind))

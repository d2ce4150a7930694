"""The embedded default composes CVC's training base through the real path: rule compose_llava_base
joins the tiny LM, the tiny CLIP and a projector file written in the original release's format,
and cvc_train starts from it. Read from the session's demo run (tests/workflow/conftest.py)."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from groundflow.models.llava import load_llava
from groundflow.models.spec import ModelSpec
from groundflow.train.chat_formats import VICUNA_V1_CHAT_TEMPLATE

pytestmark = pytest.mark.workflow


def test_demo_composes_the_base_from_its_three_parts_and_trains_from_it(demo):
    base = demo / "resources/models/llava-base"
    model, processor = load_llava(ModelSpec(str(base), device="cpu"))
    assert processor.chat_template == VICUNA_V1_CHAT_TEMPLATE
    projector = torch.load(demo / "resources/models/tiny-projector/mm_projector.bin", weights_only=True)
    for ours, theirs in (("linear_1", "model.mm_projector.0"), ("linear_2", "model.mm_projector.2")):
        layer = getattr(model.model.multi_modal_projector, ours)
        assert torch.equal(layer.weight, projector[f"{theirs}.weight"].to(layer.weight.dtype))
        assert torch.equal(layer.bias, projector[f"{theirs}.bias"].to(layer.bias.dtype))
    # the language model is the tiny LM's, not a fresh one
    lm = AutoModelForCausalLM.from_pretrained(demo / "resources/models/tiny-llama")
    ours = model.model.language_model.layers[0].self_attn.q_proj.weight
    assert torch.equal(ours, lm.model.layers[0].self_attn.q_proj.weight.to(ours.dtype))

    summary = json.loads((demo / "results/cvc/train/train_summary.json").read_text())
    assert summary["model"]["path"] == "resources/models/llava-base"
    assert summary["steps"] >= 1

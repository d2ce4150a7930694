"""The embedded default composes CVC's training base through the real path: rule compose_llava_base
joins the tiny LM, the tiny CLIP and a projector file written in the original release's format,
and cvc_train starts from it."""

import pytest
import torch

from groundflow.models.llava import load_llava
from groundflow.models.spec import ModelSpec
from groundflow.train.chat_formats import VICUNA_V1_CHAT_TEMPLATE
from snakemake_runner import make_run_dir, snakemake

pytestmark = pytest.mark.workflow


def test_demo_composes_the_base_from_its_three_parts_and_trains_from_it(tmp_path):
    run = make_run_dir(tmp_path / "run")
    plan = snakemake(run, "-n", "--quiet", "rules", "--cores", "1")
    planned = plan.stdout + plan.stderr
    assert "compose_llava_base" in planned and "build_tiny_projector" in planned

    snakemake(run, "--cores", "2", "resources/models/llava-base")
    base = run / "resources/models/llava-base"
    model, processor = load_llava(ModelSpec(str(base), device="cpu"))
    assert processor.chat_template == VICUNA_V1_CHAT_TEMPLATE
    projector = torch.load(run / "resources/models/tiny-projector/mm_projector.bin", weights_only=True)
    weight = model.model.multi_modal_projector.linear_1.weight
    assert torch.equal(weight, projector["model.mm_projector.0.weight"].to(weight.dtype))

    # cvc_train's model input is the composed folder: it is upstream of training
    dag = snakemake(run, "-n", "--quiet", "rules", "--cores", "1", "results/cvc/train/model", "--forcerun", "compose_llava_base")
    assert "cvc_train" in dag.stdout + dag.stderr and "compose_llava_base" in dag.stdout + dag.stderr

"""Parsing the Snakefile and running a light (non-model) job must not import torch.

Importing torch/transformers costs 2-4 s; Snakemake parses the Snakefile once per run and once
more inside every job, and every stage script imports groundflow.pipeline. Each check runs in a
fresh interpreter because this test session has already imported torch (tests/conftest.py).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers")

# Scripts of jobs that load no model: their top-level imports must stay torch-free. Model
# stages (entities, trials, segmentation, occlusion's torch painter, training...) are not listed.
LIGHT_SCRIPTS = [
    "cvc_ingest", "cvc_images", "cvc_gather", "cvc_hybrid", "cvc_fixture", "cvc_probe_split", "cvc_eval_fixture",
    "cings_fixture", "cings_convert", "cings_counts", "cings_eval_records", "cings_eval_table",
    "plot_box_scores", "plot_causality", "plot_entities", "plot_occluded", "plot_stage_counts",
    "plot_train_loss", "plot_trials", "cings_retrieval_fixture", "cings_eval_fixture", "pope_questions", "pope_score",
    "plot_cings_eval", "plot_cings_pope",
    "tsst_fixture", "tsst_questions", "tsst_split_questions", "tsst_warmup_data", "tsst_round_data",
    "tsst_eval_table", "plot_tsst_eval",
    "gwys_fixture", "gwys_sft_data", "gwys_pool", "gwys_select", "gwys_eval_table", "plot_gwys_selection",
    "gwys_split_pool", "gwys_counts", "plot_gwys_training", "plot_gwys_eval", "cvc_eval_table", "plot_cvc_eval",
]


def top_level_imports(path: Path, *, only_groundflow: bool = False) -> list[str]:
    """The module-level import statements of a Python file or a Snakemake rule file."""
    text = path.read_text()
    if path.suffix != ".py":
        # Rule files are not Python; their import lines are, and sit at column 0.
        text = "\n".join(line for line in text.splitlines()
                         if line.startswith(("import ", "from ")))
    statements = []
    for node in ast.parse(text).body:
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            module = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
            if only_groundflow and not (module or "").startswith("groundflow"):
                continue
            statements.append(ast.unparse(node))
    return statements


def heavy_modules_after(groups: dict[str, list[str]]) -> dict[str, list[str]]:
    """Run each group's imports in turn in one fresh interpreter; name the heavy modules loaded
    after each group (cumulative, so the first group that lists one is the culprit)."""
    code = ["import sys"]
    for name, statements in groups.items():
        assert statements, f"{name}: nothing to import, the check would pass vacuously"
        code += [*statements,
                 f"print({name!r}, ','.join(m for m in {HEAVY!r} if m in sys.modules), sep='|')"]
    proc = subprocess.run([sys.executable, "-c", "\n".join(code)], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split("|") for line in proc.stdout.strip().splitlines()]
    return {name: [m for m in heavy.split(",") if m] for name, heavy in rows}


def test_pipeline_import_is_torch_free():
    assert heavy_modules_after({"pipeline": ["import groundflow.pipeline"]}) == {"pipeline": []}


def test_snakefile_imports_are_torch_free():
    # Whatever groundflow modules the Snakefile and rule files import at parse time
    # (rules/common.smk: groundflow.config and groundflow.models.spec).
    files = [ROOT / "Snakefile", *sorted((ROOT / "rules").glob("*.smk"))]
    statements = [s for f in files for s in top_level_imports(f, only_groundflow=True)]
    assert any("groundflow.models.spec" in s for s in statements), statements
    assert heavy_modules_after({"snakefile": statements}) == {"snakefile": []}


def test_light_script_imports_are_torch_free():
    # One interpreter for all scripts keeps this cheap; the per-script report names the culprit.
    groups = {s: top_level_imports(ROOT / "workflow" / "scripts" / f"{s}.py") for s in LIGHT_SCRIPTS}
    assert heavy_modules_after(groups) == {s: [] for s in LIGHT_SCRIPTS}


def test_detects_a_torch_import():
    # The check itself must be able to fail (a plain torch import is its cheapest trigger).
    found = heavy_modules_after({"pipeline": ["import groundflow.pipeline"],
                                 "torch": ["import torch"]})
    assert found == {"pipeline": [], "torch": ["torch"]}


def test_model_spec_still_resolves_torch_types():
    from groundflow.models.spec import ModelSpec, resolve_dtype
    import torch

    spec = ModelSpec(path="x", dtype="bf16", device="cpu")
    assert spec.torch_dtype() is torch.bfloat16
    assert spec.torch_device() == torch.device("cpu")
    assert ModelSpec(path="x", device="cpu").torch_dtype() is torch.float32
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("int3", torch.device("cpu"))

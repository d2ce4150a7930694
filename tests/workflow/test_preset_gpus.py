"""Every rule of the paper presets that runs a model asks for a GPU, and `groundflow preflight`
sizes exactly those rules.

The rules and their resources come from Snakemake itself (its API loads the workflow with the
preset as the run folder's config). A rule is handed a model when it has a model input or a
model/generation parameter; such a rule is either one that preflight plans (a model job: it must
request a GPU, as many as preflight assumes) or one of preflight.CPU_MODEL_RULES. So a new model
rule cannot escape: it fails here until it is in one list or the other.
"""

import json
import os
import subprocess
import sys

import pytest

from groundflow import preflight
from snakemake_runner import ROOT, make_run_dir

pytestmark = pytest.mark.workflow

MODEL_INPUTS = {"model", "lm", "vision"}
MODEL_PARAMS = {"model", "models", "generation", "lm", "vision", "retriever", "judge"}

LIST_RULES = """
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings, StorageSettings

with SnakemakeApi(OutputSettings()) as api:
    workflow = api.workflow(
        resource_settings=ResourceSettings(), storage_settings=StorageSettings(),
        config_settings=ConfigSettings(configfiles=[Path("config.yaml").resolve()]),
        snakefile=Path(sys.argv[1]), workdir=Path(".").resolve())
    rules = {}
    for rule in workflow._workflow.rules:
        gpu = rule.resources.get("gpu") if rule.resources else None
        rules[rule.name] = {"gpu": getattr(gpu, "value", gpu), "input": sorted(rule.input.keys()),
                            "params": sorted(rule.params.keys())}
    print("RULES " + json.dumps(rules))
"""


def workflow_rules(run) -> dict:
    out = subprocess.run([sys.executable, "-c", LIST_RULES, str(ROOT / "Snakefile")], cwd=run,
                         capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-4000:]
    line = next(line for line in out.stdout.splitlines() if line.startswith("RULES "))
    return json.loads(line.removeprefix("RULES "))


def handed_a_model(rule: dict) -> bool:
    return bool(MODEL_INPUTS & set(rule["input"]) or MODEL_PARAMS & set(rule["params"]))


@pytest.mark.parametrize("preset", ["cvc-paper", "cings-paper", "tsst-paper", "gwys-paper"])
def test_every_model_rule_of_a_paper_preset_requests_a_gpu(tmp_path, preset):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text((ROOT / "configs" / f"{preset}.yaml").read_text())
    rules = workflow_rules(run)
    config = preflight.load_config(run / "config.yaml")
    planned = {check.job: check for check in preflight.plan(config, run_dir=run)}

    model_rules = {name for name, rule in rules.items() if handed_a_model(rule)}
    assert model_rules - set(preflight.CPU_MODEL_RULES) == set(planned), (
        "a rule handed a model is neither sized by preflight.plan nor listed in preflight.CPU_MODEL_RULES")
    # a job whose model is served over HTTP (TSST's judge) needs no GPU of its own
    no_gpu = {name: rules[name]["gpu"] for name, check in planned.items()
              if not rules[name]["gpu"] and not check.note.startswith(preflight.SERVED)}
    assert not no_gpu, f"{preset}: model rules without a GPU: {no_gpu}"
    for name, check in planned.items():
        assert check.gpus == rules[name]["gpu"], name


def test_the_check_sees_a_model_rule_without_a_gpu(tmp_path):
    """The embedded demo runs its model jobs on the CPU: the same derivation finds them."""
    run = make_run_dir(tmp_path / "run")
    rules = workflow_rules(run)
    assert rules["cvc_trials"]["gpu"] == 0 and handed_a_model(rules["cvc_trials"])
    assert rules["cings_infer"]["gpu"] == 0 and handed_a_model(rules["cings_infer"])
    assert not handed_a_model(rules["cvc_occlusion"]) and not handed_a_model(rules["cvc_hybrid"])

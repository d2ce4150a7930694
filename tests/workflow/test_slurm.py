"""The demo's data preparation submitted through profiles/slurm to a one-node SLURM cluster on this
machine (tests/workflow/slurm_cluster.py) gives the same files as the local run of the embedded
default (the session's `demo` fixture, tests/workflow/conftest.py: `snakemake --cores 2`, as
profiles/local runs it), which builds everything cvc_prep does from the same config.

Needs Debian's slurm-wlm and munge and root (`make system-deps`; CI runs as root). It fails,
never skips, without them.
"""
import hashlib
import json
import re
import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from slurm_cluster import SlurmCluster, SlurmUnavailable, require_slurm
from snakemake_runner import ROOT, make_run_dir, say, snakemake

pytestmark = pytest.mark.workflow

# The demo's config, so that the files can be compared with the demo's, changed only in what jobs
# ask SLURM for (rules/common.smk: job_resources; no rule reads these values otherwise). Model
# stages ask for a GPU so that the SLURM run places them in the gpu partition with --gres (the
# test node's GPU is a stand-in; torch runs on the CPU); less memory lets all jobs of a wave share
# a small CI node.
OVERRIDES = {
    "resources": {
        "cpu_job": {"mem_mb": 1000, "runtime": 15},
        "model_job": {"mem_mb": 1000, "runtime": 15, "gpu": 1},
    },
    "slurm": {"partition": "cpu", "gpu_partition": "gpu", "gpu_model": ""},
}
# rules with resources: job_resources("model_job"); every other job is a cpu_job
MODEL_RULES = {"cvc_entities", "cvc_causality", "cvc_grounding", "cvc_segmentation", "cvc_instructions"}
TARGET_RULES = {"cvc_prep"}  # input-only rules: snakemake finishes them itself, no job to submit


def _say(config: pytest.Config, line: str) -> None:
    """So that `make test` (CI) shows what ran where."""
    say(config, f"slurm test: {line}")


@pytest.fixture(scope="module")
def cluster(pytestconfig):
    try:
        require_slurm()
    except SlurmUnavailable as error:
        pytest.fail(str(error))
    # squeue is the status command and the test's job list: finished jobs must stay listed for
    # the whole run, which outlasts the default ten minutes on a loaded two-core machine.
    cluster = SlurmCluster(min_job_age=3600)
    try:
        start = time.monotonic()
        cluster.start()
        version = cluster.run("sinfo", "--version").stdout.strip()
        partitions = cluster.run("sinfo", "--noheader", "--format=%P:%t:%G").stdout.split()
        _say(pytestconfig, f"{version} up in {time.monotonic() - start:.1f} s at {cluster.root}: "
                           f"partition:state:gres {' '.join(partitions)}")
        with pytest.MonkeyPatch.context() as env:
            for name, value in cluster.client_env().items():  # for snakemake and its jobs
                env.setenv(name, value)
            yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)
        _say(pytestconfig, "slurmd, slurmctld and munged stopped")


@pytest.fixture(scope="module")
def runs(demo, cluster, tmp_path_factory, pytestconfig):
    on_slurm = make_run_dir(tmp_path_factory.mktemp("slurm"), OVERRIDES)
    start = time.monotonic()
    out = snakemake(
        on_slurm, "cvc_prep", "--profile", str(ROOT / "profiles/slurm"),
        # no accounting database here: squeue answers, MinJobAge keeps finished jobs
        "--slurm-status-command", "squeue",
        # the plugin polls 5 s after a job ends, then 15 s, 25 s, ... later (default 40 s,
        # 50 s, ...): on two free cores most jobs here take 7-20 s, so most are seen done at
        # the first or second poll (1 s polls first would see a 15 s job only at 33 s)
        "--slurm-init-seconds-before-status-checks", "5",
        "--slurm-keep-successful-logs",
    )
    _say(pytestconfig, f"cvc_prep: SLURM run {time.monotonic() - start:.0f} s")
    # what cvc_prep makes, as the DAG declares it (files and directory outputs)
    summary = snakemake(on_slurm, "cvc_prep", "--summary").stdout.splitlines()
    assert summary[0].startswith("output_file\t"), summary[:3]
    outputs = [line.split("\t")[0] for line in summary[1:] if line.strip()]
    return {"slurm": on_slurm, "demo": demo, "outputs": outputs, "jobs": _job_stats(out.stderr)}


def _job_stats(log: str) -> dict[str, int]:
    """Jobs per rule from snakemake's "Job stats" table."""
    table = log.split("Job stats:", 1)[1].split("total", 1)[0]
    return {rule: int(count) for rule, count in re.findall(r"^(\w+)\s+(\d+)$", table, re.M)}


def _files(run: Path) -> dict[str, Path]:
    """Every file the data preparation made: results and what it built under resources/
    (fixture, tiny models). Logs and benchmarks (timings) are not compared."""
    return {
        str(path.relative_to(run)): path
        for top in ("results", "resources")
        for path in sorted((run / top).rglob("*"))
        if path.is_file()
    }


def _output_files(run: Path, outputs: list[str]) -> dict[str, Path]:
    """The files of the given outputs in `run`; a directory output stands for every file in it."""
    files = {}
    for name in outputs:
        path = run / name
        inside = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        files.update({str(p.relative_to(run)): p for p in inside if p.is_file()})
    return files


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _counts_without_timing(path: Path) -> dict:
    counts = json.loads(path.read_text())
    counts.pop("seconds", None)  # wall time of the job (model stages)
    return counts


def test_slurm_run_gives_the_same_files_as_a_local_run(runs, pytestconfig):
    # The demo made more than cvc_prep. Every file the SLURM run made is one of the demo's, and
    # it made every file of cvc_prep's declared outputs (directory outputs expanded as the demo
    # has them); a job's undeclared side files (the fixture's outside.png) are compared too.
    on_slurm, demo = _files(runs["slurm"]), _files(runs["demo"])
    declared = _output_files(runs["demo"], runs["outputs"])
    assert not set(on_slurm) - set(demo), "files the demo lacks"
    assert not set(declared) - set(on_slurm), "cvc_prep outputs the SLURM run lacks"
    local = {name: demo[name] for name in on_slurm}
    assert "results/cvc/instances.parquet" in local
    assert any(name.startswith("results/cvc/occluded/") for name in local)
    differing = []
    for name, path in local.items():
        other = on_slurm[name]
        if name.endswith(".parquet"):
            same = pq.read_table(path).equals(pq.read_table(other), check_metadata=True)
        elif name.endswith("counts.json"):
            same = _counts_without_timing(path) == _counts_without_timing(other)
        else:  # images, masks, stage_counts.tsv, fixture, model weights and configs
            same = _sha256(path) == _sha256(other)
        if not same:
            differing.append(name)
    assert not differing, f"files differ between the local (demo) and the SLURM run: {differing}"
    _say(pytestconfig, f"{len(local)} files of cvc_prep under results/ and resources/ equal in both runs")


def test_every_job_ran_as_a_slurm_job_in_its_partition(runs, cluster, pytestconfig):
    jobs = [job for job in cluster.jobs() if job["comment"].startswith("rule_")]
    per_rule: dict[str, int] = {}
    for job in jobs:
        rule = job["comment"].removeprefix("rule_").split("_wildcards_")[0]
        per_rule[rule] = per_rule.get(rule, 0) + 1
        assert job["state"] == "COMPLETED", job
        if rule in MODEL_RULES:
            assert (job["partition"], job["gres"]) == ("gpu", "gres:gpu:1"), job
        else:
            assert (job["partition"], job["gres"]) == ("cpu", "N/A"), job
    # every job the run planned, each one a SLURM job
    assert per_rule == {rule: n for rule, n in runs["jobs"].items() if rule not in TARGET_RULES}
    assert per_rule["build_tiny_model"] == 4  # llama, roberta, grounding-dino, sam
    assert len({job["name"] for job in jobs}) == 1  # one snakemake run (its run id)
    # SLURM's output of every job, kept by --slurm-keep-successful-logs, named by its job id
    logs = sorted((runs["slurm"] / ".snakemake/slurm_logs").rglob("*.log"))
    assert len(logs) == len(jobs)
    assert {log.stem for log in logs} == {job["id"] for job in jobs}
    for job in sorted(jobs, key=lambda job: int(job["id"])):
        _say(pytestconfig, f"job {job['id']:>2} {job['state']} {job['start'][11:]}-{job['end'][11:]} "
                           f"partition={job['partition']} gres={job['gres']} {job['comment']}")

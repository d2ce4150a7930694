"""The demo's data preparation submitted through profiles/slurm to a one-node SLURM cluster on this
machine (tests/workflow/slurm_cluster.py) gives the same files as a run through profiles/local.

Needs Debian's slurm-wlm and munge and root (`make system-deps`; CI runs as root). It fails,
never skips, without them.
"""
import hashlib
import json
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from slurm_cluster import SlurmCluster, SlurmUnavailable, require_slurm
from snakemake_runner import ROOT, make_run_dir, snakemake

pytestmark = pytest.mark.workflow

# Fewer fixture images and one shard keep the job count and the time low; every data-preparation
# stage still runs. Model stages ask for a GPU so that the SLURM run places them
# in the gpu partition with --gres (the test node's GPU is a stand-in; torch runs on the CPU).
OVERRIDES = {
    "shards": 1,
    "cvc": {"fixture": {"n_images": 8}},
    "resources": {
        "cpu_job": {"threads": 1, "mem_mb": 1000, "runtime": 15},
        "model_job": {"threads": 1, "mem_mb": 1000, "runtime": 15, "gpu": 1},
    },
    "slurm": {"partition": "cpu", "gpu_partition": "gpu", "gpu_model": ""},
}
# rules with resources: job_resources("model_job"); every other job is a cpu_job
MODEL_RULES = {"cvc_entities", "cvc_causality", "cvc_grounding", "cvc_segmentation", "cvc_instructions"}
TARGET_RULES = {"cvc_prep"}  # input-only rules: snakemake finishes them itself, no job to submit


def _say(config: pytest.Config, line: str) -> None:
    """Print past pytest's output capture, so that `make test` (CI) shows what ran where."""
    with config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
        print(f"\nslurm test: {line}", end="", flush=True)


@pytest.fixture(scope="module")
def cluster(pytestconfig):
    try:
        require_slurm()
    except SlurmUnavailable as error:
        pytest.fail(str(error))
    cluster = SlurmCluster()
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
def runs(cluster, tmp_path_factory, pytestconfig):
    base = tmp_path_factory.mktemp("slurm")
    local = make_run_dir(base / "local", OVERRIDES)
    on_slurm = make_run_dir(base / "slurm", OVERRIDES)

    def timed(run, *args):
        start = time.monotonic()
        out = snakemake(run, "cvc_prep", *args)
        return out, time.monotonic() - start

    # the local run fills the SLURM run's waits between status checks
    with ThreadPoolExecutor(max_workers=2) as pool:
        local_job = pool.submit(timed, local, "--profile", str(ROOT / "profiles/local"))
        slurm_job = pool.submit(
            timed, on_slurm, "--profile", str(ROOT / "profiles/slurm"),
            # no accounting database here: squeue answers, MinJobAge=600 keeps finished jobs
            "--slurm-status-command", "squeue",
            # the plugin polls 5 s after a job ends, then 15 s, 25 s, ... later (default 40 s,
            # 50 s, ...): on two free cores most jobs here take 10-20 s
            "--slurm-init-seconds-before-status-checks", "5",
            "--slurm-keep-successful-logs",
        )
        (local_out, local_s), (_, slurm_s) = local_job.result(), slurm_job.result()
    _say(pytestconfig, f"cvc_prep: local run {local_s:.0f} s, SLURM run {slurm_s:.0f} s (side by side)")
    return {"local": local, "slurm": on_slurm, "local_jobs": _job_stats(local_out.stderr)}


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


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _counts_without_timing(path: Path) -> dict:
    counts = json.loads(path.read_text())
    counts.pop("seconds", None)  # wall time of the job (model stages)
    return counts


def test_slurm_run_gives_the_same_files_as_a_local_run(runs, pytestconfig):
    local, on_slurm = _files(runs["local"]), _files(runs["slurm"])
    assert set(local) == set(on_slurm)
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
    assert not differing, f"files differ between the local and the SLURM run: {differing}"
    _say(pytestconfig, f"{len(local)} files under results/ and resources/ equal in both runs")


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
    # the same jobs as the local run, each one a SLURM job
    assert per_rule == {rule: n for rule, n in runs["local_jobs"].items() if rule not in TARGET_RULES}
    assert per_rule["build_tiny_model"] == 4  # llama, roberta, grounding-dino, sam
    assert len({job["name"] for job in jobs}) == 1  # one snakemake run (its run id)
    # SLURM's output of every job, kept by --slurm-keep-successful-logs, named by its job id
    logs = sorted((runs["slurm"] / ".snakemake/slurm_logs").rglob("*.log"))
    assert len(logs) == len(jobs)
    assert {log.stem for log in logs} == {job["id"] for job in jobs}
    for job in sorted(jobs, key=lambda job: int(job["id"])):
        _say(pytestconfig, f"job {job['id']:>2} {job['state']} {job['start'][11:]}-{job['end'][11:]} "
                           f"partition={job['partition']} gres={job['gres']} {job['comment']}")

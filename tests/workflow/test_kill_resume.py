"""Resume after a kill (docs/operations.md, "Resume after a kill"): SIGKILL the whole workflow
(snakemake and its jobs) (a) inside a model stage's shard between chunk checkpoints, (b) inside
the atomic write of a checkpoint, (c) inside the atomic write of the shard's output; resume each
time with `--rerun-incomplete`, and get the uninterrupted run's outputs, the killed shard
restarting from its last finished chunk.

The run is a copy of the finished reference (cvc_reference.py) from which the outputs of
grounding's shard 0 and of every job after it are removed, the state of a run that has not got
there yet: grounding is the last chunked stage (4 records a chunk here, about a dozen chunks a
shard), so what is left to run is short and still every later stage of the shard.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from cvc_reference import copy_run, file_states, reference_run
from groundflow.io.artifacts import FAULT_RENAME_DELAY_ENV
from groundflow.io.stage import chunk_bounds
from snakemake_runner import ROOT, say, snakemake

pytestmark = pytest.mark.workflow

STAGE, SHARD = "grounding", "0"
PROGRESS = f"results/cvc/.progress/{STAGE}/{SHARD}"
OUTPUT = f"results/cvc/{STAGE}/{SHARD}.parquet"
LOG = f"logs/cvc/{STAGE}/{SHARD}.log"
RESUME_LINE = re.compile(
    r"resumed (\d+) finished chunks \((\d+) items\), computing (\d+) chunks \((\d+) items\)")
# counts files record how long a job took and how much of it was reused: the only bytes in the
# results that may differ between an interrupted and an uninterrupted run
RUN_STATS = ("seconds", "chunks_reused", "items_recomputed")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return reference_run(tmp_path_factory)


def start(run: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """snakemake in a session of its own, so that one killpg takes it and every job it started."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), *args]
    log = run / f"snakemake-{time.monotonic_ns()}.out"  # a file: a full pipe would stall it
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=run, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
    proc.log = log
    return proc


def kill_when(proc: subprocess.Popen, ready, what: str, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"snakemake exited ({proc.returncode}) before {what}:\n"
                                 + proc.log.read_text()[-4000:])
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # SIGKILL is delivered asynchronously: the folder is looked at only once the whole group is gone
    for _ in range(100):
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError("processes of the killed snakemake group are still alive")


def finished_chunks(progress: Path) -> list[int]:
    """Chunks whose checkpoint is complete (kept is written last, so it marks the chunk done)."""
    return sorted(int(p.name[6:11]) for p in progress.glob("chunk-*.kept.parquet")
                  if (progress / p.name.replace(".kept.", ".rejects.")).exists())


def resume_line(run: Path) -> tuple[int, int, int, int]:
    found = RESUME_LINE.findall((run / LOG).read_text())
    assert len(found) == 1, (run / LOG).read_text()
    return tuple(int(x) for x in found[0])


def results_digest(run: Path) -> dict[str, str]:
    digest = {path: sha for path, (_, sha) in file_states(run, "results").items()}
    for path in digest:
        if path.endswith(".counts.json"):
            counts = json.loads((run / path).read_text())
            digest[path] = json.dumps({k: v for k, v in counts.items() if k not in RUN_STATS}, sort_keys=True)
    return digest


def remove_outputs_from(run: Path, output: str) -> set[str]:
    """Remove what the job making `output` and every job after it write (as Snakemake plans them
    for a forced re-run of that file), so that the run folder is one where they have not run."""
    plan = snakemake(run, "cvc_prep", "-n", "--forcerun", output)
    removed = set()
    for line in re.findall(r"^\s+output: (.*)$", plan.stdout + plan.stderr, re.M):
        for path in line.split(", "):
            target = run / path
            assert target.exists(), path
            shutil.rmtree(target) if target.is_dir() else target.unlink()
            removed.add(path)
    return removed


def test_killed_runs_resume_to_the_uninterrupted_outputs(reference, tmp_path, pytestconfig):
    run = copy_run(reference, tmp_path / "run")
    removed = remove_outputs_from(run, OUTPUT)
    assert {OUTPUT, "results/cvc/instructions/0.parquet", "results/cvc/instances.parquet"} <= removed
    assert not [p for p in removed if "/1." in p or p.endswith("/1")]  # shard 1 is finished
    progress, output = run / PROGRESS, run / OUTPUT
    records = pd.read_parquet(reference / f"results/cvc/causality/{SHARD}.parquet")
    bounds = chunk_bounds(len(records), 4)
    items = len(records)
    assert len(bounds) >= 8, "too few chunks for kills between them"

    # (a) mid-shard, between checkpoints: chunks 0 and 1 checkpointed, chunk 2 computed but none of
    # its files in place. The test-only delay holds chunk 2's first write (its rejects table) until
    # the kill, so the kill lands there however busy the machine is.
    proc = start(run, "cvc_prep", "--cores", "2",
                 env={FAULT_RENAME_DELAY_ENV: f"600:*{PROGRESS}/chunk-00002.rejects.parquet"})
    kill_when(proc, lambda: any(progress.glob(".chunk-00002.rejects.parquet.*.tmp.parquet")),
              "chunk 2's first write")
    done_a = finished_chunks(progress)
    assert done_a == [0, 1]
    assert not (progress / "chunk-00002.rejects.parquet").exists() and not output.exists()
    assert any((run / ".snakemake/locks").iterdir())  # hence `snakemake --unlock` before each resume

    # (b) resumed, then killed inside the atomic write of the next-but-one chunk's checkpoint: the
    # test-only delay holds the written temp file before its rename until the kill
    k = len(done_a) + 1
    snakemake(run, "--unlock")
    tmp_name = f".chunk-{k:05d}.kept.parquet.*.tmp.parquet"
    proc = start(run, "cvc_prep", "--cores", "2", "--rerun-incomplete",
                 env={FAULT_RENAME_DELAY_ENV: f"600:*{PROGRESS}/chunk-{k:05d}.kept.parquet"})
    kill_when(proc, lambda: any(progress.glob(tmp_name)), f"the temp file of chunk {k}")
    # the restarted job took the finished chunks of (a) and computed from the first missing one
    resumed_b, resumed_items_b, _, computed_items_b = resume_line(run)
    assert (resumed_b, resumed_items_b) == (len(done_a), sum(b - a for a, b in bounds[:len(done_a)]))
    # the half-written chunk is not taken for finished: its rejects (written first) and the temp
    # file are there, its kept file is not
    assert finished_chunks(progress) == list(range(k))
    assert (progress / f"chunk-{k:05d}.rejects.parquet").exists()
    assert not (progress / f"chunk-{k:05d}.kept.parquet").exists()
    assert not output.exists()

    # (c) resumed, then killed inside the atomic write of the shard's output table (written after
    # its rejects table): the job has written part of its outputs, which Snakemake marks incomplete
    snakemake(run, "--unlock")
    proc = start(run, "cvc_prep", "--cores", "2", "--rerun-incomplete",
                 env={FAULT_RENAME_DELAY_ENV: f"600:*{OUTPUT}"})
    kill_when(proc, lambda: any(output.parent.glob(f".{output.name}.*.tmp.parquet")),
              "the temp file of the output")
    resumed_c, _, _, computed_items_c = resume_line(run)
    assert resumed_c == k  # chunk k was recomputed, the ones before it reused
    assert output.with_suffix(".rejects.parquet").exists() and not output.exists()
    assert len(list(output.parent.glob(f".{output.name}.*.tmp.parquet"))) == 1
    snakemake(run, "--unlock")
    refused = snakemake(run, "cvc_prep", "-n", check=False)
    assert refused.returncode != 0 and "--rerun-incomplete" in refused.stdout + refused.stderr

    # resumed to the end: every chunk is reused, the outputs are written
    snakemake(run, "cvc_prep", "--cores", "2", "--rerun-incomplete")
    resumed, resumed_items, computed, computed_items = resume_line(run)
    assert (resumed, computed, resumed_items) == (len(bounds), 0, items)
    counts = json.loads((run / f"results/cvc/{STAGE}/{SHARD}.counts.json").read_text())
    assert (counts["chunks_reused"], counts["items_recomputed"]) == (len(bounds), 0)
    for recomputed in (computed_items_b, computed_items_c):
        assert recomputed < items
    say(pytestconfig, f"kill/resume: {STAGE} shard {SHARD}, {items} items in {len(bounds)} chunks; items the "
        f"restarted job computed again (the rest reused from chunk checkpoints): {computed_items_b} of "
        f"{items} after (a) the kill with {len(done_a)} chunks finished, {computed_items_c} of {items} after "
        f"(b) the kill in chunk {k}'s write, {computed_items} of {items} after (c) the kill in the output's write")

    assert not progress.exists()  # the checkpoints go once the shard's outputs are written
    after = snakemake(run, "cvc_prep", "-n")
    assert "Nothing to be done" in after.stdout + after.stderr
    assert all((run / p).exists() for p in removed)
    digest, expected = results_digest(run), results_digest(reference)
    # the temp file of the write killed in (c) went with the next successful write of that path
    assert not list(output.parent.glob(f".{output.name}.*.tmp.parquet"))
    assert digest == expected

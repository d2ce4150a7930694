"""Kill soak: SIGKILL the whole demo DAG (every method) at random moments, resume each time with
`--rerun-incomplete`, and compare the final files with an uninterrupted run.

    .venv/bin/python bench/kill_soak.py [--kills 10] [--seed 0] [--work DIR] [--reference RUN]

A run folder holds the embedded default config (config.yaml: CVC and CINGS). The reference is one
uninterrupted `snakemake --cores 2` in a folder of its own (or `--reference`, a finished run of the
same config). Kill moments: `--kills` points drawn uniformly over the reference's duration, so the
kills spread over the whole DAG; each one SIGKILLs snakemake's process group (snakemake and every
job it started), then `snakemake --unlock` and a restart with `--rerun-incomplete` that runs until
the next kill, and after the last one to the end.

Reported per kill: when it landed, the jobs running then (rule and wildcards), the temp files of
atomic writes caught mid-write, and the outputs Snakemake had marked incomplete; at the end,
whether every file under results/ and resources/ equals the reference's. Only run records may
differ and are compared without them: in counts files the job's seconds and what it reused from
checkpoints, in training summaries and the trainer's state the wall-clock figures, and TensorBoard
event files, which are wall-clock logs; LoRA's module lists in adapter configs are compared as the
sets they are. Any other difference is listed by path.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
# What a counts or summary file records about how the run went rather than what it computed.
RUN_RECORD_KEYS = frozenset({"seconds", "train_seconds", "chunks_reused", "items_recomputed", "train_runtime",
                             "train_samples_per_second", "train_steps_per_second", "train_tokens_per_second",
                             "wall_seconds", "resumed_from", "resumed_from_checkpoint"})
# Files holding such records: stage counts, training summaries, the trainer's own state.
RUN_RECORD_FILES = re.compile(r"(counts|summary)[^/]*\.json$|(^|/)trainer_state\.json$")
# peft keeps LoRA's module names as a set: the JSON list's order follows the process's string hash
# seed, so two runs of one config write them in different orders.
UNORDERED_LISTS = {"adapter_config.json": ("target_modules", "modules_to_save")}
WALL_CLOCK_LOGS = re.compile(r"(^|/)runs/|events\.out\.tfevents")
JOB_START = re.compile(r"^(?:local)?rule (\w+):\n((?:[ \t]+.*\n?)*)", re.M)


def snakemake_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), *args]


def make_run(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ROOT / "config.yaml", folder / "config.yaml")
    return folder


def start(run: Path, *args: str) -> tuple[subprocess.Popen, Path]:
    """snakemake in a session of its own, so that one killpg takes it and every job it started."""
    out = run / f"soak-{time.monotonic_ns()}.out"
    with open(out, "w") as stream:
        proc = subprocess.Popen(snakemake_cmd("--cores", "2", *args), cwd=run, stdout=stream,
                                stderr=subprocess.STDOUT, start_new_session=True, env=ENV)
    return proc, out


def kill_group(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for _ in range(200):  # SIGKILL is asynchronous: look at the folder once the group is gone
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise RuntimeError(f"processes of the killed snakemake group {proc.pid} are still alive")


def running_jobs(output: str) -> list[str]:
    """'rule[wildcards]' of every job started and not finished, from snakemake's own output."""
    started = {}
    for match in JOB_START.finditer(output):
        jobid = re.search(r"^\s+jobid: (\d+)$", match.group(2), re.M)
        wildcards = re.search(r"^\s+wildcards: (.*)$", match.group(2), re.M)
        if jobid:
            started[jobid.group(1)] = match.group(1) + (f"[{wildcards.group(1).strip()}]" if wildcards else "")
    for jobid in re.findall(r"^Finished jobid: (\d+)", output, re.M):
        started.pop(jobid, None)
    return sorted(started.values())


def mid_write_files(run: Path) -> list[str]:
    """Temp files of atomic writes (io.artifacts names them `.<name>.<random>.tmp<suffix>`)."""
    return sorted(str(p.relative_to(run)) for folder in ("results", "resources") if (run / folder).exists()
                  for p in (run / folder).rglob(".*.tmp*"))


def incomplete_outputs(run: Path) -> int:
    marks = run / ".snakemake" / "incomplete"
    return sum(1 for p in marks.rglob("*") if p.is_file()) if marks.exists() else 0


def without_run_records(value):
    if isinstance(value, dict):
        return {k: without_run_records(v) for k, v in value.items() if k not in RUN_RECORD_KEYS}
    if isinstance(value, list):
        return [without_run_records(v) for v in value]
    return value


def digest(run: Path) -> dict[str, str]:
    """{path: content digest} of every file under results/ and resources/, run records left out."""
    found = {}
    for folder in ("results", "resources"):
        for path in sorted((run / folder).rglob("*")):
            name = str(path.relative_to(run))
            if not path.is_file() or WALL_CLOCK_LOGS.search(name):
                continue
            data = path.read_bytes()
            if RUN_RECORD_FILES.search(name):
                data = json.dumps(without_run_records(json.loads(data)), sort_keys=True).encode()
            elif path.name in UNORDERED_LISTS:
                config = json.loads(data)
                for key in UNORDERED_LISTS[path.name]:
                    if isinstance(config.get(key), list):
                        config[key] = sorted(config[key])
                data = json.dumps(config, sort_keys=True).encode()
            found[name] = hashlib.sha256(data).hexdigest()
    return found


def run_to_end(run: Path, *args: str) -> float:
    start_time = time.monotonic()
    done = subprocess.run(snakemake_cmd("--cores", "2", *args), cwd=run, capture_output=True, text=True, env=ENV)
    if done.returncode != 0:
        raise RuntimeError(f"snakemake {' '.join(args)} failed in {run}:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
    return time.monotonic() - start_time


def soak(work: Path, kills: int, seed: int, reference: Path | None) -> dict:
    import random

    rng = random.Random(seed)
    if reference is None:
        reference = make_run(work / "reference")
        reference_seconds = run_to_end(reference)
        print(f"reference: uninterrupted run {reference_seconds:.0f} s", flush=True)
    else:
        reference_seconds = float(json.loads((reference / "soak-reference.json").read_text())["seconds"]) \
            if (reference / "soak-reference.json").exists() else 300.0
    (reference / "soak-reference.json").write_text(json.dumps({"seconds": reference_seconds}))

    run = make_run(work / "soaked")
    moments = sorted(rng.uniform(0, reference_seconds) for _ in range(kills))
    gaps = [b - a for a, b in zip([0.0] + moments, moments)]
    events = []
    soak_start = time.monotonic()
    for index, gap in enumerate(gaps, 1):
        args = ("--rerun-incomplete",) if index > 1 else ()
        proc, out = start(run, *args)
        try:
            proc.wait(timeout=max(gap, 0.5))
            finished = True
        except subprocess.TimeoutExpired:
            finished = False
        if finished:
            if proc.returncode != 0:
                raise RuntimeError(f"restart {index} failed:\n{out.read_text()[-4000:]}")
            events.append({"kill": index, "landed": "after the workflow had finished: no kill"})
            print(f"kill {index}: the workflow finished first", flush=True)
            break
        kill_group(proc)
        event = {
            "kill": index,
            "after_restart_s": round(gap, 1),
            "soak_elapsed_s": round(time.monotonic() - soak_start, 1),
            "running_jobs": running_jobs(out.read_text()),
            "mid_write": mid_write_files(run),
            "incomplete_marks": incomplete_outputs(run),
        }
        events.append(event)
        print(f"kill {index}: {event['after_restart_s']} s after start, running {event['running_jobs'] or 'no job (DAG set-up)'}"
              f", {len(event['mid_write'])} temp files mid-write, {event['incomplete_marks']} outputs marked incomplete",
              flush=True)
        subprocess.run(snakemake_cmd("--unlock"), cwd=run, capture_output=True, env=ENV, check=True)
    final_seconds = run_to_end(run, "--rerun-incomplete")
    nothing_left = subprocess.run(snakemake_cmd("-n"), cwd=run, capture_output=True, text=True, env=ENV)
    expected, got = digest(reference), digest(run)
    differing = sorted(p for p in expected.keys() & got.keys() if expected[p] != got[p])
    summary = {
        "kills": sum(1 for e in events if "running_jobs" in e),
        "events": events,
        "final_run_s": round(final_seconds, 1),
        "soak_total_s": round(time.monotonic() - soak_start, 1),
        "files_compared": len(expected),
        "missing": sorted(expected.keys() - got.keys()),
        "extra": sorted(got.keys() - expected.keys()),
        "differing": differing,
        "nothing_left_to_do": "Nothing to be done" in nothing_left.stdout + nothing_left.stderr,
        "leftover_temp_files": mid_write_files(run),
    }
    summary["identical"] = not (summary["missing"] or summary["extra"] or differing)
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, help="folder for the run folders (default: a new temp folder)")
    parser.add_argument("--reference", type=Path, help="a finished uninterrupted run of config.yaml to compare with")
    parser.add_argument("--json", type=Path, help="write the summary here too")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="gf-kill-soak-"))
    summary = soak(work, args.kills, args.seed, args.reference)
    jobs_hit = sorted({job.split("[")[0] for e in summary["events"] for job in e.get("running_jobs", [])})
    print(f"\nkill soak: {summary['kills']} SIGKILLs (seed {args.seed}); rules hit while running: {', '.join(jobs_hit)}")
    print(f"kills inside an atomic write: {sum(1 for e in summary['events'] if e.get('mid_write'))}; "
          f"final resume {summary['final_run_s']} s, soak {summary['soak_total_s']} s")
    print(f"{summary['files_compared']} files compared: identical={summary['identical']} "
          f"(missing {len(summary['missing'])}, extra {len(summary['extra'])}, differing {len(summary['differing'])}); "
          f"nothing left to do: {summary['nothing_left_to_do']}; temp files left: {len(summary['leftover_temp_files'])}")
    for path in summary["missing"] + summary["extra"] + summary["differing"]:
        print(f"  differs: {path}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return 0 if summary["identical"] and summary["nothing_left_to_do"] else 1


if __name__ == "__main__":
    sys.exit(main())

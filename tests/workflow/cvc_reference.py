"""One uninterrupted `cvc_prep` run that test_partial_reruns.py and test_kill_resume.py compare
against, and the helpers both use to see which jobs ran and which files changed.

The reference is built once per pytest session (whichever module asks first) and each test works
on a copy of it, so a partial re-run or a killed run starts from a finished run folder, as a user's
would, without paying for the whole data preparation again.
"""
import hashlib
import re
import shutil
from pathlib import Path

from snakemake_runner import make_run_dir, snakemake

# Two shards, data preparation only; grounding checkpoints every 4 records so that one shard is
# about a dozen chunks and a kill can land between them.
REFERENCE_OVERRIDES = {"methods": ["cvc"], "shards": 2, "cvc": {"grounding": {"chunk_size": 4}}}


def reference_run(tmp_path_factory) -> Path:
    """The finished reference run folder (built on first use in this session)."""
    run = tmp_path_factory.getbasetemp() / "cvc-prep-reference"
    done = run / ".reference-complete"
    if not done.exists():
        if run.exists():
            shutil.rmtree(run)
        make_run_dir(run, REFERENCE_OVERRIDES)
        snakemake(run, "cvc_prep", "--cores", "2")
        done.write_text("")
    return run


def copy_run(src: Path, dst: Path) -> Path:
    """A copy of a run folder that Snakemake sees as the same state: mtimes and `.snakemake`
    metadata (params, code, inputs of each output) travel with it."""
    shutil.copytree(src, dst, symlinks=True)
    return dst


def jobs_run(output: str) -> set[tuple[str, str]]:
    """(rule, wildcards) of every job Snakemake started or, with -n, planned, from its log."""
    jobs = set()
    for match in re.finditer(r"^(?:local)?rule (\w+):\n((?:[ \t]+.*\n?)*)", output, re.M):
        wildcards = re.search(r"^\s+wildcards: (.*)$", match.group(2), re.M)
        jobs.add((match.group(1), wildcards.group(1).strip() if wildcards else ""))
    return jobs


def file_states(run: Path, *folders: str) -> dict[str, tuple[int, str]]:
    """{path relative to the run: (mtime_ns, sha256)} of every file under `folders`."""
    states = {}
    for folder in folders or ("results", "resources"):
        for path in sorted((run / folder).rglob("*")):
            if path.is_file():
                states[str(path.relative_to(run))] = (path.stat().st_mtime_ns, sha256(path))
    return states


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()

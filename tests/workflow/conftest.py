import os
import shutil

import pytest

from snakemake_runner import ROOT, make_run_dir, say, snakemake

# What a finished `make demo` leaves in the checkout, and Snakemake's record of how each output was
# made (code, params, inputs), so that a copy is judged up to date or stale exactly as the original.
DEMO_OUTPUTS = ("results", "logs", "benchmarks", "resources", ".snakemake/metadata")


def _copy_checkout_demo(run) -> bool:
    """Copy the checkout's own demo run (CI runs `make demo` just before `make test`) into `run`,
    timestamps kept. GROUNDFLOW_FRESH_DEMO=1 skips it."""
    if os.environ.get("GROUNDFLOW_FRESH_DEMO") or not (ROOT / "results").is_dir():
        return False
    for name in DEMO_OUTPUTS:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, run / name, symlinks=True, copy_function=shutil.copy2)
    return True


@pytest.fixture(scope="session")
def demo(tmp_path_factory, pytestconfig):
    """The embedded default run once end to end (`make demo` in a run folder of its own); the
    demo checks and the report test both read it, so the session pays for one run. Where the
    checkout holds a demo run (CI's `make demo`), its copy is the starting point: Snakemake still
    runs the whole workflow in the copy and re-runs every job whose code, params or inputs differ
    from the copy's record, so what the tests read is what this checkout's code makes."""
    run = make_run_dir(tmp_path_factory.mktemp("demo"))
    copied = _copy_checkout_demo(run)
    out = snakemake(run, "--cores", "2")
    if copied:
        done = "Nothing to be done" in out.stdout + out.stderr
        say(pytestconfig, f"demo: started from the checkout's demo run ({'nothing to re-run' if done else 're-ran the stale jobs'})")
    return run

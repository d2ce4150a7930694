import pytest

from snakemake_runner import make_run_dir, snakemake


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """The embedded default run once end to end (`make demo` in a run folder of its own); the
    demo checks and the report test both read it, so the session pays for one run."""
    run = make_run_dir(tmp_path_factory.mktemp("demo"))
    snakemake(run, "--cores", "2")
    return run

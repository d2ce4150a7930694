"""A job that dies leaves its traceback in its `log:` file, where Snakemake's "see log" and a
SLURM run point; here the ingest job of a run whose captions file is missing."""

from snakemake_runner import make_run_dir, snakemake


def test_failed_job_log_holds_the_traceback(tmp_path):
    run = make_run_dir(tmp_path / "run", {"cvc": {"captions": "data/missing_captions.json"}})
    done = snakemake(run, "--cores", "1", "results/cvc/ingest/counts.json", check=False)
    assert done.returncode != 0
    log = (run / "logs" / "cvc" / "ingest.log").read_text()
    assert "Traceback (most recent call last)" in log
    assert "FileNotFoundError: captions file data/missing_captions.json (config cvc.captions) does not exist" in log
    assert "logs/cvc/ingest.log" in done.stdout + done.stderr  # Snakemake names the log to read
    assert not (run / "results" / "cvc" / "ingest" / "counts.json").exists()

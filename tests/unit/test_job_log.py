"""An uncaught error's traceback lands in the job's `log:` file, once, and on stderr, once."""

import subprocess
import sys
import textwrap


def run_failing_job(tmp_path, body: str) -> tuple[subprocess.CompletedProcess, str]:
    log_file = tmp_path / "logs" / "job.log"
    script = textwrap.dedent(f"""
        from groundflow.pipeline import setup_logging
        setup_logging({str(log_file)!r})
        import logging
        logging.getLogger("groundflow").info("started")
    """) + textwrap.dedent(body)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    return done, log_file.read_text()


def test_uncaught_error_traceback_goes_to_the_log_file(tmp_path):
    done, log = run_failing_job(tmp_path, """
        def load_model():
            raise ValueError("checkpoint folder has no config.json")
        load_model()
    """)
    assert done.returncode == 1
    assert "started" in log
    assert log.count("Traceback (most recent call last)") == 1
    assert "in load_model" in log
    assert "ValueError: checkpoint folder has no config.json" in log
    assert "job failed: ValueError" in log
    # stderr (what Snakemake prints) has it too, once: the hook replaces Python's own printing
    assert done.stderr.count("Traceback (most recent call last)") == 1


def test_a_job_that_succeeds_logs_no_failure(tmp_path):
    done, log = run_failing_job(tmp_path, "x = 1\n")
    assert done.returncode == 0
    assert "started" in log and "job failed" not in log

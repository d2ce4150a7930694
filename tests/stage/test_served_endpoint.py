"""A managed `vllm serve` (groundflow.generate.served), played by tests/data/fake_openai_server.py.

The fake takes vllm serve's command line (`serve MODEL --host H --port P`, key from VLLM_API_KEY)
and prints its pid into the server log, so each test can check the very process it started.
"""

import errno
import os
import signal
import socket
import subprocess
import sys
import textwrap
import urllib.request

import pytest

from groundflow.generate.backends import ChatPrompt, SamplingParams, make_generator, open_generator
from groundflow.generate.served import ManagedServerError, served_endpoint
from managed_fake_server import FAKE_SERVER, gone, managed_spec, server_pid

KEY_ENV = "GROUNDFLOW_TEST_SERVED_KEY"


def spec(*args, **serve):
    return managed_spec(KEY_ENV, *args, **serve)


def nothing_listens(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == errno.ECONNREFUSED


@pytest.fixture(autouse=True)
def no_key(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)


def test_server_answers_before_the_first_request_and_is_stopped_after(tmp_path):
    log = tmp_path / "server.log"
    prompt = [ChatPrompt(messages=[{"role": "user", "content": "hello"}])]
    with open_generator(spec(), kind="text", server_log=str(log)) as generator:
        base_url = generator.describe()["base_url"]
        port = int(base_url.rsplit(":", 1)[1].split("/")[0])
        key = os.environ[KEY_ENV]  # a fresh key for this server, the variable set while it runs
        with urllib.request.urlopen(urllib.request.Request(
                f"{base_url}/models", headers={"Authorization": f"Bearer {key}"}), timeout=30) as response:
            assert response.status == 200
        assert generator.generate(prompt, SamplingParams(max_new_tokens=4)) == [["hello|choice=0|seed=0"]]
        assert generator.describe()["model"] == "tiny/served-llm"
        pid = server_pid(log)
        assert not gone(pid)
    assert gone(pid)
    assert nothing_listens(port)
    assert KEY_ENV not in os.environ
    text = log.read_text()
    assert text.startswith(f"# groundflow: {sys.executable} {FAKE_SERVER} serve tiny/served-llm --host 127.0.0.1")
    assert "stopped on SIGTERM" in text
    assert key not in text  # the key travels in the environment, never on the command line


def test_an_error_in_the_stage_still_stops_the_server(tmp_path):
    log = tmp_path / "server.log"
    with pytest.raises(RuntimeError, match="stage failed"):
        with served_endpoint(spec(), log_path=log) as resolved:
            assert "serve" not in resolved and resolved["base_url"].startswith("http://127.0.0.1:")
            pid = server_pid(log)
            raise RuntimeError("stage failed")
    assert gone(pid)


def test_a_server_that_exits_early_is_an_error_naming_its_log(tmp_path):
    log = tmp_path / "server.log"
    with pytest.raises(ManagedServerError) as raised:
        with served_endpoint(spec("--exit-at-start", "3"), log_path=log):
            pytest.fail("the block must not run")
    message = str(raised.value)
    assert "exited with code 3" in message and str(log) in message
    assert "CUDA out of memory while loading the model (played)" in message  # the log's tail


def test_a_server_that_never_answers_times_out_and_is_stopped(tmp_path):
    log = tmp_path / "server.log"
    silent = {**spec(), "serve": {"command": [sys.executable, "-c", "import sys, time; print('loading', flush=True); time.sleep(600)"],
                                  "startup_timeout_s": 0.5, "poll_s": 0.05, "stop_timeout_s": 10}}
    with pytest.raises(ManagedServerError, match=r"did not answer .*/models within .*serve.startup_timeout_s") as raised:
        with served_endpoint(silent, log_path=log):
            pytest.fail("the block must not run")
    assert str(log) in str(raised.value) and "loading" in str(raised.value)


def test_a_server_ignoring_sigterm_is_killed(tmp_path):
    log = tmp_path / "server.log"
    with served_endpoint(spec("--ignore-sigterm", stop_timeout_s=0.5), log_path=log):
        pid = server_pid(log)
    assert gone(pid)
    assert "SIGTERM ignored" in log.read_text()


def test_a_configured_log_wins_and_serve_needs_the_openai_backend(tmp_path):
    configured = tmp_path / "configured.log"
    with served_endpoint(spec(log=str(configured)), log_path=tmp_path / "default.log"):
        pass
    assert "stopped on SIGTERM" in configured.read_text() and not (tmp_path / "default.log").exists()
    with pytest.raises(ValueError, match="needs backend: openai"):
        with served_endpoint({**spec(), "backend": "hf"}):
            pass


def test_a_terminated_job_stops_its_server(tmp_path):
    """A SIGTERM to the job (Snakemake cancelling it) while the stage runs becomes an exit, and the
    exit leaves the stage's block, which stops the server."""
    log = tmp_path / "server.log"
    job = textwrap.dedent(f"""
        import sys, time
        from groundflow.generate.backends import open_generator
        with open_generator({spec()!r}, kind="text", server_log={str(log)!r}) as generator:
            print("ready", flush=True)
            time.sleep(600)
    """)
    process = subprocess.Popen([sys.executable, "-c", job], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "ready"
        pid = server_pid(log)
        assert not gone(pid)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 128 + signal.SIGTERM
    finally:
        if process.poll() is None:
            process.kill()
    assert gone(pid)
    assert "stopped on SIGTERM" in log.read_text()


def test_make_generator_refuses_a_server_it_could_not_stop():
    with pytest.raises(ValueError, match="use open_generator"):
        make_generator(spec(), kind="text")

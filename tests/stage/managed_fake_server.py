"""tests/data/fake_openai_server.py playing a managed `vllm serve`: the generator spec that starts
it, and how a test finds the very process it started (the fake prints its pid into its log)."""

import os
import re
import sys
from pathlib import Path

FAKE_SERVER = Path(__file__).resolve().parents[1] / "data" / "fake_openai_server.py"


def managed_spec(key_env: str, *args: str, **serve) -> dict:
    return {
        "backend": "openai",
        "model": {"path": "tiny/served-llm"},
        "api_key_env": key_env,
        "max_retries": 0,  # the server must be up before the first request: no retry may hide it
        "timeout_s": 60,
        "serve": {"command": f"{sys.executable} {FAKE_SERVER} serve", "args": list(args), "poll_s": 0.05,
                  "stop_timeout_s": 10, "startup_timeout_s": 120, **serve},
    }


def server_pid(log: Path) -> int:
    return int(re.search(r"\(pid (\d+)\)", log.read_text())[1])


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False

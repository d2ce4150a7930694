"""A `vllm serve` that lives exactly as long as one stage: started, awaited, used, stopped.

vLLM pins its own torch and transformers, so it runs from its own environment: the config names
the command (`generation.<kind>.serve.command`, e.g. `/opt/vllm-env/bin/vllm serve`), and
`served_endpoint(spec)` runs it as

    <command> <model path> --host <host> --port <port> [--served-model-name <name>] <args...>

with the API key in the server's environment (VLLM_API_KEY, never on its command line, which any
user of the node can read), waits until `GET {base_url}/models` answers, yields the generator spec
with `base_url` filled in, and stops the server when the block ends, on error too: SIGTERM to its
process group (vLLM's engine and worker processes included), SIGKILL after `stop_timeout_s`.
A server that exits or stays silent past `startup_timeout_s` is an error that names its log and
quotes the log's tail. A SIGTERM to this process (Snakemake cancelling the job) is turned into
SystemExit while the server runs, so the server is stopped then too; and the server asks the
kernel for SIGTERM should this process die without cleaning up (Linux).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

SERVE_KEYS = frozenset({"command", "args", "port", "startup_timeout_s", "stop_timeout_s", "poll_s", "log"})
SERVER_KEY_ENV = "VLLM_API_KEY"  # what `vllm serve` reads when --api-key is not given
LOG_TAIL_LINES = 40


class ManagedServerError(RuntimeError):
    """The managed server did not come up (exited, or did not answer in time)."""


@dataclass(frozen=True)
class ServeSpec:
    """How to start the server (`generation.<kind>.serve` in the config)."""

    command: tuple[str, ...]
    args: tuple[str, ...] = ()
    port: int = 0  # 0: a free port of this host
    startup_timeout_s: float = 1800.0  # a 70B model loads from a network filesystem for minutes
    stop_timeout_s: float = 30.0
    poll_s: float = 1.0
    log: str = ""

    @classmethod
    def from_config(cls, value: dict) -> "ServeSpec":
        unknown = set(value) - SERVE_KEYS
        if unknown:
            raise ValueError(f"serve has unknown keys {sorted(unknown)}; known: {sorted(SERVE_KEYS)}")
        command = value.get("command") or "vllm serve"
        command = tuple(shlex.split(command) if isinstance(command, str) else (str(c) for c in command))
        if not command:
            raise ValueError("serve.command is empty")
        spec = cls(
            command=command,
            args=tuple(str(a) for a in value.get("args") or ()),
            port=int(value.get("port") or 0),
            startup_timeout_s=float(value.get("startup_timeout_s") or cls.startup_timeout_s),
            stop_timeout_s=float(value.get("stop_timeout_s") or cls.stop_timeout_s),
            poll_s=float(value.get("poll_s") or cls.poll_s),
            log=str(value.get("log") or ""),
        )
        if spec.startup_timeout_s <= 0 or spec.stop_timeout_s <= 0 or spec.poll_s <= 0:
            raise ValueError("serve timeouts and poll_s must be > 0")
        return spec


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (another process may still take it before the server does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def log_tail(path: str | Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as error:
        return f"(log unreadable: {error})"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else "(log empty)"


def _model_path(spec: dict) -> str:
    model = spec.get("model")
    path = model if isinstance(model, str) else (model or {}).get("path")
    if not path:
        raise ValueError("a managed server needs the model to serve: 'model' with a path")
    return str(path)


def _endpoint(spec: dict, serve: ServeSpec) -> tuple[str, int, str]:
    """(host, port, base_url): from a configured base_url, else 127.0.0.1 and serve.port (or a free one)."""
    base_url = spec.get("base_url") or ""
    if base_url:
        parts = urlsplit(base_url)
        if not parts.hostname or not parts.port:
            raise ValueError(f"base_url {base_url!r} of a managed server must name host and port")
        return parts.hostname, parts.port, base_url.rstrip("/")
    host = "127.0.0.1"
    port = serve.port or free_port(host)
    return host, port, f"http://{host}:{port}/v1"


def server_command(spec: dict, serve: ServeSpec, host: str, port: int) -> list[str]:
    command = [*serve.command, _model_path(spec), "--host", host, "--port", str(port)]
    if spec.get("served_model"):
        command += ["--served-model-name", str(spec["served_model"])]
    return command + list(serve.args)


def _ask_for_sigterm_on_parent_death() -> None:  # pragma: no cover - runs in the child
    # Linux prctl(PR_SET_PDEATHSIG, SIGTERM): a server orphaned by a SIGKILLed job stops too.
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    except Exception:
        pass


def models_answer(base_url: str, api_key: str, timeout_s: float = 5.0) -> bool:
    """Whether GET {base_url}/models answers 200 (vLLM's readiness: the model is loaded)."""
    request = urllib.request.Request(f"{base_url}/models", headers={"Authorization": f"Bearer {api_key}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def stop_server(process: subprocess.Popen, stop_timeout_s: float) -> None:
    """SIGTERM to the server's process group, SIGKILL if it is still there after stop_timeout_s."""
    if process.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, stop_timeout_s), (signal.SIGKILL, 30.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=wait_s)
            break
        except subprocess.TimeoutExpired:
            log.warning("managed server (pid %d) still running %.0f s after %s", process.pid, wait_s, sig.name)
    # The group's other members (engine, workers) may outlive the leader: make sure they go too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """While active, SIGTERM raises SystemExit in the main thread, so `finally` blocks run."""
    def _exit(signum, frame):
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, _exit)
    except ValueError:  # not the main thread: leave signal handling alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _api_key(key_env: str) -> Iterator[str]:
    """The key the client will read from `key_env`; a fresh random one (set for the block) if unset."""
    existing = os.environ.get(key_env, "")
    if existing:
        yield existing
        return
    os.environ[key_env] = secrets.token_urlsafe(24)
    try:
        yield os.environ[key_env]
    finally:
        os.environ.pop(key_env, None)


@contextlib.contextmanager
def served_endpoint(spec: dict, *, log_path: str | Path | None = None) -> Iterator[dict]:
    """Yield `spec` ready for an OpenAI-compatible client, starting (and then stopping) its server.

    A spec without `serve` is yielded as it is (the endpoint is someone else's). With `serve`, the
    yielded copy has `base_url` set and `serve` removed. `serve.log` (else `log_path`, else a new
    file in the temp dir) receives the server's output.
    """
    if not spec.get("serve"):
        yield spec
        return
    if spec.get("backend", "hf") != "openai":
        raise ValueError("generation 'serve' starts an OpenAI-compatible server: it needs backend: openai")
    serve = ServeSpec.from_config(spec["serve"])
    host, port, base_url = _endpoint(spec, serve)
    command = server_command(spec, serve, host, port)
    # The config's own log path wins over the caller's default (beside the job's log).
    log_path = Path(serve.log or log_path or tempfile.mkstemp(prefix="groundflow-serve-", suffix=".log")[1])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    key_env = spec.get("api_key_env") or "OPENAI_API_KEY"
    with _api_key(key_env) as key, _sigterm_as_exit(), open(log_path, "ab") as log_file:
        log_file.write(f"# groundflow: {shlex.join(command)}\n".encode())
        log_file.flush()
        log.info("starting managed server: %s (log %s)", shlex.join(command), log_path)
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, SERVER_KEY_ENV: key},
            start_new_session=True,  # its own process group: stopped as a whole
            preexec_fn=_ask_for_sigterm_on_parent_death if sys.platform.startswith("linux") else None,
        )
        try:
            _wait_until_ready(process, base_url, key, serve, command, log_path)
            log.info("managed server (pid %d) answers at %s", process.pid, base_url)
            resolved = {k: v for k, v in spec.items() if k != "serve"}
            resolved["base_url"] = base_url
            resolved["api_key_env"] = key_env
            yield resolved
        finally:
            stop_server(process, serve.stop_timeout_s)
            log.info("managed server (pid %d) stopped, exit code %s", process.pid, process.returncode)


def _wait_until_ready(process: subprocess.Popen, base_url: str, key: str, serve: ServeSpec,
                      command: Sequence[str], log_path: Path) -> None:
    deadline = time.monotonic() + serve.startup_timeout_s
    while True:
        if process.poll() is not None:
            raise ManagedServerError(
                f"the managed server `{shlex.join(command)}` exited with code {process.returncode} before "
                f"{base_url}/models answered; its log is {log_path}, ending:\n{log_tail(log_path)}"
            )
        if models_answer(base_url, key):
            return
        if time.monotonic() > deadline:
            raise ManagedServerError(
                f"the managed server `{shlex.join(command)}` did not answer {base_url}/models within "
                f"{serve.startup_timeout_s:.0f} s (serve.startup_timeout_s); its log is {log_path}, "
                f"ending:\n{log_tail(log_path)}"
            )
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=serve.poll_s)


__all__ = [
    "ManagedServerError",
    "ServeSpec",
    "free_port",
    "log_tail",
    "models_answer",
    "served_endpoint",
    "server_command",
    "stop_server",
]

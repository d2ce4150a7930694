"""A small OpenAI-compatible chat-completions server on 127.0.0.1 for testing the HTTP backend.

It checks the bearer key, answers deterministically from the request (so tests can tell which
prompt, choice and seed a text came from), honours `n` (or caps it, like a server that ignores it),
and records every payload it received. Nothing it does depends on timing, so tests of it do not
depend on how busy the machine is:
- failures are injected by request number (the first k requests fail with a status);
- a timeout is a request the server never answers (it holds it until the server stops);
- concurrency is seen by a gate: requests are held until `gate_in_flight` of them are in flight
  at once, so a client that never gets that far fails, and one that exceeds a bound is counted.
`responder="entities"` answers CVC entity prompts with lines made of the caption's words plus a
line naming something the caption does not mention (what a free-writing model might do), and
follows vLLM's guided decoding fields (`structured_outputs` or the older `guided_*`): a choice
from `choice`, and only lines whose answer matches `regex`. GET /v1/models lists the served model.

Run as a script (`python fake_openai_server.py serve MODEL --host H --port P ...`) it stands in for
`vllm serve` (see `main`): key from VLLM_API_KEY or --api-key, SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CAPTION = re.compile(r'Caption: "(.*)"')
INVENTED_ENTITY = "unicorn"  # in no fixture caption: a free answer's line the stage must drop
END_MARKER = "<end>"


def last_user_text(messages: list[dict]) -> str:
    for message in reversed(messages):
        if message["role"] != "user":
            continue
        content = message["content"]
        if isinstance(content, str):
            return content
        return " ".join(part["text"] for part in content if part.get("type") == "text")
    return ""


def echo_text(payload: dict, choice: int) -> str:
    """What the server answers for choice `choice` of a request: derived from the request only."""
    return f"{last_user_text(payload['messages'])}|choice={choice}|seed={payload.get('seed')}"


def guided(payload: dict) -> tuple[str | None, object]:
    """("choice" | "regex" | None, value) from vLLM's structured_outputs or the older guided_* fields."""
    structured = payload.get("structured_outputs") or {}
    for kind in ("choice", "regex"):
        if kind in structured:
            return kind, structured[kind]
        if f"guided_{kind}" in payload:
            return kind, payload[f"guided_{kind}"]
    return None, None


def entity_lines(text: str) -> list[str]:
    """Line contents a careless model might write for the last caption in `text`: its first three
    distinct words of 3+ letters (some are function words the stage does not accept), then an
    entity it never mentions."""
    captions = CAPTION.findall(text)
    words = re.findall(r"[a-z]{3,}", captions[-1].lower()) if captions else []
    picked = list(dict.fromkeys(words))[:3]
    return [f"{w} -> {w}" for w in picked] + [f"{INVENTED_ENTITY} -> {INVENTED_ENTITY}"]


def numbered(lines: list[str]) -> str:
    return "".join(f"{i}. {line}\n" for i, line in enumerate(lines, 1)) + END_MARKER


def entity_answer(payload: dict) -> str:
    lines = entity_lines(last_user_text(payload["messages"]))
    kind, value = guided(payload)
    if kind != "regex":
        return numbered(lines) + "\n"
    # As guided decoding would: only what the expression allows (each line tried on its own,
    # then the longest allowed answer of the survivors).
    pattern = re.compile(value)
    allowed = [line for line in lines if pattern.fullmatch(numbered([line]))]
    for count in range(len(allowed), -1, -1):
        if pattern.fullmatch(numbered(allowed[:count])):
            return numbered(allowed[:count])
    raise ValueError(f"no answer of the fake entity responder matches the guided regex {value[:200]!r}")


class _Server(ThreadingHTTPServer):
    # socketserver's listen backlog of 5 refuses connections when a client opens a dozen at once
    # (vLLM's uvicorn listens with 2048); a refused connect is not what any test is about.
    request_queue_size = 256


@dataclass
class FakeServerBehaviour:
    api_key: str
    fail_first: int = 0            # the first k requests fail ...
    fail_status: int = 429         # ... with this status
    retry_after: str | None = None  # Retry-After header on those failures
    hang_first: int = 0            # the next k requests are never answered (held until shutdown)
    gate_in_flight: int = 0        # hold every request until this many are in flight at once
    gate_wait_s: float = 60.0      # a safety net, not a measurement: a gate never reached fails
    max_choices: int | None = None  # answer at most this many choices, whatever n says
    responder: str = "echo"        # "echo" or "entities"
    model: str = "fake-model"      # what GET /v1/models lists


@dataclass
class FakeServerState:
    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    models_requests: int = 0
    payloads: list[dict] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    lock: threading.Condition = field(default_factory=threading.Condition)


class FakeOpenAIServer:
    def __init__(self, behaviour: FakeServerBehaviour, *, host: str = "127.0.0.1", port: int = 0):
        self.behaviour = behaviour
        self.state = FakeServerState()
        self._stopping = threading.Event()
        self._gate_open = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format, *args):  # keep test output quiet
                pass

            def do_POST(self):
                server._handle(self)

            def do_GET(self):
                server._handle_get(self)

        self._httpd = _Server((host, port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> "FakeOpenAIServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stopping.set()  # releases held requests
        with self.state.lock:
            self.state.lock.notify_all()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def _reply(self, handler: BaseHTTPRequestHandler, status: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        with self.state.lock:
            self.state.statuses.append(status)
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (its timeout), as the timeout tests intend

    def _authorised(self, handler: BaseHTTPRequestHandler) -> bool:
        if handler.headers.get("Authorization") == f"Bearer {self.behaviour.api_key}":
            return True
        self._reply(handler, 401, {"error": {"message": "invalid api key", "type": "invalid_request_error"}})
        return False

    def _handle_get(self, handler: BaseHTTPRequestHandler) -> None:
        if handler.path.rstrip("/") != "/v1/models":
            self._reply(handler, 404, {"error": {"message": f"no route {handler.path}"}})
            return
        if not self._authorised(handler):
            return
        with self.state.lock:
            self.state.models_requests += 1
        self._reply(handler, 200, {"object": "list", "data": [{"id": self.behaviour.model, "object": "model"}]})

    def _hold_at_gate(self, number: int) -> bool:
        """Wait until gate_in_flight requests are in flight; False when that never happens."""
        state, wanted = self.state, self.behaviour.gate_in_flight
        with state.lock:
            if state.in_flight >= wanted:
                self._gate_open = True
                state.lock.notify_all()
            return state.lock.wait_for(lambda: self._gate_open or self._stopping.is_set(),
                                       timeout=self.behaviour.gate_wait_s) and self._gate_open

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        behaviour, state = self.behaviour, self.state
        length = int(handler.headers.get("Content-Length", 0))
        raw = handler.rfile.read(length)
        if handler.path.rstrip("/") != "/v1/chat/completions":
            self._reply(handler, 404, {"error": {"message": f"no route {handler.path}"}})
            return
        if not self._authorised(handler):
            return
        payload = json.loads(raw)
        with state.lock:
            number = state.requests
            state.requests += 1
            state.payloads.append(payload)
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
        # Leaving the in-flight count before the reply is written: a client may send its next
        # request as soon as it reads this one's answer, and must not be counted twice.
        left = False

        def leave() -> None:
            nonlocal left
            if not left:
                left = True
                with state.lock:
                    state.in_flight -= 1
        try:
            if number < behaviour.fail_first:
                headers = {"Retry-After": behaviour.retry_after} if behaviour.retry_after else None
                leave()
                self._reply(handler, behaviour.fail_status,
                            {"error": {"message": f"induced failure {number}", "type": "server_error"}}, headers)
                return
            if number < behaviour.fail_first + behaviour.hang_first:
                self._stopping.wait()  # never answered while the server runs
                return
            if behaviour.gate_in_flight and not self._hold_at_gate(number):
                leave()
                self._reply(handler, 500, {"error": {
                    "message": f"gate of {behaviour.gate_in_flight} concurrent requests never reached",
                    "type": "server_error"}})
                return
            try:
                texts = self._texts(payload)
            except ValueError as error:
                leave()
                self._reply(handler, 400, {"error": {"message": str(error), "type": "invalid_request_error"}})
                return
            leave()
            self._reply(handler, 200, {
                "id": f"chatcmpl-{number}",
                "object": "chat.completion",
                "created": 0,
                "model": payload.get("model", ""),
                "choices": [
                    {"index": i, "message": {"role": "assistant", "content": text},
                     "finish_reason": "stop", "logprobs": None}
                    for i, text in enumerate(texts)
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": len(texts), "total_tokens": 1 + len(texts)},
            })
        finally:
            leave()

    def _texts(self, payload: dict) -> list[str]:
        n = int(payload.get("n") or 1)
        if self.behaviour.max_choices is not None:
            n = min(n, self.behaviour.max_choices)
        kind, value = guided(payload)
        if kind == "choice":
            # A stable pick that varies with the prompt, as a model's would.
            pick = value[sum(last_user_text(payload["messages"]).encode()) % len(value)]
            return [pick] * n
        if self.behaviour.responder == "entities":
            return [entity_answer(payload)] * n
        return [echo_text(payload, i) for i in range(n)]


def main(argv: list[str] | None = None) -> int:
    """`vllm serve`'s command line, enough of it: MODEL --host --port [--served-model-name]
    [--api-key]; plus --responder, and --exit-at-start CODE to play a server that dies loading."""
    parser = argparse.ArgumentParser(prog="fake_openai_server")
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("model")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--served-model-name", default="")
    parser.add_argument("--api-key", default="")
    parser.add_argument("--responder", default="echo", choices=["echo", "entities"])
    parser.add_argument("--exit-at-start", type=int, default=None)
    parser.add_argument("--ignore-sigterm", action="store_true", help="play a server that must be SIGKILLed")
    args = parser.parse_args(argv)
    print(f"fake vllm serve {args.model} on {args.host}:{args.port} (pid {os.getpid()})", flush=True)
    if args.exit_at_start is not None:
        print("RuntimeError: CUDA out of memory while loading the model (played)", flush=True)
        return args.exit_at_start
    key = args.api_key or os.environ.get("VLLM_API_KEY", "")
    behaviour = FakeServerBehaviour(api_key=key, responder=args.responder,
                                    model=args.served_model_name or args.model)
    stop = threading.Event()
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, lambda *_: print("SIGTERM ignored", flush=True))
    else:
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with FakeOpenAIServer(behaviour, host=args.host, port=args.port):
        print("ready", flush=True)
        while not stop.wait(0.2):
            pass
    print("stopped on SIGTERM", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

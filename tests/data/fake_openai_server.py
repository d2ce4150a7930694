"""A small OpenAI-compatible chat-completions server on 127.0.0.1 for testing the HTTP backend.

It checks the bearer key, answers deterministically from the request (so tests can tell which
prompt, choice and seed a text came from), honours `n` (or caps it, like a server that ignores it),
can fail the first k requests with a status or delay them past a client's timeout, counts requests
in flight, and records every payload it received. Used as a context manager; it stops on exit.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


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


@dataclass
class FakeServerBehaviour:
    api_key: str
    fail_first: int = 0            # the first k requests fail ...
    fail_status: int = 429         # ... with this status
    retry_after: str | None = None  # Retry-After header on those failures
    delay_first: int = 0           # the first k requests (after failures) are held ...
    delay_s: float = 0.0           # ... this long before answering
    delay_all_s: float = 0.0       # every request is held this long (to see concurrency)
    max_choices: int | None = None  # answer at most this many choices, whatever n says


@dataclass
class FakeServerState:
    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    payloads: list[dict] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class FakeOpenAIServer:
    def __init__(self, behaviour: FakeServerBehaviour):
        self.behaviour = behaviour
        self.state = FakeServerState()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format, *args):  # keep test output quiet
                pass

            def do_POST(self):
                server._handle(self)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
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
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def _reply(self, handler: BaseHTTPRequestHandler, status: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
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
        with self.state.lock:
            self.state.statuses.append(status)

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        behaviour, state = self.behaviour, self.state
        length = int(handler.headers.get("Content-Length", 0))
        raw = handler.rfile.read(length)
        if handler.path.rstrip("/") != "/v1/chat/completions":
            self._reply(handler, 404, {"error": {"message": f"no route {handler.path}"}})
            return
        if handler.headers.get("Authorization") != f"Bearer {behaviour.api_key}":
            self._reply(handler, 401, {"error": {"message": "invalid api key", "type": "invalid_request_error"}})
            return
        payload = json.loads(raw)
        with state.lock:
            number = state.requests
            state.requests += 1
            state.payloads.append(payload)
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            if number < behaviour.fail_first:
                headers = {"Retry-After": behaviour.retry_after} if behaviour.retry_after else None
                self._reply(handler, behaviour.fail_status,
                            {"error": {"message": f"induced failure {number}", "type": "server_error"}}, headers)
                return
            if number < behaviour.fail_first + behaviour.delay_first:
                time.sleep(behaviour.delay_s)
            if behaviour.delay_all_s:
                time.sleep(behaviour.delay_all_s)
            n = int(payload.get("n") or 1)
            if behaviour.max_choices is not None:
                n = min(n, behaviour.max_choices)
            choices = [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": echo_text(payload, i)},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
                for i in range(n)
            ]
            self._reply(handler, 200, {
                "id": f"chatcmpl-{number}",
                "object": "chat.completion",
                "created": 0,
                "model": payload.get("model", ""),
                "choices": choices,
                "usage": {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": 1 + n},
            })
        finally:
            with state.lock:
                state.in_flight -= 1

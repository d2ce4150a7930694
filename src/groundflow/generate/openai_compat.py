"""Generation through an OpenAI-compatible chat-completions endpoint (OpenAI, or `vllm serve`).

`vllm serve llava-hf/llava-1.5-7b-hf` gives vLLM's throughput behind the same Generator interface
as the local backends. The policy around each request is ours, not the SDK's (its own retries are
off), so it is explicit and tested against a fake server:
- at most `max_concurrency` prompts in flight (an asyncio.Semaphore);
- each request bounded by `timeout_s`;
- 408/409/429/5xx, timeouts and connection errors retried up to `max_retries` times with
  exponential back-off and jitter (never less than a server's Retry-After); other errors fail at once;
- `n` samples per prompt through the `n` parameter, topped up with further requests when a server
  returns fewer choices; greedy (temperature 0) asks for one and repeats it;
- images travel as base64 PNG data URLs in the OpenAI vision message format, padded to square as
  LLaVA-1.5 trains (the server's HF processor would centre-crop);
- an assistant prefix is sent as a final assistant message that vLLM continues
  (`continue_final_message`), a vLLM extension the OpenAI API does not have;
- closed answers (`ChatPrompt.choices`, `ChatPrompt.lines`) only with `guided_decoding` set, the
  server's guided decoding doing the constraining: "structured_outputs" sends vLLM's current
  `structured_outputs: {choice | regex}` (vLLM >= 0.10.2), "guided" the older `guided_choice` /
  `guided_regex` (removed in vLLM 0.12). Without it such prompts are refused, and so is choice
  scoring always: an endpoint returns no log-likelihood of a given continuation.
The API key comes from the environment variable named by `api_key_env`; it is never logged, put in
an error message or shown by repr().
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import os
import random
from email.utils import parsedate_to_datetime
from typing import Sequence

import openai
from PIL import Image

from groundflow.generate.backends import (
    ChatPrompt,
    LineChoices,
    SamplingParams,
    UnsupportedFeatureError,
    check_result_shape,
    require_no_choices,
)
from groundflow.generate.text import cut_at_stop_strings
from groundflow.models.llava import CLIP_IMAGE_MEAN, mean_fill, pad_to_square

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 409, 429})
MAX_BACKOFF_S = 30.0
GUIDED_DECODING = (None, "structured_outputs", "guided")
_REGEX_SPECIAL = frozenset(".^$*+?{}[]|()\\/")
_REGEX_CONTROL = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


class MissingAPIKeyError(RuntimeError):
    """The environment variable that should hold the API key is unset or empty."""


class GenerationRequestError(RuntimeError):
    """A request failed for good: a non-retryable error, or retries exhausted."""


class _Secret:
    """Holds a credential; its repr never shows it."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__


def backoff_delay(attempt: int, base_s: float, jitter: float, *, cap_s: float = MAX_BACKOFF_S,
                  retry_after_s: float | None = None) -> float:
    """Seconds to wait before retry number `attempt` (0 = the first retry).

    Exponential (base_s * 2**attempt, capped at cap_s), scaled by a jitter factor in [0.5, 1] from
    `jitter` in [0, 1] so that clients that failed together do not retry together; never shorter
    than the server's Retry-After (itself capped).
    """
    if not 0.0 <= jitter <= 1.0:
        raise ValueError(f"jitter must be in [0, 1], not {jitter}")
    delay = min(cap_s, base_s * (2.0 ** attempt)) * (0.5 + 0.5 * jitter)
    if retry_after_s is not None and retry_after_s > 0:
        delay = max(delay, min(retry_after_s, cap_s))
    return delay


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None when absent or bad."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        from datetime import datetime, timezone

        return max(0.0, (parsedate_to_datetime(value) - datetime.now(timezone.utc)).total_seconds())
    except (TypeError, ValueError):
        return None


def image_data_url(image: Image.Image, *, pad_square: bool = True, fill: Sequence[int] | None = None) -> str:
    """The image as a base64 PNG data URL (lossless), padded to square with the CLIP mean by default."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    if pad_square:
        image = pad_to_square(image, fill=fill if fill is not None else mean_fill(CLIP_IMAGE_MEAN))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def openai_messages(prompt: ChatPrompt, image_url: str | None = None) -> list[dict]:
    """Chat messages in the OpenAI format; the image (as a URL) leads the first user turn's content."""
    messages: list[dict] = []
    image_placed = image_url is None
    for message in prompt.messages:
        if not image_placed and message["role"] == "user":
            content: str | list[dict] = [
                {"type": "image_url", "image_url": {"url": image_url}},
                {"type": "text", "text": message["content"].strip()},  # as training converts an image turn
            ]
            image_placed = True
        else:
            content = message["content"]
        messages.append({"role": message["role"], "content": content})
    if not image_placed:
        raise ValueError("a prompt with an image needs a user turn to carry it")
    if prompt.assistant_prefix:
        messages.append({"role": "assistant", "content": prompt.assistant_prefix})
    return messages


def regex_escape(text: str) -> str:
    """`text` as a regex literal, escaping only what must be: the grammar compilers behind vLLM's
    guided decoding (xgrammar, outlines) accept a smaller escape set than Python's re.escape uses."""
    return "".join("\\" + ch if ch in _REGEX_SPECIAL else _REGEX_CONTROL.get(ch, ch) for ch in text)


def line_choices_regex(lines: LineChoices) -> str:
    """A regular expression of the answers `lines` allows (the text after the assistant prefix).

    Line numbers are any positive number and a line may repeat: a regular expression cannot count
    up or remember used lines without growing with max_lines x the allowed lines. Parsers of the
    answer must therefore drop repeats (the entity stage keeps the first line of each label).
    """
    end = regex_escape(lines.end_marker)
    if not lines.allowed:
        return end
    alternatives = "|".join(regex_escape(content) for content in lines.allowed)
    number = "[1-9][0-9]*\\. " if lines.numbered else ""
    low = min(lines.min_lines, len(lines.allowed))
    high = len(lines.allowed) if lines.max_lines is None else min(lines.max_lines, len(lines.allowed))
    return f"({number}({alternatives}){regex_escape(lines.line_end)}){{{low},{high}}}{end}"


def guided_fields(prompt: ChatPrompt, mode: str | None) -> dict:
    """The request's extra fields that close the answer of `prompt` (none for a free answer)."""
    if prompt.choices is None and prompt.lines is None:
        return {}
    if mode not in ("structured_outputs", "guided"):
        raise UnsupportedFeatureError(f"guided decoding mode {mode!r} cannot close an answer")
    if prompt.choices is not None:
        kind, value = "choice", list(dict.fromkeys(prompt.choices))
    else:
        kind, value = "regex", line_choices_regex(prompt.lines)
    if mode == "structured_outputs":
        return {"structured_outputs": {kind: value}}
    return {f"guided_{kind}": value}


def request_arguments(messages: list[dict], params: SamplingParams, *, model: str, n: int, seed: int,
                      continue_final_message: bool, guided: dict | None = None,
                      chat_template: str | None = None) -> dict:
    """Keyword arguments of chat.completions.create: every sampling parameter stated explicitly."""
    arguments: dict = {
        "model": model,
        "messages": messages,
        "n": n,
        "max_tokens": params.max_new_tokens,
        "temperature": params.temperature if params.do_sample else 0.0,
        "top_p": params.top_p if params.do_sample else 1.0,
        "seed": seed,
    }
    if params.stop:
        arguments["stop"] = list(params.stop)
    extra = dict(guided or {})
    # vLLM's sampling extensions (the OpenAI API has neither), sent only when they do something,
    # so a plain OpenAI endpoint never sees them unasked
    if params.do_sample and params.top_k:
        extra["top_k"] = params.top_k
    if params.repetition_penalty != 1.0:
        extra["repetition_penalty"] = params.repetition_penalty
    if continue_final_message:
        extra.update({"continue_final_message": True, "add_generation_prompt": False})
    if chat_template is not None:
        extra["chat_template"] = chat_template
    if extra:
        arguments["extra_body"] = extra
    return arguments


def _classify(error: BaseException) -> tuple[bool, str, float | None]:
    """(retryable, reason, retry-after seconds) for an error raised by one request."""
    if isinstance(error, (TimeoutError, openai.APITimeoutError)):
        return True, "timed out", None
    if isinstance(error, openai.APIStatusError):
        status = error.status_code
        retry_after = parse_retry_after(error.response.headers.get("retry-after"))
        return status in RETRYABLE_STATUS or status >= 500, f"HTTP {status}: {error.message}", retry_after
    if isinstance(error, openai.APIConnectionError):
        return True, f"connection error: {error.message}", None
    return False, f"{type(error).__name__}: {error}", None


class OpenAICompatibleGenerator:
    """Generator over an OpenAI-compatible chat-completions endpoint (see the module docstring)."""

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        max_concurrency: int = 16,
        timeout_s: float = 60.0,
        max_retries: int = 5,
        backoff_s: float = 0.5,
        pad_square: bool = True,
        guided_decoding: str | None = None,
        chat_template: str | None = None,
    ):
        if guided_decoding not in GUIDED_DECODING:
            raise ValueError(f"guided_decoding must be one of {GUIDED_DECODING}, not {guided_decoding!r}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, not {max_concurrency}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, not {max_retries}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, not {timeout_s}")
        key = os.environ.get(api_key_env, "")
        if not key:
            raise MissingAPIKeyError(
                f"the API key for {base_url} is read from the environment variable {api_key_env}, "
                f"which is not set; export {api_key_env}=... (for a local `vllm serve` without "
                f"--api-key any non-empty value works)"
            )
        self._api_key = _Secret(key)
        self.base_url = base_url
        self.model = model
        self.api_key_env = api_key_env
        self.max_concurrency = max_concurrency
        self.timeout_s = float(timeout_s)
        self.max_retries = max_retries
        self.backoff_s = float(backoff_s)
        self.pad_square = pad_square
        self.guided_decoding = guided_decoding
        # None: the server's own template; else sent with every request (vLLM >= 0.10.2 only
        # accepts it when started with --trust-request-chat-template)
        self.chat_template = chat_template
        self.features = frozenset({"choices", "lines"}) if guided_decoding else frozenset()
        self._jitter = random.Random()
        # A seam for tests: they check the back-off delays without waiting them out.
        self._sleep = asyncio.sleep

    def __repr__(self) -> str:
        return (
            f"OpenAICompatibleGenerator(base_url={self.base_url!r}, model={self.model!r}, "
            f"api_key_env={self.api_key_env!r}, max_concurrency={self.max_concurrency})"
        )

    def describe(self) -> dict:
        return {
            "backend": "openai",
            "base_url": self.base_url,
            "model": self.model,
            "api_key_env": self.api_key_env,
            "max_concurrency": self.max_concurrency,
            "timeout_s": self.timeout_s,
            "max_retries": self.max_retries,
            "pad_square": self.pad_square,
            "guided_decoding": self.guided_decoding,
        }

    def score_choices(self, prompts: Sequence[ChatPrompt], choices: Sequence[Sequence[str]], *,
                      normalize: str = "sum") -> list[list[float]]:
        raise UnsupportedFeatureError(
            f"the OpenAI-compatible endpoint {self.base_url} (backend 'openai') cannot score choices: "
            f"chat completions return no log-likelihood of a given continuation"
        )

    def generate(self, prompts: Sequence[ChatPrompt], params: SamplingParams) -> list[list[str]]:
        """Synchronous entry point: runs its own event loop (so not from inside a running one)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.agenerate(prompts, params))
        raise RuntimeError(
            "OpenAICompatibleGenerator.generate() was called inside a running event loop; "
            "use `await generator.agenerate(prompts, params)` there"
        )

    async def agenerate(self, prompts: Sequence[ChatPrompt], params: SamplingParams) -> list[list[str]]:
        if not self.guided_decoding:
            require_no_choices(prompts, f"the OpenAI-compatible endpoint {self.base_url} without guided_decoding")
        if not prompts:
            return []
        slots = asyncio.Semaphore(self.max_concurrency)
        # A client per call: its connection pool belongs to this event loop.
        async with openai.AsyncOpenAI(
            api_key=self._api_key.reveal(), base_url=self.base_url, max_retries=0, timeout=self.timeout_s
        ) as client:
            tasks = [
                asyncio.create_task(self._complete(client, slots, index, prompt, params))
                for index, prompt in enumerate(prompts)
            ]
            try:
                results = await asyncio.gather(*tasks)
            except BaseException:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
        check_result_shape(results, prompts, params.n)
        return list(results)

    async def _complete(self, client, slots: asyncio.Semaphore, index: int, prompt: ChatPrompt,
                        params: SamplingParams) -> list[str]:
        """All n samples of one prompt, holding one concurrency slot throughout (back-off included:
        a server that asks us to slow down gets fewer requests, not the same number later)."""
        async with slots:
            image_url = None if prompt.image is None else image_data_url(prompt.image, pad_square=self.pad_square)
            messages = openai_messages(prompt, image_url)
            continue_final = bool(prompt.assistant_prefix)
            guided = guided_fields(prompt, self.guided_decoding)
            if not params.do_sample:
                arguments = request_arguments(messages, params, model=self.model, n=1, seed=params.seed,
                                              continue_final_message=continue_final, guided=guided,
                                              chat_template=self.chat_template)
                texts = await self._request(client, index, arguments)
                return [cut_at_stop_strings(texts[0], params.stop)] * params.n
            collected: list[str] = []
            request_number = 0
            while len(collected) < params.n:
                wanted = params.n - len(collected)
                # A top-up request gets its own seed, or a seeded server would repeat the first samples.
                arguments = request_arguments(messages, params, model=self.model, n=wanted,
                                              seed=params.seed + request_number,
                                              continue_final_message=continue_final, guided=guided,
                                              chat_template=self.chat_template)
                texts = await self._request(client, index, arguments)
                collected.extend(cut_at_stop_strings(text, params.stop) for text in texts[:wanted])
                request_number += 1
            return collected

    async def _request(self, client, index: int, arguments: dict) -> list[str]:
        """One chat completion with our timeout and retry policy; the choices' texts in order."""
        last_reason = ""
        for attempt in range(self.max_retries + 1):
            try:
                async with asyncio.timeout(self.timeout_s):
                    response = await client.chat.completions.create(**arguments)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # classified below; anything unknown is not retried
                retryable, last_reason, retry_after = _classify(error)
                if not retryable:
                    raise GenerationRequestError(f"prompt {index}: request failed: {last_reason}") from error
                if attempt == self.max_retries:
                    break
                delay = backoff_delay(attempt, self.backoff_s, self._jitter.random(), retry_after_s=retry_after)
                log.warning("prompt %d: %s; retry %d/%d in %.2f s", index, last_reason, attempt + 1,
                            self.max_retries, delay)
                await self._sleep(delay)
                continue
            choices = sorted(response.choices, key=lambda choice: choice.index)
            if not choices:
                raise GenerationRequestError(f"prompt {index}: the server returned no choices")
            return [choice.message.content or "" for choice in choices]
        raise GenerationRequestError(
            f"prompt {index}: gave up after {self.max_retries + 1} attempts to {self.base_url}; "
            f"last error: {last_reason}"
        )


__all__ = [
    "GenerationRequestError",
    "MissingAPIKeyError",
    "OpenAICompatibleGenerator",
    "backoff_delay",
    "guided_fields",
    "image_data_url",
    "line_choices_regex",
    "openai_messages",
    "parse_retry_after",
    "request_arguments",
]

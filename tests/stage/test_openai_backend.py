"""The OpenAI-compatible backend against a fake chat-completions server on 127.0.0.1.

No test measures time or relies on a race: failures come by request number, a timeout is a
request the server never answers, concurrency is a gate the server holds requests at, and
back-off delays are read from the generator's sleep seam instead of waited out. Client timeouts
are generous wherever a timeout is not what is tested, so a busy machine cannot trigger a retry.
"""

import asyncio
import base64
import importlib.util
import io
import logging
import sys
from pathlib import Path

import re

import pytest
from PIL import Image

from groundflow.generate.backends import (
    ChatPrompt,
    LineChoices,
    SamplingParams,
    UnsupportedFeatureError,
    make_generator,
)
from groundflow.generate.openai_compat import (
    GenerationRequestError,
    MissingAPIKeyError,
    OpenAICompatibleGenerator,
    line_choices_regex,
    regex_escape,
)
from groundflow.models.llava import mean_fill

FAKE_SERVER = Path(__file__).resolve().parents[1] / "data" / "fake_openai_server.py"
KEY_ENV = "GROUNDFLOW_TEST_OPENAI_KEY"
KEY = "sk-test-Zq81secretvalue"


def _load_fake_server():
    spec = importlib.util.spec_from_file_location("fake_openai_server", FAKE_SERVER)
    module = importlib.util.module_from_spec(spec)
    sys.modules["fake_openai_server"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


fake = _load_fake_server()


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    return KEY_ENV


def serve(**behaviour):
    return fake.FakeOpenAIServer(fake.FakeServerBehaviour(api_key=KEY, **behaviour))


def generator(server, **options):
    settings = dict(api_key_env=KEY_ENV, max_concurrency=4, timeout_s=60.0, max_retries=3, backoff_s=0.01)
    settings.update(options)
    return OpenAICompatibleGenerator(base_url=server.base_url, model="llava-test", **settings)


def prompts(count):
    return [ChatPrompt(messages=[{"role": "user", "content": f"question {i}"}]) for i in range(count)]


SAMPLING = SamplingParams(max_new_tokens=16, n=3, do_sample=True, temperature=0.7, top_p=0.9, seed=11)


def test_results_in_prompt_order_with_n_per_prompt_and_explicit_params(key_env):
    with serve() as server:
        results = generator(server).generate(prompts(7), SAMPLING)
        payloads = server.state.payloads
    assert results == [[f"question {i}|choice={c}|seed=11" for c in range(3)] for i in range(7)]
    assert len(payloads) == 7  # n travels in one request per prompt
    for payload in payloads:
        assert payload["model"] == "llava-test"
        assert payload["n"] == 3
        assert payload["max_tokens"] == 16
        assert payload["temperature"] == 0.7 and payload["top_p"] == 0.9 and payload["seed"] == 11
        assert "stop" not in payload and "continue_final_message" not in payload


def test_greedy_is_temperature_zero_and_one_request_repeated(key_env):
    params = SamplingParams(max_new_tokens=5, n=4, stop=("|seed",))
    with serve() as server:
        results = generator(server).generate(prompts(2), params)
        payloads = server.state.payloads
    # the stop string is cut client-side too, whatever the server did with it
    assert results == [["question 0|choice=0"] * 4, ["question 1|choice=0"] * 4]
    assert [p["n"] for p in payloads] == [1, 1]
    assert all(p["temperature"] == 0.0 and p["stop"] == ["|seed"] for p in payloads)


def test_server_returning_fewer_choices_is_topped_up_with_new_seeds(key_env):
    with serve(max_choices=2) as server:
        results = generator(server).generate(prompts(1), SamplingParams(max_new_tokens=4, n=5, do_sample=True, seed=3))
        payloads = server.state.payloads
    assert results == [[
        "question 0|choice=0|seed=3", "question 0|choice=1|seed=3",
        "question 0|choice=0|seed=4", "question 0|choice=1|seed=4",
        "question 0|choice=0|seed=5",
    ]]
    assert [p["n"] for p in payloads] == [5, 3, 1]


def test_image_goes_as_square_png_data_url_and_prefix_is_continued(key_env):
    image = Image.new("RGB", (30, 10), (250, 0, 0))
    prompt = ChatPrompt(
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is hidden?"}],
        image=image,
        assistant_prefix="The answer is",
    )
    with serve() as server:
        results = generator(server).generate([prompt], SamplingParams(max_new_tokens=8))
        payload = server.state.payloads[0]
    assert results == [["What is hidden?|choice=0|seed=0"]]
    system, user, assistant = payload["messages"]
    assert system == {"role": "system", "content": "Be brief."}
    assert assistant == {"role": "assistant", "content": "The answer is"}
    assert payload["continue_final_message"] is True and payload["add_generation_prompt"] is False
    image_part, text_part = user["content"]
    assert text_part == {"type": "text", "text": "What is hidden?"}
    url = image_part["image_url"]["url"]
    assert image_part["type"] == "image_url" and url.startswith("data:image/png;base64,")
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert sent.format == "PNG" and sent.size == (30, 30)
    assert sent.convert("RGB").getpixel((0, 0)) == mean_fill() and sent.convert("RGB").getpixel((15, 15)) == (250, 0, 0)


@pytest.mark.parametrize("status", [429, 500, 503])
def test_retries_then_succeeds(key_env, status, caplog):
    caplog.set_level(logging.WARNING, logger="groundflow.generate.openai_compat")
    with serve(fail_first=2, fail_status=status) as server:
        results = generator(server, max_concurrency=1).generate(prompts(2), SamplingParams(max_new_tokens=4))
        statuses = list(server.state.statuses)
    assert results == [["question 0|choice=0|seed=0"], ["question 1|choice=0|seed=0"]]
    assert statuses == [status, status, 200, 200]
    retries = [r for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == 2 and f"HTTP {status}" in retries[0].getMessage()


def test_gives_up_after_max_retries_with_a_clear_error(key_env):
    with serve(fail_first=100, fail_status=500) as server:
        with pytest.raises(GenerationRequestError, match=r"prompt 0: gave up after 3 attempts .*HTTP 500"):
            generator(server, max_retries=2).generate(prompts(1), SamplingParams(max_new_tokens=4))
        assert server.state.requests == 3


def test_client_errors_are_not_retried(key_env):
    with serve(fail_first=100, fail_status=400) as server:
        with pytest.raises(GenerationRequestError, match="request failed: HTTP 400"):
            generator(server).generate(prompts(1), SamplingParams(max_new_tokens=4))
        assert server.state.requests == 1


def _recording_sleeps(backend):
    """Replace the back-off sleep with one that records the delay and does not wait."""
    delays = []

    async def record(delay):
        delays.append(delay)

    backend._sleep = record
    return delays


def test_retry_after_header_is_respected(key_env):
    with serve(fail_first=1, fail_status=429, retry_after="7") as server:
        backend = generator(server, backoff_s=0.001)
        delays = _recording_sleeps(backend)
        assert backend.generate(prompts(1), SamplingParams(max_new_tokens=4)) == [["question 0|choice=0|seed=0"]]
        assert server.state.statuses == [429, 200]
    assert delays == [7.0]  # the server's Retry-After, not the 1 ms back-off


def test_backoff_grows_exponentially_between_retries(key_env):
    with serve(fail_first=3, fail_status=503) as server:
        backend = generator(server, backoff_s=1.0, max_retries=3)
        delays = _recording_sleeps(backend)
        backend.generate(prompts(1), SamplingParams(max_new_tokens=4))
    assert len(delays) == 3
    for attempt, delay in enumerate(delays):
        assert 0.5 * 2 ** attempt <= delay <= 2 ** attempt  # jitter scales into [0.5, 1]


def test_timeout_is_retried(key_env, caplog):
    """The first request is never answered: only the client's timeout can end it."""
    caplog.set_level(logging.WARNING, logger="groundflow.generate.openai_compat")
    with serve(hang_first=1) as server:
        results = generator(server, timeout_s=0.5, max_retries=5).generate(prompts(1), SamplingParams(max_new_tokens=4))
        assert server.state.requests >= 2
        assert server.state.statuses[-1] == 200
    assert results == [["question 0|choice=0|seed=0"]]
    assert any("prompt 0: timed out" in r.getMessage() for r in caplog.records)


def test_a_server_that_never_answers_exhausts_the_retries(key_env):
    with serve(hang_first=100) as server:
        with pytest.raises(GenerationRequestError, match=r"gave up after 2 attempts .*timed out"):
            generator(server, timeout_s=0.2, max_retries=1).generate(prompts(1), SamplingParams(max_new_tokens=4))
        assert server.state.requests == 2 and server.state.statuses == []


def test_in_flight_requests_reach_but_never_exceed_max_concurrency(key_env):
    """The server holds every request until 3 are in flight at once: the call completes only if
    the client does run 3 concurrently, and the peak count shows it never runs more."""
    with serve(gate_in_flight=3) as server:
        results = generator(server, max_concurrency=3, max_retries=0).generate(prompts(12), SAMPLING)
        peak = server.state.max_in_flight
        assert server.state.requests == 12
    assert len(results) == 12 and all(len(r) == 3 for r in results)
    assert peak == 3


def test_one_slot_never_reaches_a_gate_of_two(key_env):
    """The gate's negative: a client limited to one request at a time cannot open it."""
    with serve(gate_in_flight=2, gate_wait_s=0.5) as server:
        with pytest.raises(GenerationRequestError, match="gate of 2 concurrent requests never reached"):
            generator(server, max_concurrency=1, max_retries=0).generate(prompts(3), SAMPLING)
        assert server.state.max_in_flight == 1


def test_missing_key_variable_is_named_in_the_error(monkeypatch):
    monkeypatch.delenv("GROUNDFLOW_UNSET_KEY", raising=False)
    with pytest.raises(MissingAPIKeyError, match="GROUNDFLOW_UNSET_KEY"):
        OpenAICompatibleGenerator(base_url="http://127.0.0.1:9/v1", model="m", api_key_env="GROUNDFLOW_UNSET_KEY")


def test_wrong_key_fails_without_showing_either_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-wrong-key-777")
    with serve() as server:
        with pytest.raises(GenerationRequestError, match="HTTP 401") as raised:
            generator(server).generate(prompts(1), SamplingParams(max_new_tokens=4))
    assert "sk-wrong-key-777" not in str(raised.value) and KEY not in str(raised.value)


def test_key_never_appears_in_logs_repr_or_description(key_env, caplog):
    caplog.set_level(logging.DEBUG)  # the SDK's and httpx's debug logs included
    with serve(fail_first=1, fail_status=429) as server:
        backend = generator(server)
        backend.generate(prompts(2), SamplingParams(max_new_tokens=4))
    assert caplog.records  # something was logged, so the check below means something
    assert KEY not in caplog.text
    assert KEY not in repr(backend) and KEY not in str(backend.describe())
    assert KEY not in repr(vars(backend))
    assert backend.describe()["api_key_env"] == KEY_ENV


def test_sync_generate_refuses_a_running_loop(key_env):
    backend = OpenAICompatibleGenerator(base_url="http://127.0.0.1:9/v1", model="m", api_key_env=KEY_ENV)

    async def inside():
        backend.generate(prompts(1), SamplingParams(max_new_tokens=4))

    with pytest.raises(RuntimeError, match="agenerate"):
        asyncio.run(inside())


def test_make_generator_builds_the_openai_backend(key_env):
    with serve() as server:
        backend = make_generator(
            {"backend": "openai", "base_url": server.base_url, "served_model": "served-llava",
             "api_key_env": KEY_ENV, "max_concurrency": 2, "timeout_s": 5, "max_retries": 1},
            kind="vision",
        )
        assert backend.generate(prompts(1), SamplingParams(max_new_tokens=4)) == [["question 0|choice=0|seed=0"]]
        assert server.state.payloads[0]["model"] == "served-llava"
    assert backend.describe()["max_concurrency"] == 2 and backend.describe()["backend"] == "openai"


def test_models_endpoint_lists_the_served_model(key_env):
    import json
    import urllib.request

    with serve(model="served-llm") as server:
        request = urllib.request.Request(f"{server.base_url}/models", headers={"Authorization": f"Bearer {KEY}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            body = json.loads(response.read())
    assert [m["id"] for m in body["data"]] == ["served-llm"]


LINES = LineChoices(allowed=("a dog -> dog", "the (big) car -> car", "dog's bowl -> bowl"), end_marker="<end>",
                    min_lines=1, max_lines=2)


def test_line_choices_regex_accepts_exactly_the_allowed_answers():
    pattern = re.compile(line_choices_regex(LINES))
    assert pattern.fullmatch("1. a dog -> dog\n<end>")
    assert pattern.fullmatch("1. the (big) car -> car\n2. dog's bowl -> bowl\n<end>")
    assert not pattern.fullmatch("<end>")  # min_lines 1
    assert not pattern.fullmatch("1. a dog -> dog\n2. a dog -> dog\n3. a dog -> dog\n<end>")  # max_lines 2
    assert not pattern.fullmatch("1. a cat -> cat\n<end>")
    assert not pattern.fullmatch("1. the big car -> car\n<end>")  # the brackets are literal
    assert not pattern.fullmatch("1. a dog -> dog\n")  # the end marker is required
    assert regex_escape("a.b*c\n") == "a\\.b\\*c\\n"


@pytest.mark.parametrize("mode", ["structured_outputs", "guided"])
def test_guided_decoding_sends_choices_and_line_regexes(key_env, mode):
    choice_prompt = ChatPrompt(messages=[{"role": "user", "content": "which?"}], assistant_prefix="Type:",
                               choices=[" animal", " object"])
    line_prompt = ChatPrompt(messages=[{"role": "user", "content": "list"}], assistant_prefix="<begin>\n",
                             lines=LINES)
    with serve() as server:
        backend = generator(server, guided_decoding=mode)
        assert backend.features == frozenset({"choices", "lines"})
        chosen = backend.generate([choice_prompt], SamplingParams(max_new_tokens=4))
        backend.generate([line_prompt], SamplingParams(max_new_tokens=40))
        choice_payload, line_payload = server.state.payloads
    assert chosen[0][0] in (" animal", " object")
    if mode == "structured_outputs":
        assert choice_payload["structured_outputs"] == {"choice": [" animal", " object"]}
        assert line_payload["structured_outputs"] == {"regex": line_choices_regex(LINES)}
    else:
        assert choice_payload["guided_choice"] == [" animal", " object"]
        assert line_payload["guided_regex"] == line_choices_regex(LINES)
    assert line_payload["continue_final_message"] is True
    assert backend.describe()["guided_decoding"] == mode


def test_without_guided_decoding_closed_answers_and_scoring_are_refused(key_env):
    backend = OpenAICompatibleGenerator(base_url="http://127.0.0.1:9/v1", model="m", api_key_env=KEY_ENV)
    assert backend.features == frozenset()
    closed = ChatPrompt(messages=[{"role": "user", "content": "list"}], lines=LINES)
    with pytest.raises(UnsupportedFeatureError, match="lines .*guided_decoding"):
        backend.generate([closed], SamplingParams(max_new_tokens=4))
    with pytest.raises(UnsupportedFeatureError, match=r"http://127.0.0.1:9/v1 \(backend 'openai'\) cannot score choices"):
        backend.score_choices(prompts(1), [["a", "b"]])
    with pytest.raises(ValueError, match="guided_decoding must be one of"):
        OpenAICompatibleGenerator(base_url="http://x:1/v1", model="m", api_key_env=KEY_ENV, guided_decoding="outlines")

"""Pure parts of the generation backends: parameters, message formats, back-off, top-p filtering."""

import base64
import io

import pytest
import torch
from PIL import Image
from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from groundflow.generate.backends import ChatPrompt, SamplingParams, check_result_shape
from groundflow.generate.openai_compat import (
    backoff_delay,
    image_data_url,
    openai_messages,
    parse_retry_after,
    request_arguments,
)
from groundflow.generate.sampling import NucleusLogitsWarper, sampling_warpers
from groundflow.generate.vision import content_part_messages


def test_describe_is_plain_json_values():
    params = SamplingParams(max_new_tokens=384, n=16, do_sample=True, temperature=1.0, top_p=0.9, seed=3,
                            stop=["</s>", "\n\n"])
    assert params.stop == ("</s>", "\n\n")  # a list from config becomes a tuple: the params stay hashable
    assert params.describe() == {
        "max_new_tokens": 384, "n": 16, "do_sample": True, "temperature": 1.0, "top_p": 0.9, "seed": 3,
        "stop": ["</s>", "\n\n"], "top_k": 0, "repetition_penalty": 1.0,
    }
    assert hash(params) == hash(SamplingParams(384, 16, True, 1.0, 0.9, 3, ("</s>", "\n\n")))


def test_defaults_are_greedy_single_sample():
    assert SamplingParams(max_new_tokens=8).describe() == {
        "max_new_tokens": 8, "n": 1, "do_sample": False, "temperature": 1.0, "top_p": 1.0, "seed": 0, "stop": [],
        "top_k": 0, "repetition_penalty": 1.0,
    }


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_new_tokens=0), "max_new_tokens must be >= 1"),
        (dict(max_new_tokens=4, n=0), "n must be >= 1"),
        (dict(max_new_tokens=4, do_sample=True, temperature=0.0), "temperature > 0"),
        (dict(max_new_tokens=4, top_p=0.0), "top_p must be in"),
        (dict(max_new_tokens=4, top_p=1.5), "top_p must be in"),
        (dict(max_new_tokens=4, stop=("",)), "non-empty"),
        (dict(max_new_tokens=4, top_k=-1), "top_k must be an integer >= 0"),
        (dict(max_new_tokens=4, top_k=2.5), "top_k must be an integer >= 0"),
        (dict(max_new_tokens=4, repetition_penalty=0.0), "repetition_penalty must be > 0"),
    ],
)
def test_invalid_params_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


def test_a_bare_string_is_not_a_stop_list():
    with pytest.raises(TypeError, match="not the string"):
        SamplingParams(max_new_tokens=4, stop="</s>")


def test_greedy_ignores_temperature_zero():
    assert SamplingParams(max_new_tokens=4, temperature=0.0).do_sample is False


def test_check_result_shape():
    check_result_shape([["a", "b"], ["c", "d"]], ["p", "q"], 2)
    with pytest.raises(AssertionError, match="prompt 1 got 1 results, expected n=2"):
        check_result_shape([["a", "b"], ["c"]], ["p", "q"], 2)
    with pytest.raises(AssertionError, match="2 prompts but 1 result lists"):
        check_result_shape([["a", "b"]], ["p", "q"], 2)


def test_backoff_doubles_with_jitter_and_cap():
    assert backoff_delay(0, 0.5, jitter=1.0) == 0.5
    assert backoff_delay(1, 0.5, jitter=1.0) == 1.0
    assert backoff_delay(3, 0.5, jitter=1.0) == 4.0
    assert backoff_delay(3, 0.5, jitter=0.0) == 2.0  # the jitter factor spans [0.5, 1]
    assert backoff_delay(2, 0.5, jitter=0.5) == 1.5
    assert backoff_delay(20, 0.5, jitter=1.0) == 30.0  # capped
    assert backoff_delay(0, 0.5, jitter=1.0, retry_after_s=7.0) == 7.0  # the server's wish wins
    assert backoff_delay(0, 0.5, jitter=1.0, retry_after_s=600.0) == 30.0  # within the cap
    with pytest.raises(ValueError):
        backoff_delay(0, 0.5, jitter=1.5)


def test_parse_retry_after():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0.25") == 0.25
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: no wait


def test_openai_messages_put_the_image_first_in_the_first_user_turn():
    prompt = ChatPrompt(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is hidden?\n"},
            {"role": "assistant", "content": "A cat."},
            {"role": "user", "content": "Sure?"},
        ],
        assistant_prefix="Yes,",
    )
    assert openai_messages(prompt, "data:image/png;base64,AAAA") == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            {"type": "text", "text": "What is hidden?"},
        ]},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": "Sure?"},
        {"role": "assistant", "content": "Yes,"},
    ]
    plain = ChatPrompt(messages=[{"role": "user", "content": "hi"}])
    assert openai_messages(plain) == [{"role": "user", "content": "hi"}]
    with pytest.raises(ValueError, match="needs a user turn"):
        openai_messages(ChatPrompt(messages=[{"role": "system", "content": "x"}]), "data:,")


def test_request_arguments_state_every_parameter():
    messages = [{"role": "user", "content": "hi"}]
    sampled = SamplingParams(max_new_tokens=384, n=16, do_sample=True, temperature=1.0, top_p=0.9, seed=2, stop=("###",))
    assert request_arguments(messages, sampled, model="m", n=16, seed=2, continue_final_message=False) == {
        "model": "m", "messages": messages, "n": 16, "max_tokens": 384, "temperature": 1.0, "top_p": 0.9,
        "seed": 2, "stop": ["###"],
    }
    # vLLM's top_k and repetition_penalty go only when they do something (a plain OpenAI API has neither)
    pinned = SamplingParams(max_new_tokens=8, n=2, do_sample=True, top_p=0.95, top_k=50, repetition_penalty=1.05)
    assert request_arguments(messages, pinned, model="m", n=2, seed=0, continue_final_message=False)["extra_body"] == {
        "top_k": 50, "repetition_penalty": 1.05}
    greedy_k = SamplingParams(max_new_tokens=8, top_k=50)
    assert "extra_body" not in request_arguments(messages, greedy_k, model="m", n=1, seed=0, continue_final_message=False)
    greedy = SamplingParams(max_new_tokens=8, temperature=0.7, top_p=0.5)
    assert request_arguments(messages, greedy, model="m", n=1, seed=0, continue_final_message=True) == {
        "model": "m", "messages": messages, "n": 1, "max_tokens": 8, "temperature": 0.0, "top_p": 1.0, "seed": 0,
        "extra_body": {"continue_final_message": True, "add_generation_prompt": False},
    }


def test_image_data_url_is_a_lossless_square_png():
    image = Image.new("RGB", (4, 2), (10, 20, 30))
    url = image_data_url(image)
    assert url.startswith("data:image/png;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")
    assert decoded.size == (4, 4)
    assert decoded.getpixel((0, 0)) == (122, 116, 104) and decoded.getpixel((0, 1)) == (10, 20, 30)
    unpadded = image_data_url(image.convert("L"), pad_square=False)
    assert Image.open(io.BytesIO(base64.b64decode(unpadded.split(",", 1)[1]))).size == (4, 2)


def test_content_part_messages():
    # the image turn's text is stripped, as training converts it; the others are left alone
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q\n"}, {"role": "user", "content": "R\n"}]
    assert content_part_messages(messages, with_image=True) == [
        {"role": "system", "content": [{"type": "text", "text": "S"}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q"}]},
        {"role": "user", "content": [{"type": "text", "text": "R\n"}]},
    ]
    assert content_part_messages(messages[1:2], with_image=False) == [
        {"role": "user", "content": [{"type": "text", "text": "Q\n"}]}
    ]
    with pytest.raises(ValueError, match="needs a user turn"):
        content_part_messages(messages[:1], with_image=True)


# ---------------------------------------------------------------- top-p without the full sort


def _same_as_transformers(logits: torch.Tensor, top_p: float, min_tokens_to_keep: int = 1) -> NucleusLogitsWarper:
    fast = NucleusLogitsWarper(top_p, min_tokens_to_keep=min_tokens_to_keep, min_fast_scores=0)
    reference = TopPLogitsWarper(top_p, min_tokens_to_keep=min_tokens_to_keep)
    got, expected = fast(None, logits.clone()), reference(None, logits.clone())
    # the same kept set and the same scores on it (bit for bit), so the same sampled tokens
    torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True)
    return fast


@pytest.mark.parametrize("vocab", [2, 7, 817, 4096])
@pytest.mark.parametrize("top_p", [0.05, 0.5, 0.9, 0.95, 0.999])
def test_nucleus_keeps_what_transformers_keeps_on_random_logits(vocab, top_p):
    generator = torch.Generator().manual_seed(vocab)
    for scale in (0.01, 1.0, 8.0):  # nearly flat (a random tiny model) to peaked (a trained one)
        logits = torch.randn(24, vocab, generator=generator) * scale
        fast = _same_as_transformers(logits, top_p)
        assert fast.rows_referred == 0  # continuous logits: decided without transformers' sort
        _same_as_transformers(logits, top_p, min_tokens_to_keep=3)


def test_nucleus_ties_across_the_boundary_go_to_transformers():
    generator = torch.Generator().manual_seed(1)
    referred = 0
    for top_p in (0.3, 0.5, 0.8, 0.9):
        logits = (torch.randn(64, 50, generator=generator) * 2).round() / 2  # few distinct values: many ties
        referred += _same_as_transformers(logits, top_p).rows_referred
    assert referred > 0
    # uniform logits: the boundary falls inside one tied block, at a cumulative mass near 1 - top_p
    for vocab in (4, 10, 100):
        for top_p in (0.1, 0.25, 0.5, 0.75, 0.9):
            _same_as_transformers(torch.zeros(3, vocab), top_p)


def test_nucleus_edge_rows():
    minus_inf = float("-inf")
    masked = torch.randn(6, 40, generator=torch.Generator().manual_seed(2))
    masked[:, ::3] = minus_inf  # a constraint processor ran first
    _same_as_transformers(masked, 0.9)
    one_left = torch.full((2, 10), minus_inf)
    one_left[0, 3], one_left[1, 7] = 1.0, -2.0
    _same_as_transformers(one_left, 0.5)
    _same_as_transformers(torch.tensor([[0.0]]), 0.9)
    dominant = torch.zeros(2, 30)
    dominant[:, 5] = 40.0  # every other token's probability underflows to 0
    _same_as_transformers(dominant, 0.99)
    broken = torch.randn(3, 20, generator=torch.Generator().manual_seed(3))
    broken[1, 4] = float("nan")
    broken[2, 2] = float("inf")
    _same_as_transformers(broken, 0.9)
    _same_as_transformers(torch.randn(4, 30, dtype=torch.float64), 0.7)  # not float32: transformers itself


def test_nucleus_leaves_small_batches_to_transformers():
    warper = NucleusLogitsWarper(0.9)
    reference, seen = warper.reference, []
    warper.reference = lambda ids, scores: seen.append(tuple(scores.shape)) or reference(ids, scores)
    warper(None, torch.randn(4, 817))  # a few rows of a small vocabulary: torch's sort is as quick
    warper(None, torch.randn(16, 817))
    assert seen == [(4, 817)]


def test_nucleus_refuses_bad_arguments():
    with pytest.raises(ValueError, match="top_p must be in"):
        NucleusLogitsWarper(0.0)
    with pytest.raises(ValueError, match="min_tokens_to_keep"):
        NucleusLogitsWarper(0.9, min_tokens_to_keep=0)


def test_sampling_warpers_follow_generate_order():
    assert sampling_warpers(do_sample=False, temperature=0.7, top_p=0.9) == []
    assert sampling_warpers(do_sample=True, temperature=1.0, top_p=1.0) == []
    warpers = sampling_warpers(do_sample=True, temperature=0.7, top_p=0.9)
    assert [type(w) for w in warpers] == [TemperatureLogitsWarper, NucleusLogitsWarper]
    assert warpers[0].temperature == 0.7 and warpers[1].top_p == 0.9
    # generate()'s own order: temperature, then top-k, then top-p
    warpers = sampling_warpers(do_sample=True, temperature=0.7, top_p=0.9, top_k=50)
    assert [type(w) for w in warpers] == [TemperatureLogitsWarper, TopKLogitsWarper, NucleusLogitsWarper]
    assert warpers[1].top_k == 50
    assert sampling_warpers(do_sample=False, temperature=1.0, top_p=1.0, top_k=50) == []

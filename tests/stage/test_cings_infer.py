"""CINGS inference on a tiny random Llama with Llama-3's tokenizer kind and Llama-3.1's chat template.

Checks that the pre-filled prompt is exactly the training text cut after `## Answer` (so the model
continues where training taught it to answer), that the pre-fill is what the model continues
from, and that batched greedy generation equals one-prompt-at-a-time greedy generation.
"""

import pandas as pd
import pytest

from groundflow.cings.data import training_conversation
from groundflow.cings.eval_fixture import eval_fixture_texts, eval_records
from groundflow.cings.inference import (
    SETTINGS,
    RawEntry,
    build_prompt,
    infer_setting,
    prompt_token_counts,
    validate_records,
)
from groundflow.generate.backends import ChatPrompt, SamplingParams, make_generator
from groundflow.generate.text import encode_prompts, render_prompts
from groundflow.models.causal_lm import build_tiny_causal_lm
from groundflow.config import load_schema
from groundflow.train.conversations import render_conversation
from reference.decoding import argmax_decode

RAW = eval_records(12)
# training's system prompt: the config default of cings.data.system_prompt
SYSTEM = load_schema()["properties"]["cings"]["properties"]["data"]["properties"]["system_prompt"]["default"]


@pytest.fixture(scope="module")
def records():
    result = validate_records(RawEntry(i + 1, r) for i, r in enumerate(RAW))
    assert result.counts["rejected"] == 0
    return result.kept


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    texts = eval_fixture_texts()
    # "llama3": Llama-3's pre-tokenizer and Llama-3.1-Instruct's chat template, as the demo's CINGS LM
    return build_tiny_causal_lm(tmp_path_factory.mktemp("cings") / "tiny-llama3", seed=0, texts=texts, flavor="llama3")


def _generator(model_dir, batch_size):
    return make_generator({"backend": "hf", "batch_size": batch_size, "model": {"path": str(model_dir), "device": "cpu"}},
                          kind="text")


@pytest.fixture(scope="module")
def batched(model_dir):
    return _generator(model_dir, 4)


def test_prefilled_prompt_is_the_training_text_cut_after_the_answer_marker(batched, records):
    tokenizer = batched.tokenizer
    record = records.iloc[0].to_dict()
    parts = build_prompt(record, "prefilled_1doc", ndocs=3, system_prompt=SYSTEM)
    prompt = render_prompts(tokenizer, [list(parts.messages)], parts.assistant_prefix)[0]
    answer = record["answers"][0]
    # The CINGS training example of the same question and passage (marker form -> `## Context
    # {passage} ## Answer {answer}`), rendered as the SFT trainer renders it.
    passage = parts.assistant_prefix.removeprefix("## Context ").removesuffix(" ## Answer")
    training_record = {"input": record["question"], "output": f"[Ex] {passage} [Cs] {answer} [Ce]"}
    conversation = training_conversation(training_record, "context", SYSTEM)
    training = render_conversation(conversation, tokenizer)
    assert prompt.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date")
    assert prompt.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n## Context France France is a country"
                           " in Western Europe. Its capital and largest city is Paris. ## Answer")
    assert training.text == prompt + f" {answer}<|eot_id|>"
    # token level too: the prompt's ids are a prefix of the training ids, the answer follows
    prompt_ids = encode_prompts(tokenizer, [prompt])[0]
    training_ids = encode_prompts(tokenizer, [training.text])[0]
    assert training_ids[: len(prompt_ids)] == prompt_ids
    assert tokenizer.decode(training_ids[len(prompt_ids):], skip_special_tokens=True) == f" {answer}"


def test_the_model_continues_the_prefill(batched, records):
    record = records.iloc[3].to_dict()
    params = SamplingParams(max_new_tokens=6)
    result = infer_setting(records.iloc[3:4], batched, params, "prefilled_1doc", ndocs=3, system_prompt=SYSTEM)
    parts = build_prompt(record, "prefilled_1doc", ndocs=3, system_prompt=SYSTEM)
    with_prefill = render_prompts(batched.tokenizer, [list(parts.messages)], parts.assistant_prefix)[0]
    without = render_prompts(batched.tokenizer, [list(parts.messages)], "")[0]
    expected = argmax_decode(batched.model, batched.tokenizer, with_prefill, 6, stop_token="<|eot_id|>")
    assert result.kept.iloc[0]["generation"] == expected
    assert expected != argmax_decode(batched.model, batched.tokenizer, without, 6, stop_token="<|eot_id|>")


def test_batched_generation_equals_one_at_a_time(model_dir, batched, records):
    one_at_a_time = _generator(model_dir, 1)
    params = SamplingParams(max_new_tokens=8)
    for setting in SETTINGS:
        together = infer_setting(records, batched, params, setting, ndocs=3, system_prompt=SYSTEM)
        alone = infer_setting(records, one_at_a_time, params, setting, ndocs=3, system_prompt=SYSTEM)
        assert len(together.kept) == len(records) and together.rejects.empty
        pd.testing.assert_frame_equal(together.kept, alone.kept)
        # greedy output is a function of the prompt only: different settings see different prompts
        assert together.kept["setting"].eq(setting).all()
    n_docs = {s: infer_setting(records.iloc[:2], batched, params, s, ndocs=3, system_prompt=SYSTEM).kept["n_docs"].tolist()
              for s in SETTINGS}
    assert n_docs == {"prefilled_1doc": [1, 1], "prefilled_kdocs": [3, 3], "closed_book": [0, 0],
                      "context_in_input": [3, 3]}


def test_prompts_over_the_token_limit_are_rejected(batched, records):
    parts = [build_prompt(r, "prefilled_kdocs", ndocs=3, system_prompt=SYSTEM) for r in records.to_dict("records")]
    counts = prompt_token_counts(batched, [ChatPrompt(messages=list(p.messages), assistant_prefix=p.assistant_prefix)
                                           for p in parts])
    limit = sorted(counts)[len(counts) // 2]
    result = infer_setting(records, batched, SamplingParams(max_new_tokens=2), "prefilled_kdocs", ndocs=3,
                           system_prompt=SYSTEM, max_prompt_tokens=limit)
    too_long = {str(i) for i, n in zip(records["id"], counts) if n > limit}
    assert too_long and set(result.rejects["id"]) == too_long
    assert set(result.kept["id"]) == set(records["id"]) - too_long
    assert all(reason.endswith(f"tokens, over max_prompt_tokens={limit}") for reason in result.rejects["reason"])


def test_sentence_completion_prompt_through_the_chat_template(batched):
    from groundflow.cings.eval_fixture import kind_records
    from groundflow.cings.inference import load_instruction

    record = validate_records([RawEntry(1, kind_records("based_swde")[0])]).kept.iloc[0].to_dict()
    instruction = load_instruction("sentence_completion_newline")
    parts = build_prompt(record, "prefilled_1doc", ndocs=1, system_prompt=SYSTEM, prompt="sentence_completion_newline",
                         instruction=instruction.text)
    prompt = render_prompts(batched.tokenizer, [list(parts.messages)], parts.assistant_prefix)[0]
    user = f"<|start_header_id|>user<|end_header_id|>\n\n{instruction.text.strip()}<|eot_id|>"
    assert user in prompt
    assert prompt.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n## Context The Silent Harbor\n"
                           "Director: Mara Lindqvist\nRelease year: 2011\nGenre: Drama\nRunning time: 118 minutes\n"
                           "The Silent Harbor director: ## Answer")
    result = infer_setting(pd.DataFrame([record]), batched, SamplingParams(max_new_tokens=3), "prefilled_1doc", ndocs=1,
                           system_prompt=SYSTEM, prompt="sentence_completion_newline", instruction=instruction.text)
    assert len(result.kept) == 1 and result.kept.iloc[0]["n_docs"] == 1

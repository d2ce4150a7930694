"""TSST search on a tiny LLaVA: the batched search returns the serial reference's chains and scores.

The tiny LLaVA is random; its lm_head gets a bias towards '.', EOS and word starts so continuations
end sentences within a few tokens (otherwise every row runs out of tokens and the search never
grows a chain). It runs in float64 so a padded batch and a lone request give the same logits to far
below any sampling boundary. Equality is shown under sampling with per-row seeded generators
(LlavaPolicy's own sampling step) and under greedy decoding; the value side is a tiny LLaVA read at
the closing EOS: groundflow.models.value_model's ValueScorer (interface 3) with a fresh head.
"""
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from groundflow.models.llava import build_tiny_llava, load_llava
from groundflow.models.spec import ModelSpec
from groundflow.models.value_model import ValueScorer, load_value_model
from groundflow.tsst.prompts import load_question_prompts
from groundflow.tsst.search import ExpansionRequest, SearchConfig, SearchQuestion, search_questions
from groundflow.tsst.search_models import LlavaPolicy, policy_prompt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from reference.tsst_search import TextScorer, reference_search  # noqa: E402

TEXTS = ["Step 1: the cat is red. Step 2: the box is 3.5 cm wide. Final Answer: A. red",
         "The dog sits on a blue mat. It looks at the sky."]


def sentence_prone(model, tokenizer, *, period=3.0, eos=2.5, word_start=1.5):
    """Give the random lm_head a bias so sentences end (and sometimes the answer) within a few tokens."""
    head = model.lm_head
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        biased.weight.copy_(head.weight)
        biased.bias.zero_()
        biased.bias[tokenizer.convert_tokens_to_ids(".")] = period
        biased.bias[tokenizer.eos_token_id] = eos
        for token, index in tokenizer.get_vocab().items():
            if token.startswith("Ġ"):
                biased.bias[index] += word_start
    model.lm_head = biased
    return model


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    path = build_tiny_llava(tmp_path_factory.mktemp("tsst-search") / "tiny-llava", seed=0, texts=TEXTS)
    model, processor = load_llava(ModelSpec.from_config({"path": str(path), "device": "cpu"}))
    return sentence_prone(model, processor.tokenizer).to(torch.float64), processor, path


@pytest.fixture(scope="module")
def value_scorer(llava):
    value_model, value_processor = load_value_model({"path": str(llava[2]), "device": "cpu"}, head_seed=1)
    value_model.to(torch.float64).score_head.float()  # the head stays fp32, as the value model keeps it
    return ValueScorer(value_model, value_processor, batch_size=8)


def same_results(batched, serial):
    """Equal chains and counts; values to float tolerance (the scorer's padded batches)."""
    assert [(r["id"], r["rounds"], r["restarts"], r["policy_calls"], r["value_calls"]) for r in batched] == \
        [(r["id"], r["rounds"], r["restarts"], r["policy_calls"], r["value_calls"]) for r in serial]
    for b, s in zip(batched, serial):
        assert [(c["text"], c["end"]) for c in b["chains"]] == [(c["text"], c["end"]) for c in s["chains"]]
        assert [c["score"] for c in b["chains"]] == pytest.approx([c["score"] for c in s["chains"]], abs=1e-6)


class CountingScorer:
    def __init__(self, scorer):
        self.scorer, self.calls = scorer, 0

    def score(self, *rows):
        self.calls += 1
        return self.scorer.score(*rows)


def questions(n=3):
    colours = [(200, 30, 30), (20, 30, 220), (30, 200, 30), (90, 90, 90)]
    return [SearchQuestion(f"q{i}", f"What colour is object {i}?", ("red", "blue", "green"),
                           Image.new("RGB", (64, 40 + 8 * i), colours[i % 4]) if i != 1 else None)
            for i in range(n)]


def test_batched_search_equals_the_serial_reference_under_seeded_sampling(llava, value_scorer):
    model, processor, _ = llava
    config = SearchConfig(branch=2, n_consistency=2, num_beams=1, max_step_tokens=8, max_rounds=5)
    scorer = CountingScorer(value_scorer)
    batched_policy = LlavaPolicy(model, processor, config)
    batched = search_questions(questions(), batched_policy, scorer, config, seed=3)
    batched_value_calls = scorer.calls
    serial_policy = LlavaPolicy(model, processor, config, share_prefill=False)  # G prompt copies, as the original
    serial = [reference_search(q, serial_policy, scorer, config, seed=3) for q in questions()]
    same_results(batched, serial)
    # the search did something worth comparing: chains of several sentences, some finished at EOS
    chains = [c for r in batched for c in r["chains"]]
    assert len(chains) >= 3 and any(c["end"] == "eos" for c in chains)
    assert any(r["rounds"] > 1 for r in batched)
    # batched: one policy and one value call per round for all questions; serial: one per chain / prefix
    assert batched_policy.calls == max(r["rounds"] for r in batched)
    assert batched_value_calls == max(r["rounds"] for r in batched)
    assert serial_policy.calls == sum(r["policy_calls"] for r in serial)
    assert scorer.calls - batched_value_calls == sum(r["value_calls"] for r in serial)
    # another seed samples other continuations
    assert search_questions(questions(), LlavaPolicy(model, processor, config), scorer, config, seed=4) != batched


def test_greedy_batched_equals_serial(llava):
    model, processor, _ = llava
    config = SearchConfig(branch=2, n_consistency=2, num_beams=1, max_step_tokens=8, max_rounds=4, temperature=0)
    policy = LlavaPolicy(model, processor, config)
    batched = search_questions(questions(), policy, TextScorer(), config, seed=0)
    assert policy.rows_decoded == sum(r["policy_calls"] for r in batched)  # greedy: one row per request
    serial = [reference_search(q, LlavaPolicy(model, processor, config), TextScorer(), config, seed=0)
              for q in questions()]
    assert batched == serial


def _request(question, chain="", seed=0):
    prompt = load_question_prompts().render(question.question, question.choices, has_image=question.image is not None)
    return ExpansionRequest(question.id, prompt, question.image, chain, seed)


def test_g_rows_per_request_each_image_encoded_once_and_requests_independent_of_the_batch(llava):
    model, processor, _ = llava
    config = SearchConfig(num_beams=2, max_step_tokens=6)  # G = 4
    policy = LlavaPolicy(model, processor, config, batch_rows=5)
    qs = questions(3)
    requests = [_request(qs[0], "", 1), _request(qs[0], "Step 1: it is red.", 2), _request(qs[1], "", 3),
                _request(qs[2], "", 4)]
    together = policy.propose(requests)
    assert policy.rows_decoded == 4 * 4
    assert policy.images_encoded == 2  # q0 (two requests) and q2; q1 has no image
    assert all(len(e.proposals) <= 4 for e in together)
    alone = LlavaPolicy(model, processor, config).propose([requests[2]])
    assert alone == [together[2]]


def test_policy_prompt_continues_the_open_turn_unless_the_original_is_asked_for(llava):
    _, processor, _ = llava
    eos = processor.tokenizer.eos_token
    root = policy_prompt(processor, "Which colour?", "", has_image=True)
    assert root.endswith("USER: <image>\nWhich colour? ASSISTANT:")
    deeper = policy_prompt(processor, "Which colour?", "Step 1: it is red.", has_image=True)
    assert deeper == root + " Step 1: it is red." and eos not in deeper
    closed = policy_prompt(processor, "Which colour?", "Step 1: it is red.", has_image=True, closes_turn=True)
    assert closed == deeper + eos
    assert "<image>" not in policy_prompt(processor, "Which colour?", "", has_image=False)


def test_a_continuation_ending_at_eos_keeps_its_unterminated_sentence(llava):
    model, processor, _ = llava
    ids = processor.tokenizer("Final Answer: A. red", add_special_tokens=False)["input_ids"]
    kept = LlavaPolicy(model, processor, SearchConfig())._at_eos(ids)
    assert kept == ("Final Answer: A. red", True, False)
    original = LlavaPolicy(model, processor, SearchConfig(keep_eos_sentence=False, cut="period"))
    assert original._at_eos(ids) == ("Final Answer: A.", False, False)  # the period cut; "red" is lost
    unterminated = processor.tokenizer("The answer is red", add_special_tokens=False)["input_ids"]
    assert original._at_eos(unterminated) == (None, False, True)
    assert LlavaPolicy(model, processor, SearchConfig())._at_eos([]) == (None, False, True)


def test_direct_evaluation_asks_the_policy_as_the_search_and_training_do(llava):
    """The direct answer's prompt (the shared vision generator's render of verify.direct_prompt) is
    the search's policy prompt, which is the training example's user turn: the question prompt ends
    in a newline, which training strips from an image turn and a plain render kept."""
    from groundflow.generate.vision import render_vision_prompts
    from groundflow.tsst.prompts import CONVERSATION_FORMAT
    from groundflow.tsst.verify import direct_prompt

    processor = llava[1]
    prompts = load_question_prompts()
    question = {"question": "Which shape is red?", "choices": ["circle", "square"]}
    for image in (Image.new("RGB", (8, 8)), None):
        has_image = image is not None
        text = prompts.render(question["question"], question["choices"], has_image=has_image)
        assert text.endswith("\n") or not has_image  # what made the two differ
        chat = direct_prompt(question, prompts, image)
        rendered = render_vision_prompts(processor, [chat.messages], [has_image], conversation_format=CONVERSATION_FORMAT)[0]
        assert rendered == policy_prompt(processor, text, "", has_image=has_image)

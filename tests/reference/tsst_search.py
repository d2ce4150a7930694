"""TSST's search as the original runs it: one question at a time, one policy call per kept chain,
one value forward per candidate (MLLM_evaluator.beam_sample), with our config and seed semantics.

The batched `groundflow.tsst.search.search_questions` must return the same chains and scores for the
same seed (tests/stage/test_tsst_search.py); bench/tsst_search.py times the two.

Also here: `sentence_prone_checkpoint`, which makes a tiny random LLaVA end sentences within a few
tokens (tests and the bench need chains that grow and finish), and `TextScorer`, a value scorer obeying interface 3 (`score(prompts, prefixes, images, groups)`)
whose value is a deterministic function of the prefix text, for tests without a value model.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import torch
from transformers import AutoTokenizer, LlavaConfig, LlavaForConditionalGeneration

from groundflow.tsst.prompts import load_question_prompts
from groundflow.tsst.search import (Chain, ExpansionRequest, SearchConfig, SearchQuestion, candidate_text,
                                    end_reason, question_rng, request_seed, select_indices)


def reference_search(question: SearchQuestion, policy, scorer, config: SearchConfig, seed: int,
                     prompts=None) -> dict:
    prompts = prompts or load_question_prompts()
    prompt = prompts.render(question.question, question.choices, has_image=question.image is not None)
    rng = question_rng(seed, question.id)
    beam = [Chain("", 0.0)]
    finished: list[dict] = []
    rounds = restarts = policy_calls = value_calls = 0
    while len(finished) < config.n_consistency and rounds < config.max_rounds:
        if not beam:
            beam, restarts = [Chain("", 0.0)], restarts + 1
        candidates: dict[str, bool] = {}
        for slot, chain in enumerate(beam):
            request = ExpansionRequest(question.id, prompt, question.image, chain.text,
                                       request_seed(seed, question.id, rounds, slot))
            [expansion] = policy.propose([request])
            policy_calls += 1
            sentences = [p for p in expansion.proposals
                         if p.sentence.strip() and len(p.sentence.strip()) >= config.min_sentence_chars]
            if not sentences and chain.text:
                finished.append({"text": chain.text, "score": chain.score,
                                 "end": "eos" if expansion.hit_eos_empty else "length"})
            for proposal in sentences:
                candidates.setdefault(candidate_text(chain.text, proposal.sentence), proposal.eos)
        texts = list(candidates)
        scores = []
        for text in texts:  # one value forward per candidate, the image re-encoded each time
            [value] = scorer.score([prompt], [text], [question.image], [question.id])
            scores.append(float(value))
            value_calls += 1
        rounds += 1
        order = sorted(range(len(texts)), key=lambda i: -scores[i])
        ranked = [Chain(texts[i], scores[i], candidates[texts[i]]) for i in order]
        beam = []
        for chain in (ranked[i] for i in select_indices([c.score for c in ranked], config, rng)):
            reason = end_reason(chain.text, config) or ("eos" if chain.eos else None)
            if reason is None:
                beam.append(chain)
            else:
                finished.append({"text": chain.text, "score": chain.score, "end": reason})
        if rounds >= config.max_rounds and not finished and config.finish_beam_at_cap:
            finished = [{"text": c.text, "score": c.score, "end": "round_cap"} for c in beam[:config.n_consistency]]
    return {"id": question.id, "chains": sorted(finished, key=lambda c: -c["score"]), "rounds": rounds,
            "restarts": restarts, "policy_calls": policy_calls, "value_calls": value_calls}


class TextScorer:
    """A value in [0, 1) that depends only on the prefix text (and counts its calls and rows)."""

    def __init__(self, salt: str = ""):
        self.salt = salt
        self.calls = self.rows = 0

    def value(self, prefix: str) -> float:
        digest = hashlib.sha256((self.salt + prefix).encode()).digest()
        return int.from_bytes(digest[:4], "little") / 2**32

    def score(self, prompts: Sequence[str], prefixes: Sequence[str], images, groups) -> list[float]:
        if not (len(prompts) == len(prefixes) == len(images) == len(groups)):
            raise ValueError("interface 3 takes equally long prompts, prefixes, images and groups")
        self.calls += 1
        self.rows += len(prefixes)
        return [self.value(p) for p in prefixes]


def sentence_prone_checkpoint(path: Path) -> None:
    """Rewrite a tiny LLaVA so it ends sentences and answers within a few tokens, loadably: the last
    MLP gets a large constant bias (so the final hidden state points one way whatever the input), and
    the lm_head rows of '.', EOS and word starts point along it."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    config = LlavaConfig.from_pretrained(path)
    config.text_config.mlp_bias = True
    old = LlavaForConditionalGeneration.from_pretrained(path)
    model = LlavaForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(old.state_dict(), strict=False)
    assert not unexpected and all(name.endswith("bias") for name in missing)
    hidden = config.text_config.hidden_size
    direction = torch.nn.functional.normalize(torch.randn(hidden, generator=torch.Generator().manual_seed(0)), dim=0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name in missing:
                parameter.zero_()
        model.model.language_model.layers[-1].mlp.down_proj.bias.copy_(direction * 50)
        head = model.lm_head.weight
        for token, scale in ((".", 0.5), (tokenizer.eos_token, 0.45)):
            head[tokenizer.convert_tokens_to_ids(token)] = direction * scale
        for token, index in tokenizer.get_vocab().items():
            if token.startswith("Ġ"):
                head[index] = head[index] + direction * 0.25
    model.save_pretrained(path)

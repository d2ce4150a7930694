"""TSST's search as the original runs it: one question at a time, one policy call per kept chain,
one value forward per candidate (MLLM_evaluator.beam_sample), with our config and seed semantics.

The batched `groundflow.tsst.search.search_questions` must return the same chains and scores for the
same seed (tests/stage/test_tsst_search.py); bench/tsst_search.py times the two.

Also here: value scorers obeying interface 3 (`score(prompts, prefixes, images, groups)`) for tests and
the bench while groundflow.models.value_model is not in the tree: `TextScorer`, a deterministic
function of the text, and `HiddenStateScorer`, a tiny LLaVA read at the closing EOS through a fixed
random projection (the value model's shape, untrained).
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import torch

from groundflow.models.llava import mean_fill, pad_to_square
from groundflow.models.llava_embeds import embed_with_images, encode_images
from groundflow.train.chat_formats import chat_template_for
from groundflow.train.conversations import num_image_tokens
from groundflow.tsst.prompts import CONVERSATION_FORMAT, IMAGE_PLACEHOLDER, load_question_prompts
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


class HiddenStateScorer:
    """Interface 3 over a tiny LLaVA: vicuna_v1 user=prompt(+image), assistant=prefix + EOS, the last
    layer's hidden state at that EOS through a fixed random LayerNorm-free projection and a sigmoid.
    Rows of one group share one image encoding; rows run in right-padded batches of `batch_size`."""

    def __init__(self, model, processor, *, batch_size: int = 32, seed: int = 0):
        self.model, self.processor, self.batch_size = model, processor, batch_size
        hidden = model.config.text_config.hidden_size
        generator = torch.Generator().manual_seed(seed)
        self.direction = torch.randn(hidden, generator=generator, dtype=torch.float64)
        self.image_tokens = num_image_tokens(processor)
        self.calls = self.rows = 0

    def _ids(self, prompt: str, prefix: str, has_image: bool) -> list[int]:
        user = f"{IMAGE_PLACEHOLDER}\n{prompt}" if has_image else prompt
        text = self.processor.apply_chat_template(
            [{"role": "user", "content": user}, {"role": "assistant", "content": prefix}], tokenize=False,
            chat_template=chat_template_for(CONVERSATION_FORMAT))
        if has_image:
            text = text.replace(IMAGE_PLACEHOLDER, IMAGE_PLACEHOLDER * self.image_tokens, 1)
        return self.processor.tokenizer(text, add_special_tokens=True)["input_ids"]

    @torch.inference_mode()
    def score(self, prompts, prefixes, images, groups) -> list[float]:
        self.calls += 1
        self.rows += len(prefixes)
        image_of_group: dict = {}
        pictures = []
        for image, group in zip(images, groups):
            if image is not None and group not in image_of_group:
                image_of_group[group] = len(pictures)
                pictures.append(image)
        features = None
        if pictures:
            fill = mean_fill(self.processor.image_processor.image_mean)
            prepared = [pad_to_square(p.convert("RGB"), fill) for p in pictures]
            features = encode_images(self.model, self.processor.image_processor(images=prepared, return_tensors="pt")["pixel_values"])
        values: list[float] = []
        pad = self.processor.tokenizer.pad_token_id
        for start in range(0, len(prefixes), self.batch_size):
            chunk = range(start, min(start + self.batch_size, len(prefixes)))
            rows = [self._ids(prompts[i], prefixes[i], images[i] is not None) for i in chunk]
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, row in enumerate(rows):
                ids[r, :len(row)], mask[r, :len(row)] = torch.tensor(row), 1
            embeds = embed_with_images(self.model, ids, features,
                                       [image_of_group.get(groups[i]) if images[i] is not None else None for i in chunk])
            hidden = self.model(inputs_embeds=embeds, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
            last = hidden[torch.arange(len(rows)), mask.sum(-1) - 1].to(torch.float64)
            values.extend(torch.sigmoid(last @ self.direction / last.shape[-1] ** 0.5).tolist())
        return values

"""TSST search's model side: a LLaVA policy proposing next sentences for many chains at once.

`LlavaPolicy.propose` takes expansion requests of several questions (groundflow.tsst.search) and
returns, per request, the distinct first sentences of its G continuations. Every question's image is
encoded once per call (groundflow.models.llava_embeds) however many rows show it, each request's
prompt is prefilled once and its KV cache copied to its G rows, and all rows run in left-padded
batches through one KV-cached decoding loop; a row stops at its first complete
sentence (tsst.sentences.first_sentence on its newly generated text only), at EOS, or at
`max_step_tokens`, and finished rows leave the batch.

Sampling is our own step, not `generate`'s: each row draws from its own torch.Generator seeded by its
request's seed and its row number (inverse-CDF on one uniform per step, after temperature and
top-k), so a request gets the same continuations alone or in any batch. That is why the batched
search returns the same chains as the one-question-at-a-time reference for the same seed
(tests/stage/test_tsst_search.py), under sampling as well as greedy (temperature 0). G independent
samples replace the original's beam-sample (`num_beams=G` with sampling), whose beams are drawn from
one global RNG and cannot be reproduced per question; say so where results are compared.

The prompt is the vicuna_v1 conversation (train.chat_formats) of tsst.prompts' question prompt
with the generation prompt; at depth >= 1 the chain follows "ASSISTANT: " in the open turn, or
closed by EOS when `policy_closes_turn` (the original's defect, search.py fix a).
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch

from groundflow.models.llava import mean_fill, pad_to_square
from groundflow.models.llava_embeds import embed_with_images, encode_images
from groundflow.train.chat_formats import chat_template_for
from groundflow.train.conversations import num_image_tokens, to_chat_messages
from groundflow.tsst.prompts import CONVERSATION_FORMAT, IMAGE_PLACEHOLDER
from groundflow.tsst.search import Expansion, ExpansionRequest, Proposal, SearchConfig
from groundflow.tsst.sentences import first_sentence

log = logging.getLogger("groundflow")


def policy_prompt(processor, prompt: str, chain: str, *, has_image: bool, closes_turn: bool = False) -> str:
    """The policy's input text: the conversation up to "ASSISTANT:", then " " + the chain."""
    user = f"{IMAGE_PLACEHOLDER}\n{prompt}" if has_image else prompt
    # The user turn goes through the trainer's own conversion, so the policy is asked exactly as it
    # was trained: LLaVA training strips an image turn's text (the question prompt's trailing newline
    # included); a plain string turn kept it, and a trained policy then lost half its answers.
    messages = to_chat_messages([{"from": "human", "value": user}], structured=True)
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                         chat_template=chat_template_for(CONVERSATION_FORMAT))
    if chain:
        text += " " + chain
        if closes_turn:
            text += processor.tokenizer.eos_token
    return text


def _row_generator(seed: int, row: int) -> torch.Generator:
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + row) % (2**63 - 1))


class LlavaPolicy:
    """The search's policy over a LlavaForConditionalGeneration (plain or under peft)."""

    def __init__(self, model, processor, config: SearchConfig, *, batch_rows: int = 64, pad_square: bool = True,
                 share_prefill: bool = True):
        self.model, self.processor, self.config = model, processor, config
        self.tokenizer = processor.tokenizer
        self.batch_rows = batch_rows
        self.pad_square = pad_square
        # a request's G rows share its prompt: prefill it once and copy its KV cache G times
        # (False: prefill every row, as the original's generate with G beams did)
        self.share_prefill = share_prefill
        eos = model.generation_config.eos_token_id
        eos = eos if isinstance(eos, (list, tuple)) else [eos]
        self.eos_ids = {int(e) for e in eos if e is not None} | {int(self.tokenizer.eos_token_id)}
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        self.image_tokens = num_image_tokens(processor)
        self.calls = self.rows_decoded = self.images_encoded = 0

    def describe(self) -> dict:
        return {"decoding": "greedy" if self.config.temperature == 0 else "sample, per-row seeded",
                "temperature": self.config.temperature, "top_k": self.config.top_k, "G": self.config.width,
                "max_step_tokens": self.config.max_step_tokens, "cut": self.config.cut,
                "closes_turn": self.config.policy_closes_turn, "pad_square": self.pad_square}

    def encode(self, images: Sequence) -> torch.Tensor:
        prepared = [image.convert("RGB") for image in images]
        if self.pad_square:
            fill = mean_fill(self.processor.image_processor.image_mean)
            prepared = [pad_to_square(image, fill) for image in prepared]
        pixels = self.processor.image_processor(images=prepared, return_tensors="pt")["pixel_values"]
        return encode_images(self.model, pixels)

    def _token_ids(self, request: ExpansionRequest) -> list[int]:
        has_image = request.image is not None
        text = policy_prompt(self.processor, request.prompt, request.chain, has_image=has_image,
                             closes_turn=self.config.policy_closes_turn)
        if has_image:
            text = text.replace(IMAGE_PLACEHOLDER, IMAGE_PLACEHOLDER * self.image_tokens, 1)
        return self.tokenizer(text, add_special_tokens=True)["input_ids"]

    @torch.inference_mode()
    def propose(self, requests: Sequence[ExpansionRequest]) -> list[Expansion]:
        self.calls += 1
        image_index: dict[str, int] = {}
        images = []
        for request in requests:
            if request.image is not None and request.question_id not in image_index:
                image_index[request.question_id] = len(images)
                images.append(request.image)
        features = self.encode(images) if images else None
        self.images_encoded += len(images)
        copies = 1 if self.config.temperature == 0 else self.config.width  # greedy copies would be identical
        rows = []  # (request index, row number, prompt ids, image index or None)
        for index, request in enumerate(requests):
            ids = self._token_ids(request)
            for row in range(copies):
                rows.append((index, row, ids, image_index.get(request.question_id)))
        self.rows_decoded += len(rows)
        outcomes: list[tuple[str | None, bool, bool]] = []
        step = max(1, self.batch_rows // copies) * copies  # a request's rows stay in one batch
        for start in range(0, len(rows), step):
            outcomes.extend(self._decode(rows[start:start + step], requests, features, copies))
        return self._collect(len(requests), rows, outcomes)

    def _collect(self, n_requests: int, rows, outcomes) -> list[Expansion]:
        sentences: list[dict[str, bool]] = [{} for _ in range(n_requests)]
        empty_eos = [False] * n_requests
        for (index, _, _, _), (sentence, eos, ended_empty) in zip(rows, outcomes):
            if sentence is None:
                empty_eos[index] |= ended_empty
                continue
            # a sentence ends its chain only if no continuation that gave it went on
            sentences[index][sentence] = sentences[index].get(sentence, True) and eos
        return [Expansion(tuple(Proposal(s, e) for s, e in found.items()), empty)
                for found, empty in zip(sentences, empty_eos)]

    def _decode(self, rows, requests, features, copies: int) -> list[tuple[str | None, bool, bool]]:
        """Per row: (first sentence or None, ended at EOS right after it, ended at EOS with nothing).
        `rows` come in runs of `copies` rows of one request, whose prompt is prefilled once."""
        config = self.config
        device = self.model.device
        prompts = rows[::copies] if self.share_prefill else rows
        width = max(len(ids) for _, _, ids, _ in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for r, (_, _, ids, _) in enumerate(prompts):
            input_ids[r, width - len(ids):] = torch.tensor(ids)
            mask[r, width - len(ids):] = 1
        input_ids, mask = input_ids.to(device), mask.to(device)
        embeds = embed_with_images(self.model, input_ids, features, [image for _, _, _, image in prompts])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True)
        cache, logits = out.past_key_values, out.logits[:, -1, :]
        if self.share_prefill and copies > 1:
            cache.batch_repeat_interleave(copies)
            logits, mask, positions = (t.repeat_interleave(copies, dim=0) for t in (logits, mask, positions))
        generators = [_row_generator(requests[index].seed, row) for index, row, _, _ in rows]
        live = list(range(len(rows)))  # batch position -> row
        generated: list[list[int]] = [[] for _ in rows]
        results: list[tuple[str | None, bool, bool] | None] = [None] * len(rows)
        last_position = positions[:, -1]
        for step in range(config.max_step_tokens):
            tokens = self._next_tokens(logits, [generators[r] for r in live])
            still = []
            for slot, row in enumerate(live):
                token = int(tokens[slot])
                if token in self.eos_ids:
                    results[row] = self._at_eos(generated[row])
                    continue
                generated[row].append(token)
                text = self.tokenizer.decode(generated[row], skip_special_tokens=True)
                sentence = first_sentence(text, finished=False, cut=config.cut)
                if sentence is not None:
                    results[row] = (sentence, False, False)
                elif step == config.max_step_tokens - 1:
                    results[row] = (None, False, False)  # out of tokens without a sentence
                else:
                    still.append(slot)
            if not still:
                break
            keep = torch.tensor(still, device=device)
            if len(still) < len(live):
                cache.batch_select_indices(keep)
            live = [live[s] for s in still]
            mask = torch.cat([mask[keep], torch.ones((len(still), 1), dtype=mask.dtype, device=device)], dim=1)
            last_position = last_position[keep] + 1
            out = self.model(input_ids=tokens[keep].unsqueeze(-1), attention_mask=mask,
                             position_ids=last_position.unsqueeze(-1), past_key_values=cache, use_cache=True)
            cache, logits = out.past_key_values, out.logits[:, -1, :]
        return [r if r is not None else (None, False, False) for r in results]

    def _at_eos(self, generated: list[int]) -> tuple[str | None, bool, bool]:
        text = self.tokenizer.decode(generated, skip_special_tokens=True)
        if self.config.keep_eos_sentence:
            sentence = first_sentence(text, finished=True, cut=self.config.cut)
            return (sentence, True, False) if sentence is not None else (None, False, True)
        # the original kept only a sentence its terminator closed, and did not know the row had ended
        sentence = first_sentence(text + " ", finished=False, cut=self.config.cut)
        return (sentence, False, False) if sentence is not None else (None, False, True)

    def _next_tokens(self, logits: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        temperature = self.config.temperature
        if temperature == 0:
            return logits.argmax(-1)
        dtype = torch.float64 if logits.device.type != "mps" else torch.float32
        scaled = logits.to(dtype) / temperature
        if self.config.top_k and self.config.top_k < scaled.shape[-1]:
            kth = torch.topk(scaled, self.config.top_k, dim=-1).values[:, -1:]
            scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        cdf = torch.softmax(scaled, dim=-1).cumsum(-1)
        # one uniform per row from the row's own generator: the draw does not depend on the batch
        uniforms = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in generators])
        uniforms = (uniforms.to(dtype) * cdf[:, -1].cpu()).to(cdf.device)
        picked = torch.searchsorted(cdf, uniforms.unsqueeze(-1)).squeeze(-1)
        return picked.clamp(max=cdf.shape[-1] - 1)

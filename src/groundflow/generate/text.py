"""Batched text generation and choice scoring with Hugging Face causal LMs.

Shared by every method that asks a text LLM something. Three rules hold throughout:
- prompts are batched with left padding (decoder-only generation needs the new tokens aligned);
- sampling parameters come only from the arguments: the checkpoint's `generation_config.json`
  (Llama-2-chat ships do_sample=True, temperature 0.6, top_p 0.9) never silently replaces them;
- a chat-template prompt already holds its BOS text, so it is encoded without adding another.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
from typing import Callable, Iterator, Sequence

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from groundflow.generate.sampling import sampling_warpers

Message = dict[str, str]
Prompt = str | Sequence[Message]
AllowedTokensFn = Callable[[int, list[int]], list[int]]


def render_prompts(tokenizer, messages_list: Sequence[Prompt], assistant_prefix: str = "") -> list[str]:
    """Turn chat messages into prompt strings, ending inside the assistant's turn.

    A list of messages goes through the tokenizer's chat template (with the generation prompt) and
    gets `assistant_prefix` appended, which prefills the start of the answer. A tokenizer without a
    chat template gets the messages' contents joined by blank lines. Plain strings pass through.
    """
    rendered = []
    for item in messages_list:
        if isinstance(item, str):
            rendered.append(item)
            continue
        messages = list(item)
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            text = "\n\n".join(m["content"] for m in messages) + "\n\n"
        rendered.append(text + assistant_prefix)
    return rendered


def encode_prompts(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt; BOS is added only when the text does not already start with it."""
    bos = tokenizer.bos_token
    with_bos = [i for i, p in enumerate(prompts) if not (bos and p.startswith(bos))]
    without_bos = [i for i, p in enumerate(prompts) if bos and p.startswith(bos)]
    ids: list[list[int] | None] = [None] * len(prompts)
    for indices, add_special in ((with_bos, True), (without_bos, False)):
        if indices:
            encoded = tokenizer([prompts[i] for i in indices], add_special_tokens=add_special)["input_ids"]
            for i, row in zip(indices, encoded):
                ids[i] = list(row)
    return ids  # type: ignore[return-value]


def stop_token_ids(model, tokenizer) -> list[int]:
    """The tokenizer's eos plus the checkpoint's own stop tokens (Llama-3 ends turns with <|eot_id|>)."""
    ids: list[int] = []
    for value in (tokenizer.eos_token_id, model.generation_config.eos_token_id):
        for token in value if isinstance(value, (list, tuple)) else [value]:
            if token is not None and token not in ids:
                ids.append(int(token))
    return ids


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            input_ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
            attention[i, width - len(row):] = 1
    return input_ids.to(device), attention.to(device)


def batches_by_length(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), so padding stays small."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[s:s + batch_size] for s in range(0, len(order), max(batch_size, 1))]


@contextlib.contextmanager
def explicit_generation_config(model) -> Iterator[None]:
    """Hide the checkpoint's generation defaults during a call.

    `generate` fills every field left unset in the config it is given from the model's own
    generation_config, so an unset field (top_k, min_p, repetition_penalty, ...) could carry a
    checkpoint default into a run that never asked for it.
    """
    saved = model.generation_config
    model.generation_config = GenerationConfig()
    try:
        yield
    finally:
        model.generation_config = saved


# The names earlier callers import.
_explicit_generation_config = explicit_generation_config
_batches_by_length = batches_by_length


def sampling_generation_config(
    *,
    max_new_tokens: int,
    do_sample: bool,
    num_return_sequences: int,
    stop_strings: Sequence[str] | None,
    eos_token_id: list[int],
    pad_token_id: int | None,
    bos_token_id: int | None,
    repetition_penalty: float = 1.0,
) -> GenerationConfig:
    """A GenerationConfig that states every decoding knob, so no checkpoint default fills a gap.

    Sampling's temperature, top_k and top_p are stated as 1, 0 and 1 (no warper of generate()'s
    own): they come as `sampling_warpers(...)` in `logits_processor`, in generate()'s order, with an
    exact faster top-p. The repetition penalty stays generate()'s own, which applies it before any
    custom processor, where it belongs.
    """
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        min_new_tokens=0,
        do_sample=do_sample,
        num_beams=1,
        num_return_sequences=num_return_sequences,
        # Greedy decoding reads no sampling knobs; setting them would only trigger warnings.
        temperature=1.0 if do_sample else None,
        top_p=1.0 if do_sample else None,
        top_k=0 if do_sample else None,
        repetition_penalty=float(repetition_penalty),
        no_repeat_ngram_size=0,
        stop_strings=list(stop_strings) if stop_strings else None,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        use_cache=True,
    )


class _BatchedPrefixConstraint(LogitsProcessor):
    """Masks each row's logits to the tokens `allowed(prompt_index, generated_ids)` returns.

    Unlike transformers' own PrefixConstrainedLogitsProcessor, it copies the batch's token ids to the
    host once per step and hands the callback only the generated part of each row.
    """

    def __init__(self, allowed: AllowedTokensFn, prompt_width: int, row_prompts: list[int]):
        self.allowed = allowed
        self.prompt_width = prompt_width
        self.row_prompts = row_prompts

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[:, self.prompt_width:].tolist()
        rows: list[int] = []
        cols: list[int] = []
        for row, ids in enumerate(generated):
            tokens = self.allowed(self.row_prompts[row], ids)
            if not tokens:
                raise ValueError(f"constraint allows no token for prompt {self.row_prompts[row]} after {ids}")
            rows.extend([row] * len(tokens))
            cols.extend(tokens)
        mask = torch.full_like(scores, float("-inf"))
        mask[torch.tensor(rows, device=scores.device), torch.tensor(cols, device=scores.device)] = 0.0
        return scores + mask


def generate_sharing_prompts(
    model,
    inputs: dict[str, torch.Tensor],
    *,
    generation_config: GenerationConfig,
    logits_processor: LogitsProcessorList,
    tokenizer=None,
) -> torch.Tensor:
    """`model.generate(**inputs, ...)`, with each prompt's forward pass run once for all its samples.

    generate() repeats every prompt `num_return_sequences` times before its first forward pass, so a
    LLaVA encodes each image, and prefills each prompt, n times over. Here every prompt token but
    the last goes through the model once per prompt (positions as generate() numbers them under
    left padding), the cache is repeated n times, and generate() continues from it with the same
    sampling: the n samples share the prompt's work, as vLLM's `n` shares it. The rows come back in
    generate()'s order (prompt-major), prompts included. A model with multimodal rotary positions
    (Qwen2.5-VL, `uses_mrope`) computes the prompt's positions itself from its image grids; its
    per-row offsets are repeated n times with the cache.
    """
    n = generation_config.num_return_sequences or 1
    input_ids = inputs["input_ids"]
    attention = inputs["attention_mask"]
    image_token = getattr(model.config, "image_token_id", None)
    if image_token is None:
        image_token = getattr(model.config, "image_token_index", None)
    last_is_image = image_token is not None and bool((input_ids[:, -1] == image_token).any())
    mrope = uses_mrope(model)
    # M-RoPE positions come from the image grid, which the model works out itself, from the ids
    # and the token types; a batch without images (no grid) is left to generate() as it is.
    mrope_computable = "image_grid_thw" in inputs and "mm_token_type_ids" in inputs
    if n == 1 or input_ids.shape[1] < 2 or last_is_image or (mrope and not mrope_computable):
        return model.generate(
            **inputs, generation_config=generation_config, logits_processor=logits_processor, tokenizer=tokenizer
        )
    extra = {key: value for key, value in inputs.items() if key not in ("input_ids", "attention_mask")}
    if _accepts_logits_to_keep(model):
        extra["logits_to_keep"] = 1  # the prompt's logits are not needed, only its cache
    if mrope:
        # Qwen2-VL's family: 3-D positions (time, height, width) from the image grids; the model
        # computes them and keeps each row's offset of text positions (`rope_deltas`), which the
        # continued generate() adds to the plain text positions of every later token.
        extra["mm_token_type_ids"] = extra["mm_token_type_ids"][:, :-1]
        positions = {}
        model.model.rope_deltas = None  # computed afresh from this batch, not left from another
    else:
        positions = {"position_ids": (attention.long().cumsum(-1) - 1).masked_fill(attention == 0, 0)[:, :-1]}
    cache = model(
        input_ids=input_ids[:, :-1],
        attention_mask=attention[:, :-1],
        use_cache=True,
        **positions,
        **extra,
    ).past_key_values
    cache.batch_repeat_interleave(n)
    if mrope:
        model.model.rope_deltas = model.model.rope_deltas.repeat_interleave(n, dim=0)
    continued = copy.deepcopy(generation_config)
    continued.num_return_sequences = 1
    return model.generate(
        input_ids=input_ids.repeat_interleave(n, dim=0),
        attention_mask=attention.repeat_interleave(n, dim=0),
        past_key_values=cache,
        generation_config=continued,
        logits_processor=logits_processor,
        tokenizer=tokenizer,
    )


def uses_mrope(model) -> bool:
    """Whether the model places tokens by multimodal rotary positions computed from image grids
    (Qwen2-VL, Qwen2.5-VL: the model keeps each row's text-position offset in `model.rope_deltas`)."""
    inner = getattr(model, "model", None)
    return inner is not None and hasattr(inner, "rope_deltas") and hasattr(inner, "get_rope_index")


def cut_at_stop_strings(text: str, stop_strings: Sequence[str] | None) -> str:
    """The text before the earliest occurrence of any stop string."""
    if not stop_strings:
        return text
    cut = len(text)
    for stop in stop_strings:
        at = text.find(stop)
        if at != -1:
            cut = min(cut, at)
    return text[:cut]


@torch.inference_mode()
def generate_texts(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    num_return_sequences: int = 1,
    batch_size: int = 8,
    seed: int = 0,
    stop_strings: Sequence[str] | None = None,
    prefix_allowed_tokens_fn: AllowedTokensFn | None = None,
    top_k: int = 0,
    repetition_penalty: float = 1.0,
) -> list[list[str]]:
    """Generate `num_return_sequences` continuations of each prompt; returns only the new text.

    Prompts are batched (left padding, KV cache); output order follows `prompts`. Texts are cut
    before the first stop string. `prefix_allowed_tokens_fn(prompt_index, generated_ids)` (index
    into `prompts`, the ids generated so far for that row) returns the token ids allowed next.
    Sampling is seeded per batch from `seed`, so a run is reproducible.
    """
    if not prompts:
        return []
    encoded = encode_prompts(tokenizer, prompts)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_ids = stop_token_ids(model, tokenizer)
    config = sampling_generation_config(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        num_return_sequences=num_return_sequences,
        stop_strings=stop_strings,
        eos_token_id=eos_ids,
        pad_token_id=pad_id,
        bos_token_id=tokenizer.bos_token_id,
        repetition_penalty=repetition_penalty,
    )
    device = model.device
    results: list[list[str]] = [[] for _ in prompts]
    for batch_number, batch in enumerate(batches_by_length([len(e) for e in encoded], batch_size)):
        input_ids, attention = _left_pad([encoded[i] for i in batch], pad_id, device)
        processors = LogitsProcessorList()
        if prefix_allowed_tokens_fn is not None:
            row_prompts = [i for i in batch for _ in range(num_return_sequences)]
            processors.append(_BatchedPrefixConstraint(prefix_allowed_tokens_fn, input_ids.shape[1], row_prompts))
        processors.extend(sampling_warpers(do_sample=do_sample, temperature=temperature, top_p=top_p, top_k=top_k))
        torch.manual_seed(seed + batch_number)
        with explicit_generation_config(model):
            output = generate_sharing_prompts(
                model,
                {"input_ids": input_ids, "attention_mask": attention},
                generation_config=config,
                logits_processor=processors,
                tokenizer=tokenizer if stop_strings else None,
            )
        texts = tokenizer.batch_decode(output[:, input_ids.shape[1]:], skip_special_tokens=True)
        for row, text in enumerate(texts):
            results[batch[row // num_return_sequences]].append(cut_at_stop_strings(text, stop_strings))
    return results


def continuation_ids(tokenizer, prompts: Sequence[str], continuations: Sequence[str]) -> list[tuple[list[int], int]]:
    """For each (prompt, continuation): the ids of prompt+continuation and where the continuation starts.

    The pair is encoded as one text so the tokens at the boundary are those the model would see;
    the continuation starts after the longest prefix shared with the prompt's own encoding.
    """
    full = encode_prompts(tokenizer, [p + c for p, c in zip(prompts, continuations)])
    alone = encode_prompts(tokenizer, list(prompts))
    pairs = []
    for ids, prompt_ids in zip(full, alone):
        start = 0
        for a, b in zip(ids, prompt_ids):
            if a != b:
                break
            start += 1
        if start == 0:
            raise ValueError("cannot score a continuation of an empty prompt (no BOS, no text)")
        if start == len(ids):
            raise ValueError("cannot score an empty continuation")
        pairs.append((ids, start))
    return pairs


def _accepts_logits_to_keep(model) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters


@torch.inference_mode()
def score_choices(
    model,
    tokenizer,
    prompts: Sequence[str],
    choices: Sequence[Sequence[str]] | Sequence[str],
    *,
    batch_size: int = 16,
    normalize: str = "sum",
) -> list[list[float]]:
    """Log-likelihood of each choice as the continuation of each prompt.

    `choices` is either one list shared by all prompts or one list per prompt. All (prompt, choice)
    pairs are batched together (left padding, so every continuation ends at the last position and
    only the last positions' logits are computed). `normalize="sum"` gives log p(choice | prompt);
    "mean" divides by the choice's token count.
    """
    if normalize not in ("sum", "mean"):
        raise ValueError(f"normalize must be 'sum' or 'mean', not {normalize!r}")
    if choices and isinstance(choices[0], str):
        per_prompt = [list(choices)] * len(prompts)  # type: ignore[list-item]
    else:
        per_prompt = [list(c) for c in choices]  # type: ignore[arg-type]
    if len(per_prompt) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(per_prompt)} choice lists")
    pair_index = [(p, c) for p, options in enumerate(per_prompt) for c in range(len(options))]
    encoded = continuation_ids(
        tokenizer, [prompts[p] for p, _ in pair_index], [per_prompt[p][c] for p, c in pair_index]
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = model.device
    keep_arg = _accepts_logits_to_keep(model)
    scores: list[list[float]] = [[0.0] * len(options) for options in per_prompt]
    for batch in batches_by_length([len(ids) for ids, _ in encoded], batch_size):
        rows = [encoded[i][0] for i in batch]
        lengths = torch.tensor([len(encoded[i][0]) - encoded[i][1] for i in batch], device=device)
        span = int(lengths.max())
        input_ids, attention = _left_pad(rows, pad_id, device)
        position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
        kwargs = {"logits_to_keep": span + 1} if keep_arg else {}
        logits = model(input_ids=input_ids, attention_mask=attention, position_ids=position_ids, **kwargs).logits
        # logits at position t predict token t+1: the last `span` targets use the `span` logits before the end.
        logits = logits[:, -(span + 1):-1].float()
        targets = input_ids[:, -span:]
        token_logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        in_choice = torch.arange(span, device=device).unsqueeze(0) >= (span - lengths).unsqueeze(1)
        # where(), not multiplication: logits at padded positions may be NaN.
        total = torch.where(in_choice, token_logp, torch.zeros_like(token_logp)).sum(-1)
        if normalize == "mean":
            total = total / lengths.clamp(min=1)
        for row, value in zip(batch, total.tolist()):
            p, c = pair_index[row]
            scores[p][c] = float(value)
    return scores

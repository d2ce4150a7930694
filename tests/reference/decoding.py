"""Greedy decoding the slow, obvious way, the reference the batched generators are checked against."""
import torch

from groundflow.generate.text import encode_prompts


def argmax_decode(model, tokenizer, prompt: str, max_new_tokens: int, stop_token: str | None = None) -> str:
    """Full forward pass per step, no cache, no padding; stops at `stop_token` (default: EOS)."""
    stop_id = tokenizer.convert_tokens_to_ids(stop_token) if stop_token else tokenizer.eos_token_id
    ids = torch.tensor([encode_prompts(tokenizer, [prompt])[0]])
    start = ids.shape[1]
    with torch.no_grad():
        for _ in range(max_new_tokens):
            next_id = model(input_ids=ids).logits[0, -1].argmax()
            ids = torch.cat([ids, next_id.view(1, 1)], dim=1)
            if int(next_id) == stop_id:
                break
    return tokenizer.decode(ids[0, start:], skip_special_tokens=True)

"""Tokenizers for the tiny models of the embedded default, trained locally with `tokenizers`.

Each flavour mirrors the real model family's tokenizer kind and special tokens, so the code that
handles real checkpoints (chat templates, mask tokens, offsets, padding) runs unchanged:
- "llama": byte-level BPE with Llama-3-style special tokens and chat template,
- "llama3": "llama" as Llama-3.1-Instruct's tokenizer is: Llama-3's pre-tokenizer split, its chat
  template, EOS `<|eot_id|>` and no pad token (`<|finetune_right_pad_id|>` is in the vocabulary
  but unassigned; `ensure_pad_token` assigns it where training needs a pad),
- "vicuna": byte-level BPE with Llama-2's / Vicuna-v1.5's <unk> <s> </s>, BOS added, no pad token
  and no chat template (lmsys/vicuna-7b-v1.5 ships none; LLaVA-1.5 brings the conversation format),
- "roberta": byte-level BPE with RoBERTa's <s> </s> <pad> <unk> <mask>,
- "bert": WordPiece with [CLS] [SEP] [PAD] [UNK] [MASK] (Grounding DINO's text side).
"""

from __future__ import annotations

import string
from collections import Counter
from pathlib import Path
from typing import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import BertTokenizerFast, PreTrainedTokenizerFast, RobertaTokenizerFast

LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Llama-3.1-Instruct's chat template without its tool-calling branches: a system block with the
# knowledge-cutoff and date lines always comes first (empty system text when no system message is
# given), every message is trimmed. CINGS trains and prompts through exactly this layout.
LLAMA31_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if not date_string is defined %}{%- set date_string = '26 Jul 2024' %}{%- endif %}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content'] | trim %}{%- set messages = messages[1:] %}"
    "{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\n\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\n' }}"
    "{{- 'Today Date: ' + date_string + '\n\n' }}"
    "{{- system_message }}"
    "{{- '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}"
)

LLAMA_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|finetune_right_pad_id|>",
    "<image>",
]

# Reserved tokens meant for padding, in order of preference: Llama-3 ships no pad token (and no unk)
# and reserves this one, which never occurs in text; any token the chat template writes (EOS,
# end-of-turn) would be a worse pad.
PAD_CANDIDATES = ("<|finetune_right_pad_id|>",)

# Llama-2's SentencePiece specials, at its ids 0, 1, 2 (Vicuna-v1.5 has no pad token)
VICUNA_SPECIALS = ["<unk>", "<s>", "</s>"]

# A small English corpus: enough for BPE merges of everyday words; byte-level BPE encodes anything.
BASE_CORPUS = """
A man is riding a bicycle down the street next to a red car.
Two dogs are playing with a ball on the green grass in the park.
A woman holds an umbrella while walking past a yellow taxi.
A cat sleeps on a wooden chair beside the kitchen table.
There is a plate of food with a fork and a knife on the table.
A boat floats on the lake under a blue sky with white clouds.
A child flies a kite near a tall tree and a small house.
A cup of coffee sits next to a laptop and a cell phone on the desk.
A train arrives at the station while people wait on the platform.
An airplane flies over the city at sunset.
A bus stops at the corner near a traffic light and a stop sign.
A horse stands in a field beside a fence and a barn.
A teddy bear sits on a bed with a pillow and a blanket.
A pizza with cheese and tomato is on a wooden board.
The sun shines over the mountains and the river.
A skier goes down a snowy slope with long poles.
Rowers pull long oars on a narrow boat.
An apple, a banana and an orange lie in a bowl.
A clock hangs on the wall above the television.
A person is holding a surfboard on the beach by the ocean.
Entities are concrete objects, people, places and products that can be seen.
Extract every entity from the caption and give its label.
In the given image, there is an object heavily occluded by a cluster of gray blocks.
Please answer the following question. What might the object occluded by the gray blocks be?
Please provide your reasoning process and confirm a unique answer. Let's think step by step.
The answer is a cup. The occluded object is probably a dog because it has a leash.
Question: Context: Answer: Passage: Document: Title: yes no true false
"""


def ensure_pad_token(tokenizer) -> str:
    """The tokenizer's pad token, assigning one when it has none: a reserved pad token of the
    vocabulary (`PAD_CANDIDATES`), else EOS (Llama-2 / Vicuna reserve none). Returns the pad token."""
    if tokenizer.pad_token is None:
        vocab = tokenizer.get_vocab()
        tokenizer.pad_token = next((t for t in PAD_CANDIDATES if t in vocab), tokenizer.eos_token)
    return tokenizer.pad_token


def corpus_lines(extra: Iterable[str] = ()) -> list[str]:
    lines = [l.strip() for l in BASE_CORPUS.strip().splitlines() if l.strip()]
    return lines + [l for l in extra if l]


# Llama-3's pre-tokenizer split (tokenizer.json of meta-llama/Llama-3.*): unlike GPT-2's it keeps
# runs of newlines whole ("\n\n" is one token, `ĊĊ`) and splits digits in groups of three.
LLAMA3_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def build_tokenizer(flavor: str, out_dir: str | Path, texts: Iterable[str] = (), vocab_size: int | None = None):
    """Train a tokenizer of `flavor` on the base corpus plus `texts`; save it to `out_dir`.

    "llama3" is "llama" with Llama-3's pre-tokenizer split, Llama-3.1-Instruct's chat template and,
    like it, no pad token (the CINGS tokenizer); vocab_size defaults to 1024 (2048 for "llama3", whose texts are longer).
    """
    lines = corpus_lines(texts)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if vocab_size is None:
        vocab_size = 2048 if flavor == "llama3" else 1024
    if flavor in ("llama", "llama3"):
        tok = _byte_level_bpe(lines, vocab_size, LLAMA_SPECIALS, llama3_split=flavor == "llama3")
        tok.post_processor = processors.TemplateProcessing(
            single="<|begin_of_text|> $A",
            pair="<|begin_of_text|> $A <|begin_of_text|> $B",
            special_tokens=[("<|begin_of_text|>", tok.token_to_id("<|begin_of_text|>"))],
        )
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok,
            bos_token="<|begin_of_text|>",
            eos_token="<|eot_id|>",
            # Llama-3.1-Instruct assigns no pad token; the demo's generic "llama" keeps one.
            pad_token=None if flavor == "llama3" else "<|finetune_right_pad_id|>",
            model_max_length=2048,
        )
        fast.chat_template = LLAMA31_CHAT_TEMPLATE if flavor == "llama3" else LLAMA3_CHAT_TEMPLATE
    elif flavor == "vicuna":
        tok = _byte_level_bpe(lines, vocab_size, VICUNA_SPECIALS)
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", model_max_length=4096
        )
    elif flavor == "roberta":
        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        tok = _byte_level_bpe(lines, vocab_size, specials)
        tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), add_prefix_space=True, trim_offsets=True)
        fast = RobertaTokenizerFast(tokenizer_object=tok, model_max_length=512)
    elif flavor == "bert":
        fast = _wordpiece(lines, vocab_size)
    else:
        raise ValueError(f"unknown tokenizer flavor {flavor!r}")
    fast.save_pretrained(out_dir)
    return fast


def _byte_level_bpe(lines: list[str], vocab_size: int, specials: list[str], llama3_split: bool = False) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    if llama3_split:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer)
    return tok


def _wordpiece(lines: list[str], vocab_size: int) -> BertTokenizerFast:
    """A WordPiece vocabulary built by counting, not by WordPieceTrainer, whose ties break in
    hash order (its vocabulary differs between runs): every character alone and as a
    continuation, so any word encodes, then whole words, most frequent first."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts = Counter(
        word for line in lines for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(line))
    )
    chars = sorted({c for word in counts for c in word} | set(string.ascii_lowercase + string.digits + string.punctuation))
    words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if len(w) > 1]
    tokens = list(dict.fromkeys(specials + chars + ["##" + c for c in chars] + words))[:vocab_size]
    tok = Tokenizer(models.WordPiece(vocab={t: i for i, t in enumerate(tokens)}, unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    tok.decoder = decoders.WordPiece()
    return BertTokenizerFast(tokenizer_object=tok, model_max_length=256)

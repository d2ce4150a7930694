"""Token tries and the line-sequence constraint, on a hand-made tokenizer with known ids.

The tokenizer is SentencePiece-like (Metaspace, "▁" only before the first word), like Llama-2's:
a word at the start of a text tokenises differently from the same word after a line break, which
is exactly what tokenising in context must get right.
"""

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from groundflow.generate.constrained import END_KEY, LineSequenceConstraint, TokenTrie, tokenize_in_context

CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789.-<>\n") + ["▁"]


def make_tokenizer(merges):
    vocab = {"</s>": 0}
    for ch in CHARS:
        vocab[ch] = len(vocab)
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>")


WORD_MERGES = [("d", "o"), ("do", "g"), ("▁", "dog"), ("c", "a"), ("ca", "t"), ("▁", "cat")]


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer(WORD_MERGES)


def ids(tok, *tokens):
    return [tok.convert_tokens_to_ids(t) for t in tokens]


def test_trie_children_and_keys():
    trie = TokenTrie([[1, 2, 3], [1, 4], [5]], keys=[10, 11, 12])
    assert sorted(trie.root.children) == [1, 5]
    assert trie.root.keys == {10, 11, 12}
    node = trie.root.children[1]
    assert sorted(node.children) == [2, 4]
    assert node.keys == {10, 11}
    assert node.key is None
    assert node.children[4].key == 11
    assert trie.root.open_children({11}) == [1, 5]
    assert trie.root.children[1].open_children({11}) == [2]
    assert trie.root.open_children({10, 11}) == [5]


def test_trie_rejects_prefixes_and_empty():
    with pytest.raises(ValueError, match="prefix"):
        TokenTrie([[1, 2], [1, 2, 3]])
    with pytest.raises(ValueError, match="prefix"):
        TokenTrie([[1, 2, 3], [1, 2]])
    with pytest.raises(ValueError, match="empty"):
        TokenTrie([[]])


def test_tokenize_in_context_uses_the_boundary_the_model_sees(tok):
    # Alone, "dog" starts a text and gets the word-start marker; after a line break it does not.
    assert tok("dog", add_special_tokens=False)["input_ids"] == ids(tok, "▁dog")
    assert tokenize_in_context(tok, ["dog", "cat"], "x\n") == [ids(tok, "dog"), ids(tok, "cat")]
    assert tokenize_in_context(tok, ["dog"]) == [ids(tok, "▁dog")]


def test_tokenize_in_context_falls_back_when_a_merge_crosses_the_boundary():
    tok = make_tokenizer([("\n", "c")] + WORD_MERGES)
    # "x\ncat" merges "\n" with "c": the context's own ids are no prefix, so "cat" is encoded alone.
    assert tok("x\ncat", add_special_tokens=False)["input_ids"] == ids(tok, "▁", "x", "\nc", "a", "t")
    assert tokenize_in_context(tok, ["cat", "dog"], "x\n") == [ids(tok, "▁cat"), ids(tok, "dog")]


def walk(constraint, prompt, tokens_so_far):
    return sorted(constraint(prompt, tokens_so_far))


def test_line_sequence_allowed_ids(tok):
    c = LineSequenceConstraint(tok, [["dog", "cat"], ["dog"]], context="x\n", end_marker="<end>")
    one, two, dot, lt, nl = ids(tok, "1", "2", ".", "<", "\n")
    dog, cat = ids(tok, "▁dog", "▁cat")
    assert walk(c, 0, []) == sorted([one, lt])
    assert walk(c, 0, [one]) == [dot]
    assert walk(c, 0, [one, dot]) == sorted([dog, cat])
    assert walk(c, 0, [one, dot, dog]) == [nl]
    # second line: numbered 2, "dog" is used up
    assert walk(c, 0, [one, dot, dog, nl]) == sorted([two, lt])
    assert walk(c, 0, [one, dot, dog, nl, two, dot]) == [cat]
    # both lines used: only the end marker, then eos
    line2 = [two, dot, cat, nl]
    assert walk(c, 0, [one, dot, dog, nl] + line2) == [lt]
    end = ids(tok, "<", "e", "n", "d", ">")
    assert walk(c, 0, [one, dot, dog, nl] + line2 + end[:3]) == ids(tok, "d")
    assert walk(c, 0, [one, dot, dog, nl] + line2 + end) == [tok.eos_token_id]
    # after eos (a finished row keeps being padded) still only eos
    assert walk(c, 0, [one, dot, dog, nl] + line2 + end + [0, 0]) == [tok.eos_token_id]
    # prompt 1 has its own lines
    assert walk(c, 1, [one, dot]) == [dog]


def test_line_sequence_max_and_min_lines(tok):
    one, dot, lt, nl = ids(tok, "1", ".", "<", "\n")
    dog = ids(tok, "▁dog")[0]
    capped = LineSequenceConstraint(tok, [["dog", "cat"]], context="x\n", max_lines=1)
    assert walk(capped, 0, [one, dot, dog, nl]) == [lt]
    floored = LineSequenceConstraint(tok, [["dog", "cat"]], context="x\n", min_lines=1)
    assert walk(floored, 0, []) == [one]
    assert walk(floored, 0, [one, dot, dog, nl]) == sorted(ids(tok, "2", "<"))
    # a floor above the number of lines cannot trap the decoder
    empty = LineSequenceConstraint(tok, [[]], context="x\n", min_lines=2)
    assert walk(empty, 0, []) == [lt]


def test_line_sequence_unnumbered_and_cache_independence(tok):
    c = LineSequenceConstraint(tok, [["dog", "cat"]], context="x\n", numbered=False)
    dog, cat, nl, lt = ids(tok, "dog", "cat", "\n", "<")
    assert walk(c, 0, []) == sorted([dog, cat, lt])
    # asking for a long prefix directly (no cached parent) walks it from scratch
    fresh = LineSequenceConstraint(tok, [["dog", "cat"]], context="x\n", numbered=False)
    assert walk(fresh, 0, [dog, nl]) == sorted([cat, lt])
    steps = [walk(c, 0, [dog, nl][:k]) for k in range(3)]
    assert steps[-1] == sorted([cat, lt])


def test_token_budget_covers_the_longest_answer(tok):
    c = LineSequenceConstraint(tok, [["dog", "cat", "do"]], context="x\n", max_lines=2)
    # the two longest lines: "1. do\n" is 5 tokens (no "▁do" merge), "1. dog\n" 4 ("▁dog");
    # then 2 spare per line, the end marker's 5 and eos
    assert c.token_budget(0) == 5 + 4 + 2 * 2 + 5 + 1


def test_end_key_is_not_a_line_key():
    assert END_KEY < 0

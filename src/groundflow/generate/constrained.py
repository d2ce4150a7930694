"""Constrained decoding over a closed set of strings, by token-level prefix tries.

Each allowed string is tokenised *in context* (encode(context + s) minus encode(context)), so the
ids at its boundary are the ones a model continuing that context would produce, BPE merges
included. A trie over those ids answers "which tokens may come next" with dictionary lookups
only: no scan of the vocabulary at any step.

`LineSequenceConstraint` drives a whole answer made of lines, e.g.

    1. long oars -> oars
    2. a narrow boat -> boat
    <end>

At each line start the model may begin any line not used yet (numbered with the next number) or
the end marker; once the end marker is complete, only eos remains. `ChoiceConstraint` drives a
one-piece answer: exactly one of a prompt's allowed strings, then eos.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

END_KEY = -1


@dataclass(eq=False, slots=True)
class TrieNode:
    children: dict[int, "TrieNode"] = field(default_factory=dict)
    keys: set[int] = field(default_factory=set)  # keys of the sequences passing through this node
    key: int | None = None  # key of the sequence that ends here

    def open_children(self, used: frozenset[int] | set[int]) -> list[int]:
        """Tokens leading towards at least one sequence whose key is not in `used`."""
        # `keys <= used` is answered from the sizes alone whenever keys outnumber used keys.
        return [token for token, child in self.children.items() if not child.keys <= used]


class TokenTrie:
    """A prefix tree over token-id sequences, each sequence tagged with an integer key."""

    def __init__(self, sequences: Sequence[Sequence[int]] = (), keys: Sequence[int] | None = None):
        self.root = TrieNode()
        for index, ids in enumerate(sequences):
            self.add(ids, index if keys is None else keys[index])

    def add(self, ids: Sequence[int], key: int) -> None:
        """Insert `ids` under `key`; sequences must be non-empty and prefix-free."""
        if not ids:
            raise ValueError(f"empty token sequence for key {key}")
        node = self.root
        node.keys.add(key)
        for token in ids:
            if node.key is not None:
                raise ValueError(f"sequence of key {node.key} is a prefix of the sequence of key {key}")
            child = node.children.get(token)
            if child is None:
                child = node.children[token] = TrieNode()
            node = child
            node.keys.add(key)
        if node.key is not None or node.children:
            raise ValueError(f"sequence of key {key} is a prefix of (or equal to) another sequence")
        node.key = key


def tokenize_in_context(tokenizer, strings: Sequence[str], context: str = "") -> list[list[int]]:
    """Token ids of each string as the model would produce them right after `context`.

    When the context's own ids are not a prefix of the joint encoding (a merge across the boundary
    would rewrite tokens already generated), the string is encoded on its own instead.
    """
    if not strings:
        return []
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"] if context else []
    joint = tokenizer([context + s for s in strings], add_special_tokens=False)["input_ids"]
    n = len(context_ids)
    result: list[list[int] | None] = []
    fallback: list[int] = []
    for index, ids in enumerate(joint):
        if list(ids[:n]) == list(context_ids) and len(ids) > n:
            result.append(list(ids[n:]))
        else:
            result.append(None)
            fallback.append(index)
    if fallback:
        alone = tokenizer([strings[i] for i in fallback], add_special_tokens=False)["input_ids"]
        for index, ids in zip(fallback, alone):
            result[index] = list(ids)
    return result  # type: ignore[return-value]


class ChoiceConstraint:
    """`prefix_allowed_tokens_fn` for answers that are exactly one of a prompt's choices, then eos.

    `choices_per_prompt[p]` holds prompt p's allowed answers. Each is tokenised after `context`
    (the text every answer follows, e.g. a prefilled "Answer:") and closed with eos, so a choice
    that is a prefix of another ("dog", "dog bowl") can still end where it ends. Once a choice and
    its eos are written, only eos remains. With `max_tokens` (the generation budget), choices that
    could not be completed within it (eos included) are left out, so every answer is a whole
    choice; a prompt left without any is an error. Call as fn(prompt_index, generated_ids).
    """

    def __init__(self, tokenizer, choices_per_prompt: Sequence[Sequence[str]], *, context: str = "",
                 eos_token_id: int | None = None, max_tokens: int | None = None):
        self.tokenizer = tokenizer
        self.choices = [list(dict.fromkeys(choices)) for choices in choices_per_prompt]
        for index, choices in enumerate(self.choices):
            if not choices or any(not choice for choice in choices):
                raise ValueError(f"prompt {index} needs at least one non-empty choice, got {choices}")
        self.context = context
        self.eos_token_id = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
        if self.eos_token_id is None:
            raise ValueError("a choice constraint needs an eos token to close each choice")
        self.max_tokens = max_tokens
        self._tries: dict[int, TokenTrie] = {}

    def _trie(self, prompt_index: int) -> TokenTrie:
        trie = self._tries.get(prompt_index)
        if trie is None:
            ids = tokenize_in_context(self.tokenizer, self.choices[prompt_index], self.context)
            # Two spellings may tokenise alike: one path each.
            paths = dict.fromkeys(tuple(row) + (self.eos_token_id,) for row in ids)
            fitting = [path for path in paths if self.max_tokens is None or len(path) <= self.max_tokens]
            if not fitting:
                raise ValueError(
                    f"prompt {prompt_index}: no choice fits in {self.max_tokens} tokens "
                    f"(the shortest takes {min(len(path) for path in paths)}, eos included)"
                )
            trie = self._tries[prompt_index] = TokenTrie(fitting)
        return trie

    def allowed(self, prompt_index: int, generated: Sequence[int]) -> list[int]:
        node = self._trie(prompt_index).root
        for token in generated:
            node = node.children.get(int(token))
            if node is None or node.key is not None:  # the choice is complete (or a stray token got through)
                return [self.eos_token_id]
        return list(node.children)

    __call__ = allowed



@dataclass(frozen=True)
class _State:
    line_number: int  # 1-based number of the line being written
    node: TrieNode | None  # None once the end marker is complete
    used: frozenset[int]


class LineSequenceConstraint:
    """`prefix_allowed_tokens_fn` for answers made of allowed lines followed by an end marker.

    `lines_per_prompt[p]` holds prompt p's allowed line contents (without number or line break).
    Line i is written as f"{i}. {content}{line_end}" (just content + line_end when not
    `numbered`); at least `min_lines` lines (or all there are) and at most `max_lines`, each
    content at most once, then `end_marker`, then eos.
    `context` is text that ends the way every line start is preceded (the prefilled answer start,
    e.g. "<begin>\\n"): lines are tokenised after it. Call as fn(prompt_index, generated_ids).
    """

    def __init__(
        self,
        tokenizer,
        lines_per_prompt: Sequence[Sequence[str]],
        *,
        context: str = "\n",
        end_marker: str = "<end>",
        line_end: str = "\n",
        numbered: bool = True,
        max_lines: int | None = None,
        min_lines: int = 0,
        eos_token_id: int | None = None,
    ):
        self.tokenizer = tokenizer
        self.lines = [list(dict.fromkeys(lines)) for lines in lines_per_prompt]
        self.context = context
        self.end_marker = end_marker
        self.line_end = line_end
        self.numbered = numbered
        self.max_lines = max_lines
        self.min_lines = min_lines
        self.eos_token_id = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
        self._end_ids = tokenize_in_context(tokenizer, [end_marker], context)[0]
        self._tries: dict[tuple[int, int, bool], TokenTrie] = {}
        self._states: dict[tuple[int, tuple[int, ...]], _State] = {}

    def line_text(self, number: int, content: str) -> str:
        return f"{number}. {content}{self.line_end}" if self.numbered else f"{content}{self.line_end}"

    def _trie(self, prompt_index: int, line_number: int) -> TokenTrie:
        """The trie of line `line_number`: the prompt's lines and/or the end marker (built lazily)."""
        n_lines = len(self.lines[prompt_index])
        only_end = (self.max_lines is not None and line_number > self.max_lines) or line_number > n_lines
        # Each finished line uses up one content, so lines remain exactly while line_number <= n_lines.
        end_allowed = only_end or line_number > min(self.min_lines, n_lines)
        slot = 0 if only_end else (line_number if self.numbered else 1)
        key = (prompt_index, slot, end_allowed)
        trie = self._tries.get(key)
        if trie is None:
            contents = [] if only_end else self.lines[prompt_index]
            texts = [self.line_text(line_number, c) for c in contents]
            trie = TokenTrie(tokenize_in_context(self.tokenizer, texts, self.context), range(len(texts)))
            if end_allowed:
                trie.add(self._end_ids, END_KEY)
            self._tries[key] = trie
        return trie

    def _start(self, prompt_index: int) -> _State:
        return _State(1, self._trie(prompt_index, 1).root, frozenset())

    def _advance(self, prompt_index: int, state: _State, token: int) -> _State:
        if state.node is None:
            return state
        child = state.node.children.get(token)
        if child is None:
            # Only reachable when the caller let a disallowed token through: stop there.
            return _State(state.line_number, None, state.used)
        if child.key is None:
            return _State(state.line_number, child, state.used)
        if child.key == END_KEY:
            return _State(state.line_number, None, state.used)
        number = state.line_number + 1
        return _State(number, self._trie(prompt_index, number).root, state.used | {child.key})

    def _state(self, prompt_index: int, generated: Sequence[int]) -> _State:
        key = (prompt_index, tuple(generated))
        state = self._states.get(key)
        if state is not None:
            return state
        parent = self._states.pop((prompt_index, key[1][:-1]), None) if generated else None
        if parent is not None:
            state = self._advance(prompt_index, parent, int(generated[-1]))
        else:
            state = self._start(prompt_index)
            for token in generated:
                state = self._advance(prompt_index, state, int(token))
        self._states[key] = state
        return state

    def allowed(self, prompt_index: int, generated: Sequence[int]) -> list[int]:
        state = self._state(prompt_index, generated)
        if state.node is None:
            return [self.eos_token_id]
        return state.node.open_children(state.used)

    __call__ = allowed

    def token_budget(self, prompt_index: int) -> int:
        """An upper bound on the tokens a complete answer for this prompt can take."""
        widest = self.max_lines if self.max_lines is not None else max(len(self.lines[prompt_index]), 1)
        count = len(self.lines[prompt_index]) if self.max_lines is None else min(self.max_lines, len(self.lines[prompt_index]))
        texts = [self.line_text(widest, c) for c in self.lines[prompt_index]]
        lengths = sorted((len(ids) for ids in tokenize_in_context(self.tokenizer, texts, self.context)), reverse=True)
        # A smaller line number may tokenise into a different count than the widest one: allow 2 spare.
        return sum(lengths[:count]) + 2 * count + len(self._end_ids) + 1

    def reset(self) -> None:
        """Forget cached decoding states (tries are kept)."""
        self._states.clear()

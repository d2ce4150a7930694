"""A self-training round's data from verified search chains: D+ for the policy, D_v for the value model.

D+ is each question's single highest-scored correct chain (§9.3); a question without one gives none.

D_v labels chain prefixes with values in [0, 1], by one of two rules (config `value_labels`):
- "tree" (§3.5, what the README prescribes): a question's chains are merged into a prefix tree of
  sentences (tsst.sentences, joined by one space as the search writes them; the original's labeller
  split at every '.' and joined with double spaces, so it trained on text the search never shows).
  m(n) is the number of edges from n to the nearest correct end below it; a node from which none is
  reachable inherits its nearest such ancestor's m. Top-down from v(root) = 0, w(n) =
  (1 - v(parent)) * (+1 if reachable else -1) / (m(n) + 1), v(n) = max(0, v(parent) + w(n)): values
  rise to 1 along the way to a correct end and step down off it. A question without a correct chain
  gives nothing (dropped). Fixed here: a node is a correct end when ANY chain ending exactly there
  is correct, also when the node has children (a correct chain that is a prefix of another); the
  original took a node's correctness from the first chain that created it and counted only
  childless nodes (`leaf_rule="first"` reproduces that).
- "per_chain" (§3.3, what the loop code runs): the D+ chain's k-th of N sentences gets k/N, every
  sentence prefix of every incorrect chain gets 0 (questions without a correct chain give negatives).

Records are LLaVA training JSON (interface 2 of issue 13): the human turn is
tsst.prompts.QuestionPrompts.human_turn (with "<image>\\n" only when the question has an image),
the gpt turn the chain or prefix, value records with a float `value`. This module reads no files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from groundflow.tsst.prompts import QuestionPrompts
from groundflow.tsst.sentences import join_sentences, split_sentences

VALUE_LABELS = ("tree", "per_chain")
LEAF_RULES = ("any", "first")
FINAL_ANSWER = "final answer"


@dataclass(frozen=True)
class Chain:
    """One verified chain of a question (a row of the tsst_verified table)."""

    text: str
    correct: bool
    score: float
    rank: int


def tree_values(chains: Iterable[tuple[Sequence[str], bool]], *, leaf_rule: str = "any") -> dict[tuple[str, ...], float]:
    """Values of every non-root node of the prefix tree of `chains` ((sentences, correct) pairs),
    keyed by the node's sentences, in the order nodes were first made; {} when no correct end is
    reachable (the question is dropped from D_v)."""
    if leaf_rule not in LEAF_RULES:
        raise ValueError(f"leaf_rule must be one of {LEAF_RULES}, not {leaf_rule!r}")
    root: tuple[str, ...] = ()
    children: dict[tuple[str, ...], list[tuple[str, ...]]] = {root: []}
    first_correct: dict[tuple[str, ...], bool] = {}
    ends_correct: dict[tuple[str, ...], bool] = {}
    for sentences, correct in chains:
        steps = tuple(sentences)
        if not steps:
            continue
        for depth in range(1, len(steps) + 1):
            node = steps[:depth]
            if node not in children:
                children[node] = []
                children[node[:-1]].append(node)
                first_correct[node] = bool(correct)
        ends_correct[steps] = ends_correct.get(steps, False) or bool(correct)

    def correct_end(node: tuple[str, ...]) -> bool:
        if leaf_rule == "any":
            return ends_correct.get(node, False)
        return not children[node] and first_correct[node]

    order = list(children)  # a node is made after its parent, so parents come first
    distance: dict[tuple[str, ...], float] = {}
    for node in reversed(order):
        if node != root and correct_end(node):
            distance[node] = 0
        else:
            distance[node] = 1 + min((distance[c] for c in children[node]), default=math.inf)
    if math.isinf(distance[root]):
        return {}
    inherited = {root: distance[root]}
    values = {root: 0.0}
    for node in order[1:]:
        parent = node[:-1]
        reachable = not math.isinf(distance[node])
        inherited[node] = distance[node] if reachable else inherited[parent]
        step = (1.0 - values[parent]) * (1.0 if reachable else -1.0) / (inherited[node] + 1)
        values[node] = max(0.0, values[parent] + step)
    del values[root]
    return values


def linear_values(sentences: Sequence[str], correct: bool) -> list[float]:
    """§3.3's rule for one chain: sentence k of N gets k/N when correct, 0 when not."""
    n = len(sentences)
    return [k / n if correct else 0.0 for k in range(1, n + 1)]


def best_correct(chains: Sequence[Chain]) -> Chain | None:
    """The highest-scored correct chain (ties: the better rank), or None."""
    correct = [c for c in chains if c.correct]
    return min(correct, key=lambda c: (-c.score, c.rank)) if correct else None


def value_targets(chains: Sequence[Chain], *, rule: str = "tree", leaf_rule: str = "any", cut: str = "sentence",
                  require_final_answer: bool = False) -> list[tuple[str, float]]:
    """(prefix text, value) pairs of one question's D_v records by `rule` (see the module docstring).
    With `require_final_answer` the tree skips chains whose last sentence lacks "final answer", as
    the original's labeller did."""
    if rule == "tree":
        usable = [c for c in chains if c.text.strip()]
        split = [(split_sentences(c.text, cut=cut), c.correct) for c in usable]
        if require_final_answer:
            split = [(s, ok) for s, ok in split if s and FINAL_ANSWER in s[-1].lower()]
        return [(join_sentences(node), value) for node, value in tree_values(split, leaf_rule=leaf_rule).items()]
    if rule == "per_chain":
        targets = []
        positive = best_correct(chains)
        picked = [positive] if positive is not None else []
        for chain in picked + [c for c in chains if not c.correct]:
            sentences = split_sentences(chain.text, cut=cut)
            for k, value in enumerate(linear_values(sentences, chain.correct), 1):
                targets.append((join_sentences(sentences[:k]), value))
        return targets
    raise ValueError(f"value_labels must be one of {VALUE_LABELS}, not {rule!r}")


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    choices: tuple[str, ...]
    image: str | None


def _record(record_id: str, question: Question, human: str, reply: str) -> dict:
    record: dict = {"id": record_id}
    if question.image is not None:
        record["image"] = question.image
    record["conversations"] = [{"from": "human", "value": human}, {"from": "gpt", "value": reply}]
    return record


def round_records(questions: Sequence[Question], chains: Mapping[str, Sequence[Chain]], prompts: QuestionPrompts, *,
                  round_index: int, value_labels: str = "tree", leaf_rule: str = "any", cut: str = "sentence",
                  require_final_answer: bool = False) -> tuple[list[dict], list[dict], dict]:
    """(D+ records, D_v records, counts) of one round from each question's verified chains.

    Every question id with chains must be among `questions`; a question without chains counts
    in `no_chains`. Record ids are `tsst-r{round}-{question id}` (value: `...-v{k}`), stable across runs.
    """
    if value_labels not in VALUE_LABELS:
        raise ValueError(f"value_labels must be one of {VALUE_LABELS}, not {value_labels!r}")
    by_id = {q.id: q for q in questions}
    unknown = sorted(set(chains) - set(by_id))
    if unknown:
        raise ValueError(f"verified chains of {len(unknown)} questions not in the question table, e.g. {unknown[:3]}")
    policy, value = [], []
    counts = {"round": round_index, "value_labels": value_labels, "questions": len(by_id), "no_chains": 0,
              "with_correct_chain": 0, "dplus_records": 0, "value_records": 0, "dropped_questions": 0}
    for question in questions:
        question_chains = list(chains.get(question.id, ()))
        if not question_chains:
            counts["no_chains"] += 1
            counts["dropped_questions"] += 1
            continue
        human = prompts.human_turn(question.question, question.choices, has_image=question.image is not None)
        best = best_correct(question_chains)
        if best is not None:
            counts["with_correct_chain"] += 1
            policy.append(_record(f"tsst-r{round_index}-{question.id}", question, human, best.text))
        targets = value_targets(question_chains, rule=value_labels, leaf_rule=leaf_rule, cut=cut,
                                require_final_answer=require_final_answer)
        if not targets:
            counts["dropped_questions"] += 1
        for k, (text, target) in enumerate(targets):
            record = _record(f"tsst-r{round_index}-{question.id}-v{k}", question, human, text)
            record["value"] = float(target)
            value.append(record)
    counts["dplus_records"], counts["value_records"] = len(policy), len(value)
    return policy, value, counts


def accumulate(previous: Sequence[dict], new: Sequence[dict], what: str) -> list[dict]:
    """The previous rounds' records then this round's; a record id present in both is an error."""
    seen = {r["id"] for r in previous}
    clash = [r["id"] for r in new if r["id"] in seen]
    if clash:
        raise ValueError(f"{what}: record ids {clash[:3]} are in the previous round's file too "
                         f"(is the previous file this round's own output?)")
    return [*previous, *new]

"""TSST's value-guided sentence-level beam search: the pure core (no model), batched over questions.

Per question the search keeps a beam of partial chains (sentences joined by one space). Each round
every kept chain asks the policy for its next sentences (G = `expansions` continuations each, the
distinct first sentences kept); every new prefix is scored by the value model; when there are more
than `branch` candidates, `branch` of them are drawn with weights score**(1/0.5); a drawn chain that
carries an end marker, outgrows `max_chars` or ended at EOS is finished. Rounds go on until
`n_consistency` chains finished or `max_rounds` (30) passed; an empty beam restarts from a fresh root.

`search_questions` runs many questions in lockstep: one policy call for every expansion request of
every active question, and one value call for every candidate prefix of the round. Only the model
objects see tensors; they are any objects with `propose(requests) -> list[Expansion]` and
interface 3's `score(prompts, prefixes, images, groups) -> list[float]` (groundflow.tsst.search_models
has the LLaVA ones).

The original's defects, fixed here, each switchable in `SearchConfig` where a user may want the
original (and logged once per job by `log_fixes`):
(a) `policy_closes_turn=False`: at depth >= 1 the policy continues the open assistant turn; the original
    appended `</s>` (the value model's rendering) and so continued after a closed turn. The value input
    keeps the closing EOS (interface 3).
(b) `weights="positive"`: a non-positive score gets no weight (the original squared negatives into
    positive weight); when no candidate has a positive score the draw is uniform over the candidates.
    `weights="original"` squares as the original did, normalised by the total, and draws uniformly
    when that total is zero (the original divided by zero there). `replacement=False` draws without
    replacement (the original drew with replacement, so a chain could take several beam slots).
(c) `cut="sentence"`: sentences end at '.', '!' or '?' but not inside "3.5", "e.g." or "A. red"
    (groundflow.tsst.sentences); `cut="period"` is the original's cut at every '.'.
(d) Seeded per question: selection draws from a numpy Generator of (seed, question id) and each
    expansion request carries its own sampling seed (seed, question id, round, slot), so a question's
    result does not depend on which questions share its batch. The original never seeded.
(e) `keep_eos_sentence=True`: a continuation that stops at EOS keeps its last sentence even without a
    terminator, and that chain is finished ("eos"); the original dropped the unterminated sentence
    and finished the parent, losing "Final Answer: A" without a period.
(f) `end_markers="word"`: "user" / "human" end a chain only as whole words; "substring" is the
    original's (which ends a chain at "username" or "humanity").
G: `expansions` (default 2 * num_beams, as the original, whose "double only at the root" check ran
once before its loop so G was always doubled).
Candidates are distinct over the whole round, not only per expansion as the original's set: a chain
drawn twice into the beam proposes the same texts twice, which get one value and one weight.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import numpy as np

from groundflow.tsst.prompts import QuestionPrompts, load_question_prompts
from groundflow.tsst.sentences import CUTS, join_sentences

log = logging.getLogger("groundflow")

ORIGINAL_SELECTION_POWER = 1 / 0.5  # score ** (1 / 0.5), i.e. score squared
SUBSTRING_MARKERS = ("###", "---", ". . .", "</s>")
WORD_MARKERS = ("user", "human")
FINAL_ANSWER = "final answer"
WEIGHTS = ("positive", "original")
END_MARKER_MODES = ("word", "substring")
END_REASONS = ("final_answer", "end_marker", "eos", "length", "round_cap")


@dataclass(frozen=True)
class SearchConfig:
    """The search settings (config `tsst.search`); the defaults are the fixed search with the
    ScienceQA beam config's widths (branch 5, n_consistency 7, num_beams 5 -> G 10)."""

    branch: int = 5
    n_consistency: int = 7
    num_beams: int = 5
    expansions: int | None = None  # G; None: 2 * num_beams, the original's
    temperature: float = 0.7  # 0: greedy (G copies of one continuation collapse into one)
    top_k: int = 50  # transformers' default, which the original's generate applied; 0: off
    max_step_tokens: int = 256
    max_chars: int = 1000  # the original: 1000 (evaluation), 1200 (self_train/eval.py)
    max_rounds: int = 30
    min_sentence_chars: int = 0  # self_train/eval.py: 3
    finish_beam_at_cap: bool = False  # self_train/eval.py: the beam is taken as finished when nothing did
    cut: str = "sentence"  # (c) "period": the original
    policy_closes_turn: bool = False  # (a) True: the original
    weights: str = "positive"  # (b) "original"
    replacement: bool = True  # (b) the original's; False: without replacement
    selection_power: float = ORIGINAL_SELECTION_POWER
    keep_eos_sentence: bool = True  # (e) False: the original
    end_markers: str = "word"  # (f) "substring": the original

    def __post_init__(self):
        for name in ("branch", "n_consistency", "num_beams", "max_step_tokens", "max_chars", "max_rounds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"search {name} must be a positive integer, not {value!r}")
        if self.expansions is not None and (isinstance(self.expansions, bool) or not isinstance(self.expansions, int)
                                            or self.expansions < 1):
            raise ValueError(f"search expansions must be a positive integer or null, not {self.expansions!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"search top_k must be an integer >= 0, not {self.top_k!r}")
        if self.temperature < 0:
            raise ValueError(f"search temperature must be >= 0, not {self.temperature!r}")
        if self.cut not in CUTS:
            raise ValueError(f"search cut must be one of {CUTS}, not {self.cut!r}")
        if self.weights not in WEIGHTS:
            raise ValueError(f"search weights must be one of {WEIGHTS}, not {self.weights!r}")
        if self.end_markers not in END_MARKER_MODES:
            raise ValueError(f"search end_markers must be one of {END_MARKER_MODES}, not {self.end_markers!r}")
        if self.selection_power <= 0:
            raise ValueError(f"search selection_power must be > 0, not {self.selection_power!r}")

    @property
    def width(self) -> int:
        """G: continuations drawn per kept chain."""
        return self.expansions if self.expansions is not None else 2 * self.num_beams

    @classmethod
    def from_config(cls, values: dict | None) -> "SearchConfig":
        values = dict(values or {})
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown search settings {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**values)

    def describe(self) -> dict:
        return {name: getattr(self, name) for name in self.__dataclass_fields__} | {"G": self.width}


def log_fixes(config: SearchConfig) -> None:
    """One line per departure from the original, saying which way this job goes."""
    fixes = [
        ("policy continues the open assistant turn (no </s> after the chain)", not config.policy_closes_turn),
        ("non-positive value scores get no sampling weight" if config.weights == "positive"
         else "weights squared as the original (negatives weigh positive)", config.weights == "positive"),
        ("beam drawn without replacement" if not config.replacement else "beam drawn with replacement (original)",
         not config.replacement),
        (f"sentence cut: {config.cut}", config.cut == "sentence"),
        ("unterminated last sentence at EOS kept", config.keep_eos_sentence),
        (f"'user'/'human' end markers matched as {config.end_markers}", config.end_markers == "word"),
    ]
    log.info("tsst search: G = %d (%s), branch %d, n_consistency %d, seeded per question",
             config.width, "2 x num_beams as the original" if config.expansions is None else "set", config.branch,
             config.n_consistency)
    for text, fixed in fixes:
        log.info("tsst search: %s [%s]", text, "fix" if fixed else "original")


# ---------------------------------------------------------------- records passed to the models

@dataclass(frozen=True)
class SearchQuestion:
    """A question to search: `image` is whatever the models take (a PIL image) or None."""

    id: str
    question: str
    choices: tuple[str, ...]
    image: Any = None


@dataclass(frozen=True)
class ExpansionRequest:
    """Ask the policy for the next sentences after `chain` ("" at the root) of question `question_id`."""

    question_id: str
    prompt: str  # the user turn's text, without the image placeholder
    image: Any
    chain: str
    seed: int  # this request's own sampling seed


@dataclass(frozen=True)
class Proposal:
    sentence: str
    eos: bool = False  # the continuation ended at EOS right after this sentence


@dataclass(frozen=True)
class Expansion:
    """The distinct first sentences of one request's G continuations, in first-seen order."""

    proposals: tuple[Proposal, ...] = ()
    hit_eos_empty: bool = False  # a continuation ended at EOS with no sentence


class Policy(Protocol):
    def propose(self, requests: Sequence[ExpansionRequest]) -> list[Expansion]: ...


class ValueScorer(Protocol):
    def score(self, prompts: Sequence[str], prefixes: Sequence[str], images: Sequence[Any],
              groups: Sequence[Any]) -> list[float]: ...


# ---------------------------------------------------------------- pure pieces

def _int_of(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def question_rng(seed: int, question_id: str) -> np.random.Generator:
    """The selection generator of one question (fix d): the same for a question in any batch."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), _int_of(question_id)]))


def request_seed(seed: int, question_id: str, round_index: int, slot: int) -> int:
    """The sampling seed of one expansion request: question, round and beam slot decide it."""
    state = np.random.SeedSequence([int(seed), _int_of(question_id), round_index, slot]).generate_state(2)
    return int(state[0]) << 31 ^ int(state[1])


def candidate_text(chain: str, sentence: str) -> str:
    """The root's candidate is the sentence alone; otherwise chain + " " + sentence."""
    return join_sentences([chain, sentence]) if chain else sentence.strip()


def end_reason(text: str, config: SearchConfig) -> str | None:
    """Why a selected chain is finished by its text, or None: "final_answer", "end_marker", "length"."""
    lowered = text.lower()
    if FINAL_ANSWER in lowered:
        return "final_answer"
    if any(marker in lowered for marker in SUBSTRING_MARKERS):
        return "end_marker"
    if config.end_markers == "substring":
        if any(marker in lowered for marker in WORD_MARKERS):
            return "end_marker"
    elif re.search(r"\b(?:%s)\b" % "|".join(WORD_MARKERS), lowered):
        return "end_marker"
    if len(text) > config.max_chars:
        return "length"
    return None


def selection_weights(scores: Sequence[float], config: SearchConfig) -> np.ndarray:
    """Sampling probabilities of the candidates (fix b): see the module docstring."""
    values = np.asarray(scores, dtype=np.float64)
    if config.weights == "original":
        # the original's score ** 2: a negative score weighs as much as its positive twin
        weights = np.power(np.abs(values), config.selection_power)
    else:
        weights = np.where(values > 0, np.power(np.clip(values, 0, None), config.selection_power), 0.0)
    weights = np.nan_to_num(weights, nan=0.0, posinf=0.0)
    total = weights.sum()
    if total <= 0:
        return np.full(len(values), 1.0 / len(values))
    return weights / total


def select_indices(scores: Sequence[float], config: SearchConfig, rng: np.random.Generator) -> list[int]:
    """Indices (into `scores`) of the chains kept: all of them when there are at most `branch`."""
    n = len(scores)
    if n <= config.branch:
        return list(range(n))
    p = selection_weights(scores, config)
    if config.replacement:
        return [int(i) for i in rng.choice(n, size=config.branch, replace=True, p=p)]
    size = min(config.branch, int(np.count_nonzero(p)))
    return [int(i) for i in rng.choice(n, size=size, replace=False, p=p)]


# ---------------------------------------------------------------- per-question state

@dataclass
class Chain:
    text: str
    score: float
    eos: bool = False


@dataclass
class Candidate:
    question_id: str
    text: str
    eos: bool


@dataclass
class QuestionSearch:
    """One question's search state, advanced a round at a time by `search_questions`."""

    question: SearchQuestion
    prompt: str
    config: SearchConfig
    seed: int
    rng: np.random.Generator
    beam: list[Chain] = field(default_factory=list)
    finished: list[dict] = field(default_factory=list)
    rounds: int = 0
    restarts: int = 0
    policy_calls: int = 0
    value_calls: int = 0

    @classmethod
    def start(cls, question: SearchQuestion, prompt: str, config: SearchConfig, seed: int) -> "QuestionSearch":
        return cls(question, prompt, config, seed, question_rng(seed, question.id), beam=[Chain("", 0.0)])

    @property
    def done(self) -> bool:
        return len(self.finished) >= self.config.n_consistency or self.rounds >= self.config.max_rounds

    def requests(self) -> list[ExpansionRequest]:
        """This round's expansion requests, one per kept chain (a restart first when the beam emptied)."""
        if not self.beam:
            self.beam = [Chain("", 0.0)]
            self.restarts += 1
        self.policy_calls += len(self.beam)
        return [ExpansionRequest(self.question.id, self.prompt, self.question.image, chain.text,
                                 request_seed(self.seed, self.question.id, self.rounds, slot))
                for slot, chain in enumerate(self.beam)]

    def candidates(self, expansions: Sequence[Expansion]) -> list[Candidate]:
        """The round's new prefixes, distinct in first-seen order; a non-root chain that got no
        sentence is finished (ended at EOS, or its continuations ran out of tokens)."""
        if len(expansions) != len(self.beam):
            raise ValueError(f"question {self.question.id}: {len(self.beam)} requests but {len(expansions)} expansions")
        seen: dict[str, Candidate] = {}
        for chain, expansion in zip(self.beam, expansions):
            proposals = [p for p in expansion.proposals if len(p.sentence.strip()) >= self.config.min_sentence_chars
                         and p.sentence.strip()]
            if not proposals:
                if chain.text:
                    self.finished.append({"text": chain.text, "score": float(chain.score),
                                          "end": "eos" if expansion.hit_eos_empty else "length"})
                continue
            for proposal in proposals:
                text = candidate_text(chain.text, proposal.sentence)
                if text not in seen:
                    seen[text] = Candidate(self.question.id, text, proposal.eos)
        return list(seen.values())

    def advance(self, candidates: Sequence[Candidate], scores: Sequence[float]) -> None:
        """Select the next beam from the scored candidates and finish the chains that ended."""
        self.value_calls += len(candidates)
        self.rounds += 1
        order = sorted(range(len(candidates)), key=lambda i: -scores[i])  # stable: ties keep proposal order
        ranked = [Chain(candidates[i].text, float(scores[i]), candidates[i].eos) for i in order]
        kept = [ranked[i] for i in select_indices([c.score for c in ranked], self.config, self.rng)]
        self.beam = []
        for chain in kept:
            reason = end_reason(chain.text, self.config) or ("eos" if chain.eos else None)
            if reason is None:
                self.beam.append(chain)
            else:
                self.finished.append({"text": chain.text, "score": chain.score, "end": reason})
        if self.rounds >= self.config.max_rounds and not self.finished and self.config.finish_beam_at_cap:
            for chain in self.beam[:self.config.n_consistency]:
                self.finished.append({"text": chain.text, "score": chain.score, "end": "round_cap"})

    def result(self) -> dict:
        """Interface 4's row: finished chains sorted by score, highest first, and the call counts."""
        chains = sorted(self.finished, key=lambda c: -c["score"])
        return {"id": self.question.id, "chains": chains, "rounds": self.rounds, "restarts": self.restarts,
                "policy_calls": self.policy_calls, "value_calls": self.value_calls}


def search_questions(questions: Sequence[SearchQuestion], policy: Policy, scorer: ValueScorer,
                     config: SearchConfig, seed: int, *, prompts: QuestionPrompts | None = None) -> list[dict]:
    """Search every question, all of them together: per round one `policy.propose` over every
    active question's requests and one `scorer.score` over every candidate prefix."""
    prompts = prompts or load_question_prompts()
    states = [QuestionSearch.start(q, prompts.render(q.question, q.choices, has_image=q.image is not None), config, seed)
              for q in questions]
    while True:
        active = [s for s in states if not s.done]
        if not active:
            break
        requests = [r for s in active for r in s.requests()]
        expansions = policy.propose(requests)
        if len(expansions) != len(requests):
            raise ValueError(f"policy answered {len(expansions)} of {len(requests)} expansion requests")
        per_state, start = [], 0
        for state in active:
            n = len(state.beam)
            per_state.append(state.candidates(expansions[start:start + n]))
            start += n
        flat = [(state, c) for state, cands in zip(active, per_state) for c in cands]
        scores = scorer.score([s.prompt for s, _ in flat], [c.text for _, c in flat],
                              [s.question.image for s, _ in flat], [s.question.id for s, _ in flat]) if flat else []
        if len(scores) != len(flat):
            raise ValueError(f"value scorer answered {len(scores)} of {len(flat)} prefixes")
        start = 0
        for state, cands in zip(active, per_state):
            state.advance(cands, [float(s) for s in scores[start:start + len(cands)]])
            start += len(cands)
    return [s.result() for s in states]

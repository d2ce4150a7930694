"""Judging free-text answers to multiple-choice questions: extraction, a regex fast path, an LLM judge.

A response's answer is the text after its first "final answer:" (any case) to the end of that
line; without the phrase, its last sentence of at least 10 characters (sentences end after
. ? ! ;), as TSST's evaluator does. Most answers never reach a model: an answer that is an option
letter ("B", "B.", "(B)", "B. red" whose text is option B's) is checked by regex, and one that is
an option's text (case, spacing and end punctuation aside) by matching. A bare "A" followed by
words is the article, not a letter, so "A red car is parked" goes to the judge; the original's
fallback regex took it for option A.

The rest go to an LLM through the generator layer (groundflow.generate.backends: a local HF model
or an OpenAI-compatible endpoint whose key comes from an environment variable), one batched
`generate` per call of `judge`, prompted with our prompt files (prompts/judge/), which show the
options (the original's self-training judge did not, so letter answers were misjudged). The reply's
first whole word among true/false/unknown is the verdict; a reply with none is "unknown". Only
"true" is correct.

Verdicts of the LLM are cached by (judge fingerprint, question id, extracted answer) in a JSONL
file that outlives the job: a re-run, a resumed job or a later round asks nothing twice. A judge
that cannot be reached after the backend's retries gives `unknown` judged_by "error" (never a
silent false) and is not cached, so a later run asks again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from groundflow.generate.backends import ChatPrompt, Generator, SamplingParams
from groundflow.io.artifacts import append_json_lines, read_appended_json_lines
from groundflow.prompts import PromptText, load_prompt

log = logging.getLogger(__name__)

VERDICTS = ("true", "false", "unknown")
JUDGED_BY = ("regex", "match", "judge", "cache", "error")
LETTERS = string.ascii_uppercase
USER_FIELDS = frozenset({"question", "options", "correct_letter", "correct_text", "response"})
MIN_FALLBACK_CHARS = 10

_FINAL_ANSWER = re.compile(r"final answer\s*:", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.?!;])\s+")
_VERDICT_WORD = re.compile(r"\b(true|false|unknown)\b")
# A letter alone, maybe bracketed or followed by '.', ')' or ':' ("B", "B.", "(B)", "B)").
_LETTER_ONLY = re.compile(r"^\(?([A-Za-z])\)?[.):]?$")
# A letter marked as an option by punctuation, then text ("B. red", "(B) red", "B) red", "B: red").
# Punctuation is required: "A red car" is the article.
_LETTER_THEN_TEXT = re.compile(r"^(?:\(([A-Z])\)|([A-Z])[.):])\s+(\S.*)$")


@dataclass(frozen=True)
class JudgeItem:
    """One response to judge. `options` is the question's options as the prompt shows them ("A. x"
    lines, formatted by the caller); `answer_label` is 1-based."""

    question_id: str
    question: str
    choices: tuple[str, ...]
    options: str
    answer_label: int
    response: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "choices", tuple(self.choices))
        if not 1 <= int(self.answer_label) <= len(self.choices):
            raise ValueError(f"question {self.question_id}: answer_label {self.answer_label} is not in "
                             f"1..{len(self.choices)}")


@dataclass(frozen=True)
class Verdict:
    answer: str | None  # the extracted answer
    verdict: str  # "true" | "false" | "unknown"
    judged_by: str  # "regex" | "match" | "judge" | "cache" | "error"

    @property
    def correct(self) -> bool:
        return self.verdict == "true"


def extract_answer(response: str) -> str | None:
    """The answer part of a response (see the module docstring); None when there is none."""
    if not isinstance(response, str):
        raise TypeError(f"a response is a string, not {type(response).__name__}")
    found = _FINAL_ANSWER.search(response)
    if found is not None:
        answer = response[found.end():].split("\n", 1)[0].strip()
        return answer or None
    sentences = [s.strip() for s in _SENTENCE_END.split(response.strip()) if s.strip()]
    for sentence in reversed(sentences):
        if len(sentence) >= MIN_FALLBACK_CHARS:
            return sentence
    return None


def normalise(text: str) -> str:
    """Lower case, one space between words, no quotes or punctuation at the ends."""
    return " ".join(text.lower().split()).strip(" .,;:!?\"'()[]")


def letter_of(answer: str, choices: Sequence[str]) -> str | None:
    """The option letter an answer states by itself, or None (no letter, the article "A", a letter
    out of range, or "B. text" whose text is not option B's)."""
    answer = answer.strip()
    only = _LETTER_ONLY.match(answer)
    if only:
        letter = only.group(1).upper()
        return letter if LETTERS.index(letter) < len(choices) else None
    with_text = _LETTER_THEN_TEXT.match(answer)
    if with_text:
        letter = with_text.group(1) or with_text.group(2)
        index = LETTERS.index(letter)
        if index < len(choices) and normalise(with_text.group(3)) == normalise(choices[index]):
            return letter
    return None


def matched_choice(answer: str, choices: Sequence[str]) -> int | None:
    """The 0-based index of the one option whose normalised text the answer is, or None."""
    wanted = normalise(answer)
    hits = [i for i, choice in enumerate(choices) if normalise(choice) == wanted]
    return hits[0] if len(hits) == 1 else None


def option_index(answer: str | None, choices: Sequence[str]) -> int | None:
    """The 0-based option an extracted answer names by letter or by text, or None."""
    if not answer:
        return None
    letter = letter_of(answer, choices)
    if letter is not None:
        return LETTERS.index(letter)
    return matched_choice(answer, choices)


def fast_verdict(item: JudgeItem, answer: str | None) -> Verdict | None:
    """The verdict without a model where the answer settles it, else None."""
    if answer is None:
        # nothing that could name an option: wrong, and no judge could say otherwise
        return Verdict(None, "false", "regex")
    letter = letter_of(answer, item.choices)
    if letter is not None:
        right = LETTERS.index(letter) == item.answer_label - 1
        return Verdict(answer, "true" if right else "false", "regex")
    index = matched_choice(answer, item.choices)
    if index is not None:
        return Verdict(answer, "true" if index == item.answer_label - 1 else "false", "match")
    return None


def parse_verdict(reply: str) -> str:
    """The first whole word of the reply among true/false/unknown (any case); "unknown" if none."""
    found = _VERDICT_WORD.search(reply.lower())
    return found.group(1) if found else "unknown"


@dataclass(frozen=True)
class JudgePrompts:
    system: PromptText
    user: PromptText

    @property
    def version(self) -> str:
        return f"{self.system.version}+{self.user.version}"

    def chat(self, item: JudgeItem, answer: str) -> ChatPrompt:
        user = self.user.format(
            question=item.question, options=item.options, correct_letter=LETTERS[item.answer_label - 1],
            correct_text=item.choices[item.answer_label - 1], response=answer,
        )
        return ChatPrompt(messages=[{"role": "system", "content": self.system.text.strip()},
                                    {"role": "user", "content": user}])


def load_judge_prompts(user: str | None = None, system: str | None = None) -> JudgePrompts:
    """A user's prompt files (config), or ours where a path is None."""
    return JudgePrompts(system=load_prompt(system, "judge/multiple_choice_system", fields=frozenset()),
                        user=load_prompt(user, "judge/multiple_choice", fields=USER_FIELDS))


class VerdictCache:
    """LLM verdicts by (judge fingerprint, question id, answer), kept in a JSONL file.

    New verdicts go to the file in one O_APPEND write of whole lines per `add`, so jobs sharing a
    cache do not overwrite each other's lines; a line cut short by a killed job is skipped on
    reading (its verdict is simply asked again).
    """

    def __init__(self, path: str | os.PathLike, judge: str):
        self.path = Path(path)
        self.judge = judge
        self._verdicts: dict[tuple[str, str], str] = {}
        for entry in read_appended_json_lines(self.path, ("judge", "id", "answer", "verdict")):
            if entry["judge"] == judge and entry["verdict"] in VERDICTS:
                self._verdicts[(entry["id"], entry["answer"])] = entry["verdict"]

    def __len__(self) -> int:
        return len(self._verdicts)

    def get(self, question_id: str, answer: str) -> str | None:
        return self._verdicts.get((question_id, answer))

    def add(self, entries: Sequence[tuple[str, str, str]]) -> None:
        """Record (question id, answer, verdict) triples, in memory and in the file."""
        new = [(q, a, v) for q, a, v in entries if self._verdicts.get((q, a)) != v]
        if not new:
            return
        append_json_lines(self.path, [{"judge": self.judge, "id": q, "answer": a, "verdict": v} for q, a, v in new])
        for q, a, v in new:
            self._verdicts[(q, a)] = v


def _unreachable_errors() -> tuple[type[BaseException], ...]:
    from groundflow.generate.openai_compat import GenerationRequestError

    return (GenerationRequestError, ConnectionError, TimeoutError)


class MultipleChoiceJudge:
    """Verdicts for responses to multiple-choice questions (see the module docstring)."""

    def __init__(self, generator: Generator | None, *, prompts: JudgePrompts | None = None,
                 cache: str | os.PathLike | None = None, max_new_tokens: int = 8,
                 max_consecutive_failures: int = 3):
        self.generator = generator
        self.prompts = prompts or load_judge_prompts()
        self.params = SamplingParams(max_new_tokens=max_new_tokens, n=1, do_sample=False)
        self.max_consecutive_failures = max_consecutive_failures
        # which model answered, not where it was reached: an endpoint's URL or a batch size may
        # change between runs without changing a verdict
        described = {} if generator is None else generator.describe()
        identity = {key: described.get(key) for key in ("backend", "model", "dtype")}
        self.fingerprint = hashlib.sha256(json.dumps(
            {"judge": identity, "prompts": self.prompts.version, "max_new_tokens": max_new_tokens},
            sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.cache = None if cache is None else VerdictCache(cache, self.fingerprint)
        self.calls = 0  # prompts sent to the model

    def describe(self) -> dict:
        return {"generator": None if self.generator is None else self.generator.describe(),
                "prompts": self.prompts.version, "sampling": self.params.describe(), "fingerprint": self.fingerprint}

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        """One verdict per item, in order; one batched generate for the distinct uncached answers."""
        verdicts: list[Verdict | None] = []
        pending: dict[tuple[str, str], list[int]] = {}
        for index, item in enumerate(items):
            answer = extract_answer(item.response)
            fast = fast_verdict(item, answer)
            if fast is None and self.cache is not None and self.cache.get(item.question_id, answer) is not None:
                fast = Verdict(answer, self.cache.get(item.question_id, answer), "cache")
            verdicts.append(fast)
            if fast is None:
                pending.setdefault((item.question_id, answer), []).append(index)
        if pending:
            if self.generator is None:
                raise ValueError(f"{len(pending)} answers need an LLM judge, and no judge generator is configured")
            keys = list(pending)
            replies = self._ask([self.prompts.chat(items[pending[k][0]], k[1]) for k in keys])
            answered = []
            for key, reply in zip(keys, replies):
                verdict = Verdict(key[1], "unknown", "error") if reply is None else Verdict(key[1], parse_verdict(reply), "judge")
                if reply is not None:
                    answered.append((key[0], key[1], verdict.verdict))
                for index in pending[key]:
                    verdicts[index] = verdict
            if self.cache is not None:
                self.cache.add(answered)
        return verdicts  # type: ignore[return-value]

    def _ask(self, prompts: list[ChatPrompt]) -> list[str | None]:
        """Replies, None where the judge could not be reached. The batch goes in one call; if it
        fails, prompts go one at a time (one unanswerable prompt costs only itself), until
        `max_consecutive_failures` in a row say the endpoint is down and the rest are None."""
        errors = _unreachable_errors()
        self.calls += len(prompts)
        try:
            return [texts[0] for texts in self.generator.generate(prompts, self.params)]
        except errors as error:
            log.warning("judge batch of %d failed (%s); asking one at a time", len(prompts), error)
        replies: list[str | None] = []
        failures = 0
        for prompt in prompts:
            if failures >= self.max_consecutive_failures:
                replies.append(None)
                continue
            self.calls += 1
            try:
                replies.append(self.generator.generate([prompt], self.params)[0][0])
                failures = 0
            except errors as error:
                failures += 1
                log.warning("judge unreachable for one answer (%s); recorded as unknown", error)
                replies.append(None)
        n_failed = sum(r is None for r in replies)
        if n_failed:
            log.warning("judge: %d of %d answers unjudged (unknown, judged_by=error; not cached)", n_failed, len(prompts))
        return replies


__all__ = [
    "JUDGED_BY",
    "VERDICTS",
    "JudgeItem",
    "JudgePrompts",
    "MultipleChoiceJudge",
    "Verdict",
    "VerdictCache",
    "extract_answer",
    "fast_verdict",
    "letter_of",
    "load_judge_prompts",
    "matched_choice",
    "normalise",
    "option_index",
    "parse_verdict",
]

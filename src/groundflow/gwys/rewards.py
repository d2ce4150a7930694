"""GWYS's rewards as TRL reward callables: accuracy per problem type, format by full match, caption.

Each reward is called as TRL calls a custom reward, `reward(completions=..., **columns)`, and returns
one float per completion. A completion is a conversational message list
(`[{"role": "assistant", "content": text}]`) or a plain string; both are read (`completion_text`).
The dataset columns used: `solution` ("<answer>X</answer>"), `problem_type`, `options` (multiple
choice, "A. text" strings), `format_question` (caption reward).

Answer comparison (spec §6), `rules`:
- "original": the original's rules, bit for bit (the spec's parity cases): the answer is the first
  `<answer>…</answer>` stripped ("" without one); multiple choice is `pred == gt` after strip,
  case-sensitive ("b" ≠ "B", "B." ≠ "B"); numerical is 0 when exactly one of pred and GT holds a
  "." or "," (so "3" vs "3.0" is 0 and "1,000" vs "1000" is 0: the comma counts as a decimal mark),
  else 1 iff both parse (commas removed) and are equal rounded to 2 decimals; OCR, free-form and
  regression give 0 (the baseline's OCR branch called an undefined `wer`).
- "fixed" (spec §10.8 fixed): multiple choice names the option by letter in any case, with the
  usual marks ("b", "(B)", "B.", "B. its text") or by its text alone (`judge.llm_judge.option_index`);
  numerical compares values whatever their spelling ("3" = "3.0"; "1,000" is a thousands separator,
  "3,5" a decimal comma); OCR is 1 − word error rate, clipped to [0, 1]; free-form is the mean
  ROUGE-1/2/L F1 (Video-R1's reference rules); regression is the mean relative accuracy (MRA, the
  original's evaluation rule).

Format (spec §5): 1 iff the whole completion fully matches the form's pattern (DOTALL).

Caption reward (spec §5.1): the text of a completion's first `<caption>` and the question go to a
text-only judge, which never sees the image; its `<answer>` is scored against the ground truth by
the accuracy rule. The judge is any object with the generator layer's `generate(prompts, params)`
(`groundflow.generate.backends`: a local model or an OpenAI-compatible endpoint, which retries on
its own). Requests of one call go in one batch; identical requests are asked once and the judge's
answers kept (the latest `cache_size`), so a repeated caption is not asked twice. A judge that still fails gives 0 and is counted
(`CaptionReward.failures`, logged as a warning each call), never silently (the original turned a
failed call into 0 without a word, §10.7). A completion without a caption gets 0 without asking
(the original asked the judge anyway, which could then answer a multiple-choice question by chance);
`judge_empty_captions=True` asks as the original did. Called by TRL (which passes `log_metric`), each
call logs `caption/judge_failures` and `caption/judge_requests`, so failures show in the training
log per step. A `JudgeAnswerCache` keeps the judge's answers on disk across restarts (a resumed run
does not pay for its captions twice), keyed by the judge's identity, the judge prompts' version and
its sampling.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable, Protocol, Sequence

from groundflow.generate.backends import ChatPrompt, SamplingParams
from groundflow.gwys.prompts import CaptionJudgePrompts, check_form, load_caption_judge_prompts, split_option
from groundflow.io.artifacts import append_json_lines, read_appended_json_lines
from groundflow.judge.llm_judge import option_index

log = logging.getLogger(__name__)

RULES = ("original", "fixed")
FORMAT_PATTERNS = {
    "four_tag": re.compile(r"<prethink>.*?</prethink>\s*<caption>.*?</caption>\s*<think>.*?</think>\s*<answer>.*?</answer>",
                           re.DOTALL),
    "think_answer": re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL),
}
_ANSWER = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.DOTALL)
_CAPTION = re.compile(r"<caption>(.*?)</caption>", re.DOTALL)
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(,\d{3})+(\.\d+)?")
_DECIMAL_COMMA = re.compile(r"[+-]?\d*,\d+")
MRA_THRESHOLDS = tuple(round(0.5 + 0.05 * k, 2) for k in range(10))


def completion_text(completion: Any) -> str:
    """The text of a completion as TRL passes it: a string, or a list of messages (the last one's content)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        content = completion[-1].get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}]
            return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    raise TypeError(f"a completion is a string or a list of messages with text content, not {completion!r:.80}")


def extract_answer(text: str) -> str:
    """The first `<answer>…</answer>`'s text, stripped; "" when there is none."""
    found = _ANSWER.search(text)
    return found.group(1).strip() if found else ""


def caption_of(text: str) -> str:
    """The first `<caption>…</caption>`'s text, stripped; "" when there is none."""
    found = _CAPTION.search(text)
    return found.group(1).strip() if found else ""


def check_rules(rules: str) -> str:
    if rules not in RULES:
        raise ValueError(f"answer rules are one of {list(RULES)}, not {rules!r}")
    return rules


def original_number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def parse_number(text: str) -> float | None:
    """A number as people write it: "1,000" (thousands), "3,5" (decimal comma), "3.0"; None otherwise."""
    text = text.strip()
    if _THOUSANDS.fullmatch(text):
        text = text.replace(",", "")
    elif _DECIMAL_COMMA.fullmatch(text):
        text = text.replace(",", ".")
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _numerical(pred: str, gt: str, rules: str) -> float:
    if rules == "original":
        def marked(s: str) -> bool:
            return "." in s or "," in s
        if marked(pred) != marked(gt):
            return 0.0
        p, g = original_number(pred), original_number(gt)
    else:
        p, g = parse_number(pred), parse_number(gt)
    if p is None or g is None:
        return 0.0
    return float(round(p, 2) == round(g, 2))


def _multiple_choice(pred: str, gt: str, rules: str, options: Sequence[str] | None) -> float:
    if rules == "original":
        return float(pred.strip() == gt.strip())
    texts = [(split_option(o) or ("", o))[1] for o in options] if options else None
    if texts is None:  # without the options only a letter can be read
        texts = [""] * 26
    index = option_index(pred, texts)
    truth = gt.strip().strip("().").upper()
    return float(index is not None and len(truth) == 1 and chr(ord("A") + index) == truth)


def word_error_rate(pred: str, gt: str) -> float:
    """Word-level edit distance over the reference's word count (1.0 for an empty reference with words)."""
    hyp, ref = pred.split(), gt.split()
    if not ref:
        return 0.0 if not hyp else 1.0
    previous = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        current = [i]
        for j, h in enumerate(hyp, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1] / len(ref)


def mean_relative_accuracy(pred: float, gt: float) -> float:
    """The original evaluation's MRA: the share of θ in 0.50, 0.55, ..., 0.95 with relative error < 1 − θ."""
    error = abs(pred - gt) / (abs(gt) + 1e-8)
    return sum(error < 1 - theta for theta in MRA_THRESHOLDS) / len(MRA_THRESHOLDS)


def _free_form(pred: str, gt: str) -> float:
    from rouge_score import rouge_scorer  # only free-form answers need it

    scores = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"]).score(gt, pred)
    return min(1.0, max(0.0, sum(s.fmeasure for s in scores.values()) / 3))


def answer_score(pred: str, gt: str, problem_type: str, *, rules: str = "fixed",
                 options: Sequence[str] | None = None) -> float:
    """The reward of an extracted answer `pred` against the ground truth `gt` (see the module docstring)."""
    if problem_type == "multiple choice":
        return _multiple_choice(pred, gt, rules, options)
    if problem_type == "numerical":
        return _numerical(pred, gt, rules)
    if rules == "original":
        return 0.0
    if problem_type == "OCR":
        return max(0.0, 1.0 - word_error_rate(pred, gt))
    if problem_type == "free-form":
        return _free_form(pred, gt)
    if problem_type == "regression":
        p, g = parse_number(pred), parse_number(gt)
        return 0.0 if p is None or g is None else mean_relative_accuracy(p, g)
    return 0.0


def _column(kwargs: dict, name: str, n: int, *, required: bool = True) -> list:
    values = kwargs.get(name)
    if values is None:
        if required:
            raise ValueError(f"the reward needs the dataset column {name!r} (got columns {sorted(kwargs)})")
        return [None] * n
    values = list(values)
    if len(values) != n:
        raise ValueError(f"column {name!r} has {len(values)} values for {n} completions")
    return values


class AccuracyReward:
    """`R_acc`: the completion's `<answer>` against the solution's, by problem type."""

    def __init__(self, rules: str = "fixed"):
        self.rules = check_rules(rules)
        self.__name__ = "accuracy"  # TRL names a reward's logged column after it

    def __call__(self, completions: Sequence[Any], **kwargs: Any) -> list[float]:
        n = len(completions)
        solutions, types = _column(kwargs, "solution", n), _column(kwargs, "problem_type", n)
        options = _column(kwargs, "options", n, required=False)
        return [answer_score(extract_answer(completion_text(c)), extract_answer(s), t, rules=self.rules, options=o)
                for c, s, t, o in zip(completions, solutions, types, options)]


class FormatReward:
    """`R_fmt`: 1 iff the whole completion is in the form (four_tag or think_answer)."""

    def __init__(self, form: str):
        self.form = check_form(form)
        self.pattern = FORMAT_PATTERNS[form]
        self.__name__ = "format"

    def __call__(self, completions: Sequence[Any], **kwargs: Any) -> list[float]:
        return [float(self.pattern.fullmatch(completion_text(c)) is not None) for c in completions]


class JudgeBackend(Protocol):
    """What the caption reward needs of a judge: the generator layer's `generate`."""

    def generate(self, prompts: Sequence[ChatPrompt], params: SamplingParams) -> list[list[str]]: ...


def caption_scores(judge_answers: Sequence[str | None], solutions: Sequence[str], problem_types: Sequence[str], *,
                   rules: str = "fixed", options: Sequence[Sequence[str] | None] | None = None) -> tuple[list[float], int]:
    """Caption rewards from the judge's answers (the text of each reply's `<answer>`, `extract_answer`;
    None where the judge failed) and how many failed."""
    options = options if options is not None else [None] * len(judge_answers)
    scores = [0.0 if answer is None else answer_score(answer, extract_answer(s), t, rules=rules, options=o)
              for answer, s, t, o in zip(judge_answers, solutions, problem_types, options)]
    return scores, sum(answer is None for answer in judge_answers)


JudgeKey = tuple[str, str, str]  # (caption, question, problem type)


def judge_fingerprint(judge: Any, prompts: CaptionJudgePrompts, params: SamplingParams) -> str:
    """Who answered, with which prompts and sampling: what a cached answer is valid for. Where the
    judge was reached (an endpoint's URL, a batch size) is left out: it changes no answer."""
    describe = getattr(judge, "describe", None)
    described = describe() if callable(describe) else {"class": type(judge).__name__}
    identity = {key: described.get(key) for key in ("backend", "model", "dtype", "class")}
    return hashlib.sha256(json.dumps({"judge": identity, "prompts": prompts.version, "sampling": params.describe()},
                                     sort_keys=True, default=str).encode()).hexdigest()[:16]


class JudgeAnswerCache:
    """The caption judge's extracted answers by (caption, question, type), in a JSONL file, for one
    judge fingerprint (`judge_fingerprint`); lines of other judges are kept in the file and ignored.

    New answers go to the file in one O_APPEND write of whole lines per `add` (processes sharing
    the file do not overwrite each other's lines); a line cut short by a killed job is skipped on
    reading, so its request is simply asked again."""

    def __init__(self, path: str | os.PathLike, fingerprint: str):
        self.path = Path(path)
        self.fingerprint = fingerprint
        self._answers: dict[JudgeKey, str] = {}
        for entry in read_appended_json_lines(self.path, ("judge", "caption", "question", "type", "answer")):
            key, answer = (entry["caption"], entry["question"], entry["type"]), entry["answer"]
            if entry["judge"] == fingerprint and isinstance(answer, str) and all(isinstance(k, str) for k in key):
                self._answers[key] = answer

    def __len__(self) -> int:
        return len(self._answers)

    def get(self, key: JudgeKey) -> str | None:
        return self._answers.get(key)

    def add(self, answers: dict[JudgeKey, str]) -> None:
        new = {k: a for k, a in answers.items() if self._answers.get(k) != a}
        if not new:
            return
        append_json_lines(self.path, [{"judge": self.fingerprint, "caption": k[0], "question": k[1], "type": k[2],
                                       "answer": a} for k, a in new.items()])
        self._answers.update(new)


class CaptionReward:
    """`R_cap`: whether a blind text judge answers correctly from the completion's caption alone."""

    def __init__(self, judge: JudgeBackend, *, prompts: CaptionJudgePrompts | None = None,
                 params: SamplingParams | None = None, rules: str = "fixed", judge_empty_captions: bool = False,
                 errors: tuple[type[BaseException], ...] = (Exception,), cache_size: int = 8192,
                 cache_file: str | os.PathLike | None = None):
        self.judge = judge
        self.prompts = prompts or load_caption_judge_prompts()
        self.params = params or SamplingParams(max_new_tokens=512)
        self.rules = check_rules(rules)
        self.judge_empty_captions = judge_empty_captions
        self.errors = errors
        # the judge's answers by request, oldest dropped beyond `cache_size` (a run asks ~64 per
        # step, nearly all new); failures are not kept, so they are asked again
        self.answers: OrderedDict[tuple[str, str, str], str] = OrderedDict()
        self.cache_size = cache_size
        self.requests = 0  # requests sent to the judge
        self.failures = 0  # completions scored 0 because the judge failed, over the run
        self.last_failures = 0  # of the latest call
        self.store = (None if cache_file is None
                      else JudgeAnswerCache(cache_file, judge_fingerprint(judge, self.prompts, self.params)))
        self.__name__ = "caption"

    def __call__(self, completions: Sequence[Any], **kwargs: Any) -> list[float]:
        n = len(completions)
        questions, solutions = _column(kwargs, "format_question", n), _column(kwargs, "solution", n)
        types, options = _column(kwargs, "problem_type", n), _column(kwargs, "options", n, required=False)
        keys = [(caption_of(completion_text(c)), q, t) for c, q, t in zip(completions, questions, types)]
        wanted = [k for k in dict.fromkeys(keys) if k not in self.answers and (k[0] or self.judge_empty_captions)]
        stored = {k: a for k in wanted if self.store is not None and (a := self.store.get(k)) is not None}
        pending = [k for k in wanted if k not in stored]
        requests_before = self.requests
        answered = self._ask(pending)
        if self.store is not None:
            self.store.add(answered)
        answered.update(stored)
        failed = set(pending) - set(answered)
        # a caption-less completion that was not asked has no answer: ""
        judge_answers = [None if k in failed else answered.get(k, self.answers.get(k, "")) for k in keys]
        scores, self.last_failures = caption_scores(judge_answers, solutions, types, rules=self.rules, options=options)
        for key, answer in answered.items():
            self.answers[key] = answer
        while len(self.answers) > self.cache_size:
            self.answers.popitem(last=False)
        self.failures += self.last_failures
        if self.last_failures:
            log.warning("caption judge failed for %d of %d completions (reward 0; %d over the run)",
                        self.last_failures, n, self.failures)
        log_metric = kwargs.get("log_metric")  # TRL's, averaged over a logging step
        if callable(log_metric):
            log_metric("caption/judge_failures", float(self.last_failures))
            log_metric("caption/judge_requests", float(self.requests - requests_before))
        return scores

    def _ask(self, keys: list[tuple[str, str, str]]) -> dict[tuple[str, str, str], str]:
        """The judge's extracted answers for `keys`, asked in one batch; a failed batch is asked one
        request at a time, so a request the judge cannot answer costs only itself (and is absent)."""
        if not keys:
            return {}
        prompts = [self.prompts.request(*key) for key in keys]
        self.requests += len(prompts)
        try:
            batches = [(keys, self.judge.generate(prompts, self.params))]
        except self.errors as error:
            log.warning("caption judge batch of %d failed (%s: %s); asking one at a time",
                        len(keys), type(error).__name__, error)
            batches = []
            for key, prompt in zip(keys, prompts):
                self.requests += 1
                try:
                    batches.append(([key], self.judge.generate([prompt], self.params)))
                except self.errors as one_error:
                    log.warning("caption judge failed for one request (%s: %s)", type(one_error).__name__, one_error)
        answered = {}
        for batch_keys, texts in batches:
            if len(texts) != len(batch_keys):
                raise ValueError(f"the judge answered {len(texts)} of {len(batch_keys)} requests")
            for key, replies in zip(batch_keys, texts):
                answered[key] = extract_answer(replies[0])
        return answered


def weighted_total(per_reward: Iterable[Sequence[float]], weights: Sequence[float]) -> list[float]:
    """Σ_k w_k · r_k per completion, as TRL mixes `reward_weights` (spec: 1 / 0.1 / 1)."""
    columns = list(per_reward)
    if len(columns) != len(weights):
        raise ValueError(f"{len(columns)} rewards for {len(weights)} weights")
    return [sum(w * r for w, r in zip(weights, row)) for row in zip(*columns)]

"""CVC trial learning, steps T1-T3: sample rationales, extract their short answers, check them.

T1 ("trials"): the model under training answers each instance's question on the occluded image
`n` times (sampled); each answer is a free-text rationale.
T2 ("extraction"): a text LLM reads each rationale and states the short answer it settles on
(greedy, few-shot; the prompt is a file, ours or a user's). Two modes (`cvc.extraction.mode`):
`free` (the paper's conventions): the extractor writes freely; `parse_short_answer` cleans what it
wrote, keeps a hedged answer ("a cup or a mug") as one comma-separated list ("cup, mug") and writes
`unknown` when the rationale settles on nothing. `rationale_confined` (a demo option): the answer
is closed to phrases the rationale itself writes (`answer_span_words`), so a random tiny extractor
cannot answer with an object the rationale never names (e.g. one of its few-shot examples);
`parse_confined_answer` reads it, and its "none" gives an empty answer.
T3 ("checking"): each short answer is compared with the entity label by dense similarity; an
answer is correct when its similarity exceeds the threshold.

Model access goes through the shared protocols only (`groundflow.generate.backends.Generator`,
`groundflow.embed.Embedder`), so every stage runs on Hugging Face models, an OpenAI-compatible
server (vLLM) or the fakes of the unit tests alike. Each stage makes ONE generate/encode call for
the whole chunk it is given; the backends batch inside.

Differences from the seed:
- the reasoning suffix is appended once (the seed's query already ended with it and the CoT
  formatting appended it again); an instruction that already ends with it is not extended;
- an empty short answer stays empty and is never correct (its similarity is NaN, "not measured");
  `unknown` and a comma-separated list are answers like any other: checking compares the whole
  string with the label, as the seed does.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from groundflow.cvc.prompts import (
    ANSWER_SUFFIX,
    EXTRACTION_ASSISTANT_PREFIX,
    REASONING_SUFFIX,
    extraction_messages,
)
from groundflow.io.stage import StageResult, rejects_frame
from groundflow.vision.image_io import ImageError, load_rgb

if TYPE_CHECKING:  # the backends module is shared; imported lazily where it is used
    from groundflow.generate.backends import ChatPrompt, Generator, SamplingParams
    from groundflow.prompts import PromptText

TRIALS_STAGE = "trials"
EXTRACTION_STAGE = "extraction"
CHECKING_STAGE = "checking"

FREE, RATIONALE_CONFINED = "free", "rationale_confined"
EXTRACTION_MODES = (FREE, RATIONALE_CONFINED)
# The packaged extraction prompt of each mode; each file fills exactly {rationale}.
EXTRACTION_PROMPTS = {FREE: "cvc/extraction_free", RATIONALE_CONFINED: "cvc/extraction_confined"}
UNKNOWN = "unknown"


# ---------------------------------------------------------------------------------------------
# pure core: prompt texts and answer parsing


def instruction_text(instruction: str) -> str:
    """The stored instruction in the released layout, without a trailing suffix: each line's
    whitespace collapsed and empty lines dropped, so the header and the question stay on their
    own lines ("header\nquestion"); a reasoning or answer suffix at its end (the seed's stored
    queries carried one) removed."""
    lines = (" ".join(line.split()) for line in instruction.splitlines())
    text = "\n".join(line for line in lines if line)
    stripped = True
    while stripped:
        stripped = False
        for suffix in (REASONING_SUFFIX, ANSWER_SUFFIX):
            if text.endswith(suffix):
                text, stripped = text[: -len(suffix)].rstrip(), True
    return text


def reasoning_question(instruction: str) -> str:
    """The instruction (header, newline, question) followed by one space and the reasoning suffix
    exactly once: the human turn of the released chain-of-thought records, after `<image>\n`."""
    return f"{instruction_text(instruction)} {REASONING_SUFFIX}"


def trial_prompt(instruction: str, image) -> "ChatPrompt":
    """One user turn: the question with the reasoning suffix, and the occluded image."""
    from groundflow.generate.backends import ChatPrompt

    return ChatPrompt(messages=[{"role": "user", "content": reasoning_question(instruction)}], image=image)


def load_extraction_prompt(mode: str, path: str | Path | None = None) -> "PromptText":
    """The extraction prompt file of `mode` (a user's `path`, or ours); it fills {rationale}."""
    from groundflow.prompts import load_prompt

    if mode not in EXTRACTION_PROMPTS:
        raise ValueError(f"{EXTRACTION_STAGE}: unknown mode {mode!r}; expected one of {', '.join(EXTRACTION_MODES)}")
    return load_prompt(path, EXTRACTION_PROMPTS[mode], fields={"rationale"})


def rationale_answer_choices(rationale: str, max_words: int) -> list[str]:
    """The answers an extractor confined to the rationale may write (each after "Answer:").

    Every phrase of at most `max_words` words that the rationale itself writes and that could name
    a thing (no punctuation inside, neither starting nor ending with a function word or a
    determiner: the entity step's label rule), lower-cased, in order of first appearance; and
    "none", which the prompt asks for when no object is named.
    """
    from groundflow.cvc.entities import entity_candidates

    phrases = dict.fromkeys(label for _, label in entity_candidates(" ".join(rationale.split()), max_words))
    phrases.pop("none", None)
    return [f" {phrase}" for phrase in phrases] + [" none"]


def extraction_prompt(rationale: str, prompt: "PromptText", *, answer_span_words: int | None = None) -> "ChatPrompt":
    """The few-shot extraction prompt for one rationale, answer prefilled with "Answer:".

    With `answer_span_words` (rationale_confined mode), the answer is closed to the rationale's
    own phrases of at most that many words (`rationale_answer_choices`): the extractor can only
    pick what the rationale says.
    """
    from groundflow.generate.backends import ChatPrompt

    choices = None if answer_span_words is None else rationale_answer_choices(rationale, answer_span_words)
    return ChatPrompt(messages=extraction_messages(prompt, rationale), assistant_prefix=EXTRACTION_ASSISTANT_PREFIX,
                      choices=choices)


_ANSWER_LEAD = re.compile(
    r"^(?:(?:the\s+)?(?:final\s+|short\s+)?answer\s*(?:is\s*)?[:\-]?\s*)+", re.IGNORECASE
)
_COPULA_LEAD = re.compile(
    r"^(?:it\s+is|it's|it\s+might\s+be|it\s+may\s+be|it\s+could\s+be|this\s+is|they\s+are|these\s+are|"
    r"probably|most\s+likely|likely)\s+",
    re.IGNORECASE,
)
_ARTICLE = re.compile(r"^(?:a|an|the)(?:\s+|$)", re.IGNORECASE)
# Separators of hedged answers: "a cup, a mug", "cup or mug", "cup / mug", "cup; mug".
_HEDGE = re.compile(r"\s*(?:,|;|/|\bor\b)\s*", re.IGNORECASE)
_EDGE_MARKS = " \t\"'`*_.!?,;:()[]{}"
# Ways of saying that the rationale settles on nothing; all are written as UNKNOWN.
NON_ANSWERS = frozenset({"none", "unknown", "n/a", "nothing", "no answer", "not sure", "unclear", "cannot tell"})


def _clean_option(option: str) -> str:
    answer = " ".join(option.lower().split()).strip(_EDGE_MARKS)
    answer = _COPULA_LEAD.sub("", answer)
    return _ARTICLE.sub("", answer).strip(_EDGE_MARKS)


def parse_short_answer(text: str) -> str:
    """The short answer in a free extraction output (the paper's conventions); "" when empty.

    First non-empty line; a leading "Answer:" (or "The answer is") removed; markdown and quote
    marks dropped; lowercased; each option of a hedged answer (",", ";", "/", "or") cleaned of a
    leading "it is"/"they are" and one article, and all options kept, in order and without
    repeats, as one comma-separated list ("a cup or a mug" -> "cup, mug"), never cut to the first;
    an answer saying there is none ("none", "n/a", ...) is written "unknown".
    Known limit: a comma inside one answer ("a small, red ball") also reads as a hedge.
    """
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    line = line.strip(_EDGE_MARKS)
    line = _ANSWER_LEAD.sub("", line).strip(_EDGE_MARKS)
    if _clean_option(line) in NON_ANSWERS:  # before splitting: "n/a" is not a hedge
        return UNKNOWN
    options = [_clean_option(part) for part in _HEDGE.split(line)]
    options = list(dict.fromkeys(o for o in options if o))
    if not options:
        return ""
    if all(o in NON_ANSWERS for o in options):
        return UNKNOWN
    return ", ".join(o for o in options if o not in NON_ANSWERS)


def parse_confined_answer(text: str) -> str:
    """The answer of a rationale-confined extraction (one of the rationale's phrases, or "none"):
    trimmed and lowercased; "none" gives "" (no answer, never correct)."""
    answer = " ".join(text.lower().split()).strip(_EDGE_MARKS)
    answer = _ANSWER_LEAD.sub("", answer).strip(_EDGE_MARKS)
    return "" if answer in NON_ANSWERS else answer


# ---------------------------------------------------------------------------------------------
# stages


def _check_outputs(outputs: list[list[str]], n_prompts: int, n: int, what: str) -> None:
    """The Generator contract: one list of exactly n strings per prompt, in prompt order."""
    if len(outputs) != n_prompts or any(len(row) != n for row in outputs):
        lengths = sorted({len(row) for row in outputs})
        raise RuntimeError(
            f"{what}: the generator returned {len(outputs)} result lists for {n_prompts} prompts "
            f"(lengths {lengths}); expected {n} strings per prompt"
        )


def occluded_prompts(records: pd.DataFrame, make_prompt, *, image_dir: str | Path
                     ) -> tuple[list, list[int], list[tuple[str, str]]]:
    """One prompt per instance, `make_prompt(instruction, occluded image)`, the image read from
    `image_dir / occluded_image`: (prompts, their row positions, (id, reason) of each instance
    whose image cannot be read)."""
    image_dir = Path(image_dir)
    prompts: list = []
    positions: list[int] = []
    rejected: list[tuple[str, str]] = []
    for position, row in enumerate(records.itertuples(index=False)):
        record_id = str(row.id)
        try:
            image = load_rgb(image_dir / row.occluded_image)
        except ImageError as error:
            rejected.append((record_id, f"occluded image of '{record_id}': {error}"))
            continue
        prompts.append(make_prompt(str(row.instruction), image))
        positions.append(position)
    return prompts, positions, rejected


def sample_trials(
    instances: pd.DataFrame, generator: "Generator", params: "SamplingParams", *, image_dir: str | Path
) -> StageResult:
    """T1: add `trials` (params.n rationales) to each instance; one generate() call per chunk.

    The occluded image is `image_dir / occluded_image`. An image that cannot be read rejects its
    instance with the reason. Every image of the chunk is held in memory during the call, so the
    chunk size bounds memory (about 1 MB per COCO image).
    """
    records = instances.reset_index(drop=True)
    prompts, positions, rejected = occluded_prompts(records, trial_prompt, image_dir=image_dir)
    outputs = generator.generate(prompts, params) if prompts else []
    _check_outputs(outputs, len(prompts), params.n, "trial sampling")
    kept = records.iloc[positions].reset_index(drop=True)
    kept["trials"] = pd.Series([list(row) for row in outputs], dtype=object)
    return StageResult(kept=kept, rejects=rejects_frame(TRIALS_STAGE, rejected), parent_column="id")


def extract_answers(
    trials_df: pd.DataFrame,
    generator: "Generator",
    params: "SamplingParams",
    *,
    mode: str = FREE,
    prompt: "PromptText | None" = None,
    answer_span_words: int | None = None,
) -> StageResult:
    """T2: add `predictions` (the short answer of each trial) and `raw_predictions` (model output).

    All rationales of the chunk go to ONE generate() call (flattened, then regrouped per
    instance). Under greedy decoding identical rationales give identical answers, so each
    distinct rationale is asked once; an empty rationale is not asked and gives "". An instance
    without any trial is rejected; an empty prediction is kept (it counts as incorrect later).
    `mode` "free" (the paper) leaves the extractor free and reads its answer by
    `parse_short_answer`; "rationale_confined" confines each answer to a phrase of its rationale
    of at most `answer_span_words` words (see `extraction_prompt`), read by `parse_confined_answer`.
    `prompt` defaults to ours for the mode.
    """
    if mode not in EXTRACTION_MODES:
        raise ValueError(f"{EXTRACTION_STAGE}: unknown mode {mode!r}; expected one of {', '.join(EXTRACTION_MODES)}")
    if mode == RATIONALE_CONFINED and (answer_span_words is None or answer_span_words < 1):
        raise ValueError(f"answer_span_words must be >= 1 in mode {RATIONALE_CONFINED}, not {answer_span_words}")
    span_words = answer_span_words if mode == RATIONALE_CONFINED else None
    parse = parse_confined_answer if mode == RATIONALE_CONFINED else parse_short_answer
    prompt = prompt if prompt is not None else load_extraction_prompt(mode)
    if params.n != 1:
        raise ValueError(f"answer extraction reads one answer per rationale; got params.n={params.n}")
    records = trials_df.reset_index(drop=True)
    rejected: list[tuple[str, str]] = []
    positions: list[int] = []
    for pos, (record_id, trials) in enumerate(zip(records["id"], records["trials"])):
        if trials is None or len(trials) == 0:
            rejected.append((str(record_id), f"no trials to extract answers from for '{record_id}'"))
        else:
            positions.append(pos)
    kept = records.iloc[positions].reset_index(drop=True)
    per_instance = [[str(t) for t in trials] for trials in kept["trials"]] if len(kept) else []

    # Flatten: one prompt per distinct non-empty rationale (each one when sampling).
    slot_of: dict[str, int] = {}
    asked: list[str] = []
    slots: list[list[int | None]] = []
    for trials in per_instance:
        row_slots: list[int | None] = []
        for rationale in trials:
            if not rationale.strip():
                row_slots.append(None)
                continue
            if params.do_sample or rationale not in slot_of:
                slot_of[rationale] = len(asked)
                asked.append(rationale)
            row_slots.append(slot_of[rationale])
        slots.append(row_slots)
    prompts = [extraction_prompt(r, prompt, answer_span_words=span_words) for r in asked]
    outputs = generator.generate(prompts, params) if asked else []
    _check_outputs(outputs, len(asked), 1, "answer extraction")
    raw = [row[0] for row in outputs]
    parsed = [parse(text) for text in raw]

    kept["raw_predictions"] = pd.Series(
        [["" if s is None else raw[s] for s in row] for row in slots], dtype=object
    )
    kept["predictions"] = pd.Series(
        [["" if s is None else parsed[s] for s in row] for row in slots], dtype=object
    )
    return StageResult(kept=kept, rejects=rejects_frame(EXTRACTION_STAGE, rejected), parent_column="id")


def check_answers(df: pd.DataFrame, embedder, *, threshold: float) -> StageResult:
    """T3: add `similarities`, `correct` (similarity > threshold) and `n_correct` per instance.

    The reference is the entity `label`. Similarities come from ONE batched pass over the chunk
    (`groundflow.judge.answers.answer_similarities`). Empty predictions are not encoded: their
    similarity is NaN and they are never correct. Nothing is rejected here.
    """
    from groundflow.judge.answers import answer_similarities

    records = df.reset_index(drop=True)
    predictions = [[str(p) for p in row] for row in records["predictions"]]
    labels = [str(label) for label in records["label"]]
    answered = [[p for p in row if p.strip()] for row in predictions]
    asked = [i for i, row in enumerate(answered) if row]  # instances with something to compare
    scores = answer_similarities(embedder, [answered[i] for i in asked], [labels[i] for i in asked]) if asked else []
    if len(scores) != len(asked) or any(len(s) != len(answered[i]) for i, s in zip(asked, scores)):
        raise RuntimeError("answer_similarities returned a different shape than the predictions it was given")
    score_of = dict(zip(asked, scores))
    similarities: list[list[float]] = []
    for i, row in enumerate(predictions):
        row_scores = iter(np.asarray(score_of.get(i, []), dtype=np.float64).tolist())
        similarities.append([next(row_scores) if p.strip() else float("nan") for p in row])
    correct = [[bool(s > threshold) for s in row] for row in similarities]  # NaN > t is False
    kept = records.copy()
    kept["similarities"] = pd.Series(similarities, dtype=object)
    kept["correct"] = pd.Series(correct, dtype=object)
    kept["n_correct"] = pd.Series([sum(row) for row in correct], dtype="int64")
    return StageResult(kept=kept, rejects=rejects_frame(CHECKING_STAGE), parent_column="id")


__all__ = [
    "CHECKING_STAGE",
    "EXTRACTION_MODES",
    "EXTRACTION_STAGE",
    "NON_ANSWERS",
    "TRIALS_STAGE",
    "check_answers",
    "extract_answers",
    "extraction_prompt",
    "instruction_text",
    "load_extraction_prompt",
    "occluded_prompts",
    "parse_confined_answer",
    "parse_short_answer",
    "rationale_answer_choices",
    "reasoning_question",
    "sample_trials",
    "trial_prompt",
]

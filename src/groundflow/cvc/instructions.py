"""Instruction generation (CVC step 3): the question asked about each occluded entity.

Two modes (`cvc.instructions.mode`):
- `free` (the paper): the text LLM writes the whole question from few-shot examples (greedy, up to
  `max_new_tokens`), deciding the entity's type itself ("object" for common things, the type for
  rarer ones). Plain generation, so it runs on any `Generator`. What it writes is cut at the first
  blank line or the next example's "Entity:" line, a leading "Question:" and any trailing
  reasoning/answer suffix are dropped, and it is split into header and question: the question
  starts at the first sentence that ends with "?", the header is everything before it. Output
  that is empty, has no sentence ending with "?" or nothing before it (no header) is rejected
  with that reason and the text written, rather than stored in a layout the data does not have.
- `typed` (the demo: a random tiny model writes garbage freely): the type is chosen among the
  configured `object_types` and the question is the seed's fixed shape, with plural forms for
  plural entities and the right indefinite article. Only types whose question does not reveal
  the entity are offered, so the best-scoring non-revealing type is chosen (a label `people`
  gets "object" or another type, never the revealing "person"); an entity that every type's
  question reveals is rejected with the reason. The type comes from LM scoring where the
  generator can ("score_choices": the local HF text generator), else from guided decoding of one
  of the types ("choices": vLLM with `guided_decoding` set), a different method that
  `type_selection` names and the stage records; an endpoint that can do neither is refused with
  what to set instead.

In both modes a question that reveals the entity (its label, or the label's singular or plural,
occurs as words of the instruction) is rejected with the reason, rather than written.

The stored instruction is the released data's layout: the two-sentence header, a newline
(`INSTRUCTION_SEPARATOR`), the question. The reasoning suffix ("Please provide your reasoning
process ...") is NOT part of it: prompts that want it append `prompts.REASONING_SUFFIX` (the seed
stored it in the question and appended it again when formatting chain-of-thought samples).
Prompt texts are files (`load_instruction_prompt`): ours by default, or a user's.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from groundflow.cvc.prompts import (
    ANSWER_SUFFIX,
    HEADER_PLURAL,
    HEADER_SINGULAR,
    QUESTION,
    QUESTION_ASSISTANT_PREFIX,
    REASONING_SUFFIX,
    TYPE_ASSISTANT_PREFIX,
    question_messages,
    type_messages,
)
from groundflow.generate.backends import ChatPrompt, Generator, SamplingParams, UnsupportedFeatureError
from groundflow.io.stage import StageResult, rejects_frame
from groundflow.prompts import PromptText, load_prompt

log = logging.getLogger(__name__)

STAGE = "instructions"
LM_SCORING = "lm_scoring"
GUIDED_CHOICE = "guided_choice"
FREE_GENERATION = "free_generation"

FREE, TYPED = "free", "typed"
INSTRUCTION_MODES = (FREE, TYPED)
# The packaged prompt of each mode and the format fields its file must have.
PROMPTS = {FREE: ("cvc/instruction_free", frozenset({"label"})),
           TYPED: ("cvc/instruction_type", frozenset({"types", "caption", "label"}))}
INSTRUCTION_SEPARATOR = "\n"

DEFAULT_OBJECT_TYPES = [
    "object", "animal", "vehicle", "machine", "appliance", "device",
    "tool", "instrument", "food", "furniture", "plant", "person",
]

IRREGULAR_PLURALS = {
    "man": "men", "woman": "women", "child": "children", "person": "people", "foot": "feet",
    "tooth": "teeth", "mouse": "mice", "goose": "geese", "ox": "oxen", "knife": "knives",
    "leaf": "leaves", "wife": "wives", "life": "lives", "shelf": "shelves", "loaf": "loaves",
    "wolf": "wolves", "calf": "calves", "half": "halves", "scarf": "scarves", "thief": "thieves",
    "cactus": "cacti", "die": "dice", "louse": "lice",
}
IRREGULAR_SINGULARS = {plural: singular for singular, plural in IRREGULAR_PLURALS.items()}
# The same form for one and many; read as singular.
INVARIANT_NOUNS = frozenset("sheep deer fish bison moose aircraft series species salmon trout".split())
# Plural in form and agreement, no singular in use.
PLURAL_ONLY = frozenset(
    """scissors pants jeans trousers glasses sunglasses goggles shorts binoculars pliers tongs
    clothes cattle police headphones earphones shears leggings pajamas pyjamas overalls tights
    stairs""".split()
)
# Mass nouns: a type phrase counts them as items ("a food item", "furniture items").
UNCOUNTABLE = frozenset(
    """furniture food equipment luggage baggage clothing jewelry jewellery machinery hardware
    produce water rice bread grass broccoli meat cheese pasta hair snow sand money traffic wood
    milk coffee tea soup salad sushi""".split()
)
# Singular nouns that end in "s".
SINGULAR_IN_S = frozenset(
    """bus gas lens canvas atlas iris news chess tennis physics gymnastics athletics species series
    christmas bonus status virus walrus circus campus octopus platypus asparagus hummus couscous
    citrus hippopotamus rhinoceros""".split()
)
_ES_AFTER_O = frozenset("tomato potato hero echo mango volcano torpedo mosquito domino".split())
_IES_TO_IE = frozenset("cookies movies pies ties brownies zombies selfies smoothies goalies hoodies veggies".split())
_SINGULAR_ES = {"buses": "bus", "gases": "gas", "lenses": "lens", "canvases": "canvas", "atlases": "atlas"}

_WORD = re.compile(r"[^\W_]+(?:['\u2019-][^\W_]+)*")


# ---------------------------------------------------------------------------------------------
# pure core: inflection, articles, the question, the reveal check


def words_of(text: str) -> list[str]:
    return [w.replace("\u2019", "'") for w in _WORD.findall(text.lower())]


def is_plural(label: str) -> bool:
    """Whether a (normalised) label names several things, judged by its last word."""
    words = words_of(label)
    if not words:
        return False
    last = words[-1]
    if last in PLURAL_ONLY or last in IRREGULAR_SINGULARS:
        return True
    if last in INVARIANT_NOUNS or last in UNCOUNTABLE or last in SINGULAR_IN_S or last in IRREGULAR_PLURALS:
        return False
    return last.endswith("s") and not last.endswith(("ss", "us", "is")) and len(last) > 2


def pluralize(word: str) -> str:
    """Plural of one English noun (the last word of a phrase is what inflects)."""
    lower = word.lower()
    if lower in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[lower]
    if lower in INVARIANT_NOUNS or lower in PLURAL_ONLY or lower in UNCOUNTABLE or lower in IRREGULAR_SINGULARS:
        return lower
    if lower.endswith(("s", "x", "z", "ch", "sh")):
        return lower + "es"
    if lower.endswith("y") and len(lower) > 1 and lower[-2] not in "aeiou":
        return lower[:-1] + "ies"
    if lower in _ES_AFTER_O:
        return lower + "es"
    return lower + "s"


def singularize(word: str) -> str:
    """Singular of one English noun; a word that is not a regular plural comes back unchanged."""
    lower = word.lower()
    if lower in IRREGULAR_SINGULARS:
        return IRREGULAR_SINGULARS[lower]
    if lower in _SINGULAR_ES:
        return _SINGULAR_ES[lower]
    if (
        lower in PLURAL_ONLY or lower in INVARIANT_NOUNS or lower in SINGULAR_IN_S or lower in UNCOUNTABLE
        or not lower.endswith("s") or lower.endswith(("ss", "us", "is")) or len(lower) <= 2
    ):
        return lower
    if lower.endswith("ies") and lower not in _IES_TO_IE and len(lower) > 4:
        return lower[:-3] + "y"
    if lower.endswith(("sses", "xes", "ches", "shes", "zzes")):
        return lower[:-2]
    if lower.endswith("oes") and lower[:-2] in _ES_AFTER_O:
        return lower[:-2]
    return lower[:-1]


def inflect_phrase(phrase: str, plural: bool) -> str:
    """The phrase with its last word made plural (or singular)."""
    words = phrase.split()
    if not words:
        return phrase
    words[-1] = pluralize(words[-1]) if plural else singularize(words[-1])
    return " ".join(words)


def indefinite_article(phrase: str) -> str:
    """ "a" or "an" by the sound of the first word (spelling rules with the common exceptions)."""
    word = phrase.strip().lower()
    if word.startswith(("hour", "honest", "honor", "honour", "heir")):
        return "an"
    if word.startswith(("uni", "use", "usu", "uti", "ute", "uro", "uku", "eu", "ewe", "one", "once", "ufo")):
        return "a"
    return "an" if word[:1] in tuple("aeiou") else "a"


def type_phrase(object_type: str, plural: bool) -> str:
    """How the question names the type: "animal"/"animals", mass nouns as "food item(s)"."""
    object_type = " ".join(object_type.lower().split())
    if object_type.split()[-1] in UNCOUNTABLE:
        object_type = f"{object_type} item"
    return inflect_phrase(object_type, True) if plural else object_type


def build_question(object_type: str, plural: bool) -> str:
    """The typed-mode instruction: the header naming the type, a newline, the question."""
    phrase = type_phrase(object_type, plural)
    if plural:
        header = HEADER_PLURAL.format(type_phrase=phrase)
    else:
        header = HEADER_SINGULAR.format(article=indefinite_article(phrase), type_phrase=phrase)
    return f"{header}{INSTRUCTION_SEPARATOR}{QUESTION.format(type_phrase=phrase)}"


class UnusableQuestion(ValueError):
    """What the LLM wrote cannot be stored as header + question; the message says why."""


_QUESTION_LEAD = re.compile(r"^\s*(?:question\s*:\s*)+", re.IGNORECASE)
_NEXT_EXAMPLE = re.compile(r"^\s*entity\s*:", re.IGNORECASE | re.MULTILINE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_QUOTES = " \t\"'`*"


def _suffix_pattern(suffix: str) -> re.Pattern:
    words = [re.escape(w) for w in suffix.split()]
    return re.compile(r"\s*" + r"\s+".join(words) + r"\s*$", re.IGNORECASE)


_SUFFIXES = (_suffix_pattern(REASONING_SUFFIX), _suffix_pattern(ANSWER_SUFFIX))


def strip_suffixes(text: str) -> str:
    """The text without any trailing reasoning or answer suffix (the seed's queries ended with one)."""
    changed = True
    while changed:
        changed = False
        for pattern in _SUFFIXES:
            stripped = pattern.sub("", text)
            if stripped != text:
                text, changed = stripped, True
    return text


def split_free_question(text: str) -> tuple[str, str]:
    """(header, question) of what the LLM wrote in free mode; UnusableQuestion says why not.

    Cut at the first blank line or the next example's "Entity:" line; a leading "Question:",
    quote and markdown marks and trailing suffixes dropped; whitespace collapsed (the LLM's own
    line break between header and question included). The question starts at the first sentence
    ending with "?"; the header is what precedes it, and must not be empty.
    """
    body = re.split(r"\n\s*\n", text.strip(), maxsplit=1)[0]
    body = _NEXT_EXAMPLE.split(body, maxsplit=1)[0]
    body = _QUESTION_LEAD.sub("", body)
    body = strip_suffixes(" ".join(body.split()).strip(_QUOTES))
    body = body.strip(_QUOTES)
    if not body:
        raise UnusableQuestion("it wrote no question")
    sentences = _SENTENCE_END.split(body)
    first_question = next((i for i, sentence in enumerate(sentences) if sentence.endswith("?")), None)
    if first_question is None:
        raise UnusableQuestion("no sentence of it ends with '?'")
    if first_question == 0:
        raise UnusableQuestion("nothing precedes its question (no header)")
    return " ".join(sentences[:first_question]), " ".join(sentences[first_question:])


def join_instruction(header: str, question: str) -> str:
    return f"{header}{INSTRUCTION_SEPARATOR}{question}"


def label_variants(label: str) -> list[str]:
    """The label as written and with its last word in the other number (singular <-> plural)."""
    variants = [label, inflect_phrase(label, not is_plural(label))]
    return list(dict.fromkeys(" ".join(words_of(v)) for v in variants if words_of(v)))


def revealed_words(question: str, label: str) -> str | None:
    """The words of `question` that name the entity (any form of its label), or None."""
    text = words_of(question)
    for variant in label_variants(label):
        target = variant.split()
        n = len(target)
        for i in range(len(text) - n + 1):
            if text[i:i + n] == target:
                return variant
    return None


def reveal_reason(record_id: str, label: str, question: str, revealed: str) -> str:
    return (
        f"question for {record_id} would reveal the entity '{label}': "
        f"'{revealed}' occurs in \"{' '.join(question.split())}\""
    )


# ---------------------------------------------------------------------------------------------
# model


def type_selection(generator: Generator) -> str:
    """How the object type is chosen with this generator: "lm_scoring" or "guided_choice".

    Raises UnsupportedFeatureError, naming the stage, the backend and what to set, when the
    generator can do neither.
    """
    if "score_choices" in generator.features:
        return LM_SCORING
    if "choices" in generator.features:
        return GUIDED_CHOICE
    described = generator.describe()
    where = described.get("base_url") or described.get("model", "")
    raise UnsupportedFeatureError(
        f"{STAGE}: choosing each entity's object type scores the log-likelihood of every type, which the "
        f"'{described.get('backend')}' generator ({where}) cannot do. Set generation.text.guided_decoding "
        f"(structured_outputs for vLLM >= 0.10.2, guided for older vLLM) to let the server choose the type by "
        f"guided decoding, generation.text.backend: hf to score the types with a local model, or "
        f"cvc.instructions.mode: free to let the model write the question (plain generation)"
    )


def load_instruction_prompt(mode: str, path: str | Path | None = None) -> PromptText:
    """The prompt file of `mode` (a user's `path`, or ours), its format fields checked."""
    if mode not in PROMPTS:
        raise ValueError(f"{STAGE}: unknown mode {mode!r}; expected one of {', '.join(INSTRUCTION_MODES)}")
    default, fields = PROMPTS[mode]
    return load_prompt(path, default, fields=fields)


def revealing_types(label: str, object_types: Sequence[str]) -> dict[str, str]:
    """{type: the revealed words} for each type whose question would name the entity."""
    plural = is_plural(label)
    found = {t: revealed_words(build_question(t, plural), label) for t in object_types}
    return {t: words for t, words in found.items() if words is not None}


def choose_object_types(
    generator: Generator,
    labels: Sequence[str],
    captions: Sequence[str],
    object_types: Sequence[str],
    prompt: PromptText,
    *,
    normalize: str = "sum",
) -> list[str | None]:
    """The most likely type of each entity among the types whose question does not reveal it (by
    LM scoring of every such type as the answer, or, on an endpoint that cannot score, the type
    its guided decoding writes: `type_selection`); None where every type reveals the entity.

    The prompt lists the same types the answer may be, so a type that was taken away is neither
    offered nor scored.
    """
    types = list(object_types)
    allowed = [[t for t in types if t not in revealing_types(label, types)] for label in labels]
    asked = [i for i, row in enumerate(allowed) if row]
    chosen: list[str | None] = [None] * len(labels)
    if not asked:
        return chosen
    method = type_selection(generator)
    answers = [[f" {t}" for t in allowed[i]] for i in asked]
    prompts = [
        ChatPrompt(messages=type_messages(prompt, labels[i], captions[i], allowed[i]),
                   assistant_prefix=TYPE_ASSISTANT_PREFIX,
                   choices=None if method == LM_SCORING else row)
        for i, row in zip(asked, answers)
    ]
    if method == LM_SCORING:
        scores = generator.score_choices(prompts, answers, normalize=normalize)
        # argmax keeps the first type on ties, so config order decides between equals.
        for i, row in zip(asked, scores):
            chosen[i] = allowed[i][int(np.argmax(row))]
        return chosen
    width = max(len(a.encode()) for row in answers for a in row) + 2  # tokens never outnumber bytes; + eos
    written = generator.generate(prompts, SamplingParams(max_new_tokens=width, n=1, do_sample=False))
    for index, (i, texts) in enumerate(zip(asked, written)):
        text = texts[0].strip()
        if text not in allowed[i]:
            raise ValueError(f"{STAGE}: guided decoding returned {texts[0]!r} for prompt {index}, "
                             f"not one of the types {allowed[i]}")
        chosen[i] = text
    return chosen


def free_instructions(generator: Generator, labels: Sequence[str], prompt: PromptText, *,
                      max_new_tokens: int) -> list[str]:
    """What the LLM writes as the question of each entity (greedy, one generate() call)."""
    if not labels:
        return []
    prompts = [ChatPrompt(messages=question_messages(prompt, label), assistant_prefix=QUESTION_ASSISTANT_PREFIX)
               for label in labels]
    # The examples end at a blank line: stopping there saves the rest of the token budget.
    params = SamplingParams(max_new_tokens=max_new_tokens, n=1, do_sample=False, stop=("\n\n",))
    written = generator.generate(prompts, params)
    if len(written) != len(prompts) or any(len(texts) != 1 for texts in written):
        raise RuntimeError(f"{STAGE}: the generator returned {len(written)} result lists for {len(prompts)} prompts; "
                           "expected one string per prompt")
    return [texts[0] for texts in written]


def unusable_reason(record_id: str, label: str, written: str, why: str) -> str:
    shown = " ".join(written.split())
    shown = shown if len(shown) <= 200 else f"{shown[:200]}..."
    return f"question for {record_id} ('{label}') is unusable: {why}: \"{shown}\""


def generate_instructions(
    instances_df: pd.DataFrame,
    generator: Generator,
    *,
    mode: str = TYPED,
    prompt: PromptText | None = None,
    object_types: Sequence[str] | None = None,
    normalize: str = "sum",
    max_new_tokens: int = 100,
) -> StageResult:
    """Add object_type and instruction to every row; reject rows whose question reveals the entity
    or (free mode) cannot be split into header and question.

    `prompt` defaults to ours for the mode. In typed mode the caption shown to the model is the
    row's `caption` column when present (set by the causality step); free mode, as the seed,
    shows the entity only, and object_type stays empty (the LLM names the type inside its text).
    """
    if mode not in INSTRUCTION_MODES:
        raise ValueError(f"{STAGE}: unknown mode {mode!r}; expected one of {', '.join(INSTRUCTION_MODES)}")
    prompt = prompt if prompt is not None else load_instruction_prompt(mode)
    records = instances_df.reset_index(drop=True)
    labels = [str(v) for v in records["label"]]
    ids = [str(v) for v in records["id"]]
    chosen: list[str | None] = [None] * len(records)
    instructions: list[str | None] = [None] * len(records)
    rejected: list[tuple[str, str]] = []
    if mode == TYPED:
        types = list(object_types or DEFAULT_OBJECT_TYPES)
        if not types:
            raise ValueError("object_types is empty")
        if "caption" in records.columns:
            captions = [c if isinstance(c, str) else "" for c in records["caption"]]
        else:
            captions = [""] * len(records)
        chosen = choose_object_types(generator, labels, captions, types, prompt, normalize=normalize)
        for i, object_type in enumerate(chosen):
            if object_type is None:
                # every type reveals it: the reason shows the first type's question
                question = build_question(types[0], is_plural(labels[i]))
                rejected.append((ids[i], reveal_reason(ids[i], labels[i], question,
                                                       revealed_words(question, labels[i]) or labels[i])))
            else:
                instructions[i] = build_question(object_type, is_plural(labels[i]))
    else:
        for i, written in enumerate(free_instructions(generator, labels, prompt, max_new_tokens=max_new_tokens)):
            try:
                header, question = split_free_question(written)
            except UnusableQuestion as e:
                rejected.append((ids[i], unusable_reason(ids[i], labels[i], written, str(e))))
                continue
            instruction = join_instruction(header, question)
            revealed = revealed_words(instruction, labels[i])
            if revealed is None:
                instructions[i] = instruction
            else:
                rejected.append((ids[i], reveal_reason(ids[i], labels[i], instruction, revealed)))
    keep = [i for i, instruction in enumerate(instructions) if instruction is not None]
    kept = records.assign(
        object_type=pd.Series(chosen, dtype=object), instruction=pd.Series(instructions, dtype=object)
    ).iloc[keep].reset_index(drop=True)
    return StageResult(kept=kept, rejects=rejects_frame(STAGE, rejected), parent_column="id")

"""Instruction generation (CVC step 3): the question asked about each occluded entity.

The seed let Llama-2 write the whole question freely, although its examples fix the shape and
only the entity's type varies. Here the type is chosen by LM scoring among the configured
`object_types` (log-likelihood of each type as the answer), and the question is the seed's fixed
shape, with plural forms for plural entities and the right indefinite article. A question that
would reveal the entity (its label, or the label's singular or plural, occurs as words of the
question) is rejected with the reason, rather than written.

The type comes from any `Generator`: by LM scoring where it can ("score_choices": the local HF
text generator), else by guided decoding of one of the types where the endpoint does that
("choices": vLLM with `guided_decoding` set), a different method that `type_selection` names and
the stage records; an endpoint that can do neither is refused with what to set instead.

The reasoning suffix ("Please provide your reasoning process ...") is NOT part of the stored
instruction: prompts that want it append `prompts.REASONING_SUFFIX` (the seed stored it in the
question and appended it again when formatting chain-of-thought samples).
"""

from __future__ import annotations

import logging
import re
from typing import Sequence

import numpy as np
import pandas as pd

from groundflow.cvc.prompts import (
    QUESTION_PLURAL,
    QUESTION_SINGULAR,
    TYPE_ASSISTANT_PREFIX,
    type_messages,
)
from groundflow.generate.backends import ChatPrompt, Generator, SamplingParams, UnsupportedFeatureError
from groundflow.io.stage import StageResult, rejects_frame

log = logging.getLogger(__name__)

STAGE = "instructions"
LM_SCORING = "lm_scoring"
GUIDED_CHOICE = "guided_choice"

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
    phrase = type_phrase(object_type, plural)
    if plural:
        return QUESTION_PLURAL.format(type_phrase=phrase)
    return QUESTION_SINGULAR.format(article=indefinite_article(phrase), type_phrase=phrase)


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
        f"'{revealed}' occurs in \"{question}\""
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
        f"guided decoding, or generation.text.backend: hf to score the types with a local model"
    )


def _type_prompts(labels: Sequence[str], captions: Sequence[str], types: Sequence[str],
                  choices: Sequence[str] | None = None) -> list[ChatPrompt]:
    return [
        ChatPrompt(messages=type_messages(l, c, list(types)), assistant_prefix=TYPE_ASSISTANT_PREFIX,
                   choices=None if choices is None else list(choices))
        for l, c in zip(labels, captions)
    ]


def choose_object_types(
    generator: Generator,
    labels: Sequence[str],
    captions: Sequence[str],
    object_types: Sequence[str],
    *,
    normalize: str = "sum",
) -> list[str]:
    """The most likely type of each entity: by LM scoring of every type as the answer, or (an
    endpoint that cannot score) the type its guided decoding writes (`type_selection`)."""
    if not labels:
        return []
    types = list(object_types)
    answers = [f" {t}" for t in types]
    method = type_selection(generator)
    if method == LM_SCORING:
        scores = generator.score_choices(_type_prompts(labels, captions, types), [answers] * len(labels),
                                         normalize=normalize)
        # argmax keeps the first type on ties, so config order decides between equals.
        return [types[int(np.argmax(row))] for row in scores]
    width = max(len(a.encode()) for a in answers) + 2  # tokens never outnumber bytes; + eos
    written = generator.generate(_type_prompts(labels, captions, types, answers),
                                 SamplingParams(max_new_tokens=width, n=1, do_sample=False))
    by_answer = {a.strip(): t for a, t in zip(answers, types)}
    chosen = []
    for index, texts in enumerate(written):
        text = texts[0].strip()
        if text not in by_answer:
            raise ValueError(f"{STAGE}: guided decoding returned {texts[0]!r} for prompt {index}, not one of the types")
        chosen.append(by_answer[text])
    return chosen


def generate_instructions(
    instances_df: pd.DataFrame,
    generator: Generator,
    *,
    object_types: Sequence[str] | None = None,
    normalize: str = "sum",
) -> StageResult:
    """Add object_type and instruction to every row; reject rows whose question reveals the entity.

    The caption shown to the model is the row's `caption` column when present (set by the
    causality step).
    """
    types = list(object_types or DEFAULT_OBJECT_TYPES)
    if not types:
        raise ValueError("object_types is empty")
    records = instances_df.reset_index(drop=True)
    labels = [str(v) for v in records["label"]]
    if "caption" in records.columns:
        captions = [c if isinstance(c, str) else "" for c in records["caption"]]
    else:
        captions = [""] * len(records)
    chosen = choose_object_types(generator, labels, captions, types, normalize=normalize)
    questions = [build_question(t, is_plural(l)) for t, l in zip(chosen, labels)]
    keep = []
    rejected = []
    for i, (record_id, label, question) in enumerate(zip(records["id"], labels, questions)):
        revealed = revealed_words(question, label)
        if revealed is None:
            keep.append(i)
        else:
            rejected.append((str(record_id), reveal_reason(str(record_id), label, question, revealed)))
    kept = records.assign(
        object_type=pd.Series(chosen, dtype=object), instruction=pd.Series(questions, dtype=object)
    ).iloc[keep].reset_index(drop=True)
    return StageResult(kept=kept, rejects=rejects_frame(STAGE, rejected), parent_column="id")

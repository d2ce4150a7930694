"""Entity extraction (CVC step 1-0): which concrete things each caption mentions.

The original asked Llama-2-chat for lines `N. full form -> label` and trusted whatever came back,
so entities absent from the caption (or malformed lines) leaked into later steps. Here every line
the model can keep is a candidate built from the caption itself, in the original's conventions
(its examples: "long oars -> oars", "another skier -> skier"):
- a full form is the caption's noun phrase without a leading article or quantity: a contiguous
  run of at most `max_span_words` caption words with no punctuation, which
  - starts with neither a function word, an article ("a", "the") nor a quantity ("two", "3",
    "several", "a group of" -> "group"); another determiner may lead it ("another skier");
  - ends with neither a function word, a determiner, a quantity nor a verb form;
  - holds no finite verb ("sits", "wears"), and an -ing form only as its first word, where it
    modifies the noun ("cutting board"); "man riding" and "sits on bench" are not noun phrases;
  - holds a determiner or quantity after its first word only right after a preposition ("cup of
    the coffee"): after a conjunction it opens a second phrase ("cup and a plate"), after any
    other word that word acts as a verb and the span is a clause ("row a narrow boat").
  Without a part-of-speech tagger these are word lists: a verb that is also a common noun
  ("stands", "rides", "row") cannot be told apart, and what the lists miss is left to the
  prompt, which says the same (on the free-writing path it is all the model is told);
- its label is a contiguous part of the full form that neither starts nor ends with a function
  word, a determiner or a quantity ("another skier" -> "skier", "ski lift" -> "ski lift").
There is no cap on the number of entities of a caption unless `max_entities` sets one (the
original had none; the demo caps it for speed), and the model ends its answer with <end>. Text
is normalised (lower case, single spaces) and matched case-insensitively.

The prompt is a text file (`groundflow.prompts.load_prompt(path, "cvc/entities",
fields={"caption"})`; ours is src/groundflow/prompts/cvc/entities.txt); its `.version` is what
the stage stores with its outputs. Two of the original's few-shot examples broke its own rules (a
label that was not part of its full form; a noun taken from inside a phrase the rules exclude);
every example of ours is a candidate line of its caption, as a unit test checks.

The model is any `Generator`. One with the "lines" feature (the local HF text generator: token
tries; an endpoint with guided decoding: a regular expression) is constrained to the candidate
lines. One without it (an OpenAI-compatible endpoint without guided decoding, as the original's
Llama-2 ran) writes freely, and its lines are parsed and filtered to the caption's candidates: the
same filter that guards the constrained path, now doing the work. `entity_decoding` names which of
the two ran; the stage stores it with the outputs.

Words are split by `groundflow.cvc.words`, the tokeniser the causality step uses to find the full
form again in the caption, so every full form produced here is found there.
"""

from __future__ import annotations

import logging
import re
from typing import Iterable, Sequence

import pandas as pd

from groundflow.cvc.words import word_tokenize
from groundflow.generate.backends import ChatPrompt, Generator, LineChoices, SamplingParams
from groundflow.io.stage import StageResult, rejects_frame
from groundflow.prompts import PromptText, load_prompt

log = logging.getLogger(__name__)

STAGE = "entities"
ARROW = " -> "
PROMPT_NAME = "cvc/entities"
PROMPT_FIELDS = frozenset({"caption"})

ENTITY_BEGIN = "<begin>"
ENTITY_END = "<end>"
# The answer is prefilled with the opening marker, so the model starts directly with line 1.
ENTITY_ASSISTANT_PREFIX = f"{ENTITY_BEGIN}\n"

ARTICLES = frozenset({"a", "an", "the"})
# Quantities, and the collective nouns that measure out another noun ("a group of people" ->
# "people", "a row of boats" -> "boats"): never the entity itself. ("lot" is not one: "parking lot".)
QUANTITIES = frozenset(
    """
    one two three four five six seven eight nine ten eleven twelve twenty dozen dozens hundreds
    thousands many much more most few fewer several some any both all half enough lots plenty
    couple pair pairs group groups bunch number handful row rows stack stacks pile piles herd flock
    variety assortment
    """.split()
)
# Determiners that may lead a full form: the original keeps them ("another skier -> skier").
OTHER_DETERMINERS = frozenset(
    """
    another other others this that these those each every either neither no
    my your his her its our their whose which what
    """.split()
)
DETERMINERS = ARTICLES | QUANTITIES | OTHER_DETERMINERS
# Verb forms common in captions that are (almost) never nouns. Finite forms cannot be part of a
# noun phrase at all; a participle can only lead one, as a modifier ("cutting board", "parked car").
FINITE_VERBS = frozenset(
    """
    sits sit sat holds wears wore rode eats ate lays waits poses carries throws threw swung
    prepares sleeps slept jumps smiles drank drove pulls pushes grazes leans hangs hung takes took
    gets got goes went contains appears seems floats shines
    """.split()
)
PARTICIPLES = frozenset(
    """
    sitting standing holding riding walking looking playing laying lying eating wearing carrying
    posing watching waiting talking throwing swinging hitting catching flying preparing cutting
    sleeping jumping running smiling reading drinking driving pulling pushing grazing resting
    leaning hanging rowing floating shining parked
    """.split()
)
FUNCTION_WORDS = frozenset(
    """
    about above across after against along alongside among amongst around at atop before behind
    below beneath beside besides between beyond by down during for from in inside into like near
    next of off on onto out outside over past through throughout to toward towards under
    underneath until up upon via with within without
    and or but nor so yet as than if because while whilst where when who whom
    i me you he him she it we us they them itself themselves himself herself someone something
    there here
    is are was were be been being am has have had do does did can could will would shall should
    may might must
    not very too also just then
    's 're 've 'll 'd 'm n't '
    """.split()
)

# Function words after which a determiner starts a new phrase or clause, not a prepositional object.
CLAUSE_LINKS = frozenset("and or but nor so yet as than if because while whilst where when who whom".split())

_LINE = re.compile(r"^\s*\d+\s*\.\s*(?P<full>.*?)\s*->\s*(?P<label>.*?)\s*$")


# ---------------------------------------------------------------------------------------------
# pure core


def normalize_text(text: str) -> str:
    """Lower case, runs of whitespace collapsed to one space, typographic apostrophe made plain."""
    return " ".join(text.replace("\u2019", "'").lower().split())


def _is_word(token: str) -> bool:
    return any(ch.isalnum() for ch in token)


def _key(token: str) -> str:
    return token.replace("\u2019", "'").lower()


def caption_word_spans(caption: str) -> list[tuple[str, int, int]]:
    """The caption's tokens as (text, start, end) character spans (punctuation included)."""
    return [(w.text, w.start, w.end) for w in word_tokenize(caption)]


def _is_number(key: str) -> bool:
    return key[:1].isdigit() and all(ch.isdigit() or ch in ".,:/" for ch in key)


def _may_start_full_form(key: str) -> bool:
    return key not in FUNCTION_WORDS and key not in ARTICLES and key not in QUANTITIES and not _is_number(key)


def _may_end_phrase(key: str) -> bool:
    """The last word of a full form or label: its head noun, so no function word, determiner or verb."""
    return key not in FUNCTION_WORDS and key not in DETERMINERS and key not in FINITE_VERBS and key not in PARTICIPLES


def _may_follow(previous: str, key: str) -> bool:
    """Whether `key` may come right after `previous` inside a full form (a noun phrase)."""
    if key in FINITE_VERBS or key in PARTICIPLES:
        return False
    if key in DETERMINERS or _is_number(key):
        # "cup of the coffee"; after "and" it opens a second noun phrase ("cup and a plate": two
        # entities), after any other word a verb's object ("row a boat")
        return previous in FUNCTION_WORDS and previous not in CLAUSE_LINKS
    return True


def entity_candidates(caption: str, max_span_words: int) -> list[tuple[str, str]]:
    """Every allowed (full_form, label) pair of a caption, normalised, in caption order.

    Full forms are taken verbatim from the caption (from the first word's start to the last
    word's end), so "the dog's bowl" gives "dog's bowl" with its apostrophe.
    """
    tokens = caption_word_spans(caption)
    keys = [_key(t[0]) for t in tokens]
    words = [_is_word(t[0]) for t in tokens]
    pairs: dict[tuple[str, str], None] = {}
    for start in range(len(tokens)):
        if not words[start] or not _may_start_full_form(keys[start]) or keys[start] in FINITE_VERBS:
            continue
        for stop in range(start + 1, min(start + max_span_words, len(tokens)) + 1):
            if not words[stop - 1]:
                break  # punctuation ends every longer span too
            if stop - 1 > start and not _may_follow(keys[stop - 2], keys[stop - 1]):
                break  # a verb or a clause inside: every longer span holds it too
            if not _may_end_phrase(keys[stop - 1]):
                continue
            full = normalize_text(caption[tokens[start][1]:tokens[stop - 1][2]])
            for label_start in range(start, stop):
                first = keys[label_start]
                if first in FUNCTION_WORDS or first in DETERMINERS or _is_number(first):
                    continue
                for label_stop in range(label_start + 1, stop + 1):
                    if not _may_end_phrase(keys[label_stop - 1]):
                        continue
                    label = normalize_text(caption[tokens[label_start][1]:tokens[label_stop - 1][2]])
                    pairs[(full, label)] = None
    return list(pairs)


def format_entity_line(full_form: str, label: str) -> str:
    """A line's content without its number: "long oars -> oars"."""
    return f"{full_form}{ARROW}{label}"


def parse_entity_lines(text: str) -> list[tuple[str, str]]:
    """(full_form, label) pairs from generated `N. full form -> label` lines, normalised.

    Text after the end marker is ignored. Without an end marker (generation ran out of tokens) a
    last line lacking its line break is dropped: it may have been cut mid-label. Lines without a
    number or without "->" are skipped, as are lines with an empty side.
    """
    if ENTITY_END in text:
        body = text.split(ENTITY_END, 1)[0]
        lines = body.split("\n")
    else:
        lines = text.split("\n")
        if not text.endswith("\n"):
            lines = lines[:-1]
    pairs = []
    for line in lines:
        match = _LINE.match(line)
        if match is None:
            continue
        full, label = normalize_text(match["full"]), normalize_text(match["label"])
        if full and label:
            pairs.append((full, label))
    return pairs


def dedupe_by_label(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Keep the first (full_form, label) of each label."""
    seen: dict[str, tuple[str, str]] = {}
    for full, label in pairs:
        seen.setdefault(label, (full, label))
    return list(seen.values())


def group_by_image(
    mentions: Sequence[tuple[str, str, str, Sequence[tuple[str, str]]]],
) -> list[dict]:
    """Rows per (image, label) from (caption_id, image_id, caption, pairs) in input order.

    Pairs of one caption must already be de-duplicated by label. Each row holds the parallel
    lists caption_ids, captions, full_forms over the captions where the label was extracted.
    """
    rows: dict[tuple[str, str], dict] = {}
    for caption_id, image_id, caption, pairs in mentions:
        for full, label in pairs:
            row = rows.setdefault(
                (image_id, label),
                {"image_id": image_id, "label": label, "caption_ids": [], "captions": [], "full_forms": []},
            )
            row["caption_ids"].append(caption_id)
            row["captions"].append(caption)
            row["full_forms"].append(full)
    return list(rows.values())


def no_entity_reason(caption_id: str, caption: str) -> str:
    return f"no entity extracted from caption {caption_id}: '{caption}'"


# ---------------------------------------------------------------------------------------------
# model


CONSTRAINED = "constrained"
FREE_FILTERED = "free_filtered"


def entity_decoding(generator: Generator) -> str:
    """"constrained" when the generator can close an answer to allowed lines, else "free_filtered"."""
    return CONSTRAINED if "lines" in generator.features else FREE_FILTERED


def load_entity_prompt(path: str | None = None) -> PromptText:
    """The entity prompt: a user's file (`cvc.entities.prompt`), or ours when `path` is None."""
    return load_prompt(path, PROMPT_NAME, fields=PROMPT_FIELDS)


def entity_messages(prompt: PromptText, caption: str) -> list[dict[str, str]]:
    """Chat messages asking for the entities of one caption (answer prefilled separately).

    The caption goes in on one line, as the prompt's examples quote theirs.
    """
    return [{"role": "user", "content": prompt.format(caption=" ".join(caption.split()))}]


def entity_prompt(prompt: PromptText, caption: str, pairs: Sequence[tuple[str, str]], *,
                  max_entities: int | None, min_entities: int, constrained: bool) -> tuple[ChatPrompt, LineChoices]:
    """The prompt of one caption, and the lines its answer may hold (attached when constrained)."""
    lines = LineChoices(
        allowed=tuple(format_entity_line(f, l) for f, l in pairs),
        end_marker=ENTITY_END,
        min_lines=min_entities,
        max_lines=max_entities,
    )
    chat = ChatPrompt(messages=entity_messages(prompt, caption), assistant_prefix=ENTITY_ASSISTANT_PREFIX,
                      lines=lines if constrained else None)
    return chat, lines


def generate_entity_lines(
    generator: Generator,
    captions: Sequence[str],
    candidates: Sequence[Sequence[tuple[str, str]]],
    *,
    prompt: PromptText,
    max_entities: int | None,
    min_entities: int = 1,
    max_new_tokens: int | None = None,
) -> list[str]:
    """Greedy answers (the text after "<begin>\\n") for captions with candidates.

    Constrained when the generator can (`entity_decoding`). The token budget defaults to a bound
    from the candidate lines' bytes that any complete answer fits in; a constraining local
    generator stops each answer at its end marker anyway.
    """
    if not captions:
        return []
    constrained = entity_decoding(generator) == CONSTRAINED
    built = [
        entity_prompt(prompt, caption, pairs, max_entities=max_entities, min_entities=min_entities,
                      constrained=constrained)
        for caption, pairs in zip(captions, candidates)
    ]
    budget = max_new_tokens if max_new_tokens is not None else max(lines.byte_budget() for _, lines in built)
    params = SamplingParams(max_new_tokens=budget, n=1, do_sample=False)
    outputs = generator.generate([chat for chat, _ in built], params)
    return [texts[0] for texts in outputs]


def extract_entities(
    captions_df: pd.DataFrame,
    generator: Generator,
    *,
    max_span_words: int,
    max_entities: int | None = None,
    prompt: PromptText | None = None,
    min_entities: int = 1,
    max_new_tokens: int | None = None,
) -> StageResult:
    """One row per (image, entity label) over the captions; captions yielding nothing are rejected.

    Image-level input columns (all but id and caption: image, image_id, width, height, ...) are
    carried over from the image's first caption. `max_entities` caps the entities of a caption
    (None: no cap, as the original). `prompt` defaults to ours (`load_entity_prompt()`).
    `max_new_tokens` defaults to a bound that every complete answer of allowed lines fits in; the
    original stopped at 100 tokens, and a free-writing endpoint needs a bound that fits its
    context window.

    `min_entities` lines are required before <end> may be written (when the caption has that
    many candidates): COCO-style captions always name something, and without this floor a weak
    or random model that prefers "<end>" would reject every caption. With the default of 1, a
    caption is rejected when it has no candidate phrase at all (only function words or
    punctuation); set 0 to let the model decline.
    """
    prompt = prompt if prompt is not None else load_entity_prompt()
    records = captions_df.reset_index(drop=True)
    caption_ids = [str(i) for i in records["id"]]
    captions = [c if isinstance(c, str) else "" for c in records["caption"]]
    candidates = [entity_candidates(c, max_span_words) for c in captions]
    runnable = [i for i, pairs in enumerate(candidates) if pairs]
    answers = generate_entity_lines(
        generator,
        [captions[i] for i in runnable],
        [candidates[i] for i in runnable],
        prompt=prompt,
        max_entities=max_entities,
        min_entities=min_entities,
        max_new_tokens=max_new_tokens,
    )
    extracted: dict[int, list[tuple[str, str]]] = {}
    dropped = 0
    for i, answer in zip(runnable, answers):
        allowed = set(candidates[i])
        # A constraint already guarantees this; the filter keeps the promise for any decoder, and
        # is what confines free generation to the caption's phrases.
        parsed = parse_entity_lines(answer)
        dropped += sum(p not in allowed for p in parsed)
        # A regular expression (guided decoding) cannot forbid repeats, nor free text exceed the
        # line limit: keep the first max_entities distinct labels.
        extracted[i] = dedupe_by_label(p for p in parsed if p in allowed)[:max_entities]
    if dropped:
        log.info("entities: %d generated lines were not candidates of their caption and were dropped", dropped)

    image_ids = [str(v) for v in records["image_id"]]
    mentions = [
        (caption_ids[i], image_ids[i], captions[i], extracted.get(i, [])) for i in range(len(records))
    ]
    rejects = rejects_frame(
        STAGE,
        [(caption_ids[i], no_entity_reason(caption_ids[i], captions[i])) for i, m in enumerate(mentions) if not m[3]],
    )
    grouped = group_by_image([m for m in mentions if m[3]])

    image_columns = [c for c in records.columns if c not in ("id", "caption")]
    first_of_image = (
        records.assign(_image_key=image_ids).drop_duplicates("_image_key").set_index("_image_key")
    )
    out_columns = ["id"] + image_columns + ["label", "caption_ids", "captions", "full_forms"]
    rows = []
    for row in grouped:
        image_values = first_of_image.loc[row["image_id"], image_columns].to_dict()
        rows.append(
            {
                "id": f"{row['image_id']}-{row['label']}",
                **image_values,
                "image_id": row["image_id"],
                "label": row["label"],
                "caption_ids": row["caption_ids"],
                "captions": row["captions"],
                "full_forms": row["full_forms"],
            }
        )
    if rows:
        kept = pd.DataFrame(rows, columns=out_columns)
    else:
        kept = records.iloc[0:0][image_columns].assign(
            id=pd.Series(dtype=str),
            label=pd.Series(dtype=str),
            caption_ids=pd.Series(dtype=object),
            captions=pd.Series(dtype=object),
            full_forms=pd.Series(dtype=object),
        )[out_columns]
    return StageResult(kept=kept, rejects=rejects, parent_column="caption_ids")

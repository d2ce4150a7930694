import re

import pytest

from groundflow.cvc.instructions import (
    build_question,
    indefinite_article,
    inflect_phrase,
    is_plural,
    label_variants,
    pluralize,
    reveal_reason,
    revealed_words,
    singularize,
    type_phrase,
)


@pytest.mark.parametrize(
    "label, plural",
    [("oars", True), ("skier", False), ("people", True), ("men", True), ("glass", False), ("bus", False),
     ("tennis racket", False), ("tennis rackets", True), ("scissors", True), ("sheep", False),
     ("news", False), ("cactus", False), ("grass", False), ("food", False), ("", False)],
)
def test_is_plural(label, plural):
    assert is_plural(label) is plural


@pytest.mark.parametrize(
    "singular, plural",
    [("dog", "dogs"), ("bus", "buses"), ("box", "boxes"), ("bench", "benches"), ("dish", "dishes"),
     ("pony", "ponies"), ("toy", "toys"), ("tomato", "tomatoes"), ("piano", "pianos"), ("man", "men"),
     ("knife", "knives"), ("person", "people"), ("sheep", "sheep"), ("glass", "glasses")],
)
def test_pluralize(singular, plural):
    assert pluralize(singular) == plural


@pytest.mark.parametrize(
    "plural, singular",
    [("dogs", "dog"), ("buses", "bus"), ("boxes", "box"), ("benches", "bench"), ("ponies", "pony"),
     ("cookies", "cookie"), ("houses", "house"), ("tomatoes", "tomato"), ("shoes", "shoe"),
     ("men", "man"), ("knives", "knife"), ("glasses", "glasses"), ("bus", "bus"), ("dog", "dog"),
     ("dresses", "dress"), ("grass", "grass")],
)
def test_singularize(plural, singular):
    assert singularize(plural) == singular


def test_inflect_phrase_changes_the_last_word():
    assert inflect_phrase("tennis racket", True) == "tennis rackets"
    assert inflect_phrase("tennis rackets", False) == "tennis racket"


@pytest.mark.parametrize(
    "phrase, article",
    [("object", "an"), ("animal", "an"), ("vehicle", "a"), ("appliance", "an"), ("instrument", "an"),
     ("umbrella", "an"), ("unicorn", "a"), ("hour", "an"), ("utensil", "a"), ("food item", "a"),
     ("european car", "a"), ("one-way sign", "a")],
)
def test_indefinite_article(phrase, article):
    assert indefinite_article(phrase) == article


def test_type_phrase():
    assert type_phrase("animal", False) == "animal"
    assert type_phrase("animal", True) == "animals"
    assert type_phrase("person", True) == "people"
    assert type_phrase("food", False) == "food item"
    assert type_phrase("Furniture", True) == "furniture items"


def test_build_question_singular_and_plural():
    # the released layout: the two-sentence header, a newline, the question (not a space)
    assert build_question("object", False) == (
        "In the given image, there is an object heavily occluded by a cluster of gray blocks. "
        "Please answer the following question.\nWhat might the object occluded by the gray blocks be?"
    )
    assert build_question("vehicle", True) == (
        "In the given image, there are vehicles heavily occluded by a cluster of gray blocks. "
        "Please answer the following question.\nWhat might the vehicles occluded by the gray blocks be?"
    )
    assert build_question("food", False).startswith("In the given image, there is a food item heavily")


def test_label_variants():
    assert label_variants("dogs") == ["dogs", "dog"]
    assert label_variants("Tennis Racket") == ["tennis racket", "tennis rackets"]


def test_reveal_check():
    question = build_question("animal", False)
    assert revealed_words(question, "dog") is None
    assert revealed_words(question, "animals") == "animal"
    assert revealed_words(question, "animal") == "animal"
    assert revealed_words(build_question("food", False), "food") == "food"
    # the template's own words count: an entity called "block" would be named by "gray blocks"
    assert revealed_words(question, "block") == "blocks"
    assert revealed_words(question, "gray blocks") == "gray blocks"
    # words, not substrings: "mage" is inside "image" but is not a word of the question
    assert revealed_words(question, "mage") is None
    assert revealed_words(question, "cat") is None  # "cluster" contains no word "cat"


def test_reveal_reason_names_the_record():
    q = build_question("food", False)
    assert reveal_reason("img1-food", "food", q, "food") == (
        f"question for img1-food would reveal the entity 'food': 'food' occurs in \"{q.replace(chr(10), ' ')}\""
    )


# --- typed mode: the best type whose question does not reveal the entity ---------------------

import pandas as pd  # noqa: E402

from groundflow.cvc.instructions import (  # noqa: E402
    DEFAULT_OBJECT_TYPES,
    UnusableQuestion,
    generate_instructions,
    load_instruction_prompt,
    revealing_types,
    split_free_question,
)
from groundflow.cvc.prompts import REASONING_SUFFIX  # noqa: E402
from groundflow.io import check_accounting  # noqa: E402

HEADER = "In the given image, there is an object heavily occluded by a cluster of gray blocks. Please answer the following question."
ASKED = "What might the object occluded by the gray blocks be?"


class FavouriteTypeScorer:
    """An LM scorer that likes each entity's own type best (the label's type word), then the
    configured order; records what it was asked."""

    features = frozenset({"score_choices"})

    def __init__(self):
        self.calls = []

    def score_choices(self, prompts, choices, *, normalize="sum"):
        self.calls.append((list(prompts), [list(c) for c in choices]))
        rows = []
        for prompt, row in zip(prompts, choices):
            label = prompt.messages[0]["content"].split('Hidden entity: "')[1].split('"')[0]
            own = {label, singularize(label), "person" if label in ("people", "persons") else label}
            rows.append([10.0 if c.strip() in own else -float(i) for i, c in enumerate(row)])
        return rows

    def describe(self):
        return {"backend": "fake"}


def _instances(labels):
    return pd.DataFrame({"id": [f"img-{label}" for label in labels], "label": labels,
                         "caption": [f"A photo with {label}." for label in labels]})


def _type_words(object_type: str) -> list[str]:
    return [object_type, type_phrase(object_type, True)]


@pytest.mark.parametrize("label", sorted({w for t in DEFAULT_OBJECT_TYPES for w in _type_words(t)} | {"people", "persons"}))
def test_every_label_named_like_a_type_gets_a_question(label):
    """A label that is a type name or its plural ("people" typed "person") used to be rejected
    whenever its own type scored best; now the best type that does not reveal it is chosen."""
    scorer = FavouriteTypeScorer()
    result = generate_instructions(_instances([label]), scorer, mode="typed")
    assert list(result.kept["id"]) == [f"img-{label}"], result.rejects["reason"].tolist()
    row = result.kept.iloc[0]
    assert revealed_words(row.instruction, label) is None
    assert row.instruction == build_question(row.object_type, is_plural(label))
    # the revealing types were neither offered in the prompt nor scored
    [prompt], [choices] = scorer.calls[0]
    offered = [c.strip() for c in choices]
    assert set(offered) == set(DEFAULT_OBJECT_TYPES) - set(revealing_types(label, DEFAULT_OBJECT_TYPES))
    favourite = "person" if label in ("people", "persons") else singularize(label)
    # its own type when that does not reveal it ("persons" typed "person": "there are people"), else
    # the next best, here the first in config order
    assert row.object_type == (favourite if favourite in offered else offered[0])
    assert (favourite in offered) == (label == "persons")
    assert f"choosing one of: {', '.join(offered)}." in prompt.messages[0]["content"]


def test_people_typed_person_gets_the_next_best_type():
    scorer = FavouriteTypeScorer()
    result = generate_instructions(_instances(["people", "dog"]), scorer, mode="typed",
                                   object_types=["person", "animal", "object"])
    # people: its favourite "person" is out, "animal" scores next; dog: no favourite, config order
    assert list(result.kept["object_type"]) == ["animal", "person"]
    assert result.kept["instruction"].iloc[0].startswith("In the given image, there are animals heavily")
    assert revealing_types("people", ["person", "animal", "object"]) == {"person": "people"}


def test_a_label_every_type_reveals_is_rejected_without_asking():
    scorer = FavouriteTypeScorer()
    result = generate_instructions(_instances(["block", "cup"]), scorer, mode="typed", object_types=["object"])
    check_accounting("instructions", ["img-block", "img-cup"], result)
    assert list(result.kept["id"]) == ["img-cup"]
    assert result.rejects["reason"].iloc[0].startswith(
        "question for img-block would reveal the entity 'block': 'blocks' occurs in \"In the given image")
    assert len(scorer.calls[0][0]) == 1  # only the cup was scored


class GuidedChooser:
    """An endpoint without scoring: guided decoding writes the first allowed choice."""

    features = frozenset({"choices"})

    def __init__(self):
        self.prompts = []

    def generate(self, prompts, params):
        self.prompts.extend(prompts)
        return [[p.choices[0]] for p in prompts]

    def describe(self):
        return {"backend": "fake-endpoint"}


def test_guided_types_exclude_the_revealing_ones():
    chooser = GuidedChooser()
    result = generate_instructions(_instances(["people", "animals"]), chooser, mode="typed",
                                   object_types=["person", "animal", "object"])
    assert list(result.kept["object_type"]) == ["animal", "person"]
    assert [p.choices for p in chooser.prompts] == [[" animal", " object"], [" person", " object"]]


# --- free mode: the LLM writes the question ---------------------------------------------------


@pytest.mark.parametrize(
    "written",
    [
        f" {HEADER}\n{ASKED}",
        f"{HEADER} {ASKED}",  # the seed's one-line form is split at the question
        f"\"{HEADER}\n{ASKED} {REASONING_SUFFIX}\"",  # the seed's queries carried the suffix
        f"Question: {HEADER}\n{ASKED} please confirm a unique answer.\n\nEntity: knife\nQuestion: ...",
        f"{HEADER}\n{ASKED}\nEntity: knife",
    ],
)
def test_split_free_question(written):
    assert split_free_question(written) == (HEADER, ASKED)


@pytest.mark.parametrize(
    "written, why",
    [
        ("", "it wrote no question"),
        (f"  {REASONING_SUFFIX}\n", "it wrote no question"),
        ("Question:", "it wrote no question"),
        ("The object is a thing. It is hidden.", "no sentence of it ends with '?'"),
        (ASKED, "nothing precedes its question (no header)"),
    ],
)
def test_split_free_question_refuses_what_has_no_header_or_question(written, why):
    with pytest.raises(UnusableQuestion, match=re.escape(why)):
        split_free_question(written)


class Writer:
    """A text generator that writes canned text per entity; records prompts and parameters."""

    features = frozenset()

    def __init__(self, texts):
        self.texts = texts
        self.calls = []

    def generate(self, prompts, params):
        self.calls.append((list(prompts), params))
        return [[self.texts[p.messages[0]["content"].rsplit("Entity: ", 1)[1]]] for p in prompts]

    def describe(self):
        return {"backend": "fake"}


def test_free_mode_writes_splits_and_checks_each_question():
    animals = ("In the given image, there are animals heavily occluded by a cluster of gray blocks. Please answer the "
               "following question.\nWhat might the animals occluded by the gray blocks be?")
    writer = Writer({
        "cup": f" {HEADER}\n{ASKED} {REASONING_SUFFIX}",
        "zebras": animals,
        "dog": "In the given image, there is a dog heavily occluded by gray blocks. Please answer. What might the dog be?",
        "kite": "I cannot help with that.",
        "vase": "",
    })
    df = _instances(["cup", "zebras", "dog", "kite", "vase"])
    result = generate_instructions(df, writer, mode="free", max_new_tokens=100)
    check_accounting("instructions", df["id"], result)
    # plain generation (works on a Generator without scoring or choices), greedy, <= max_new_tokens
    [(prompts, params)] = writer.calls
    assert params.do_sample is False and params.max_new_tokens == 100 and params.n == 1
    assert all(p.choices is None and p.assistant_prefix == "Question:" for p in prompts)
    assert prompts[0].messages[0]["content"].endswith("Entity: cup")
    kept = result.kept.set_index("id")
    assert kept.loc["img-cup", "instruction"] == f"{HEADER}\n{ASKED}"
    assert kept.loc["img-zebras", "instruction"] == animals
    assert kept["object_type"].isna().all()
    reasons = dict(zip(result.rejects["id"], result.rejects["reason"]))
    assert reasons["img-dog"].startswith("question for img-dog would reveal the entity 'dog': 'dog' occurs in")
    assert reasons["img-kite"] == ("question for img-kite ('kite') is unusable: no sentence of it ends with '?': "
                                   "\"I cannot help with that.\"")
    assert reasons["img-vase"] == "question for img-vase ('vase') is unusable: it wrote no question: \"\""


def test_instruction_prompts_are_files(tmp_path):
    free = load_instruction_prompt("free")
    typed = load_instruction_prompt("typed")
    assert free.version.startswith("instruction_free-") and typed.version.startswith("instruction_type-")
    # the examples show the fixed shape and the header on its own line
    assert "Please answer the following question.\nWhat might the" in free.text
    mine = tmp_path / "original.txt"
    mine.write_text("Make a question about {label}.")
    writer = Writer({"cup": f"{HEADER}\n{ASKED}"})
    writer.generate = lambda prompts, params: [[f"{HEADER}\n{ASKED}"] for _ in prompts] if (
        prompts[0].messages[0]["content"] == "Make a question about cup.") else pytest.fail("not the user's prompt")
    result = generate_instructions(_instances(["cup"]), writer, mode="free", prompt=load_instruction_prompt("free", mine))
    assert len(result.kept) == 1
    with pytest.raises(ValueError, match=r"asks for unknown field\(s\) \{caption\}"):
        (tmp_path / "typed.txt").write_text("{label} {caption}")
        load_instruction_prompt("free", tmp_path / "typed.txt")
    with pytest.raises(ValueError, match="unknown mode"):
        load_instruction_prompt("template")

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
    assert build_question("object", False) == (
        "In the given image, there is an object heavily occluded by a cluster of gray blocks. "
        "Please answer the following question. What might the object occluded by the gray blocks be?"
    )
    assert build_question("vehicle", True) == (
        "In the given image, there are vehicles heavily occluded by a cluster of gray blocks. "
        "Please answer the following question. What might the vehicles occluded by the gray blocks be?"
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
        f"question for img1-food would reveal the entity 'food': 'food' occurs in \"{q}\""
    )

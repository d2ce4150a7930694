import re

import pandas as pd
import pytest

from groundflow.cvc.entities import (
    ARTICLES,
    ENTITY_ASSISTANT_PREFIX,
    ENTITY_END,
    FREE_FILTERED,
    QUANTITIES,
    caption_word_spans,
    dedupe_by_label,
    entity_candidates,
    extract_entities,
    format_entity_line,
    group_by_image,
    load_entity_prompt,
    no_entity_reason,
    normalize_text,
    parse_entity_lines,
)
from groundflow.prompts import packaged_prompt_path

CAPTION_IN_PROMPT = re.compile(r'Caption: "(.*)"')


class EveryCandidateGenerator:
    """A free-writing generator (no "lines" feature) that answers every candidate line of the
    prompt's last quoted caption, and records the prompts it was given."""

    features = frozenset()

    def __init__(self, max_span_words: int):
        self.max_span_words = max_span_words
        self.prompts = []

    def generate(self, prompts, params):
        self.prompts.extend(prompts)
        answers = []
        for prompt in prompts:
            caption = CAPTION_IN_PROMPT.findall(prompt.messages[-1]["content"])[-1]
            lines = [format_entity_line(f, l) for f, l in entity_candidates(caption, self.max_span_words)]
            answers.append(["".join(f"{i}. {line}\n" for i, line in enumerate(lines, 1)) + ENTITY_END])
        return answers

    def describe(self):
        return {"backend": "every-candidate"}


def test_normalize_text():
    assert normalize_text("  A  Red\tCar \n") == "a red car"
    assert normalize_text("Dog\u2019s bowl") == "dog's bowl"


def test_caption_word_spans_have_offsets():
    assert caption_word_spans("A dog, ok.") == [("A", 0, 1), ("dog", 2, 5), (",", 5, 6), ("ok", 7, 9), (".", 9, 10)]


def test_candidates_exact():
    assert entity_candidates("Another skier, with long oars.", 3) == [
        ("another skier", "skier"),
        ("skier", "skier"),
        ("long", "long"),
        ("long oars", "long"),
        ("long oars", "long oars"),
        ("long oars", "oars"),
        ("oars", "oars"),
    ]


def test_candidates_respect_span_length_and_function_words():
    pairs = entity_candidates("The man next to a red car", 2)
    fulls = {f for f, _ in pairs}
    labels = {l for _, l in pairs}
    # no full form keeps its leading article ("the man", "a red" were candidates before)
    assert fulls == {"man", "red", "red car", "car"}
    assert labels == {"man", "red", "red car", "car"}
    assert max(len(f.split()) for f in fulls) == 2
    assert entity_candidates("The man next to a red car", 1) == [("man", "man"), ("red", "red"), ("car", "car")]


def test_candidates_keep_caption_text_and_match_case_insensitively():
    pairs = entity_candidates("Two DOGS' bowls; a Hot-Dog.", 3)
    assert ("hot-dog", "hot-dog") in pairs
    assert ("dogs", "dogs") in pairs
    assert ("a hot-dog", "hot-dog") not in pairs and ("two dogs", "dogs") not in pairs
    # the possessive apostrophe is punctuation: no span runs across it
    assert all("bowls" not in f or f == "bowls" for f, _ in pairs)


def test_full_forms_drop_leading_articles_and_quantities():
    # the original's convention ("long oars -> oars"): the phrase without its article or number
    pairs = entity_candidates("Two men row a narrow boat with long oars across a calm lake.", 5)
    fulls = {f for f, _ in pairs}
    assert ("men", "men") in pairs and ("narrow boat", "boat") in pairs and ("long oars", "oars") in pairs
    assert ("calm lake", "lake") in pairs
    for bad in ("two men", "a narrow boat", "a calm lake", "two men row", "row a narrow boat", "men row",
                "men row a narrow boat"):
        assert bad not in fulls, bad
    assert not any(f.split()[0] in {"a", "an", "the", "two"} for f in fulls)


def test_quantities_and_collective_nouns_are_not_entities():
    pairs = entity_candidates("A group of people near 3 dogs and several kites.", 4)
    fulls = {f for f, _ in pairs}
    assert {"people", "dogs", "kites"} <= fulls
    assert not fulls & {"group", "group of people", "3 dogs", "several kites", "a group"}
    assert "parking lot" in {f for f, _ in entity_candidates("Lots of cars in a parking lot.", 3)}


def test_other_determiners_may_lead_a_full_form():
    # the original's own example: "another skier -> skier"
    assert ("another skier", "skier") in entity_candidates("Another skier waits near his bag.", 3)
    assert ("his bag", "bag") in entity_candidates("Another skier waits near his bag.", 3)


def test_verbs_and_clauses_are_not_candidates():
    pairs = entity_candidates("A man holding an umbrella sits on a bench.", 5)
    assert {f for f, _ in pairs} == {"man", "umbrella", "bench"}
    pairs = entity_candidates("A man riding near a dog sits.", 3)
    assert {f for f, _ in pairs} == {"man", "dog"}


def test_participles_may_modify_a_noun():
    fulls = {f for f, _ in entity_candidates("A cutting board beside a parked car.", 3)}
    assert {"cutting board", "board", "parked car", "car"} <= fulls
    assert not fulls & {"cutting", "parked"}


def test_a_conjunction_before_a_determiner_splits_two_phrases():
    fulls = {f for f, _ in entity_candidates("A cup of coffee and a plate with two donuts.", 5)}
    assert fulls == {"cup", "cup of coffee", "coffee", "plate", "plate with two donuts", "donuts"}
    # without a determiner the coordination may be one thing
    assert "salt and pepper shakers" in {f for f, _ in entity_candidates("The salt and pepper shakers.", 4)}


def test_caption_without_candidates():
    assert entity_candidates("It is there, and so on.", 3) == []
    assert entity_candidates("...", 3) == []


def test_parse_lines():
    text = "1. long oars -> oars\n2.  Another  Skier ->  skier \nnot a line\n3. bad line\n<end>\n4. x -> y\n"
    assert parse_entity_lines(text) == [("long oars", "oars"), ("another skier", "skier")]


def test_parse_drops_a_cut_last_line_without_end_marker():
    assert parse_entity_lines("1. long oars -> oars\n2. a boat -> bo") == [("long oars", "oars")]
    assert parse_entity_lines("1. long oars -> oars\n") == [("long oars", "oars")]
    # with the end marker on the same line, the last line is complete
    assert parse_entity_lines("1. a cat -> cat<end>") == [("a cat", "cat")]
    assert parse_entity_lines("1. -> cat\n<end>") == []


def test_format_line_round_trips():
    line = "1. " + format_entity_line("long oars", "oars") + "\n<end>"
    assert parse_entity_lines(line) == [("long oars", "oars")]


def test_dedupe_by_label_keeps_first():
    pairs = [("a man", "man"), ("another man", "man"), ("a dog", "dog")]
    assert dedupe_by_label(pairs) == [("a man", "man"), ("a dog", "dog")]


def test_group_by_image():
    mentions = [
        ("c1", "img1", "A dog.", [("a dog", "dog")]),
        ("c2", "img1", "Two dogs and a dog bowl.", [("a dog bowl", "dog"), ("two dogs", "dogs")]),
        ("c3", "img2", "A dog.", [("a dog", "dog")]),
    ]
    assert group_by_image(mentions) == [
        {"image_id": "img1", "label": "dog", "caption_ids": ["c1", "c2"],
         "captions": ["A dog.", "Two dogs and a dog bowl."], "full_forms": ["a dog", "a dog bowl"]},
        {"image_id": "img1", "label": "dogs", "caption_ids": ["c2"],
         "captions": ["Two dogs and a dog bowl."], "full_forms": ["two dogs"]},
        {"image_id": "img2", "label": "dog", "caption_ids": ["c3"], "captions": ["A dog."], "full_forms": ["a dog"]},
    ]


def test_no_entity_reason():
    assert no_entity_reason("c9", "It is.") == "no entity extracted from caption c9: 'It is.'"


def test_our_prompt_examples_follow_the_conventions():
    """Every example line of our prompt is a candidate of its caption: a full form without a
    leading article or quantity, and a label inside it (two of the original's examples were not)."""
    prompt = load_entity_prompt()
    blocks = re.findall(r'Caption: "([^"\n]*)"\n<begin>\n(.*?)<end>', prompt.text, flags=re.S)
    assert len(blocks) == 3
    for caption, answer in blocks:
        pairs = parse_entity_lines(answer + ENTITY_END)
        assert pairs, caption
        for full, label in pairs:
            assert (full, label) in entity_candidates(caption, 5), (caption, full, label)
            assert full.split()[0] not in ARTICLES | QUANTITIES
            assert label in full


CAPTIONS = pd.DataFrame({
    "id": ["c1", "c2"],
    "image": ["a.jpg", "b.jpg"],
    "image_id": ["a", "b"],
    "caption": ["Two men row a narrow boat with long oars across a calm lake.", "A dog on a red couch near the small white cat."],
})


def test_no_cap_keeps_every_entity_and_a_cap_keeps_that_many():
    generator = EveryCandidateGenerator(max_span_words=3)
    uncapped = extract_entities(CAPTIONS, generator, max_span_words=3, max_entities=None)
    per_caption = uncapped.kept.explode("caption_ids").groupby("caption_ids").size()
    for caption_id, caption in zip(CAPTIONS["id"], CAPTIONS["caption"]):
        labels = {l for _, l in entity_candidates(caption, 3)}
        assert per_caption[caption_id] == len(labels) > 4  # more than any cap the demo sets
    capped = extract_entities(CAPTIONS, generator, max_span_words=3, max_entities=2)
    assert capped.kept.explode("caption_ids").groupby("caption_ids").size().to_dict() == {"c1": 2, "c2": 2}


def test_the_given_prompt_file_is_what_the_model_reads(tmp_path):
    path = tmp_path / "my_entities.txt"
    path.write_text('List the things in this caption, one per line.\nCaption: "{caption}"\n', encoding="utf-8")
    mine = load_entity_prompt(str(path))
    ours = load_entity_prompt(None)
    assert mine.version != ours.version and mine.version.startswith("my_entities-")
    assert ours.version.startswith("entities-") and ours.text == packaged_prompt_path("cvc/entities").read_text()
    generator = EveryCandidateGenerator(max_span_words=3)
    result = extract_entities(CAPTIONS, generator, max_span_words=3, prompt=mine)
    assert len(result.kept) > 0
    assert [p.messages for p in generator.prompts] == [
        [{"role": "user", "content": 'List the things in this caption, one per line.\n'
                                     f'Caption: "{caption}"\n'}] for caption in CAPTIONS["caption"]
    ]
    assert all(p.assistant_prefix == ENTITY_ASSISTANT_PREFIX and p.lines is None for p in generator.prompts)
    # without a prompt the stage reads ours
    default = EveryCandidateGenerator(max_span_words=3)
    extract_entities(CAPTIONS, default, max_span_words=3)
    assert default.prompts[0].messages[0]["content"] == ours.format(caption=CAPTIONS["caption"][0])


def test_a_prompt_file_without_the_caption_field_is_refused(tmp_path):
    path = tmp_path / "no_caption.txt"
    path.write_text("List the entities of the caption.\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"no_caption\.txt lacks the field\(s\) \{caption\}"):
        load_entity_prompt(str(path))
    path.write_text('Caption: "{caption}" about {image}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"unknown field\(s\) \{image\}"):
        load_entity_prompt(str(path))


def test_free_generation_is_filtered_to_candidates():
    class Careless(EveryCandidateGenerator):
        def generate(self, prompts, params):
            return [["1. two men -> men\n2. a narrow boat -> boat\n3. narrow boat -> boat\n<end>"] for _ in prompts]

    result = extract_entities(CAPTIONS.iloc[:1], Careless(3), max_span_words=3)
    assert list(result.kept["full_forms"]) == [["narrow boat"]]
    assert FREE_FILTERED == "free_filtered"

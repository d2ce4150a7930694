from groundflow.cvc.entities import (
    caption_word_spans,
    dedupe_by_label,
    entity_candidates,
    format_entity_line,
    group_by_image,
    no_entity_reason,
    normalize_text,
    parse_entity_lines,
)


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
    assert fulls == {"the man", "man", "a red", "red", "red car", "car"}
    # no label starts with a determiner; "a red" exists only as a full form, its label is "red"
    assert labels == {"man", "red", "red car", "car"}
    assert ("a red", "red") in pairs
    assert max(len(f.split()) for f in fulls) == 2
    assert entity_candidates("The man next to a red car", 1) == [("man", "man"), ("red", "red"), ("car", "car")]


def test_candidates_keep_caption_text_and_match_case_insensitively():
    pairs = entity_candidates("Two DOGS' bowls; a Hot-Dog.", 3)
    assert ("hot-dog", "hot-dog") in pairs
    assert ("a hot-dog", "hot-dog") in pairs
    assert ("two dogs", "dogs") in pairs
    # the possessive apostrophe is punctuation: no span runs across it
    assert all("bowls" not in f or f == "bowls" for f, _ in pairs)


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

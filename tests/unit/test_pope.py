"""POPE's pure core: scene parsing, question sampling per split, answer reading, metrics."""

import math

import pandas as pd
import pytest

from groundflow.evaluate.pope import (
    SPLITS,
    ObjectStats,
    Scene,
    build_questions,
    load_scene_entries,
    negative_objects,
    parse_answer,
    parse_scenes,
    pope_metrics,
    split_metrics,
)

TEMPLATE = "Is there {article} {object} in the image?"


@pytest.mark.parametrize("text, expected", [
    ("Yes", "yes"),
    ("No", "no"),
    ("no.", "no"),
    ("NO", "no"),
    ("  No, there is not.", "no"),
    ("Yes, there is a star in the image.", "yes"),
    ("There is no star in the image.", "no"),
    ("There is not a star.", "no"),
    ("I don't see a star", "no"),
    ("The image doesn\u2019t show one", "no"),  # curly apostrophe
    ("Nope", "no"),
    ("None", "no"),
    ("Nothing like that", "no"),
    ("It cannot be seen", "no"),
    ("Yes. There is no other shape.", "yes"),  # only the first sentence counts
    ("Yes! No doubt", "yes"),
    ("Yes\nno", "yes"),  # a line break ends the first sentence too
    ("I know there is one", "yes"),  # words, not substrings: "know" holds "no"
    ("Notably a red star", "yes"),  # "notably" holds "not"
    ("Snow and a circle", "yes"),
    ("", "yes"),  # no negation: POPE reads an empty answer as yes
    ("   ", "yes"),
    ("A red star", "yes"),
])
def test_parse_answer(text, expected):
    assert parse_answer(text) == expected


def test_split_metrics_hand_computed():
    labels = ["yes", "yes", "no", "no", "no", "no", "yes", "no"]
    said = ["yes", "yes", "yes", "yes", "no", "yes", "no", "no"]
    # tp = 2 (0, 1), fp = 3 (2, 3, 5), tn = 2 (4, 7), fn = 1 (6)
    m = split_metrics(labels, said)
    assert (m["tp"], m["fp"], m["tn"], m["fn"], m["n"]) == (2, 3, 2, 1, 8)
    assert m["accuracy"] == pytest.approx(4 / 8)
    assert m["precision"] == pytest.approx(2 / 5)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(0.5)  # 2 * 0.4 * (2/3) / (0.4 + 2/3)
    assert m["yes_ratio"] == pytest.approx(5 / 8)


def test_split_metrics_symmetric_case():
    m = split_metrics(["yes", "yes", "yes", "no", "no", "no"], ["yes", "no", "yes", "yes", "no", "no"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == m["recall"] == m["f1"] == pytest.approx(2 / 3)
    assert m["yes_ratio"] == pytest.approx(0.5)


def test_a_model_that_never_says_yes_has_no_precision():
    m = split_metrics(["yes", "no", "yes", "no"], ["no"] * 4)
    assert math.isnan(m["precision"]) and math.isnan(m["f1"])
    assert m["recall"] == 0 and m["yes_ratio"] == 0 and m["accuracy"] == 0.5


def test_all_wrong_yes_gives_zero_precision_and_no_recall_without_positives():
    m = split_metrics(["no", "no"], ["yes", "yes"])
    assert m["precision"] == 0 and math.isnan(m["recall"]) and math.isnan(m["f1"])
    zero = split_metrics(["yes", "no"], ["no", "yes"])
    assert zero["precision"] == zero["recall"] == zero["f1"] == 0.0


def test_split_metrics_refuses_other_values():
    with pytest.raises(ValueError, match="'maybe'"):
        split_metrics(["yes"], ["maybe"])
    with pytest.raises(ValueError, match="1 labels but 2"):
        split_metrics(["yes"], ["yes", "no"])


def test_pope_metrics_per_split_in_popes_order_counting_empty_answers():
    answers = pd.DataFrame({
        "split": ["popular", "popular", "random", "random", "random", "random"],
        "label": ["yes", "no", "yes", "no", "yes", "no"],
        "answer": ["Yes", "", "No.", "No", "  ", "yes"],
    })
    answers["prediction"] = [parse_answer(a) for a in answers["answer"]]
    table = pope_metrics(answers)
    assert list(table["split"]) == ["random", "popular"]
    random = table.set_index("split").loc["random"]
    # random: yes->no (fn), no->no (tn), yes->"  " read yes (tp), no->yes (fp)
    assert (random["tp"], random["fp"], random["tn"], random["fn"], random["n_empty"]) == (1, 1, 1, 1, 1)
    popular = table.set_index("split").loc["popular"]
    assert popular["accuracy"] == 0.5 and popular["yes_ratio"] == 1.0 and popular["n_empty"] == 1
    with pytest.raises(ValueError, match="unknown POPE splits"):
        pope_metrics(answers.assign(split="other"))


def test_parse_scenes_normalises_and_rejects_with_reasons():
    entries = [
        {"image": "a.png", "objects": [" Circle ", "circle", "red  square"]},
        {"image": "a.png", "objects": ["star"]},
        {"objects": ["star"]},
        "b.png",
        {"image": "c.png", "objects": []},
        {"image": "d.png", "objects": "star"},
        {"image": "e.png", "objects": ["star"]},
    ]
    parsed = parse_scenes(entries)
    assert parsed.scenes == [Scene("a.png", "a.png", ("circle", "red square")), Scene("e.png", "e.png", ("star",))]
    assert parsed.input_ids == ["a.png", "scene:2", "scene:3", "scene:4", "c.png", "d.png", "e.png"]
    reasons = dict(parsed.rejects)
    assert "was annotated before" in reasons["scene:2"]
    assert "no image name" in reasons["scene:3"]
    assert "is a str" in reasons["scene:4"]
    assert "has no objects" in reasons["c.png"]
    assert "must be a list of names" in reasons["d.png"]
    with pytest.raises(ValueError, match="JSON list"):
        parse_scenes({"image": "a.png"})


# frequencies: apple 3, cherry 3, elder 3, banana 2, date 1, fig 1;
# co-occurrence: apple-banana 2, apple-cherry 1, cherry-date 1, cherry-fig 1
FRUIT = [Scene(f"s{i}", f"s{i}.png", objects) for i, objects in enumerate([
    ("apple", "banana"), ("apple", "banana"), ("cherry", "date"), ("elder",), ("elder",), ("elder",),
    ("fig", "cherry"), ("apple", "cherry"),
])]


def test_popular_and_adversarial_negatives_hand_computed():
    stats = ObjectStats.of(FRUIT)
    assert stats.frequency == {"apple": 3, "banana": 2, "cherry": 3, "date": 1, "elder": 3, "fig": 1}
    scene = FRUIT[-1]  # apple + cherry; absent: banana, date, elder, fig
    positives = ["apple", "cherry"]
    assert negative_objects("popular", scene, positives, stats, seed=0) == ["elder", "banana"]
    # apple's most co-occurring absent object is banana (2), cherry's date (1, ties fig: name order)
    assert negative_objects("adversarial", scene, positives, stats, seed=0) == ["banana", "date"]
    # no co-occurring absent object: the most frequent; a second positive whose first choice is
    # taken gives its next one
    assert negative_objects("adversarial", FRUIT[0], ["banana", "apple"], stats, seed=0) == ["cherry", "elder"]
    random = negative_objects("random", scene, positives, stats, seed=0)
    assert len(set(random)) == 2 and set(random) <= {"banana", "date", "elder", "fig"}


def test_build_questions_per_split_balanced_and_seeded():
    table, rejects = build_questions(FRUIT, question_template=TEMPLATE, positives_per_image=1, seed=3)
    assert rejects == []
    assert table["id"].is_unique
    assert len(table) == len(FRUIT) * len(SPLITS) * 2
    for (scene, split), part in table.groupby(["scene", "split"]):
        assert (part["label"] == "yes").sum() == (part["label"] == "no").sum() == 1
        objects = next(s.objects for s in FRUIT if s.id == scene)
        assert all((o in objects) == (lab == "yes") for o, lab in zip(part["object"], part["label"]))
    # each split repeats the same positives: each image's first object
    positives = table[table["label"] == "yes"].groupby("scene")["object"].agg(set)
    assert positives.to_dict() == {s.id: {s.objects[0]} for s in FRUIT}
    assert table.loc[table["id"] == "s7.png|popular|elder", "question"].item() == "Is there an elder in the image?"
    assert table.loc[table["id"] == "s7.png|random|apple", "question"].item() == "Is there an apple in the image?"
    assert table.loc[table["id"] == "s3.png|popular|apple", "question"].item() == "Is there an apple in the image?"
    assert table.loc[table["id"] == "s0.png|adversarial|apple", "question"].item() == "Is there an apple in the image?"
    assert "Is there a banana in the image?" in set(table["question"])
    again, _ = build_questions(list(reversed(FRUIT)), question_template=TEMPLATE, positives_per_image=1, seed=3)
    pd.testing.assert_frame_equal(table.sort_values("id").reset_index(drop=True),
                                  again.sort_values("id").reset_index(drop=True))
    draws = {tuple(build_questions(FRUIT, question_template=TEMPLATE, positives_per_image=1, seed=s)[0]["object"])
             for s in range(6)}
    assert len(draws) > 1  # the seed matters (random negatives)


def test_scene_with_too_few_absent_objects_or_missing_image_is_rejected():
    scenes = [Scene("x.png", "x.png", ("x", "y")), Scene("z.png", "z.png", ("z",)), Scene("w.png", "w.png", ("x",))]
    table, rejects = build_questions(scenes, question_template=TEMPLATE, positives_per_image=3,
                                     image_exists=lambda image: image != "w.png", splits=["popular"])
    reasons = dict(rejects)
    assert set(reasons) == {"x.png", "w.png"}
    assert "only 1 of the 3 known objects are absent, fewer than the 2 negatives" in reasons["x.png"]
    assert "not in the image folder" in reasons["w.png"]
    assert set(table["scene"]) == {"z.png"} and list(table["split"].unique()) == ["popular"]
    with pytest.raises(ValueError, match="splits"):
        build_questions(scenes, question_template=TEMPLATE, positives_per_image=1, splits=["hard"])


def test_images_are_selected_as_pope_does_and_statistics_come_from_them():
    scenes = [Scene(f"i{n}.png", f"i{n}.png", objects) for n, objects in enumerate([
        ("cup", "fork", "knife"), ("cup",), ("dog", "cat", "ball"), ("car", "road", "sign", "tree"),
        ("fork", "knife", "plate"), ("cat", "sofa", "lamp"),
    ])]
    table, rejects = build_questions(scenes, question_template=TEMPLATE, positives_per_image=3, min_objects=3,
                                     images=3, seed=1, splits=["popular"])
    reasons = dict(rejects)
    assert "has 1 objects, fewer than min_objects=3" in reasons["i1.png"]
    not_sampled = [i for i, r in reasons.items() if "not among the 3 images sampled of 5 eligible" in r]
    assert len(not_sampled) == 2 and len(set(table["scene"])) == 3
    assert set(table["scene"]) | set(reasons) == {s.id for s in scenes}
    # popular negatives are the most frequent objects of the sampled images only
    sampled = [s for s in scenes if s.id in set(table["scene"])]
    frequency = ObjectStats.of(sampled).frequency
    for scene_id, part in table[table["label"] == "no"].groupby("scene"):
        objects = next(s.objects for s in sampled if s.id == scene_id)
        absent = sorted((o for o in frequency if o not in objects), key=lambda o: (-frequency[o], o))
        assert list(part["object"]) == absent[:3]
    again, _ = build_questions(scenes, question_template=TEMPLATE, positives_per_image=3, min_objects=3, images=3,
                               seed=1, splits=["popular"])
    pd.testing.assert_frame_equal(table, again)


def test_annotations_as_json_lines_with_a_broken_line():
    text = b'{"image": "a.jpg", "objects": ["person", "bat"]}\n\n{"image": "b.jpg", "objects": [\n["list"]\n'
    parsed = parse_scenes(load_scene_entries(text))
    assert [s.image for s in parsed.scenes] == ["a.jpg"]
    assert parsed.input_ids == ["a.jpg", "scene:2", "scene:3"]
    reasons = dict(parsed.rejects)
    assert reasons["scene:2"] == "annotation 2: line 3 is not valid JSON (Expecting value)"
    assert "is a list" in reasons["scene:3"]
    assert load_scene_entries(b'[{"image": "a.jpg", "objects": ["x"]}]') == [{"image": "a.jpg", "objects": ["x"]}]
    with pytest.raises(ValueError, match="scenes.json: not a valid JSON list"):
        load_scene_entries(b'[{"image": "a.jpg",', name="scenes.json")


def test_demo_scenes_make_popular_and_adversarial_differ_from_random(tmp_path):
    import json

    from groundflow.cings.fixture import make_vl_fixture

    make_vl_fixture(tmp_path, seed=0, n_images=8)
    parsed = parse_scenes(json.loads((tmp_path / "scenes.json").read_text()))
    assert not parsed.rejects and len(parsed.scenes) == 8
    # the demo config asks 2 per image: 8 scenes need not use all 6 kinds, and a 3-shape scene of a
    # 5-kind vocabulary has only 2 absent
    table, rejects = build_questions(parsed.scenes, question_template=TEMPLATE, positives_per_image=2, seed=0)
    assert not rejects
    negatives = {split: table[(table["split"] == split) & (table["label"] == "no")].set_index("scene")["object"]
                 .groupby(level=0).apply(tuple) for split in SPLITS}
    assert (negatives["popular"] != negatives["adversarial"]).any()
    assert (negatives["random"] != negatives["popular"]).any()


def test_question_prompt_carries_the_image_and_an_optional_system_turn():
    from groundflow.evaluate.pope import question_prompt

    plain = question_prompt("Is there a star in the image?", image="IMG")
    assert plain.messages == [{"role": "user", "content": "Is there a star in the image?"}] and plain.image == "IMG"
    with_system = question_prompt("Is there a star in the image?", image="IMG", system_prompt="Be brief.")
    assert [m["role"] for m in with_system.messages] == ["system", "user"]
    assert with_system.assistant_prefix == "" and with_system.choices is None

"""GWYS's loaders: LLaVA-CoT (and the converted form) into four-tag SFT records, Video-R1-style rows
into the RL pool; every bad record rejected with its line and reason, counts adding up."""

import json

import pytest

from groundflow.gwys.data import (DataFileError, PoolSettings, four_tag_answer, load_pool, load_sft_records,
                                  write_pool, write_sft_records)
from groundflow.gwys.rewards import FORMAT_PATTERNS
from groundflow.io.artifacts import read_table

COT = ("<SUMMARY> I will count the cubes. </SUMMARY>\n\n<CAPTION> Two red cubes on a table. </CAPTION>\n\n"
       "<REASONING> There are two cubes. </REASONING>\n\n<CONCLUSION> B </CONCLUSION>")


def jsonl(path, entries):
    lines = [e if isinstance(e, (str, bytes)) else json.dumps(e) for e in entries]
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines) + b"\n")
    return path


@pytest.fixture
def media(tmp_path):
    root = tmp_path / "media"
    (root / "img").mkdir(parents=True)
    for name in ("a.png", "b.png", "c.png"):
        (root / "img" / name).write_bytes(b"png")
    (root / "clip.mp4").write_bytes(b"mp4")
    return root


def cot(id_, image="img/a.png", gpt=COT, human="<image>\nHow many cubes are there?\nA. 1\nB. 2"):
    return {"id": id_, "image": image, "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}]}


def test_llava_cot_stages_become_the_four_tags():
    answer = four_tag_answer(COT)
    assert answer == ("<prethink>I will count the cubes.</prethink>\n<caption>Two red cubes on a table.</caption>\n"
                      "<think>There are two cubes.</think>\n<answer>B</answer>")
    assert FORMAT_PATTERNS["four_tag"].fullmatch(answer)


def test_sft_records_and_every_bad_kind(tmp_path, media):
    converted = {"problem": "What colour are the cubes?", "data_type": "image", "path": "./img/b.png",
                 "process_and_answer": "<prethink>p</prethink>\n<caption>c</caption>\n<think>t</think>\n<answer>red</answer>"}
    entries = [
        cot("good"),                                                     # 1
        converted,                                                       # 2 (no id: line:2)
        "{not json",                                                     # 3
        cot("no_image", image="img/missing.png"),                        # 4
        cot("no_caption", gpt=COT.replace("<CAPTION>", "").replace("</CAPTION>", "")),  # 5
        cot("good"),                                                     # 6 duplicate
        {"id": "neither", "image": "img/a.png"},                         # 7
        cot("out_of_order", gpt="<CAPTION>c</CAPTION><SUMMARY>s</SUMMARY><REASONING>r</REASONING><CONCLUSION>B</CONCLUSION>"),  # 8
        b'{"id": "bad_byte", "image": "img/\xe9.png"}',                   # 9
        {**converted, "process_and_answer": "<think>t</think><answer>red</answer>"},      # 10
        cot("empty_stage", gpt=COT.replace(" Two red cubes on a table. ", " ")),          # 11
        cot("three_turns") | {"conversations": [{"from": "human", "value": "q"}] * 3},    # 12
    ]
    loaded = load_sft_records(jsonl(tmp_path / "cot.jsonl", entries), image_root=media)
    assert [r["id"] for r in loaded.records] == ["good", "line:2"]
    good = loaded.records[0]
    assert good["image"] == "img/a.png" and loaded.records[1]["image"] == "img/b.png"
    human, gpt = good["conversations"]
    assert human["from"] == "human" and human["value"].startswith("<image>\nHow many cubes are there?\nA. 1\nB. 2\n")
    assert human["value"].count("<image>") == 1 and "<prethink>" in human["value"]
    assert gpt == {"from": "gpt", "value": four_tag_answer(COT)}
    reasons = dict(zip(loaded.rejects["id"], loaded.rejects["reason"]))
    assert "line 3 is not valid JSON" in reasons["line:3"]
    assert reasons["no_image"] == "line 4: missing image file img/missing.png (in %s)" % media
    assert "no <CAPTION>" in reasons["no_caption"]
    assert "duplicate id 'good' (first at line 1)" in reasons["line:6"]
    assert "neither 'conversations'" in reasons["neither"]
    assert "in order" in reasons["out_of_order"]
    assert "line 9 is not UTF-8" in reasons["line:9"]
    assert "not in the four-tag form" in reasons["line:10"]
    assert "<CAPTION> stage is empty" in reasons["empty_stage"]
    assert "one human turn then one gpt turn" in reasons["three_turns"]
    assert loaded.counts["in"] == 12 and loaded.counts["out"] == 2 and loaded.counts["rejected"] == 10
    assert loaded.counts["prompt"].startswith("four_tag-") and "type_" not in loaded.counts["prompt"]
    out = tmp_path / "sft.json"
    write_sft_records(loaded.records, out)
    assert json.loads(out.read_text()) == loaded.records


def test_sft_json_array_is_read_by_position(tmp_path, media):
    path = tmp_path / "cot.json"
    path.write_text(json.dumps([cot("x"), cot("y", image="img/zzz.png")]))
    loaded = load_sft_records(path, image_root=media)
    assert [r["id"] for r in loaded.records] == ["x"]
    assert loaded.rejects["reason"].tolist() == [f"line 2: missing image file img/zzz.png (in {media})"]
    broken = tmp_path / "broken.json"
    broken.write_text('[{"id": 1}, ')
    with pytest.raises(DataFileError, match="not a JSON array"):
        load_sft_records(broken, image_root=media)


def mc(pid, **changes):
    row = {"problem_id": pid, "problem": "Which shape is red?", "problem_type": "multiple choice",
           "options": ["A. circle", "B. square"], "solution": "<answer>B</answer>", "data_type": "image",
           "path": "./img/a.png", "data_source": "fixture"}
    return {**row, **changes}


def numerical(pid, **changes):
    return mc(pid, **{"problem": "How many cubes?", "problem_type": "numerical", "options": [],
                      "solution": "<answer>2</answer>", **changes})


POOL = [
    mc(1),                                                          # 1 kept
    numerical(2),                                                   # 2 kept
    mc(3, data_type="video", path="./clip.mp4"),                    # 3 video
    mc(4, problem_type="OCR", solution="<answer>STOP</answer>"),    # 4 not configured
    mc(5, problem_type="essay"),                                    # 5 unknown type
    mc(6, solution="B"),                                            # 6 no answer tag
    "{oops",                                                        # 7 bad JSON
    mc(1),                                                          # 8 duplicate id
    {k: v for k, v in mc(9).items() if k != "problem"},             # 9 missing field
    mc(10, path="./img/none.png"),                                  # 10 missing image
    mc(11, solution="<answer>E</answer>"),                          # 11 letter out of range
    mc(12, options=["circle", "B. square"]),                        # 12 option not lettered
    numerical(13, solution="<answer>two</answer>"),                 # 13 not a number
    mc(14, image="img/c.png", path="./img/none.png"),               # 14 `image` used directly: kept
    mc(15, data_type="audio"),                                      # 15 unknown data_type
]


def test_pool_rows_and_every_bad_kind(tmp_path, media):
    loaded = load_pool(jsonl(tmp_path / "pool.jsonl", POOL), media_root=media)
    kept = loaded.kept.set_index("id")
    assert list(kept.index) == ["1", "2", "14"]
    assert kept.loc["1", "format_question"] == "Which shape is red?\nOptions:\nA. circle\nB. square"
    assert kept.loc["2", "format_question"] == "How many cubes?" and kept.loc["2", "answer"] == "2"
    assert kept.loc["1", "media"] == "img/a.png" and kept.loc["14", "media"] == "img/c.png"
    assert kept.loc["1", "line"] == 1 and kept.loc["14", "line"] == 14 and kept["max_frames"].isna().all()
    reasons = dict(zip(loaded.rejects["id"], loaded.rejects["reason"]))
    expected = {
        "3": "line 3: a video row, and video is not enabled",
        "4": "line 4: problem_type 'OCR' is not among the configured problem_types (multiple choice, numerical)",
        "5": "line 5: unknown problem_type 'essay'",
        "6": "line 6: solution without an answer tag",
        "line:7": "line 7 is not valid JSON",
        "line:8": "line 8: duplicate id '1' (first at line 1)",
        "9": "line 9: missing field 'problem'",
        "10": "line 10: missing image file img/none.png",
        "11": "line 11: answer 'E' is not one of the options' letters A-B",
        "12": "line 12: option 1 ('circle') is not lettered 'A. …'",
        "13": "line 13: numerical answer 'two' is not a number",
        "15": "line 15: unknown data_type 'audio'",
    }
    assert set(reasons) == set(expected)
    for name, reason in expected.items():
        assert reasons[name].startswith(reason), (name, reasons[name])
    assert (loaded.counts["in"], loaded.counts["out"], loaded.counts["rejected"]) == (15, 3, 12)
    assert loaded.counts["by_type"] == {"multiple choice": 2, "numerical": 1}
    write_pool(loaded.kept, tmp_path / "pool.parquet")
    back = read_table(tmp_path / "pool.parquet")
    assert back["id"].tolist() == ["1", "2", "14"] and list(back.loc[0, "options"]) == ["A. circle", "B. square"]


def test_video_and_more_types_when_configured(tmp_path, media):
    settings = PoolSettings(problem_types=("multiple choice", "numerical", "OCR"), video=True, max_frames=8)
    loaded = load_pool(jsonl(tmp_path / "pool.jsonl", POOL), media_root=media, settings=settings)
    kept = loaded.kept.set_index("id")
    assert {"3", "4"} <= set(kept.index)
    assert kept.loc["3", "data_type"] == "video" and kept.loc["3", "max_frames"] == 8
    assert kept.loc["4", "format_question"] == "Which shape is red?"  # only multiple choice shows options
    with pytest.raises(ValueError, match="problem_types"):
        PoolSettings(problem_types=("essay",))


def test_pool_without_ids_is_named_by_line(tmp_path, media):
    loaded = load_pool(jsonl(tmp_path / "pool.jsonl", [mc(1), mc(1)]), media_root=media,
                       settings=PoolSettings(id_field=None))
    assert loaded.kept["id"].tolist() == ["line:1", "line:2"]

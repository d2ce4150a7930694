"""Every reader of a user file, given the file as users have it: written on Windows (a byte-order
mark, CRLF endings), captions and questions in mixed scripts, and one record holding a stray byte
that is not UTF-8 (CVC captions in their three layouts, CINGS training records, evaluation files
and the KILT builder's inputs, TSST questions and CoT chains, POPE scene annotations). That record
alone is rejected, with its line and byte offset (or the field that holds the byte); every other
record is kept, the first one after the mark included; in = out + rejected. CVC's instruction data
is mixed in as it is, so there a stray byte stops the job, naming the record and the field."""

from __future__ import annotations

import json

import pytest

from groundflow.cings.inference import read_eval_records
from groundflow.cings.kilt_build import read_corpus, read_questions
from groundflow.cings.training import convert_records
from groundflow.cvc.hybrid import HybridFormatError, read_llava_json
from groundflow.cvc.ingest import ingest_captions
from groundflow.evaluate.pope import load_scene_entries, parse_scenes
from groundflow.io import check_accounting, write_table
from groundflow.tsst.prompts import load_question_prompts
from groundflow.tsst.questions import load_questions
from groundflow.tsst.warmup import warmup_from_file

BOM = b"\xef\xbb\xbf"
MIXED = ["Ελληνικά: μια γάτα κοιμάται", "漢字とかな、猫が寝ている", "a cat 🐈‍⬛ on a mat 🎉", "plain ASCII, café"]
STRAY = b"caf\xe9"  # Latin-1, as a tool that is not UTF-8 writes it


def utf8(value) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


def windows_jsonl(good: list[bytes], stray: bytes) -> bytes:
    """BOM, CRLF; the stray record third (line 3), the last line ending without a newline."""
    lines = [*good[:2], stray, *good[2:]]
    return BOM + b"\r\n".join(lines)


def not_utf8_reason(data: bytes, line: int) -> str:
    offset = data.index(STRAY) + len(b"caf")
    return f"line {line} is not UTF-8 text (byte 0xe9 at offset {offset} of the file: invalid continuation byte)"


def reasons_of(rejects) -> dict[str, str]:
    return dict(zip(rejects["id"], rejects["reason"]))


# --------------------------------------------------------------------------- CVC captions


@pytest.fixture
def images(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"):
        (root / name).write_bytes(b"jpeg")
    return root


def _ingest(path, images):
    result, ids = ingest_captions(path, images)
    counts = check_accounting("ingest", ids, result)
    return result, counts


def test_cvc_json_lines(tmp_path, images):
    good = [utf8({"image": f"{'abcd'[i]}.jpg", "text_input": text}) for i, text in enumerate(MIXED)]
    data = windows_jsonl(good, b'{"image": "e.jpg", "text_input": "' + STRAY + b'"}')
    path = tmp_path / "captions.jsonl"
    path.write_bytes(data)
    result, counts = _ingest(path, images)
    assert list(result.kept["caption"]) == MIXED
    assert reasons_of(result.rejects) == {"line:3": not_utf8_reason(data, 3)}
    assert (counts["in"], counts["out"], counts["rejected"]) == (5, 4, 1)


def test_cvc_json_list(tmp_path, images):
    elements = [utf8({"image": f"{'abcd'[i]}.jpg", "text_input": text}) for i, text in enumerate(MIXED)]
    elements.insert(2, b'{"image": "e.jpg", "text_input": "' + STRAY + b'"}')
    path = tmp_path / "captions.json"
    path.write_bytes(BOM + b"[\r\n  " + b",\r\n  ".join(elements) + b"\r\n]\r\n")
    result, counts = _ingest(path, images)
    assert list(result.kept["caption"]) == MIXED
    assert reasons_of(result.rejects) == {"index:2": "index 2: field 'text_input' is not UTF-8 text"}
    assert (counts["in"], counts["out"], counts["rejected"]) == (5, 4, 1)


def _coco(captions: list[str], names: list[str]) -> dict:
    return {"images": [{"id": i, "file_name": name} for i, name in enumerate(names)],
            "annotations": [{"id": 100 + k, "image_id": k % len(names), "caption": c} for k, c in enumerate(captions)]}


def test_cvc_coco_on_one_line_with_a_stray_byte_in_a_caption(tmp_path, images):
    doc = utf8(_coco([*MIXED[:2], "PLACEHOLDER", *MIXED[2:]], ["a.jpg", "b.jpg"]))
    path = tmp_path / "captions_train2014.json"
    path.write_bytes(BOM + doc.replace(b"PLACEHOLDER", STRAY) + b"\r\n")
    result, counts = _ingest(path, images)
    assert list(result.kept["caption"]) == MIXED
    assert reasons_of(result.rejects) == {"102": "annotation 2 (id '102'): field 'caption' is not UTF-8 text"}
    assert (counts["in"], counts["out"], counts["rejected"]) == (5, 4, 1)


def test_cvc_pretty_coco_with_crlf_and_a_stray_byte_in_a_file_name(tmp_path, images):
    (images / "caf\udce9.jpg").write_bytes(b"jpeg")  # the file exists: only its name's bytes are wrong
    text = json.dumps(_coco(MIXED, ["a.jpg", "PLACEHOLDER"]), ensure_ascii=False, indent=2)
    path = tmp_path / "captions_train2014.json"
    path.write_bytes(BOM + text.replace("\n", "\r\n").encode("utf-8").replace(b"PLACEHOLDER", STRAY + b".jpg"))
    result, counts = _ingest(path, images)
    assert list(result.kept["caption"]) == [MIXED[0], MIXED[2]]
    reason = "field 'images[].file_name of image_id 1' is not UTF-8 text"
    assert reasons_of(result.rejects) == {"101": f"annotation 1 (id '101'): {reason}",
                                          "103": f"annotation 3 (id '103'): {reason}"}
    assert (counts["in"], counts["out"], counts["rejected"]) == (4, 2, 2)


# --------------------------------------------------------------------------- TSST


def test_tsst_scienceqa_questions(tmp_path):
    good = [utf8({"id": f"q{i}", "question": text, "hint": "", "answer_choices": ["α", "漢", "🐈"],
                  "answer_label": 2, "img_path": None}) for i, text in enumerate(MIXED)]
    data = windows_jsonl(good, b'{"id": "q9", "question": "' + STRAY + b'", "answer_choices": ["a"], "answer_label": 1}')
    path = tmp_path / "questions.jsonl"
    path.write_bytes(data)
    result = load_questions(path, kind="scienceqa", image_root=None)
    assert list(result.kept["question"]) == MIXED
    assert set(result.kept["answer"]) == {"漢"}
    assert reasons_of(result.rejects) == {"line:3": not_utf8_reason(data, 3)}
    assert (result.counts["in"], result.counts["out"], result.counts["rejected"]) == (5, 4, 1)


def test_tsst_warmup_chains(tmp_path):
    good = [utf8({"id": f"c{i}", "image": None, "question": text, "choices": ["α", "漢"], "answer_label": 2,
                  "solution": f"Step 1: {text}. Final Answer: B. 漢", "correct": True}) for i, text in enumerate(MIXED)]
    data = windows_jsonl(good, b'{"id": "c9", "question": "' + STRAY + b'"}')
    path = tmp_path / "cot.jsonl"
    path.write_bytes(data)
    warmup = warmup_from_file(path, image_root=None, prompts=load_question_prompts())
    assert [record["id"] for record in warmup.policy] == ["c0", "c1", "c2", "c3"]
    assert all(text in record["conversations"][0]["value"] for text, record in zip(MIXED, warmup.policy))
    assert reasons_of(warmup.rejects) == {"line:3": not_utf8_reason(data, 3)}
    assert (warmup.counts["in"], warmup.counts["out"], warmup.counts["rejected"]) == (5, 4, 1)


# --------------------------------------------------------------------------- CINGS


def _selfrag(i: int, text: str) -> dict:
    return {"id": f"r{i}", "instruction": text, "input": "",
            "output": f"[Retrieval]<paragraph>{text} (passage)</paragraph>[Relevant]{text}.[Utility:5]"}


def _convert(path):
    return convert_records(path, variant="multi", keep_no_retrieval=False, input_separator="\n\n")


def test_cings_training_records_json_lines(tmp_path):
    data = windows_jsonl([utf8(_selfrag(i, text)) for i, text in enumerate(MIXED)],
                         b'{"id": "r9", "instruction": "' + STRAY + b'", "output": "x"}')
    path = tmp_path / "selfrag.jsonl"
    path.write_bytes(data)
    frame, rejects, counts = _convert(path)
    assert list(frame["input"]) == MIXED  # the first record, right after the mark, included
    assert reasons_of(rejects) == {"line:3": not_utf8_reason(data, 3)}
    assert (counts["in"], counts["out"], counts["rejected"]) == (5, 4, 1)


def test_cings_training_records_json_list(tmp_path):
    elements = [utf8(_selfrag(i, text)) for i, text in enumerate(MIXED)]
    elements.insert(2, b'{"id": "r9", "instruction": "Q", "output": "[Retrieval]<paragraph>' + STRAY + b"</paragraph>[Relevant]A\"}")
    path = tmp_path / "selfrag.json"
    path.write_bytes(BOM + b"[\r\n" + b",\r\n".join(elements) + b"\r\n]")
    frame, rejects, counts = _convert(path)
    assert list(frame["input"]) == MIXED
    assert reasons_of(rejects) == {"line:3": "entry 3 of the array: field 'output' is not UTF-8 text"}
    assert (counts["in"], counts["out"], counts["rejected"]) == (5, 4, 1)


def _eval_record(i: int, text: str) -> dict:
    return {"id": f"e{i}", "question": text, "answers": [f"{text} answer"],
            "docs": [{"title": "Τίτλος 标题", "text": f"{text} passage", "score": "gold"}]}


def test_cings_eval_file_json_lines(tmp_path):
    data = windows_jsonl([utf8(_eval_record(i, text)) for i, text in enumerate(MIXED)],
                         b'{"id": "e9", "question": "' + STRAY + b'", "answers": ["a"], "docs": []}')
    path = tmp_path / "eval.jsonl"
    path.write_bytes(data)
    result = read_eval_records(path)
    assert list(result.kept["question"]) == MIXED
    assert reasons_of(result.rejects) == {"line:3": not_utf8_reason(data, 3)}
    assert (result.counts["in"], result.counts["out"], result.counts["rejected"]) == (5, 4, 1)


def test_cings_eval_file_json_array(tmp_path):
    elements = [utf8(_eval_record(i, text)) for i, text in enumerate(MIXED)]
    bad = dict(_eval_record(9, "PLACEHOLDER"), id="e9")
    elements.insert(2, utf8(bad).replace(b"PLACEHOLDER passage", STRAY))
    path = tmp_path / "eval.json"
    path.write_bytes(BOM + b"[" + b",\r\n".join(elements) + b"]\r\n")
    result = read_eval_records(path)
    assert list(result.kept["question"]) == MIXED
    assert reasons_of(result.rejects) == {"line:3": "entry 3 of the array: field 'docs[0].text' is not UTF-8 text"}
    assert (result.counts["in"], result.counts["out"], result.counts["rejected"]) == (5, 4, 1)


def test_cings_kilt_questions_and_corpus(tmp_path):
    questions = windows_jsonl(
        [utf8({"id": f"q{i}", "question": text, "answers": [text], "gold": []}) for i, text in enumerate(MIXED)],
        b'{"id": "q9", "question": "' + STRAY + b'", "answers": ["a"]}')
    checked = read_questions(questions)
    assert [q["question"] for q in checked.kept] == MIXED
    assert reasons_of(checked.rejects) == {"line:3": not_utf8_reason(questions, 3)}
    assert (checked.counts["in"], checked.counts["out"], checked.counts["rejected"]) == (5, 4, 1)
    corpus = windows_jsonl([utf8({"id": f"p{i}", "title": "标题", "text": text}) for i, text in enumerate(MIXED)],
                           b'{"id": "p9", "text": "' + STRAY + b'"}')
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(corpus)
    checked = read_corpus(path)
    assert [p["text"] for p in checked.kept] == MIXED
    assert reasons_of(checked.rejects) == {"line:3": not_utf8_reason(corpus, 3)}


# --------------------------------------------------------------------------- POPE scene annotations


def test_pope_scene_annotations(tmp_path):
    data = windows_jsonl([utf8({"image": f"{i}.jpg", "objects": [text, "猫"]}) for i, text in enumerate(MIXED)],
                         b'{"image": "9.jpg", "objects": ["' + STRAY + b'"]}')
    path = tmp_path / "annotations.jsonl"
    path.write_bytes(data)
    parsed = parse_scenes(load_scene_entries(path))
    assert [scene.objects[0] for scene in parsed.scenes] == [text.lower() for text in MIXED]
    assert dict(parsed.rejects) == {"scene:3": f"annotation 3: {not_utf8_reason(data, 3)}"}
    assert len(parsed.input_ids) == len(parsed.scenes) + len(parsed.rejects) == 5


def test_cvc_coco_id_that_is_not_utf8_rejects_under_its_position(tmp_path, images):
    doc = utf8(_coco(["PLACEHOLDER", *MIXED], ["a.jpg"])).replace(b'"PLACEHOLDER"', b'"' + STRAY + b'"', 1)
    doc = doc.replace(b'"id": 100,', b'"id": "' + STRAY + b'",', 1)
    path = tmp_path / "captions_train2014.json"
    path.write_bytes(doc)
    result, counts = _ingest(path, images)
    assert list(result.kept["caption"]) == MIXED
    assert reasons_of(result.rejects) == {"annotation:0": "annotation 0: field 'id' is not UTF-8 text"}
    write_table(result.rejects, tmp_path / "rejects.parquet")  # every reject can be written
    assert (counts["in"], counts["out"], counts["rejected"]) == (5, 4, 1)


# --------------------------------------------------------------------------- CVC's instruction data (LLaVA JSON)


def test_cvc_instruction_data_with_a_mark_crlf_and_mixed_scripts_and_one_with_a_stray_byte(tmp_path):
    records = [{"id": f"i{k}", "image": "a.jpg", "conversations": [{"from": "human", "value": f"<image>\n{text}"},
                                                                   {"from": "gpt", "value": text}]}
               for k, text in enumerate(MIXED)]
    path = tmp_path / "llava.json"
    path.write_bytes(BOM + json.dumps(records, ensure_ascii=False, indent=1).replace("\n", "\r\n").encode())
    assert read_llava_json(path) == records
    path.write_bytes(BOM + utf8(records).replace(MIXED[3].encode(), STRAY))
    with pytest.raises(HybridFormatError, match=r"record 3: field 'conversations\[0\].value' is not UTF-8 text"):
        read_llava_json(path)

"""The trace core on hand-made tables: kept paths, rejections, fan-outs, unknown ids; and the
Parquet reader and the CLI on a tiny results folder."""

import json
import re

import pandas as pd
import pytest

from groundflow.cli import main
from groundflow.io import rejects_frame, write_table
from groundflow.trace import (KEPT, MISSING, NOT_RUN, REJECTED, FrameTables, ParquetTables, UnknownId,
                              render_json, render_text, trace)

ENTITY_STAGES = ["causality", "grounding", "segmentation", "occlusion", "instructions", "trials", "extraction", "checking"]


def entity_row(entity_id, image_id, caption_ids, label, **extra):
    return {"id": entity_id, "image_id": image_id, "label": label, "caption_ids": caption_ids,
            "full_forms": [label] * len(caption_ids), **extra}


def cvc_tables():
    """Image img-1 has captions c1 and c2: c1 names `dog` and `ball`, c2 names `dog` (one entity
    per image and label) and `sky`. `img-1-dog` goes all the way into the hybrid mix (2 of 3 trials
    correct), `img-1-ball` is rejected at grounding, `img-1-sky` at selection (no correct trial).
    Caption c3 (image img-2) names nothing; line:9 was not even JSON."""
    captions = pd.DataFrame({"id": ["c1", "c2", "c3"], "image": ["img-1.jpg", "img-1.jpg", "img-2.jpg"],
                             "image_id": ["img-1", "img-1", "img-2"],
                             "caption": ["a dog with a ball", "a dog under the sky", "nothing here"]})
    images = captions.assign(width=64, height=48, image_mode="RGB")
    entities = pd.DataFrame([entity_row("img-1-dog", "img-1", ["c1", "c2"], "dog"),
                             entity_row("img-1-ball", "img-1", ["c1"], "ball"),
                             entity_row("img-1-sky", "img-1", ["c2"], "sky")])
    going_on = entities[entities["id"] != "img-1-ball"]
    frames = {
        "cvc/ingest": captions,
        "cvc/ingest.rejects": rejects_frame("ingest", [("line:9", "line 9: invalid JSON"),
                                                       ("line:12", "line 12: duplicate id 'c1' (first at line 1)")]),
        "cvc/images": images, "cvc/images.rejects": rejects_frame("images"),
        "cvc/entities": entities,
        "cvc/entities.rejects": rejects_frame("entities", [("c3", "no entity found in caption c3")]),
        "cvc/causality": entities.assign(caption_id="c1", causality_ppl=[1.5, 2.0, 2.5]),
        "cvc/grounding": going_on.assign(box=[[1.0, 2.0, 3.0, 4.0]] * 2, box_score=0.9),
        "cvc/grounding.rejects": rejects_frame("grounding", [("img-1-ball", "no box scoring >= 0.68 for 'ball'")]),
        "cvc/segmentation": going_on.assign(mask_area=[400, 300]),
        "cvc/occlusion": going_on.assign(occluded_image=["occluded/0/img-1-dog.jpg", "occluded/0/img-1-sky.jpg"]),
        "cvc/instructions": going_on.assign(instruction="What is hidden?"),
        "cvc/trials": going_on.assign(trials=[["r0", "r1", "r2"], ["s0", "s1", "s2"]]),
        "cvc/extraction": going_on.assign(predictions=[["dog", "cat", "puppy"], ["", "sea", "sun"]]),
        "cvc/checking": going_on.assign(n_correct=[2, 0], correct=[[True, False, True], [False, False, False]],
                                        similarities=[[0.9, 0.1, 0.8], [float("nan"), 0.2, 0.1]]),
        "cvc/selection.rejects": rejects_frame("selection", [("img-1-sky", "no correct trial (0 of 3) for 'sky'")]),
        "cvc/hybrid": pd.DataFrame({
            "id": ["inst-0", "img-1-dog-cot-0", "img-1-dog-cot-1", "img-1-dog-answer-0", "img-1-dog-answer-1"],
            "image": [None] + ["results/cvc/occluded/0/img-1-dog.jpg"] * 4,
            "source": ["instruction", "cot", "cot", "answer", "answer"],
            "conversations": [json.dumps([{"from": "human", "value": "q"}, {"from": "gpt", "value": v}])
                              for v in ["a", "r0", "r2", "dog", "puppy"]]}),
    }
    for stage in ENTITY_STAGES[1:]:
        frames.setdefault(f"cvc/{stage}.rejects", rejects_frame(stage))
    frames["cvc/causality.rejects"] = rejects_frame("causality")
    return frames


def steps_of(node):
    return {step.stage: step for step in node.steps}


def entity_child(node, entity_id):
    return next(child for child in steps_of(node)["entities"].children if child.id == entity_id)


def test_a_caption_is_kept_through_every_stage_into_hybrid_records():
    result = trace("c1", FrameTables(cvc_tables()))
    [caption] = result.matches
    assert (caption.kind, caption.method) == ("caption", "cvc")
    steps = steps_of(caption)
    assert [s.status for s in caption.steps] == [KEPT, KEPT, KEPT]
    assert steps["ingest"].fields == {"image_id": "img-1", "image": "img-1.jpg", "caption": "a dog with a ball"}
    dog = entity_child(caption, "img-1-dog")
    dog_steps = steps_of(dog)
    assert list(dog_steps) == ["entities", *ENTITY_STAGES, "selection"]
    assert all(s.status == KEPT for s in dog.steps)
    assert dog_steps["causality"].fields["causality_ppl"] == 1.5
    assert dog_steps["occlusion"].fields == {"occluded_image": "occluded/0/img-1-dog.jpg"}
    assert dog_steps["checking"].fields == {"n_correct": 2}
    assert dog_steps["selection"].fields == {"n_cot": 2, "n_answer": 2}
    samples = dog_steps["selection"].children
    assert [s.id for s in samples] == ["img-1-dog-cot-0", "img-1-dog-cot-1", "img-1-dog-answer-0", "img-1-dog-answer-1"]
    assert [s.fields["gpt"] for s in samples] == ["r0", "r2", "dog", "puppy"]
    # another caption's line that names c1 is worth seeing next to it
    assert any("line:12" in note for note in caption.notes)


def test_a_rejection_at_a_middle_stage_stops_the_path_with_its_reason():
    ball = entity_child(trace("c1", FrameTables(cvc_tables())).matches[0], "img-1-ball")
    assert [(s.stage, s.status) for s in ball.steps] == [
        ("entities", KEPT), ("causality", KEPT), ("grounding", REJECTED)]
    assert ball.steps[-1].reason == "no box scoring >= 0.68 for 'ball'"
    assert ball.steps[-1].fields == {}


def test_a_caption_fans_out_to_its_entities_and_an_instance_to_its_trials():
    caption = trace("c2", FrameTables(cvc_tables())).matches[0]
    # entities are per image: c2 gets dog (shared with c1) and sky, not c1's ball
    assert steps_of(caption)["entities"].fields == {"entities": ["img-1-dog", "img-1-sky"]}
    sky = entity_child(caption, "img-1-sky")
    trials = steps_of(sky)["checking"].children
    assert [t.fields for t in trials] == [
        {"rationale": "s0", "answer": "", "similarity": None, "correct": False},
        {"rationale": "s1", "answer": "sea", "similarity": 0.2, "correct": False},
        {"rationale": "s2", "answer": "sun", "similarity": 0.1, "correct": False},
    ]
    assert (steps_of(sky)["selection"].status, steps_of(sky)["selection"].reason) == (
        REJECTED, "no correct trial (0 of 3) for 'sky'")


def test_an_image_lists_its_captions_and_entities_once():
    [image] = trace("img-1", FrameTables(cvc_tables())).matches
    assert image.kind == "image"
    assert [(c.kind, c.id) for c in image.children] == [
        ("caption", "c1"), ("caption", "c2"), ("entity", "img-1-dog"), ("entity", "img-1-ball"), ("entity", "img-1-sky")]
    # under the image, a caption names its entities without repeating their subtrees
    assert all(not step.children for child in image.children[:2] for step in child.steps)


def test_a_caption_rejected_for_naming_nothing_and_one_rejected_at_ingest():
    tables = FrameTables(cvc_tables())
    c3 = trace("c3", tables).matches[0]
    assert (c3.steps[-1].stage, c3.steps[-1].status, c3.steps[-1].reason) == (
        "entities", REJECTED, "no entity found in caption c3")
    bad = trace("line:9", tables).matches[0]
    assert [(s.stage, s.status, s.reason) for s in bad.steps] == [("ingest", REJECTED, "line 9: invalid JSON")]


def test_an_entity_id_and_a_sample_id_trace_back_to_where_they_came_from():
    tables = FrameTables(cvc_tables())
    [ball] = trace("img-1-ball", tables).matches
    assert ball.kind == "entity" and ball.notes == ["image img-1, from captions c1"]
    [sample] = trace("img-1-dog-cot-1", tables).matches
    assert sample.kind == "hybrid record" and sample.fields["source"] == "cot"
    assert [c.id for c in sample.children] == ["img-1-dog"]
    [instruction] = trace("inst-0", tables).matches
    assert instruction.children == [] and any("instruction data" in n for n in instruction.notes)


def test_a_stage_not_run_and_a_record_missing_from_a_stage_are_told_apart():
    frames = cvc_tables()
    for stage in ["occlusion", "instructions", "trials", "extraction", "checking"]:
        frames.pop(f"cvc/{stage}"), frames.pop(f"cvc/{stage}.rejects")
    dog = trace("img-1-dog", FrameTables(frames)).matches[0]
    assert (dog.steps[-1].stage, dog.steps[-1].status) == ("occlusion", NOT_RUN)

    frames = cvc_tables()
    frames["cvc/segmentation"] = frames["cvc/segmentation"].iloc[1:]  # dog lost without a reject
    dog = trace("img-1-dog", FrameTables(frames)).matches[0]
    assert (dog.steps[-1].stage, dog.steps[-1].status) == ("segmentation", MISSING)
    assert "neither the output nor the rejects" in dog.steps[-1].reason


def cings_tables():
    records = pd.DataFrame({"id": ["sr-1", "sr-2"], "dataset_name": ["nq", "wow"], "n_passages": [1, 2]})
    tokenized = pd.DataFrame({"id": ["sr-1", "sr-2"], "n_tokens": [120, 150], "n_supervised": [40, 60]})
    predictions = pd.DataFrame({"id": ["q-1"], "n_docs": [1], "prediction": ["Paris"]})
    return {
        "cings/convert": records,
        "cings/convert.rejects": rejects_frame("convert", [("sr-bad", "record sr-bad: no retrieved passage")]),
        "cings/tokenize:context": tokenized, "cings/tokenize:context.rejects": rejects_frame("tokenize:context"),
        "cings/tokenize:no_mask": tokenized.iloc[1:],
        "cings/tokenize:no_mask.rejects": rejects_frame("tokenize:no_mask", [("sr-1", "longer than max_length 512")]),
        "cings/train:context": pd.DataFrame([{"mode": "context", "steps": 6, "final_loss": 7.0, "examples": 2}]),
        "cings/train:context.rejects": rejects_frame("train:context"),
        "cings/eval/demo/records": pd.DataFrame({"id": ["q-1"], "question": ["Capital of France?"], "answers": [["Paris"]]}),
        "cings/eval/demo/records.rejects": rejects_frame("eval_records", [("line:4", "line 4 is not valid JSON"),
                                                                          ("line:5", "line 5: duplicate id 'q-1' (first at line 1)")]),
        "cings/eval/demo/context/closed_book": predictions,
        "cings/eval/demo/context/closed_book.rejects": rejects_frame("infer"),
        "cings/eval/demo/context/prefilled_1doc": predictions.iloc[0:0],
        "cings/eval/demo/context/prefilled_1doc.rejects": rejects_frame("infer", [("q-1", "no passage")]),
        "cings/eval/scores": pd.DataFrame({"id": ["q-1"], "dataset": ["demo"], "mode": ["context"],
                                           "setting": ["closed_book"], "exact_match": [1.0], "accuracy": [1.0],
                                           "rouge_l": [1.0]}),
    }


def test_a_cings_record_fans_out_to_one_path_per_label_mode():
    [record] = trace("sr-1", FrameTables(cings_tables())).matches
    [convert] = record.steps
    assert (record.kind, convert.status, convert.fields) == ("cings record", KEPT, {"dataset_name": "nq", "n_passages": 1})
    paths = {mode.id: [(s.stage, s.status) for s in mode.steps] for mode in convert.children}
    assert paths == {"context": [("tokenize:context", KEPT), ("train:context", KEPT)],
                     "no_mask": [("tokenize:no_mask", REJECTED)]}
    context = convert.children[0]
    assert context.steps[1].fields == {"steps": 6, "final_loss": 7.0, "examples": 2}
    [rejected] = trace("sr-bad", FrameTables(cings_tables())).matches
    assert [(s.stage, s.status, s.reason) for s in rejected.steps] == [
        ("convert", REJECTED, "record sr-bad: no retrieved passage")]


def test_an_eval_question_fans_out_to_every_mode_and_setting_with_its_scores():
    [question] = trace("q-1", FrameTables(cings_tables())).matches
    assert question.kind == "eval question"
    # the id's first line is the question; a later line with the same id was rejected as its line
    assert question.notes == [
        "dataset demo", "named by rejected line:5 (eval_records): line 5: duplicate id 'q-1' (first at line 1)"]
    assert question.steps[0].status == KEPT
    runs = {run.id: run for run in question.steps[0].children}
    assert set(runs) == {"context/closed_book", "context/prefilled_1doc"}
    closed = runs["context/closed_book"]
    assert [(s.stage, s.status) for s in closed.steps] == [("infer", KEPT), ("score", KEPT)]
    assert closed.steps[0].fields["prediction"] == "Paris"
    assert closed.steps[1].fields == {"exact_match": 1.0, "accuracy": 1.0, "rouge_l": 1.0}
    assert [(s.stage, s.status, s.reason) for s in runs["context/prefilled_1doc"].steps] == [
        ("infer", REJECTED, "no passage")]


def test_a_repeated_eval_question_line_ends_at_eval_records_under_its_line():
    [line] = trace("line:5", FrameTables(cings_tables())).matches
    assert (line.kind, [(s.stage, s.status, s.reason) for s in line.steps]) == (
        "eval question", [("eval_records", REJECTED, "line 5: duplicate id 'q-1' (first at line 1)")])


def test_results_that_rejected_a_repeat_under_the_kept_id_still_show_it():
    # eval records written before repeats were rejected as `line:N`
    tables = cings_tables()
    tables["cings/eval/demo/records.rejects"] = rejects_frame(
        "eval_records", [("q-1", "duplicate id (first at line 1), line 5")])
    [question] = trace("q-1", FrameTables(tables)).matches
    assert question.steps[0].status == KEPT
    assert question.notes == ["dataset demo", "also rejected at eval_records: duplicate id (first at line 1), line 5"]


def test_an_unknown_id_is_an_error_that_suggests_near_ids():
    tables = FrameTables({**cvc_tables(), **cings_tables()})
    with pytest.raises(UnknownId) as error:
        trace("img-1-dgo", tables)
    assert "img-1-dog" in error.value.suggestions
    assert "'img-1-dgo'" in str(error.value) and "did you mean" in str(error.value)
    with pytest.raises(UnknownId) as error:
        trace("zzzz", tables)
    assert error.value.suggestions == []


def test_text_and_json_show_the_same_trace():
    result = trace("c1", FrameTables(cvc_tables()))
    text = render_text(result)
    assert re.search(r"^ +grounding +rejected +no box scoring >= 0.68 for 'ball'$", text, re.M)
    assert "hybrid record img-1-dog-answer-1" in text
    data = json.loads(render_json(result))
    [caption] = data["matches"]
    assert caption["id"] == "c1" and [s["stage"] for s in caption["steps"]] == ["ingest", "images", "entities"]
    dog = caption["steps"][2]["children"][0]
    assert dog["steps"][-1]["children"][0]["id"] == "img-1-dog-cot-0"


def write_results(root):
    """The tables of cvc_tables() as a results folder: two shards per stage, as the workflow writes."""
    frames = cvc_tables()
    cvc = root / "cvc"
    for stage in ["ingest", "images", "entities", *ENTITY_STAGES]:
        kept = frames[f"cvc/{stage}"]
        write_table(kept.iloc[: len(kept) // 2], cvc / stage / "0.parquet")
        write_table(kept.iloc[len(kept) // 2:], cvc / stage / "1.parquet")
        rejects = frames[f"cvc/{stage}.rejects"]
        if stage == "ingest":
            write_table(rejects, cvc / "ingest" / "rejects.parquet")
        else:
            write_table(rejects, cvc / stage / "0.rejects.parquet")
            write_table(rejects.iloc[0:0], cvc / stage / "1.rejects.parquet")
    write_table(frames["cvc/selection.rejects"], cvc / "trial_rejects.parquet")
    write_table(frames["cvc/hybrid"], cvc / "hybrid" / "train.parquet")


def test_the_reader_finds_shards_and_reads_only_what_is_asked(tmp_path):
    write_results(tmp_path)
    tables = ParquetTables(tmp_path)
    assert {"cvc/ingest", "cvc/ingest.rejects", "cvc/checking.rejects", "cvc/selection.rejects", "cvc/hybrid"} <= tables.names()
    both_shards = tables.rows("cvc/ingest", "id", ["c1", "c3"], ["id", "caption"])
    assert sorted(both_shards["id"]) == ["c1", "c3"] and list(both_shards.columns) == ["id", "caption"]
    in_memory = trace("c1", FrameTables(cvc_tables()))
    assert trace("c1", tables).to_dict() == in_memory.to_dict()


def test_cli_trace_prints_text_or_json_and_fails_on_an_unknown_id(tmp_path, capsys):
    write_results(tmp_path)
    assert main(["trace", "img-1-ball", str(tmp_path)]) == 0
    assert re.search(r"^ +grounding +rejected +no box scoring", capsys.readouterr().out, re.M)
    assert main(["trace", "img-1-ball", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["matches"][0]["id"] == "img-1-ball"
    assert main(["trace", "img-1-dgo", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "no record with id 'img-1-dgo'" in err and "img-1-dog" in err
    assert main(["trace", "c1", str(tmp_path / "nowhere")]) == 1
    assert "no results folder" in capsys.readouterr().err

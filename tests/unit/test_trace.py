"""The trace core on hand-made tables: kept paths, rejections, fan-outs, unknown ids; and the
Parquet reader and the CLI on a tiny results folder."""

import json
import re

import pandas as pd
import pytest

from groundflow.cli import main
from groundflow.io import rejects_frame, write_table
from groundflow.trace import (HELD_OUT, KEPT, MISSING, NOT_RUN, REJECTED, FrameTables, ParquetTables, UnknownId,
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


def test_an_instance_held_out_for_the_probe_ends_at_the_split_not_missing_from_trials():
    frames = cvc_tables()
    sky = frames["cvc/instructions"][frames["cvc/instructions"]["id"] == "img-1-sky"]
    frames["cvc/probe"] = sky
    for stage in ["trials", "extraction", "checking"]:
        frames[f"cvc/{stage}"] = frames[f"cvc/{stage}"][frames[f"cvc/{stage}"]["id"] != "img-1-sky"]
    frames["cvc/selection.rejects"] = rejects_frame("selection")
    sky_node = trace("img-1-sky", FrameTables(frames)).matches[0]
    assert [s.stage for s in sky_node.steps][-2:] == ["instructions", "probe_split"]
    assert sky_node.steps[-1].status == HELD_OUT and "probe" in sky_node.steps[-1].reason
    # an instance that went on to trial learning is traced through it as before
    dog = trace("img-1-dog", FrameTables(frames)).matches[0]
    assert [s.stage for s in dog.steps][-4:] == ["trials", "extraction", "checking", "selection"]


def predictions_frame(rows):
    """An inference job's kept rows: one per request `{question id}|{setting}`."""
    return pd.DataFrame([{"id": f"{qid}|{setting}", "record_id": qid, "setting": setting, "question": "Capital of France?",
                          "answers": ["Paris"], "n_docs": n_docs, "doc_titles": ["France"] * n_docs,
                          "generation": generation, "prediction": prediction}
                         for qid, setting, n_docs, generation, prediction in rows],
                        columns=["id", "record_id", "setting", "question", "answers", "n_docs", "doc_titles",
                                 "generation", "prediction"])


def job_counts(settings):
    return {"stage": "infer", "produced_by": {"settings": list(settings)}}


def cings_tables():
    """Self-RAG records sr-1, sr-2 (sr-bad rejected) trained in two modes. Eval set `demo` (a KILT
    file): q-1 kept, line 5 repeats it; its `context` job asked three settings, answered
    closed_book and prefilled_kdocs, rejected prefilled_1doc (no passage); its `no_mask` job answered
    closed_book only. Scores exist for the context answers. Eval set `built` (questions + corpus):
    b-1 kept (line 7 repeats it), b-bad rejected at build; p-empty and line:2 rejected corpus lines,
    line:2 a rejected question line too."""
    records = pd.DataFrame({"id": ["sr-1", "sr-2"], "dataset_name": ["nq", "wow"], "n_passages": [1, 2]})
    tokenized = pd.DataFrame({"id": ["sr-1", "sr-2"], "n_tokens": [120, 150], "n_supervised": [40, 60]})
    question = {"id": ["q-1"], "question": ["Capital of France?"], "answers": [["Paris"]],
                "docs": [[{"title": "France", "text": "Paris is...", "score": None, "gold": True}]], "line": [1]}
    frames = {
        "cings/convert": records,
        "cings/convert.rejects": rejects_frame("convert", [("sr-bad", "record sr-bad: no retrieved passage")]),
        "cings/tokenize:context": tokenized, "cings/tokenize:context.rejects": rejects_frame("tokenize:context"),
        "cings/tokenize:no_mask": tokenized.iloc[1:],
        "cings/tokenize:no_mask.rejects": rejects_frame("tokenize:no_mask", [("sr-1", "longer than max_length 512")]),
        "cings/train:context": pd.DataFrame([{"mode": "context", "steps": 6, "final_loss": 7.0, "examples": 2}]),
        "cings/train:context.rejects": rejects_frame("train:context"),
        "cings/eval/demo/records": pd.DataFrame(question),
        "cings/eval/demo/records.rejects": rejects_frame("eval_records", [("line:4", "line 4 is not valid JSON"),
                                                                          ("line:5", "line 5: duplicate id 'q-1' (first at line 1)")]),
        "cings/eval/demo/context/predictions": predictions_frame([
            ("q-1", "closed_book", 0, "Paris", "Paris"),
            ("q-1", "prefilled_kdocs", 1, "## Context x ## Answer Lyon", "Lyon")]),
        "cings/eval/demo/context/predictions.rejects": rejects_frame("infer", [("q-1|prefilled_1doc", "no passage")]),
        "cings/eval/demo/no_mask/predictions": predictions_frame([("q-1", "closed_book", 0, "Rome", "Rome")]),
        "cings/eval/demo/no_mask/predictions.rejects": rejects_frame("infer"),
        "cings/eval/scores": pd.DataFrame({
            "dataset": ["demo", "demo"], "mode": ["context", "context"], "id": ["q-1|closed_book", "q-1|prefilled_kdocs"],
            "record_id": ["q-1", "q-1"], "setting": ["closed_book", "prefilled_kdocs"],
            "exact_match": [1.0, 0.0], "accuracy": [1.0, 0.0], "rouge_l": [1.0, 0.0],
            "label_accuracy": [float("nan")] * 2}),
        "cings/eval/built/built.rejects": pd.concat([
            rejects_frame("kilt_questions", [("line:2", "line 2 is not valid JSON"), ("b-bad", "no 'answers' list"),
                                             ("line:7", "line 7: duplicate id 'b-1' (first at line 1)")]),
            rejects_frame("kilt_corpus", [("line:2", "line 2 is not valid JSON"), ("p-empty", "no text")])],
            ignore_index=True),
        "cings/eval/built/records": pd.DataFrame({**question, "id": ["b-1"]}),
        "cings/eval/built/records.rejects": rejects_frame("eval_records"),
    }
    counts = {"cings/eval/demo/context/predictions": job_counts(["prefilled_1doc", "prefilled_kdocs", "closed_book"]),
              "cings/eval/demo/no_mask/predictions": job_counts(["closed_book"])}
    return frames, counts


def cings_frame_tables():
    return FrameTables(*cings_tables())


def test_a_cings_record_fans_out_to_one_path_per_label_mode():
    [record] = trace("sr-1", cings_frame_tables()).matches
    [convert] = record.steps
    assert (record.kind, convert.status, convert.fields) == ("cings record", KEPT, {"dataset_name": "nq", "n_passages": 1})
    paths = {mode.id: [(s.stage, s.status) for s in mode.steps] for mode in convert.children}
    assert paths == {"context": [("tokenize:context", KEPT), ("train:context", KEPT)],
                     "no_mask": [("tokenize:no_mask", REJECTED)]}
    context = convert.children[0]
    assert context.steps[1].fields == {"steps": 6, "final_loss": 7.0, "examples": 2}
    [rejected] = trace("sr-bad", cings_frame_tables()).matches
    assert [(s.stage, s.status, s.reason) for s in rejected.steps] == [
        ("convert", REJECTED, "record sr-bad: no retrieved passage")]


def eval_runs(question):
    return {run.id: [(s.stage, s.status) for s in run.steps] for run in steps_of(question)["eval_records"].children}


def test_an_eval_question_fans_out_to_every_mode_and_setting_of_one_predictions_table_per_job():
    [question] = trace("q-1", cings_frame_tables()).matches
    assert question.kind == "eval question"
    # the id's first line is the question; a later line with the same id was rejected as its line
    assert question.notes == [
        "dataset demo", "named by rejected line:5 (eval_records): line 5: duplicate id 'q-1' (first at line 1)"]
    assert [(s.stage, s.status) for s in question.steps] == [("eval_records", KEPT)]
    # settings in the order the job asked them (its counts file)
    assert eval_runs(question) == {
        "context/prefilled_1doc": [("infer", REJECTED)],
        "context/prefilled_kdocs": [("infer", KEPT), ("score", KEPT)],
        "context/closed_book": [("infer", KEPT), ("score", KEPT)],
        "no_mask/closed_book": [("infer", KEPT), ("score", MISSING)],
    }
    runs = {run.id: run for run in steps_of(question)["eval_records"].children}
    assert list(runs) == ["context/prefilled_1doc", "context/prefilled_kdocs", "context/closed_book", "no_mask/closed_book"]
    assert runs["context/prefilled_1doc"].steps[0].reason == "no passage"
    kdocs = runs["context/prefilled_kdocs"]
    assert kdocs.steps[0].fields == {"n_docs": 1, "doc_titles": ["France"], "generation": "## Context x ## Answer Lyon",
                                     "prediction": "Lyon"}
    # each request's own score row; a metric the dataset does not ask for (NaN) is left out
    assert kdocs.steps[1].fields == {"exact_match": 0.0, "accuracy": 0.0, "rouge_l": 0.0}
    assert runs["context/closed_book"].steps[1].fields == {"exact_match": 1.0, "accuracy": 1.0, "rouge_l": 1.0}
    assert "'q-1|closed_book' of demo/no_mask" in runs["no_mask/closed_book"].steps[1].reason


def test_a_request_the_job_asked_but_lost_is_missing_and_scores_not_yet_made_are_not_run():
    frames, counts = cings_tables()
    frames["cings/eval/demo/context/predictions"] = frames["cings/eval/demo/context/predictions"].iloc[:1]
    del frames["cings/eval/scores"]
    [question] = trace("q-1", FrameTables(frames, counts)).matches
    runs = {run.id: run for run in steps_of(question)["eval_records"].children}
    lost = runs["context/prefilled_kdocs"].steps
    assert [(s.stage, s.status) for s in lost] == [("infer", MISSING)]
    assert "neither its predictions nor its rejects" in lost[0].reason
    assert [(s.stage, s.status) for s in runs["context/closed_book"].steps] == [("infer", KEPT), ("score", NOT_RUN)]
    # without counts files only the settings found are shown: nothing is invented
    [question] = trace("q-1", FrameTables(frames)).matches
    assert set(eval_runs(question)) == {"context/prefilled_1doc", "context/closed_book", "no_mask/closed_book"}


def test_a_question_of_a_built_set_shows_the_build_and_a_question_rejected_there_stops_at_it():
    tables = cings_frame_tables()
    [kept] = trace("b-1", tables).matches
    assert kept.notes == ["dataset built", "named by rejected line:7 (kilt_questions): line 7: duplicate id 'b-1' (first at line 1)"]
    assert [(s.stage, s.status) for s in kept.steps] == [("kilt_questions", KEPT), ("eval_records", KEPT)]
    [bad] = trace("b-bad", tables).matches
    assert (bad.kind, [(s.stage, s.status, s.reason) for s in bad.steps]) == (
        "eval question", [("kilt_questions", REJECTED, "no 'answers' list")])


def test_a_rejected_corpus_line_is_traced_apart_from_a_question_line_of_the_same_id():
    tables = cings_frame_tables()
    [passage] = trace("p-empty", tables).matches
    assert (passage.kind, [(s.stage, s.status, s.reason) for s in passage.steps]) == (
        "eval passage", [("kilt_corpus", REJECTED, "no text")])
    question, passage = trace("line:2", tables).matches
    assert (question.kind, question.steps[0].stage) == ("eval question", "kilt_questions")
    assert (passage.kind, passage.steps[0].stage) == ("eval passage", "kilt_corpus")


def test_a_repeated_eval_question_line_ends_at_eval_records_under_its_line():
    [line] = trace("line:5", cings_frame_tables()).matches
    assert (line.kind, [(s.stage, s.status, s.reason) for s in line.steps]) == (
        "eval question", [("eval_records", REJECTED, "line 5: duplicate id 'q-1' (first at line 1)")])


def test_results_that_rejected_a_repeat_under_the_kept_id_still_show_it():
    # eval records written before repeats were rejected as `line:N`
    frames, counts = cings_tables()
    frames["cings/eval/demo/records.rejects"] = rejects_frame(
        "eval_records", [("q-1", "duplicate id (first at line 1), line 5")])
    [question] = trace("q-1", FrameTables(frames, counts)).matches
    assert question.steps[0].status == KEPT
    assert question.notes == ["dataset demo", "also rejected at eval_records: duplicate id (first at line 1), line 5"]


def pope_tables():
    """Scene a.png asked about a circle (yes) and a star (no), answered by two VL checkpoints;
    scene:2 had no image name."""
    questions = pd.DataFrame({"id": ["a.png|random|circle", "a.png|random|star"], "scene": ["a.png"] * 2,
                              "image": ["a.png"] * 2, "split": ["random"] * 2, "object": ["circle", "star"],
                              "label": ["yes", "no"], "question": ["Is there a circle?", "Is there a star?"]})
    return {
        "cings/eval/pope/questions": questions,
        "cings/eval/pope/questions.rejects": rejects_frame("pope_questions", [("scene:2", "annotation 2 has no image name")]),
        "cings/eval/pope/context/answers": questions.assign(answer=["Yes.", "Yes, a star."], prediction=["yes", "yes"]),
        "cings/eval/pope/context/answers.rejects": rejects_frame("pope_answers"),
        "cings/eval/pope/no_mask/answers": questions.iloc[1:].assign(answer=["No."], prediction=["no"]),
        "cings/eval/pope/no_mask/answers.rejects": rejects_frame(
            "pope_answers", [("a.png|random|circle", "question a.png|random|circle: image unreadable")]),
    }


def test_a_pope_question_shows_each_checkpoints_answer_against_the_truth():
    [star] = trace("a.png|random|star", FrameTables(pope_tables())).matches
    assert (star.kind, star.fields) == ("pope question", {"scene": "a.png"})
    [asked] = star.steps
    assert asked.fields == {"image": "a.png", "split": "random", "object": "star", "label": "no", "question": "Is there a star?"}
    answers = {child.id: child.steps[0] for child in asked.children}
    assert answers["context"].fields == {"answer": "Yes, a star.", "prediction": "yes", "correct": False}
    assert answers["no_mask"].fields == {"answer": "No.", "prediction": "no", "correct": True}
    [circle] = trace("a.png|random|circle", FrameTables(pope_tables())).matches
    no_mask = {child.id: child.steps[0] for child in circle.steps[0].children}["no_mask"]
    assert (no_mask.status, no_mask.reason) == (REJECTED, "question a.png|random|circle: image unreadable")


def test_a_pope_scene_lists_its_questions_or_says_why_it_was_rejected():
    [scene] = trace("a.png", FrameTables(pope_tables())).matches
    assert (scene.kind, scene.fields, [c.id for c in scene.children]) == (
        "pope scene", {"questions": 2}, ["a.png|random|circle", "a.png|random|star"])
    [bad] = trace("scene:2", FrameTables(pope_tables())).matches
    assert [(s.stage, s.status, s.reason) for s in bad.steps] == [("pope_questions", REJECTED, "annotation 2 has no image name")]


def test_an_unknown_id_is_an_error_that_suggests_near_ids():
    tables = FrameTables({**cvc_tables(), **cings_tables()[0]})
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


def write_cings_eval_results(root):
    """cings_tables()' and pope_tables()' evaluation tables as the workflow lays them out under
    results/cings/eval/, with a job's progress chunks and retrieval vectors in hidden folders."""
    frames, counts = cings_tables()
    eval_dir = root / "cings" / "eval"
    for name, frame in {**frames, **pope_tables()}.items():
        if name.startswith("cings/eval/"):
            write_table(frame, eval_dir / f"{name.removeprefix('cings/eval/')}.parquet")
    for name, job in counts.items():
        path = eval_dir / f"{name.removeprefix('cings/eval/')}.counts.json"
        path.write_text(json.dumps(job))
    # a half-done job's chunk and a retriever's vectors are not tables of results
    write_table(frames["cings/eval/demo/no_mask/predictions"].assign(prediction="stale"),
                eval_dir / ".progress" / "demo" / "no_mask" / "predictions.parquet")
    (eval_dir / ".vectors" / "built").mkdir(parents=True)


def test_the_reader_finds_the_evaluation_layout_one_predictions_table_per_dataset_and_mode(tmp_path):
    write_cings_eval_results(tmp_path)
    tables = ParquetTables(tmp_path)
    assert {n for n in tables.names() if n.startswith("cings/eval/")} == {
        "cings/eval/demo/records", "cings/eval/demo/records.rejects",
        "cings/eval/demo/context/predictions", "cings/eval/demo/context/predictions.rejects",
        "cings/eval/demo/no_mask/predictions", "cings/eval/demo/no_mask/predictions.rejects",
        "cings/eval/built/built.rejects", "cings/eval/built/records", "cings/eval/built/records.rejects",
        "cings/eval/scores", "cings/eval/pope/questions", "cings/eval/pope/questions.rejects",
        "cings/eval/pope/context/answers", "cings/eval/pope/context/answers.rejects",
        "cings/eval/pope/no_mask/answers", "cings/eval/pope/no_mask/answers.rejects"}
    assert tables.counts("cings/eval/demo/no_mask/predictions") == job_counts(["closed_book"])
    in_memory = FrameTables({**cings_tables()[0], **pope_tables()}, cings_tables()[1])
    for query in ["q-1", "b-1", "line:2", "a.png", "scene:2"]:
        assert trace(query, tables).to_dict() == trace(query, in_memory).to_dict(), query


def test_cli_trace_of_an_eval_question_prints_each_mode_and_setting(tmp_path, capsys):
    write_cings_eval_results(tmp_path)
    assert main(["trace", "q-1", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^ +prediction context/prefilled_1doc\n +infer +rejected +no passage$", out, re.M)
    assert re.search(r"^ +prediction no_mask/closed_book\n +infer +kept .*prediction=\"Rome\"$", out, re.M)
    assert re.search(r"^ +score +kept +exact_match=1 accuracy=1 rouge_l=1$", out, re.M)


def test_a_request_id_of_the_predictions_and_scores_traces_its_question():
    [question] = trace("q-1|prefilled_1doc", cings_frame_tables()).matches
    assert (question.kind, question.id) == ("eval question", "q-1")
    assert question.notes[:2] == ["request q-1|prefilled_1doc: the question in setting prefilled_1doc", "dataset demo"]
    with pytest.raises(UnknownId):
        trace("q-1|no_such_setting", cings_frame_tables())

"""POPE end to end through its three scripts on the demo's drawn scenes: questions from the scene
annotations (bad entries rejected with why), a tiny random LLaVA answering every question through
the shared vision generator (an unreadable image rejects its questions), and the metrics table."""

import json

import pandas as pd
import pyarrow.parquet as pq
import pytest

from groundflow.cings.fixture import make_vl_fixture, vl_fixture_texts
from groundflow.evaluate.pope import SPLITS, parse_answer, question_prompt
from groundflow.generate.backends import SamplingParams, make_generator
from groundflow.io.artifacts import read_table
from groundflow.io.schemas import table_schema
from groundflow.models.llava import build_tiny_llava
from groundflow.vision.image_io import load_rgb
from script_harness import FakeSnakemake, run_script

MAX_NEW_TOKENS = 4


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("pope") / "tiny-llava", seed=0, texts=vl_fixture_texts())


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vl")
    make_vl_fixture(folder, seed=0, n_images=4)
    entries = json.loads((folder / "scenes.json").read_text())
    (folder / "images" / "broken.png").write_bytes(b"not a png")
    entries += [
        {"image": "missing.png", "objects": ["circle"]},  # no such file
        {"image": "shape_001.png", "objects": ["star"]},  # annotated twice
        {"image": "empty.png", "objects": []},
        {"image": "broken.png", "objects": ["square"]},  # passes the file check, fails to decode
    ]
    (folder / "annotations.json").write_text(json.dumps(entries))
    return folder, entries


def _questions(tmp_path, scenes, **opts):
    folder, _ = scenes
    out = {"questions": str(tmp_path / "questions.parquet"), "rejects": str(tmp_path / "questions.rejects.parquet"),
           "counts": str(tmp_path / "questions.counts.json")}
    run_script("pope_questions.py", FakeSnakemake(
        input={"scenes": str(folder / "annotations.json")}, output=out,
        params={"opts": {"positives_per_image": 2, "splits": list(SPLITS), "min_objects": 1, "images": None,
                         "question_prompt": None, "max_new_tokens": MAX_NEW_TOKENS, "chunk_size": 10, **opts},
                "seed": 0, "image_folder": str(folder / "images")},
        log=[str(tmp_path / "questions.log")]))
    return out


def _answer(tmp_path, questions, folder, llava, name="answers", chunk_size=10):
    out = {"kept": str(tmp_path / f"{name}.parquet"), "rejects": str(tmp_path / f"{name}.rejects.parquet"),
           "counts": str(tmp_path / f"{name}.counts.json")}
    run_script("pope_answer.py", FakeSnakemake(
        input={"records": questions, "model": str(llava)}, output=out,
        params={"generation": {"backend": "hf", "batch_size": 4, "model": {"path": str(llava), "device": "cpu"}},
                "opts": {"positives_per_image": 2, "splits": list(SPLITS), "min_objects": 1, "images": None,
                         "question_prompt": None, "max_new_tokens": MAX_NEW_TOKENS, "chunk_size": chunk_size},
                "image_folder": str(folder / "images"), "system_prompt": "",
                "progress_dir": str(tmp_path / ".progress" / name)},
        log=[str(tmp_path / f"{name}.log")]))
    return out


def test_questions_script_rejects_bad_scenes_with_reasons(tmp_path, scenes):
    out = _questions(tmp_path, scenes)
    counts = json.loads((tmp_path / "questions.counts.json").read_text())
    assert (counts["in"], counts["out"], counts["rejected"]) == (8, 5, 3)
    reasons = dict(zip(*[read_table(out["rejects"])[c] for c in ("id", "reason")]))
    assert set(reasons) == {"missing.png", "scene:6", "empty.png"}
    assert "not in the image folder" in reasons["missing.png"]
    assert "annotated before" in reasons["scene:6"] and "has no objects" in reasons["empty.png"]
    questions = read_table(out["questions"])
    assert pq.read_schema(out["questions"]).remove_metadata() == table_schema("pope_questions")
    assert counts["questions"] == len(questions)
    for split in SPLITS:
        assert counts["per_split"][split]["yes"] == counts["per_split"][split]["no"] > 0
    assert questions["prompt_version"].str.startswith("question-").all()
    first = questions[questions["image"] == "shape_000.png"].iloc[0]
    assert first["question"] == f"Is there a {first['object']} in the image?\nAnswer with one word: yes or no."


def test_a_users_question_prompt_and_image_sampling(tmp_path, scenes):
    prompt = tmp_path / "ask.txt"
    prompt.write_text("Do you see {article} {object}? Reply yes or no.")
    out = _questions(tmp_path, scenes, question_prompt=str(prompt), images=2, splits=["random"])
    questions = read_table(out["questions"])
    assert questions["scene"].nunique() == 2
    assert questions["question"].str.fullmatch(r"Do you see an? \w+\? Reply yes or no\.").all()
    assert questions["prompt_version"].str.startswith("ask-").all()
    counts = json.loads((tmp_path / "questions.counts.json").read_text())
    assert (counts["in"], counts["out"], counts["rejected"]) == (8, 2, 6)
    bad = tmp_path / "bad.txt"
    bad.write_text("Is there a {thing}?")
    with pytest.raises(ValueError, match="thing"):
        _questions(tmp_path, scenes, question_prompt=str(bad))


def test_answers_and_scores_end_to_end_with_a_tiny_llava(tmp_path, scenes, llava):
    folder, _ = scenes
    questions_out = _questions(tmp_path, scenes)
    questions = read_table(questions_out["questions"])
    out = _answer(tmp_path, questions_out["questions"], folder, llava)
    counts = json.loads((tmp_path / "answers.counts.json").read_text())
    broken = questions[questions["image"] == "broken.png"]
    assert len(broken) > 0
    assert (counts["in"], counts["rejected"]) == (len(questions), len(broken))
    rejects = read_table(out["rejects"])
    assert set(rejects["id"]) == set(broken["id"]) and rejects["reason"].str.contains("unreadable image").all()
    answers = read_table(out["kept"])
    # StageJob writes the columns it gets (strings as large_string): names and order as declared, castable
    assert pq.read_schema(out["kept"]).names == table_schema("pope_answers").names
    pq.read_table(out["kept"]).cast(table_schema("pope_answers"))
    assert set(answers["id"]) == set(questions["id"]) - set(broken["id"])
    assert answers["prediction"].tolist() == [parse_answer(a) for a in answers["answer"]]
    assert counts["produced_by"]["sampling"]["do_sample"] is False

    # each answer is what the model says to that question alone (batching and chunking change nothing)
    generator = make_generator({"backend": "hf", "batch_size": 1, "model": {"path": str(llava), "device": "cpu"}},
                               kind="vision")
    sample = answers.sample(n=4, random_state=0)
    alone = generator.generate([question_prompt(q, load_rgb(folder / "images" / i))
                                for q, i in zip(sample["question"], sample["image"])],
                               SamplingParams(max_new_tokens=MAX_NEW_TOKENS))
    assert [texts[0] for texts in alone] == sample["answer"].tolist()

    score_out = {"table": str(tmp_path / "pope.parquet"), "tsv": str(tmp_path / "pope.tsv")}
    run_script("pope_score.py", FakeSnakemake(
        input={"answers": [out["kept"]], "counts": [out["counts"]]}, output=score_out,
        params={"checkpoints": ["tiny"]}, log=[str(tmp_path / "score.log")]))
    table = read_table(score_out["table"])
    assert list(table["split"]) == list(SPLITS) and (table["model"] == "tiny").all()
    for row in table.itertuples():
        part = answers[answers["split"] == row.split]
        yes = part["prediction"] == "yes"
        gold = part["label"] == "yes"
        assert (row.tp, row.fp, row.tn, row.fn) == ((yes & gold).sum(), (yes & ~gold).sum(),
                                                     (~yes & ~gold).sum(), (~yes & gold).sum())
        assert row.accuracy == pytest.approx((yes == gold).mean())
        assert row.yes_ratio == pytest.approx(yes.mean())
    tsv = pd.read_csv(score_out["tsv"], sep="\t")
    assert list(tsv.columns) == table_schema("pope_metrics").names and len(tsv) == 3


def test_a_killed_answer_job_resumes_from_its_finished_chunks(tmp_path, scenes, llava, monkeypatch):
    import groundflow.evaluate.pope as pope

    folder, _ = scenes
    questions_out = _questions(tmp_path, scenes, splits=["adversarial"])
    whole = _answer(tmp_path, questions_out["questions"], folder, llava, name="whole", chunk_size=6)
    real, calls = pope.answer_questions, []

    def dies_on_the_second_chunk(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(pope, "answer_questions", dies_on_the_second_chunk)
    with pytest.raises(RuntimeError, match="killed"):
        _answer(tmp_path, questions_out["questions"], folder, llava, name="resumed", chunk_size=6)
    assert not (tmp_path / "resumed.parquet").exists()
    monkeypatch.setattr(pope, "answer_questions", real)
    resumed = _answer(tmp_path, questions_out["questions"], folder, llava, name="resumed", chunk_size=6)
    counts = json.loads((tmp_path / "resumed.counts.json").read_text())
    assert counts["chunks"] > 2 and counts["chunks_reused"] == 1
    pd.testing.assert_frame_equal(read_table(resumed["kept"]), read_table(whole["kept"]))
    pd.testing.assert_frame_equal(read_table(resumed["rejects"]), read_table(whole["rejects"]))


class SceneOracle:
    """A stand-in vision generator that answers from the scenes (or always the same), so the
    metrics of the whole chain are known in advance."""

    features = frozenset()

    def __init__(self, folder, entries, fixed=None):
        self.truth = {load_rgb(folder / "images" / e["image"]).tobytes(): set(e["objects"])
                      for e in entries if (folder / "images" / e["image"]).is_file() and e["objects"]
                      and e["image"] != "broken.png"}
        self.fixed = fixed
        self.calls = 0

    def generate(self, prompts, params):
        self.calls += 1
        answers = []
        for prompt in prompts:
            kind = prompt.messages[-1]["content"].split()[3]
            present = kind in self.truth[prompt.image.tobytes()]
            answers.append([self.fixed if self.fixed is not None else ("Yes, there is." if present else "No, there is not.")])
        return answers

    def describe(self):
        return {"backend": "oracle"}


@pytest.mark.parametrize("fixed, expected", [
    (None, {"accuracy": 1.0, "precision": 1.0, "recall": 1.0, "f1": 1.0, "yes_ratio": 0.5}),
    ("Yes", {"accuracy": 0.5, "precision": 0.5, "recall": 1.0, "f1": 2 / 3, "yes_ratio": 1.0}),
    ("No.", {"accuracy": 0.5, "precision": float("nan"), "recall": 0.0, "f1": float("nan"), "yes_ratio": 0.0}),
], ids=["truthful", "always-yes", "always-no"])
def test_known_answers_give_known_metrics(tmp_path, scenes, fixed, expected):
    from groundflow.evaluate.pope import answer_questions, pope_metrics

    folder, entries = scenes
    questions = read_table(_questions(tmp_path, scenes)["questions"])
    oracle = SceneOracle(folder, entries[:4], fixed)
    result = answer_questions(questions[questions["image"] != "broken.png"], oracle, SamplingParams(max_new_tokens=4),
                              image_dir=folder / "images")
    assert oracle.calls == 1 and result.rejects.empty
    table = pope_metrics(result.kept).set_index("split")
    for split in SPLITS:
        for name, value in expected.items():
            assert table.loc[split, name] == pytest.approx(value, nan_ok=True), (split, name)

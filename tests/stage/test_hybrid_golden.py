"""Golden test: the hybrid training file against the layout of the original's released data.

The original repository's `examples/llava-1.5-{7b,13b}/rationales.json` is the reference for the
hybrid output's format; ../shared/specs/cvc.md describes it (at its end) as measured there. The
expected records below are written out by hand from those rules, not computed by our code:
- order: the instruction data (665k mix), then every reasoning record, then every answer record;
- each record exactly {id, image, conversations}, two turns, human then gpt;
- `image` relative to the training image folder;
- ids `<image stem>-<entity>-cot-<k>` (k in 0..3) and `<image stem>-<entity>-answer-<k>`, the
  entity (spaces and hyphens allowed) parsed back at the first "-" after the COCO stem;
- human turn: `<image>`, newline, the two-sentence header, newline, the question, one space,
  exactly one suffix (reasoning for -cot-, answer for -answer-);
- gpt turn: the rationale as sampled, or the extracted answer (sometimes a comma-separated list).

The records come through the demo's stage path: the demo fixture's instruction data, questions
from `generate_instructions` (typed, as the demo runs it) on a real tiny Llama loaded from disk,
answers from `extract_answers` in the paper's free mode, `check_answers`, and `build_hybrid`, the
function the hybrid rule's script calls. Only the two sampled models (trial rationales, the
extractor's words) and the embedder are stood in by canned values, so that k is set per instance.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from groundflow.cvc.fixture import make_fixture, make_instruction_data
from groundflow.cvc.hybrid import SAMPLE_ID
from groundflow.cvc.instructions import generate_instructions
from groundflow.cvc.tables import build_hybrid
from groundflow.cvc.trials import check_answers, extract_answers
from groundflow.generate.backends import HFTextGenerator, SamplingParams
from groundflow.io import atomic_path, check_accounting, write_table
from groundflow.io.artifacts import atomic_write_json
from groundflow.models.causal_lm import build_tiny_causal_lm, load_causal_lm
from groundflow.models.spec import ModelSpec

# --- the reference layout, by hand ------------------------------------------------------------

HEADER_ONE = ("In the given image, there is an object heavily occluded by a cluster of gray blocks. "
              "Please answer the following question.")
QUESTION_ONE = "What might the object occluded by the gray blocks be?"
HEADER_MANY = ("In the given image, there are objects heavily occluded by a cluster of gray blocks. "
               "Please answer the following question.")
QUESTION_MANY = "What might the objects occluded by the gray blocks be?"
REASONING = "Please provide your reasoning process and confirm a unique answer. Let's think step by step."
ANSWER = "Please confirm a unique answer."


def cot_turn(header: str, question: str) -> str:
    return "<image>\n" + header + "\n" + question + " " + REASONING


def answer_turn(header: str, question: str) -> str:
    return "<image>\n" + header + "\n" + question + " " + ANSWER


def record(record_id: str, image: str, human: str, gpt: str) -> dict:
    return {"id": record_id, "image": image,
            "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}]}


RELEASED_ID = re.compile(r"^(COCO_train2014_\d{12})-(.+)-(cot|answer)-(\d+)$")

# (image stem, entity, caption, k correct of 16)
INSTANCES = [
    ("COCO_train2014_000000000009", "t-shirt", "A boy in a red t-shirt throws a ball.", 2),
    ("COCO_train2014_000000000025", "road sign", "A road sign stands at the corner of the street.", 6),
    ("COCO_train2014_000000000030", "cups", "Two cups sit on a wooden table.", 1),
    ("COCO_train2014_000000000042", "kite", "A kite flies over the beach.", 0),
]
N = 16


def rationale(stem: str, entity: str, i: int) -> str:
    return f"Looking at {stem}, trial {i}: the shape under the blocks fits the scene.\nSo it is what I think."


# What the extractor writes for each rationale (the correct ones first), and hand-made embedding
# vectors: the similarity with the label is 1 or 0.9 for correct answers, at most 0.5 otherwise.
EXTRACTOR = {
    ("t-shirt", 0): "Answer: T-shirt", ("t-shirt", 1): "a shirt.",
    ("cups", 3): "a cup or a mug",
}
VECTORS = {
    "t-shirt": [1, 0, 0, 0], "shirt": [0.9, np.sqrt(0.19), 0, 0],
    "road sign": [0, 1, 0, 0],
    "cups": [0, 0, 1, 0], "cup, mug": [0, 0, 0.9, np.sqrt(0.19)],
    "kite": [0.5, 0.5, 0.5, 0.5],
}


def extractor_says(entity: str, i: int) -> str:
    if (entity, i) in EXTRACTOR:
        return EXTRACTOR[entity, i]
    if entity == "road sign" and i < 6:
        return " A road sign"
    return " unknown"  # the rationale settles on nothing


class CannedExtractor:
    features = frozenset()

    def generate(self, prompts, params):
        answers = []
        for prompt in prompts:
            text = prompt.messages[0]["content"].rsplit("Reasoning: ", 1)[1]
            stem, trial = re.match(r"Looking at (\S+), trial (\d+):", text).groups()
            entity = next(e for s, e, _, _ in INSTANCES if s == stem)
            answers.append([extractor_says(entity, int(trial))] * params.n)
        return answers

    def describe(self):
        return {"backend": "canned"}


class VectorEmbedder:
    def encode(self, texts):
        rows = np.array([VECTORS.get(t, [0, 0, 0, 1]) for t in texts], dtype=np.float32)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    def describe(self):
        return {"backend": "vectors"}


@pytest.fixture(scope="module")
def hybrid_run(tmp_path_factory):
    """A run folder after the hybrid step: (run folder, records of train.json, instruction data)."""
    run = tmp_path_factory.mktemp("golden-run")
    fixture = run / "resources" / "fixtures" / "cvc"
    summary = make_fixture(fixture, seed=0, n_images=4, include_bad=False)
    make_instruction_data(fixture / "llava_instruct.json", summary["image_root"], n=8, seed=0)
    for stem, entity, _, _ in INSTANCES:
        with atomic_path(run / "results" / "cvc" / "occluded" / "0" / f"{stem}-{entity}.jpg") as tmp:
            Image.new("RGB", (32, 24), (123, 116, 103)).save(tmp, format="JPEG")
    instances = pd.DataFrame({
        "id": [f"{stem}-{entity}" for stem, entity, _, _ in INSTANCES],
        "label": [entity for _, entity, _, _ in INSTANCES],
        "caption": [caption for _, _, caption, _ in INSTANCES],
        "occluded_image": [f"occluded/0/{stem}-{entity}.jpg" for stem, entity, _, _ in INSTANCES],
    })

    model, tokenizer = load_causal_lm(ModelSpec(str(build_tiny_causal_lm(run / "tiny-llm", seed=0)), device="cpu"))
    # the demo's mode; one type, so the question does not depend on the random weights
    questions = generate_instructions(instances, HFTextGenerator(model, tokenizer, batch_size=4), mode="typed",
                                      object_types=["object"])
    check_accounting("instructions", instances["id"], questions)
    assert questions.rejects.empty
    trials = questions.kept.assign(trials=pd.Series(
        [[rationale(stem, entity, i) for i in range(N)] for stem, entity, _, _ in INSTANCES], dtype=object))
    extracted = extract_answers(trials, CannedExtractor(), SamplingParams(max_new_tokens=100), mode="free")
    checked = check_answers(extracted.kept, VectorEmbedder(), threshold=0.85)
    assert list(checked.kept["n_correct"]) == [k for _, _, _, k in INSTANCES]

    cvc = run / "results" / "cvc"
    write_table(checked.kept, cvc / "checking" / "0.parquet")
    for stage, result, ids in (("extraction", extracted, trials["id"]), ("checking", checked, extracted.kept["id"])):
        write_table(result.rejects, cvc / stage / "0.rejects.parquet")
        atomic_write_json(cvc / stage / "0.counts.json", check_accounting(stage, ids, result))
    instruction_data = {"path": str(fixture / "llava_instruct.json"), "image_folder": "resources/fixtures/cvc/images"}
    build_hybrid(
        checked_paths=[str(cvc / "checking" / "0.parquet")], instruction_data=instruction_data,
        occluded_prefix="results/cvc/", cot_range=(1, 4), shuffle_seed=None,
        reject_paths=[str(cvc / s / "0.rejects.parquet") for s in ("extraction", "checking")],
        count_paths=[str(cvc / s / "0.counts.json") for s in ("extraction", "checking")],
        llava_json_out=str(cvc / "hybrid" / "train.json"), parquet_out=str(cvc / "hybrid" / "train.parquet"),
        counts_out=str(cvc / "trial_stage_counts.tsv"), rejects_out=str(cvc / "trial_rejects.parquet"),
    )
    records = json.loads((cvc / "hybrid" / "train.json").read_text(encoding="utf-8"))
    base = json.loads((fixture / "llava_instruct.json").read_text(encoding="utf-8"))
    return run, records, base


def expected_samples() -> tuple[list[dict], list[dict]]:
    """The reasoning and answer records the spec's rules give for INSTANCES, written out."""
    a = "COCO_train2014_000000000009-t-shirt"
    b = "COCO_train2014_000000000025-road sign"
    c = "COCO_train2014_000000000030-cups"
    image = "results/cvc/occluded/0/{}.jpg".format
    cot = [
        record(f"{a}-cot-0", image(a), cot_turn(HEADER_ONE, QUESTION_ONE), rationale("COCO_train2014_000000000009", "t-shirt", 0)),
        record(f"{a}-cot-1", image(a), cot_turn(HEADER_ONE, QUESTION_ONE), rationale("COCO_train2014_000000000009", "t-shirt", 1)),
        # k = 6 for the road sign: above the 1-4 window, answers only
        record(f"{c}-cot-0", image(c), cot_turn(HEADER_MANY, QUESTION_MANY), rationale("COCO_train2014_000000000030", "cups", 3)),
    ]
    answers = [
        record(f"{a}-answer-0", image(a), answer_turn(HEADER_ONE, QUESTION_ONE), "t-shirt"),
        record(f"{a}-answer-1", image(a), answer_turn(HEADER_ONE, QUESTION_ONE), "shirt"),
        record(f"{b}-answer-0", image(b), answer_turn(HEADER_ONE, QUESTION_ONE), "road sign"),
        # a hedged answer stays one comma-separated list
        record(f"{c}-answer-0", image(c), answer_turn(HEADER_MANY, QUESTION_MANY), "cup, mug"),
    ]
    return cot, answers


def test_hybrid_records_match_the_released_layout_field_by_field(hybrid_run):
    run, records, base = hybrid_run
    cot, answers = expected_samples()
    # order: the instruction data as given (images under its folder), then reasoning, then answers
    assert len(records) == len(base) + len(cot) + len(answers)
    for got, given in zip(records[:len(base)], base):
        want = dict(given, image=f"resources/fixtures/cvc/images/{given['image']}") if "image" in given else given
        assert got == want
    samples = records[len(base):]
    for got, want in zip(samples, cot + answers):
        assert list(got) == ["id", "image", "conversations"], got["id"]
        for field in ("id", "image"):
            assert got[field] == want[field]
        assert [t["from"] for t in got["conversations"]] == ["human", "gpt"]
        assert got["conversations"][0]["value"] == want["conversations"][0]["value"], got["id"]
        assert got["conversations"][1]["value"] == want["conversations"][1]["value"], got["id"]
    assert samples == cot + answers


def test_hybrid_ids_images_and_human_turns_follow_the_released_rules(hybrid_run):
    run, records, base = hybrid_run
    samples = records[len(base):]
    kinds = [RELEASED_ID.match(r["id"])[3] for r in samples]
    assert kinds == sorted(kinds, key=lambda kind: kind != "cot")  # all reasoning records first
    entities = {entity for _, entity, _, _ in INSTANCES}
    for r in samples:
        stem, entity, kind, k = RELEASED_ID.match(r["id"]).groups()
        # the entity parses back at the first "-" after the COCO stem, spaces and hyphens kept
        assert f"{stem}-{entity}".split("-", 1) == [stem, entity] and entity in entities
        assert kind == "answer" or 0 <= int(k) <= 3
        # our trace parses the same id into the occluded image's stem
        assert SAMPLE_ID.match(r["id"])["stem"] == f"{stem}-{entity}"
        assert (run / r["image"]).is_file() and r["image"].endswith(f"/{stem}-{entity}.jpg")
        human = r["conversations"][0]["value"]
        head, header, rest = human.split("\n")
        assert head == "<image>" and header.count(". ") == 1 and header.endswith("Please answer the following question.")
        suffix = REASONING if kind == "cot" else ANSWER
        assert rest.endswith(" " + suffix) and rest.count("Please") == 1
        assert human.count(REASONING) == (kind == "cot") and human.count(ANSWER) == (kind == "answer")
        assert rest[: -len(suffix) - 1].endswith("?")

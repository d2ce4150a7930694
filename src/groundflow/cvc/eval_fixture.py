"""The CVC evaluation demo's benchmark files: drawn scenes asked about in the record forms of
groundflow's lmms-eval tasks (`groundflow.evaluate.tasks.task_utils`).

`make_eval_fixture(out_dir, seed=..., n_images=..., include_bad=...)` draws `n_images` scenes in the
style of the CVC demo fixture (`groundflow.cvc.fixture.draw_scene`), in order from
`scene_rng(seed)`: a random stream of its own, so the benchmark's images are not the training
fixture's (which draws from `np.random.default_rng(seed)`). It writes, all under `out_dir` (the
data files' folder, against which the harness reads the records' relative image paths):
- `images/scene_NNNN.png`, the drawn scenes;
- `yes_no.jsonl`, POPE-form questions `{question_id, image, question, answer}`: per image one
  object drawn in it (answer "yes") and one kind absent from it (answer "no"), the absent kind a
  seeded sample of all the fixture's named kinds not drawn (POPE's "random" setting), so yes and no
  are balanced; ids are POPE's `image|random|object`;
- `multiple_choice.jsonl`, `{question_id, image, question, options, answer}`: per image "Which of
  these objects is in the image?" with four kinds, one drawn and three absent, the drawn one at a
  seeded letter; ids are `image|choice`.
The unnamed shape (kind "object") is drawn but never asked about: no answer names it.

With `include_bad`, each file gets ONE bad record, at a seeded position, that evaluation must
reject (the summary's `bad_records` names it, its file and a fragment of the reason):
- yes_no.jsonl: `bad-answer-maybe`, a question about a drawn object answered "maybe";
- multiple_choice.jsonl: `bad-missing-image`, a well-formed item whose image file
  (`images/missing.png`) does not exist.

Same arguments, same bytes. The images folder is built whole beside its place and renamed in; the
record files are written atomically after it.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np

from groundflow.cvc.fixture import KINDS, draw_scene
from groundflow.evaluate.pope import NO, YES, article, question_id
from groundflow.evaluate.tasks.task_utils import option_letters
from groundflow.io.artifacts import atomic_directory, atomic_write_bytes, atomic_write_text

YES_NO_FILE = "yes_no.jsonl"
MULTIPLE_CHOICE_FILE = "multiple_choice.jsonl"
IMAGES_DIR = "images"
# POPE's question (the first line of the packaged pope/question prompt; the task YAML adds the
# answer instruction)
YES_NO_QUESTION = "Is there {article} {object} in the image?"
MULTIPLE_CHOICE_QUESTION = "Which of these objects is in the image?"
N_OPTIONS = 4
UNNAMED_KIND = "object"  # the fixture's unnamed shape: no answer can name it
QUESTION_KINDS = tuple(kind for kind in KINDS if kind != UNNAMED_KIND)
POPE_SPLIT = "random"
MISSING_IMAGE = f"{IMAGES_DIR}/missing.png"
# "cvc-eval" as a number: joined with the seed, it gives this fixture random streams that the
# training fixture's np.random.default_rng(seed) never produces
_EVAL_STREAM = int.from_bytes(b"cvc-eval", "big")
_SCENES, _QUESTIONS = 1, 2


def _stream(seed: int, purpose: int) -> np.random.Generator:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return np.random.default_rng([_EVAL_STREAM, int(seed), purpose])


def scene_rng(seed: int) -> np.random.Generator:
    """The stream the benchmark's scenes are drawn from, in order, one `draw_scene` call each."""
    return _stream(seed, _SCENES)


def image_name(index: int) -> str:
    return f"{IMAGES_DIR}/scene_{index:04d}.png"


def _present_kinds(kinds: list[str]) -> list[str]:
    """The nameable kinds drawn, each once, in drawing order."""
    return [kind for kind in dict.fromkeys(kinds) if kind != UNNAMED_KIND]


def _absent_kinds(rng: np.random.Generator, kinds: list[str], n: int) -> list[str]:
    absent = [kind for kind in QUESTION_KINDS if kind not in kinds]
    return [absent[i] for i in rng.choice(len(absent), size=n, replace=False)]


def yes_no_records(rng: np.random.Generator, image: str, kinds: list[str]) -> list[dict]:
    """One "yes" question about a drawn kind and one "no" question about an absent kind."""
    present = _present_kinds(kinds)
    positive = present[int(rng.integers(len(present)))]
    (negative,) = _absent_kinds(rng, kinds, 1)
    return [{"question_id": question_id(image, POPE_SPLIT, kind), "image": image,
             "question": YES_NO_QUESTION.format(article=article(kind), object=kind), "answer": answer}
            for kind, answer in ((positive, YES), (negative, NO))]


def multiple_choice_record(rng: np.random.Generator, image: str, kinds: list[str]) -> dict:
    """Four kinds, one drawn, the drawn one at a random letter."""
    present = _present_kinds(kinds)
    correct = present[int(rng.integers(len(present)))]
    options = _absent_kinds(rng, kinds, N_OPTIONS - 1)
    position = int(rng.integers(N_OPTIONS))
    options.insert(position, correct)
    return {"question_id": f"{image}|choice", "image": image, "question": MULTIPLE_CHOICE_QUESTION,
            "options": options, "answer": option_letters(N_OPTIONS)[position]}


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _json_lines(records: list[dict]) -> str:
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


def make_eval_fixture(out_dir: str | os.PathLike, *, seed: int, n_images: int, include_bad: bool) -> dict:
    """Write the images and the two benchmark files under `out_dir` (see the module docstring);
    return their counts, the kinds drawn per image and the bad records."""
    if isinstance(n_images, bool) or not isinstance(n_images, (int, np.integer)) or n_images < 1:
        raise ValueError(f"n_images must be an integer >= 1, got {n_images!r}")
    out = Path(out_dir)
    scenes_rng, questions_rng = scene_rng(seed), _stream(seed, _QUESTIONS)
    pngs: dict[str, bytes] = {}
    drawn: dict[str, list[str]] = {}
    for index in range(int(n_images)):
        image, kinds = draw_scene(scenes_rng)
        name = image_name(index)
        pngs[name], drawn[name] = _png(image), kinds

    yes_no: list[dict] = []
    multiple_choice: list[dict] = []
    for name, kinds in drawn.items():
        yes_no += yes_no_records(questions_rng, name, kinds)
        multiple_choice.append(multiple_choice_record(questions_rng, name, kinds))

    bad_records: list[dict] = []
    if include_bad:
        first = yes_no[0]
        maybe = {**first, "question_id": "bad-answer-maybe", "answer": "maybe"}
        missing = {**multiple_choice[0], "question_id": "bad-missing-image", "image": MISSING_IMAGE}
        for file, records, record, case, reason in (
                (YES_NO_FILE, yes_no, maybe, "answer_not_yes_no", "answer must be 'yes' or 'no'"),
                (MULTIPLE_CHOICE_FILE, multiple_choice, missing, "missing_image", "image not found")):
            records.insert(int(questions_rng.integers(len(records) + 1)), record)
            bad_records.append({"file": file, "question_id": record["question_id"], "case": case, "reason": reason})

    with atomic_directory(out / IMAGES_DIR) as folder:
        for name, data in pngs.items():
            atomic_write_bytes(folder / Path(name).name, data)
    atomic_write_text(out / YES_NO_FILE, _json_lines(yes_no))
    atomic_write_text(out / MULTIPLE_CHOICE_FILE, _json_lines(multiple_choice))

    n_bad = {file: sum(1 for bad in bad_records if bad["file"] == file) for file in (YES_NO_FILE, MULTIPLE_CHOICE_FILE)}
    return {
        "seed": int(seed),
        "images": len(pngs),
        "yes_no": {"path": str(out / YES_NO_FILE), "records": len(yes_no), "bad": n_bad[YES_NO_FILE],
                   "yes": sum(1 for r in yes_no if r["answer"] == YES),
                   "no": sum(1 for r in yes_no if r["answer"] == NO)},
        "multiple_choice": {"path": str(out / MULTIPLE_CHOICE_FILE), "records": len(multiple_choice),
                            "bad": n_bad[MULTIPLE_CHOICE_FILE]},
        "drawn": drawn,
        "bad_records": bad_records,
    }


__all__ = [
    "IMAGES_DIR",
    "MULTIPLE_CHOICE_FILE",
    "MULTIPLE_CHOICE_QUESTION",
    "QUESTION_KINDS",
    "YES_NO_FILE",
    "YES_NO_QUESTION",
    "image_name",
    "make_eval_fixture",
    "multiple_choice_record",
    "scene_rng",
    "yes_no_records",
]

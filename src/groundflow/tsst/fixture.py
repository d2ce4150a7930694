"""The TSST demo fixture, made by code: drawn-scene multiple-choice questions and warm-up chains.

`make_tsst_fixture` writes (paths in `FixturePaths`, default layout under one folder):
- `train.jsonl` / `eval.jsonl`: ScienceQA-style questions (`id, question, hint, answer_choices,
  answer_str, img_path, answer_label` 1-based, `caption`) about drawn scenes (colour, shape, count,
  position; 2-4 choices) and, for a quarter of them, text-only arithmetic and comparisons with
  decimals ("1.5 + 2.25", "3.5 or 3.25"); images in `images/`, `img_path` relative to it;
- `vcr/val.jsonl`: VCR-style records (tokens with object tags, 0-based labels) over drawn people and
  a dog, metadata `{boxes, width, height}` beside each image under `vcr/vcr1images/`: one, two,
  three and four referred people, and multi-index tags, so every naming rule of the loader runs;
- `cot.jsonl`: warm-up chains in the §2 response shape ("Here is the step-by-step reasoning
  process: Step 1: ... Step 2: ... Final Answer: B. red") for most train questions, correct, plus a
  few incorrect ones.
With `include_bad`, each of these files also holds exactly one bad line of each kind its reader
rejects (`BAD_KINDS`, VCR adds a missing metadata file); the summary lists their ids, lines and the
reason each must produce. Same seed, same bytes.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from groundflow.io.artifacts import atomic_write_bytes, atomic_write_text
from groundflow.tsst.prompts import load_question_prompts, option_letter

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30)}
SHAPES = ("circle", "square", "triangle")
SIDES = ("left", "middle", "right")
NUMBER_WORDS = ("one", "two", "three", "four")
N_TRAIN, N_EVAL = 16, 8
TEXT_ONLY_EVERY = 4  # every fourth question has no image
WRONG_CHAINS = 3
BAD_KINDS = ("bad_json", "bad_bytes", "missing_field", "wrong_type", "empty_choices", "label_out_of_range",
             "missing_image", "duplicate_id")
VCR_BAD_KINDS = BAD_KINDS + ("missing_metadata",)
REASONS = {  # a substring of the reject reason each kind must produce
    "bad_json": "is not valid JSON", "bad_bytes": "is not UTF-8", "missing_field": "missing field",
    "wrong_type": "not an integer", "empty_choices": "empty choices", "label_out_of_range": "out of range",
    "missing_image": "missing image file", "duplicate_id": "duplicate id", "missing_metadata": "missing metadata file",
}
COT_REASONS = {**REASONS, "wrong_type": "not true or false"}
HEADER = "Here is the step-by-step reasoning process:\n\n"


@dataclass(frozen=True)
class FixturePaths:
    train: str
    eval: str
    images: str
    vcr: str
    vcr_images: str
    cot: str

    @classmethod
    def under(cls, out_dir: str | os.PathLike) -> "FixturePaths":
        out = Path(out_dir)
        return cls(train=str(out / "train.jsonl"), eval=str(out / "eval.jsonl"), images=str(out / "images"),
                   vcr=str(out / "vcr" / "val.jsonl"), vcr_images=str(out / "vcr" / "vcr1images"),
                   cot=str(out / "cot.jsonl"))


# ---------------------------------------------------------------- drawing


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], colour: tuple) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([(x0, y1), ((x0 + x1) / 2, y0), (x1, y1)], fill=colour)
    else:
        raise ValueError(f"no drawing for shape {shape!r}")


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def draw_scene(objects: list[tuple[str, str, str]], size: tuple[int, int] = (96, 64)) -> Image.Image:
    """(shape, colour, side) objects, each in its third of a white canvas."""
    width, height = size
    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    third, side_len = width // 3, int(min(width // 3, height) * 0.7)
    for shape, colour, side in objects:
        x0 = SIDES.index(side) * third + (third - side_len) // 2
        y0 = (height - side_len) // 2
        _draw_shape(draw, shape, (x0, y0, x0 + side_len, y0 + side_len), COLOURS[colour])
    return image


def draw_people(figures: list[tuple[list[float], tuple]], size: tuple[int, int]) -> Image.Image:
    """Stick people (head + coloured shirt) or a dog (brown block), each filling its box."""
    image = Image.new("RGB", size, (235, 235, 225))
    draw = ImageDraw.Draw(image)
    for (x0, y0, x1, y1), colour in figures:
        if colour is None:  # the dog
            draw.rectangle((x0, y0 + (y1 - y0) / 3, x1, y1), fill=(120, 80, 40))
            draw.ellipse((x1 - (x1 - x0) / 3, y0, x1, y0 + (y1 - y0) / 2), fill=(120, 80, 40))
            continue
        head = (x1 - x0) / 2
        draw.ellipse((x0 + head / 2, y0, x1 - head / 2, y0 + head), fill=(240, 200, 170))
        draw.rectangle((x0, y0 + head, x1, y1), fill=colour)
    return image


# ---------------------------------------------------------------- ScienceQA-style questions


def _choices(rng: np.random.Generator, correct: str, pool: list[str], n: int) -> tuple[list[str], int]:
    """n choices: the correct one and n-1 others from pool, shuffled; with its 1-based label."""
    others = [p for p in pool if p != correct]
    picked = [others[int(i)] for i in rng.permutation(len(others))[: n - 1]] + [correct]
    order = rng.permutation(len(picked))
    choices = [picked[int(i)] for i in order]
    return choices, choices.index(correct) + 1


def _listing(objects: list[tuple[str, str, str]]) -> str:
    phrases = [f"a {colour} {shape}" for shape, colour, _ in objects]
    return phrases[0] if len(phrases) == 1 else f"{', '.join(phrases[:-1])} and {phrases[-1]}"


def _fmt(x: float) -> str:
    return f"{x:g}"


SCENE_KINDS = ("colour", "shape", "count", "position")


def _scene_question(scene_number: int, rng: np.random.Generator) -> dict:
    kind = SCENE_KINDS[scene_number % len(SCENE_KINDS)]
    n_objects = int(rng.integers(2 if kind == "position" else 1, 4))
    shapes = [SHAPES[int(i)] for i in rng.permutation(len(SHAPES))[:n_objects]]
    colour_names = list(COLOURS)
    colours = [colour_names[int(i)] for i in rng.permutation(len(colour_names))[:n_objects]]
    sides = sorted((SIDES[int(i)] for i in rng.permutation(len(SIDES))[:n_objects]), key=SIDES.index)
    objects = list(zip(shapes, colours, sides))
    target = objects[int(rng.integers(0, n_objects))]
    shape, colour, side = target
    n_choices = int(rng.integers(2, 5))
    seen = f"Step 1: The image shows {_listing(objects)}."
    if kind == "colour":
        question, pool, correct = f"What colour is the {shape}?", colour_names, colour
        step = f"Step 2: The {shape} is {colour}."
    elif kind == "shape":
        question, pool, correct = f"Which shape is {colour}?", list(SHAPES), shape
        step = f"Step 2: The {colour} object is a {shape}."
    elif kind == "count":
        question, pool, correct = "How many shapes are in the image?", list(NUMBER_WORDS), NUMBER_WORDS[n_objects - 1]
        step = f"Step 2: Counting them gives {correct} in total."
    else:
        question, pool, correct = f"Where is the {colour} {shape}?", list(SIDES), side
        step = f"Step 2: The {colour} {shape} is on the {side} side of the image."
    choices, label = _choices(rng, correct, pool, min(n_choices, len(pool)))
    return {"question": question, "hint": "", "choices": choices, "label": label, "objects": objects,
            "steps": [seen, step], "caption": f"{_listing(objects).capitalize()} on a white background."}


def _text_question(text_number: int, rng: np.random.Generator) -> dict:
    a = float(rng.integers(1, 8)) + float(rng.choice([0.25, 0.5, 0.75]))
    b = float(rng.integers(1, 8)) + float(rng.choice([0.25, 0.5]))
    if text_number % 2 == 0:
        total = a + b
        pool = [_fmt(total + d) for d in (-1.0, -0.5, 0.5, 1.0)] + [_fmt(total)]
        choices, label = _choices(rng, _fmt(total), pool, int(rng.integers(3, 5)))
        steps = [f"Step 1: The question asks for the sum of {_fmt(a)} and {_fmt(b)}.",
                 f"Step 2: {_fmt(a)} + {_fmt(b)} = {_fmt(total)}."]
        return {"question": f"What is {_fmt(a)} + {_fmt(b)}?", "hint": "Add the two decimal numbers.",
                "choices": choices, "label": label, "objects": None, "steps": steps,
                "caption": f"{_fmt(a)} plus {_fmt(b)} is {_fmt(total)}."}
    if a == b:
        b += 0.5
    big, small = max(a, b), min(a, b)
    choices, label = _choices(rng, _fmt(big), [_fmt(a), _fmt(b)], 2)
    steps = [f"Step 1: Compare {_fmt(small)} and {_fmt(big)}, e.g. by their whole parts first.",
             f"Step 2: {_fmt(big)} is larger than {_fmt(small)}."]
    return {"question": "Which number is larger?", "hint": "", "choices": choices, "label": label,
            "objects": None, "steps": steps, "caption": f"{_fmt(big)} is larger than {_fmt(small)}."}


def _final(choices: list[str], label: int) -> str:
    return f"Final Answer: {option_letter(label)}. {choices[label - 1]}"


def _chain(steps: list[str], final: str) -> str:
    return HEADER + " ".join(steps) + " " + final


def build_questions(seed: int = 0) -> list[dict]:
    """The N_TRAIN + N_EVAL questions (internal form: steps, objects, label)."""
    rng = np.random.default_rng(seed)
    questions = []
    for index in range(N_TRAIN + N_EVAL):
        text_only = index % TEXT_ONLY_EVERY == TEXT_ONLY_EVERY - 1
        item = (_text_question(index // TEXT_ONLY_EVERY, rng) if text_only
                else _scene_question(index - index // TEXT_ONLY_EVERY, rng))
        item["id"] = f"tsst-{'train' if index < N_TRAIN else 'eval'}-{index:03d}"
        item["image"] = None if text_only else f"scene_{index:03d}.png"
        questions.append(item)
    return questions


def scienceqa_record(item: dict) -> dict:
    return {"id": item["id"], "question": item["question"], "hint": item["hint"], "answer_choices": item["choices"],
            "answer_str": item["choices"][item["label"] - 1], "img_path": item["image"],
            "answer_label": item["label"], "caption": item["caption"]}


def _full_question(item: dict) -> str:
    return f"{item['hint']} {item['question']}" if item["hint"] else item["question"]


def cot_records(train: list[dict], rng: np.random.Generator) -> list[dict]:
    """A correct chain for each train question but the last two; an incorrect one for WRONG_CHAINS."""
    records = []
    for item in train[:-2]:
        records.append({"id": f"cot-{item['id']}", "image": item["image"], "question": _full_question(item),
                        "choices": item["choices"], "answer_label": item["label"],
                        "solution": _chain(item["steps"], _final(item["choices"], item["label"])), "correct": True})
    for item in [train[int(i)] for i in sorted(rng.permutation(len(train))[:WRONG_CHAINS])]:
        wrong = next(k for k in range(1, len(item["choices"]) + 1) if k != item["label"])
        steps = [item["steps"][0], f"Step 2: So the answer is {item['choices'][wrong - 1]}."]
        records.append({"id": f"cot-{item['id']}-wrong", "image": item["image"], "question": _full_question(item),
                        "choices": item["choices"], "answer_label": item["label"],
                        "solution": _chain(steps, _final(item["choices"], wrong)), "correct": False})
    return records


# ---------------------------------------------------------------- VCR-style questions

PEOPLE_SIZE = (120, 80)


def vcr_cases() -> list[dict]:
    """Six VCR records with their drawings: (box, shirt colour or None for the dog) per object."""
    red, green, blue, yellow = (COLOURS[c] for c in ("red", "green", "blue", "yellow"))
    colours = ["red", "green", "blue", "yellow"]

    def wear(tag: list[int], colour: str) -> list:
        return [tag, "is", "wearing", colour, "."]

    return [
        {  # one person, its left edge in the right third
            "objects": ["person"], "figures": [([90, 10, 110, 75], red)],
            "question": ["What", "colour", "is", [0], "wearing", "?"],
            "answer_choices": [wear([0], c) for c in colours], "answer_label": 0},
        {  # two people, ordered by box centre
            "objects": ["person", "person"], "figures": [([70, 10, 90, 75], green), ([10, 10, 30, 75], red)],
            "question": ["Who", "is", "wearing", "green", "?"],
            "answer_choices": [[[0], "."], [[1], "."], ["Nobody", "."], ["Both", "of", "them", "."]],
            "answer_label": 0},
        {  # three people; a multi-index tag in a choice names both
            "objects": ["person", "person", "person"],
            "figures": [([50, 10, 70, 75], blue), ([90, 10, 110, 75], yellow), ([10, 10, 30, 75], red)],
            "question": ["Who", "is", "wearing", "blue", "?"],
            "answer_choices": [[[0], "."], [[1], "."], [[2], "."], [[0, 1], "."]], "answer_label": 0},
        {  # four people: two in the left third
            "objects": ["person", "person", "person", "person"],
            "figures": [([2, 10, 18, 75], red), ([22, 10, 36, 75], yellow), ([52, 10, 68, 75], green),
                        ([95, 10, 111, 75], blue)],
            "question": ["Who", "is", "wearing", "yellow", "?"],
            "answer_choices": [[[0], "."], [[1], "."], [[2], "."], [[3], "."]], "answer_label": 1},
        {  # a person and a dog: only people are renamed
            "objects": ["person", "dog"], "figures": [([50, 10, 70, 75], green), ([80, 45, 115, 75], None)],
            "question": ["Is", [0], "next", "to", "the", [1], "?"],
            "answer_choices": [["Yes", ",", "the", [1], "is", "beside", [0], "."], ["No", ",", "there", "is", "no", "dog", "."],
                               ["No", ",", [0], "is", "alone", "."], ["Yes", ",", "but", "far", "away", "."]],
            "answer_label": 0},
        {  # a multi-index tag in the question
            "objects": ["person", "person"], "figures": [([10, 10, 30, 75], red), ([90, 10, 110, 75], blue)],
            "question": ["What", "colours", "are", [0, 1], "wearing", "?"],
            "answer_choices": [["Red", "and", "blue", "."], ["Green", "and", "yellow", "."],
                               ["Both", "wear", "red", "."], ["Both", "wear", "blue", "."]],
            "answer_label": 0},
    ]


def vcr_record(index: int, case: dict) -> dict:
    name = f"fixture_movie/vcr_{index:03d}"
    return {"annot_id": f"val-{index}", "objects": case["objects"], "question": case["question"],
            "answer_choices": case["answer_choices"], "answer_label": case["answer_label"],
            "img_fn": f"{name}.png", "metadata_fn": f"{name}.json", "movie": "fixture_movie"}


def vcr_metadata(case: dict) -> dict:
    width, height = PEOPLE_SIZE
    return {"boxes": [[*box, 0.99] for box, _ in case["figures"]], "width": width, "height": height,
            "names": case["objects"]}


# ---------------------------------------------------------------- bad lines


def _bad_lines(kinds: tuple[str, ...], good: dict, id_key: str, fields: dict) -> list[tuple[str, str | None, bytes]]:
    """(kind, own id or None, line bytes) for each kind, built from a good record `good`.

    `fields` names the record's fields of each role: question, choices, label, image, plus
    `wrong_type` (field, value)."""
    base = dict(good)
    out = []
    for kind in kinds:
        record, own = dict(base), f"{good[id_key]}-bad-{kind.replace('_', '-')}"
        record[id_key] = own
        if kind == "bad_json":
            out.append((kind, None, json.dumps(record).encode()[:30]))
            continue
        if kind == "bad_bytes":
            out.append((kind, None, json.dumps(record).encode().replace(b'"', b'"\xff', 1)))
            continue
        if kind == "missing_field":
            record.pop(fields["question"])
        elif kind == "wrong_type":
            key, value = fields["wrong_type"]
            record[key] = value
        elif kind == "empty_choices":
            record[fields["choices"]] = []
        elif kind == "label_out_of_range":
            record[fields["label"]] = len(good[fields["choices"]]) + (1 if fields["one_based"] else 0)
        elif kind == "missing_image":
            record[fields["image"]] = "no_such_image.png"
        elif kind == "missing_metadata":
            record["metadata_fn"] = "no_such_metadata.json"
        elif kind == "duplicate_id":
            record[id_key], own = good[id_key], good[id_key]
        else:
            raise ValueError(f"no bad line of kind {kind!r}")
        out.append((kind, own, json.dumps(record).encode()))
    return out


def _with_bad(good_lines: list[bytes], bad: list[tuple[str, str | None, bytes]], rng: np.random.Generator,
              reasons: dict) -> tuple[bytes, list[dict]]:
    """The file's bytes with the bad lines spread among the good ones (after the first, so the
    duplicate follows its original); the bad lines' expected ids, lines and reasons."""
    lines: list[tuple[dict | None, bytes]] = [(None, line) for line in good_lines]
    for kind, own, line in bad:
        at = int(rng.integers(1, len(lines) + 1))
        lines.insert(at, ({"case": kind, "own_id": own}, line))
    expected = []
    for number, (case, _) in enumerate(lines, start=1):
        if case is None:
            continue
        accounted = case["own_id"] if case["own_id"] is not None and case["case"] != "duplicate_id" else f"line:{number}"
        expected.append({"case": case["case"], "id": accounted, "line": number, "reason": reasons[case["case"]]})
    return b"\n".join(line for _, line in lines) + b"\n", expected


def _jsonl(records: list[dict]) -> list[bytes]:
    return [json.dumps(r, ensure_ascii=False).encode("utf-8") for r in records]


# ---------------------------------------------------------------- all files


def make_tsst_fixture(paths: FixturePaths | str | os.PathLike, seed: int = 0, include_bad: bool = True) -> dict:
    """Write every fixture file (see the module docstring); return a summary with the bad lines."""
    if not isinstance(paths, FixturePaths):
        paths = FixturePaths.under(paths)
    rng = np.random.default_rng(seed + 1)
    questions = build_questions(seed)
    for item in questions:
        if item["image"] is not None:
            atomic_write_bytes(Path(paths.images) / item["image"], _png(draw_scene(item["objects"])))
    train, evaluation = questions[:N_TRAIN], questions[N_TRAIN:]
    sqa_fields = {"question": "question", "choices": "answer_choices", "label": "answer_label", "image": "img_path",
                  "one_based": True, "wrong_type": ("answer_label", "2")}
    cases = vcr_cases()
    vcr = [vcr_record(i, case) for i, case in enumerate(cases)]
    for record, case in zip(vcr, cases):
        atomic_write_bytes(Path(paths.vcr_images) / record["img_fn"], _png(draw_people(case["figures"], PEOPLE_SIZE)))
        atomic_write_text(Path(paths.vcr_images) / record["metadata_fn"], json.dumps(vcr_metadata(case)) + "\n")
    vcr_fields = {"question": "question", "choices": "answer_choices", "label": "answer_label", "image": "img_fn",
                  "one_based": False, "wrong_type": ("answer_label", "A")}
    cot = cot_records(train, rng)
    cot_fields = {"question": "solution", "choices": "choices", "label": "answer_label", "image": "image",
                  "one_based": True, "wrong_type": ("correct", "yes")}
    files = [
        ("train", paths.train, _jsonl([scienceqa_record(q) for q in train]), BAD_KINDS, "id", sqa_fields, REASONS),
        ("eval", paths.eval, _jsonl([scienceqa_record(q) for q in evaluation]), BAD_KINDS, "id", sqa_fields, REASONS),
        ("vcr", paths.vcr, _jsonl(vcr), VCR_BAD_KINDS, "annot_id", vcr_fields, REASONS),
        ("cot", paths.cot, _jsonl(cot), BAD_KINDS, "id", cot_fields, COT_REASONS),
    ]
    good_source = {"train": scienceqa_record(train[0]), "eval": scienceqa_record(evaluation[0]), "vcr": vcr[0], "cot": cot[0]}
    summary: dict = {"paths": asdict(paths), "good": {}, "lines": {}, "bad": {}}
    for name, path, good_lines, kinds, id_key, fields, reasons in files:
        bad = _bad_lines(kinds, good_source[name], id_key, fields) if include_bad else []
        data, expected = _with_bad(good_lines, bad, rng, reasons)
        atomic_write_bytes(path, data)
        summary["good"][name] = len(good_lines)
        summary["lines"][name] = len(good_lines) + len(bad)
        summary["bad"][name] = expected
    summary["text_only"] = sum(q["image"] is None for q in questions)
    summary["correct_chains"] = sum(r["correct"] for r in cot)
    summary["incorrect_chains"] = sum(not r["correct"] for r in cot)
    return summary


def fixture_texts(seed: int = 0) -> list[str]:
    """Text a tiny tokenizer for the demo is trained on: every fixture question as the prompt asks
    it, and every warm-up chain, so fixture records tokenise compactly."""
    prompts = load_question_prompts()
    questions = build_questions(seed)
    texts = [prompts.human_turn(_full_question(q), q["choices"], has_image=q["image"] is not None) for q in questions]
    texts += [r["solution"] for r in cot_records(questions[:N_TRAIN], np.random.default_rng(seed + 1))]
    texts += [f"{_listing(q['objects'])}." for q in questions if q["objects"]]
    return texts

"""The GWYS demo fixture, made by code: drawn-scene questions in the formats GWYS reads.

`make_gwys_fixture` writes (paths in `FixturePaths`, default layout under one folder):
- `images/`: scenes of 1-5 coloured circles, squares and triangles on white, one per record;
- `cot.json`: cold-start SFT records, a JSON array of LLaVA-CoT records `{id, image,
  conversations: [human, gpt]}` whose gpt turn is `<SUMMARY>…</SUMMARY> <CAPTION>…</CAPTION>
  <REASONING>…</REASONING> <CONCLUSION>…</CONCLUSION>`, and a few in the released converted form
  `{problem, data_type, path, process_and_answer}` (four tags already; no id, so named by line);
- `pool.json`: the RL pool, a JSON array of Video-R1-style rows `{problem_id, problem,
  problem_type, options, solution: "<answer>X</answer>", data_type, path: "./images/…",
  data_source}`: multiple choice ("A. red" options, colour and shape questions) and numerical
  (counts);
- `eval.json`: an evaluation set in the same form: POPE-style yes/no questions as multiple choice
  ("A. yes" / "B. no", as the original evaluates POPE, spec §7), colour/shape multiple choice and
  counts; `data_source` tells the three apart (`pope`, `shapes`, `count`);
- `summary.json` (by the script): what was written and every bad record's expected reject.

With `include_bad`, each file also holds exactly one bad record of each kind its loader rejects
(`BAD_KINDS`), spread among the good ones, their expected ids, positions and reasons in the summary.
A bad JSON line is not among them: the files are JSON arrays (the original reads them with
`json.load`), which parse whole or not at all (`gwys.data.DataFileError`); bytes that are not UTF-8
inside one entry do cost only that entry. Same seed, same bytes.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from groundflow.gwys.data import four_tag_answer
from groundflow.gwys.prompts import FORMS, format_question, load_question_prompts
from groundflow.io.artifacts import atomic_write_bytes

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30)}
SHAPES = ("circle", "square", "triangle")
NUMBER_WORDS = ("no", "one", "two", "three", "four", "five")
GRID = (3, 2)  # columns x rows of slots, one object per slot
SCENE_SIZE = (120, 80)
N_POOL, N_COT, N_CONVERTED, N_EVAL_EACH = 24, 20, 4, 8
EVAL_SOURCES = ("pope", "shapes", "count")
SOURCE = "gwys-fixture"

SFT_BAD_KINDS = ("bad_bytes", "missing_field", "missing_image", "missing_stage", "not_four_tag", "neither_form",
                 "duplicate_id")
POOL_BAD_KINDS = ("bad_bytes", "missing_field", "missing_image", "unknown_type", "no_answer_tag",
                  "letter_out_of_range", "unlettered_option", "non_numeric", "duplicate_id", "video_row")
BAD_KINDS = {"cot": SFT_BAD_KINDS, "pool": POOL_BAD_KINDS, "eval": POOL_BAD_KINDS}
REASONS = {  # a substring of the reject reason each kind must produce (gwys.data's wording)
    "bad_bytes": "is not UTF-8 text", "missing_field": "missing field", "missing_image": "missing image file",
    "missing_stage": "the gpt turn has no <CAPTION>", "not_four_tag": "is not in the four-tag form",
    "neither_form": "neither 'conversations'", "duplicate_id": "duplicate id",
    "unknown_type": "unknown problem_type", "no_answer_tag": "solution without an answer tag",
    "letter_out_of_range": "is not one of the options' letters", "unlettered_option": "is not lettered",
    "non_numeric": "is not a number", "video_row": "a video row, and video is not enabled",
}


@dataclass(frozen=True)
class FixturePaths:
    cot: str
    pool: str
    eval: str
    images: str

    @classmethod
    def under(cls, out_dir: str | os.PathLike) -> "FixturePaths":
        out = Path(out_dir)
        return cls(cot=str(out / "cot.json"), pool=str(out / "pool.json"), eval=str(out / "eval.json"),
                   images=str(out / "images"))


# ---------------------------------------------------------------- drawing


def draw_scene(objects: list[tuple[str, str, int]], size: tuple[int, int] = SCENE_SIZE) -> Image.Image:
    """(shape, colour, slot) objects on a white canvas, slot k in column k % 3, row k // 3."""
    width, height = size
    columns, rows = GRID
    cell_w, cell_h = width // columns, height // rows
    side = int(min(cell_w, cell_h) * 0.7)
    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for shape, colour, slot in objects:
        x0 = (slot % columns) * cell_w + (cell_w - side) // 2
        y0 = (slot // columns) * cell_h + (cell_h - side) // 2
        box = (x0, y0, x0 + side, y0 + side)
        fill = COLOURS[colour]
        if shape == "circle":
            draw.ellipse(box, fill=fill)
        elif shape == "square":
            draw.rectangle(box, fill=fill)
        elif shape == "triangle":
            draw.polygon([(x0, y0 + side), (x0 + side / 2, y0), (x0 + side, y0 + side)], fill=fill)
        else:
            raise ValueError(f"no drawing for shape {shape!r}")
    return image


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------- questions


def _scene(rng: np.random.Generator, n_objects: int) -> list[tuple[str, str, int]]:
    slots = sorted(int(s) for s in rng.permutation(GRID[0] * GRID[1])[:n_objects])
    return [(SHAPES[int(rng.integers(len(SHAPES)))], list(COLOURS)[int(rng.integers(len(COLOURS)))], slot)
            for slot in slots]


def _listing(objects: list[tuple[str, str, int]]) -> str:
    """"a red circle, two blue squares and a green triangle": alike objects counted together."""
    kinds = [(colour, shape) for shape, colour, _ in objects]
    phrases = []
    for colour, shape in dict.fromkeys(kinds):
        n = kinds.count((colour, shape))
        phrases.append(f"a {colour} {shape}" if n == 1 else f"{NUMBER_WORDS[n]} {colour} {shape}s")
    return phrases[0] if len(phrases) == 1 else f"{', '.join(phrases[:-1])} and {phrases[-1]}"


def _lettered(choices: list[str]) -> list[str]:
    return [f"{chr(ord('A') + k)}. {choice}" for k, choice in enumerate(choices)]


def _options(rng: np.random.Generator, correct: str, pool: list[str], n: int) -> tuple[list[str], str]:
    others = [p for p in pool if p != correct]
    picked = [others[int(i)] for i in rng.permutation(len(others))[: n - 1]] + [correct]
    choices = [picked[int(i)] for i in rng.permutation(len(picked))]
    return _lettered(choices), chr(ord("A") + choices.index(correct))


def _unique(objects, index: int) -> list:
    """The values of field `index` (0 shape, 1 colour) that occur exactly once in the scene."""
    values = [o[index] for o in objects]
    return [v for v in dict.fromkeys(values) if values.count(v) == 1]


def _question(kind: str, rng: np.random.Generator) -> dict:
    """One question of `kind` (colour, shape, count, count_colour, pope) about a fresh scene:
    {problem, problem_type, options, answer, objects, summary, reasoning, source}."""
    for _ in range(100):  # redraw until the scene supports the question (a unique shape, say)
        objects = _scene(rng, int(rng.integers(1, 6)))
        if kind == "colour" and _unique(objects, 0):
            shape = _unique(objects, 0)[0]
            colour = next(c for s, c, _ in objects if s == shape)
            options, answer = _options(rng, colour, list(COLOURS), int(rng.integers(3, 5)))
            return {"problem": f"What colour is the {shape}?", "problem_type": "multiple choice", "options": options,
                    "answer": answer, "objects": objects, "source": "shapes",
                    "summary": f"I will find the {shape} in the image and name its colour.",
                    "reasoning": f"The {shape} is {colour}, which is option {answer}."}
        if kind == "shape" and _unique(objects, 1):
            colour = _unique(objects, 1)[0]
            shape = next(s for s, c, _ in objects if c == colour)
            options, answer = _options(rng, shape, list(SHAPES), 3)
            return {"problem": f"Which shape is {colour}?", "problem_type": "multiple choice", "options": options,
                    "answer": answer, "objects": objects, "source": "shapes",
                    "summary": f"I will find the {colour} object in the image and name its shape.",
                    "reasoning": f"The {colour} object is a {shape}, which is option {answer}."}
        if kind == "count":
            n = len(objects)
            return {"problem": "How many shapes are in the image?", "problem_type": "numerical", "options": [],
                    "answer": str(n), "objects": objects, "source": "count",
                    "summary": "I will count every shape in the image.",
                    "reasoning": f"Counting them one by one gives {NUMBER_WORDS[n]}, so there are {n} shapes."}
        if kind == "count_colour":
            colour = objects[int(rng.integers(len(objects)))][1]
            n = sum(c == colour for _, c, _ in objects)
            return {"problem": f"How many {colour} shapes are there?", "problem_type": "numerical", "options": [],
                    "answer": str(n), "objects": objects, "source": "count",
                    "summary": f"I will count the {colour} shapes in the image.",
                    "reasoning": f"Only the {colour} ones count: there {'is' if n == 1 else 'are'} {n}."}
        if kind == "pope":
            present = bool(rng.integers(2))
            if present:
                shape, colour, _ = objects[int(rng.integers(len(objects)))]
            else:
                absent = [(s, c) for s in SHAPES for c in COLOURS if not any(o[:2] == (s, c) for o in objects)]
                shape, colour = absent[int(rng.integers(len(absent)))]
            answer = "A" if present else "B"
            return {"problem": f"Is there a {colour} {shape} in the image?", "problem_type": "multiple choice",
                    "options": ["A. yes", "B. no"], "answer": answer, "objects": objects, "source": "pope",
                    "summary": f"I will look for a {colour} {shape} among the shapes.",
                    "reasoning": f"There {'is' if present else 'is no'} {colour} {shape}, so the answer is "
                                 f"{'yes' if present else 'no'}, option {answer}."}
    raise RuntimeError(f"no scene for a {kind!r} question in 100 draws")


def caption(objects: list[tuple[str, str, int]]) -> str:
    return f"The image shows {_listing(objects)} on a white background."


def build_questions(seed: int = 0) -> dict[str, list[dict]]:
    """The fixture's good questions per file (internal form), each with its `image` file name."""
    rng = np.random.default_rng(seed)
    plan = {
        "pool": [("colour", "shape", "count", "count_colour")[k % 4] for k in range(N_POOL)],
        "cot": [("colour", "count", "shape", "count_colour")[k % 4] for k in range(N_COT + N_CONVERTED)],
        # N_EVAL_EACH per source: pope; shapes (colour + shape); count (all shapes + one colour's)
        "eval": (["pope"] * N_EVAL_EACH + ["colour", "shape"] * (N_EVAL_EACH // 2)
                 + ["count", "count_colour"] * (N_EVAL_EACH // 2)),
    }
    questions: dict[str, list[dict]] = {}
    for name, kinds in plan.items():
        questions[name] = []
        for index, kind in enumerate(kinds):
            item = _question(kind, rng)
            item["image"] = f"{name}_{index:03d}.png"
            questions[name].append(item)
    return questions


def llava_cot_gpt(item: dict) -> str:
    """The LLaVA-CoT answer: the four stages, blank lines between (as LLaVA-CoT-100k writes them)."""
    return (f"<SUMMARY> {item['summary']} </SUMMARY>\n\n<CAPTION> {caption(item['objects'])} </CAPTION>\n\n"
            f"<REASONING> {item['reasoning']} </REASONING>\n\n<CONCLUSION> {item['answer']} </CONCLUSION>")


def think_answer(item: dict) -> str:
    """The same reasoning in the baseline's form."""
    return f"<think>{caption(item['objects'])} {item['reasoning']}</think><answer>{item['answer']}</answer>"


def cot_records(items: list[dict]) -> list[dict]:
    """LLaVA-CoT records for the first N_COT items, the converted form for the rest."""
    records = []
    for index, item in enumerate(items):
        question = format_question(item["problem"], item["options"])
        if index < N_COT:
            records.append({"id": f"cot-{index:03d}", "image": f"images/{item['image']}", "conversations": [
                {"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": llava_cot_gpt(item)}]})
        else:
            records.append({"problem": question, "data_type": "image", "path": f"./images/{item['image']}",
                            "process_and_answer": four_tag_answer(llava_cot_gpt(item))})
    return records


def video_r1_rows(items: list[dict], first_id: int) -> list[dict]:
    return [{"problem_id": first_id + index, "problem": item["problem"], "data_type": "image",
             "problem_type": item["problem_type"], "options": item["options"],
             "solution": f"<answer>{item['answer']}</answer>", "path": f"./images/{item['image']}",
             "data_source": item["source"]} for index, item in enumerate(items)]


# ---------------------------------------------------------------- bad records


def _bad_sft(kind: str, good: dict, converted: dict) -> tuple[dict | None, str | None, bytes]:
    """(record or None, its own id or None, its bytes) for one bad kind of the SFT file."""
    record = json.loads(json.dumps(good))
    own = f"{good['id']}-bad-{kind.replace('_', '-')}"
    record["id"] = own
    if kind == "bad_bytes":
        data = json.dumps(record, ensure_ascii=False).encode().replace(b'"value": "', b'"value": "\xff', 1)
        return None, None, data
    if kind == "missing_field":
        del record["image"]
    elif kind == "missing_image":
        record["image"] = "images/no_such_image.png"
    elif kind == "missing_stage":
        gpt = record["conversations"][1]["value"]
        record["conversations"][1]["value"] = gpt[:gpt.index("<CAPTION>")] + gpt[gpt.index("</CAPTION>") + 10:]
    elif kind == "not_four_tag":
        record = {**converted, "process_and_answer": "<think>I count them.</think><answer>3</answer>"}
        own = None  # the converted form has no id
    elif kind == "neither_form":
        del record["conversations"]
    elif kind == "duplicate_id":
        record["id"] = own = good["id"]
    else:
        raise ValueError(f"no bad SFT record of kind {kind!r}")
    return record, own, json.dumps(record, ensure_ascii=False).encode()


def _bad_pool(kind: str, good_mc: dict, good_numerical: dict, first_id: int) -> tuple[dict | None, str | None, bytes]:
    """(record or None, its own id or None, its bytes) for one bad kind of a Video-R1-style file."""
    record = json.loads(json.dumps(good_numerical if kind == "non_numeric" else good_mc))
    original = record["problem_id"]
    record["problem_id"] = first_id + POOL_BAD_KINDS.index(kind)
    own = str(record["problem_id"])
    if kind == "bad_bytes":
        data = json.dumps(record, ensure_ascii=False).encode().replace(b'"problem": "', b'"problem": "\xff', 1)
        return None, None, data
    if kind == "missing_field":
        del record["problem"]
    elif kind == "missing_image":
        record["path"] = "./images/no_such_image.png"
    elif kind == "unknown_type":
        record["problem_type"] = "essay"
    elif kind == "no_answer_tag":
        record["solution"] = record["solution"].replace("<answer>", "").replace("</answer>", "")
    elif kind == "letter_out_of_range":
        record["solution"] = f"<answer>{chr(ord('A') + len(record['options']))}</answer>"
    elif kind == "unlettered_option":
        record["options"] = [option.split(". ", 1)[1] for option in record["options"]]
    elif kind == "non_numeric":
        record["solution"] = f"<answer>{NUMBER_WORDS[int(good_numerical['solution'][8:-9])]}</answer>"
    elif kind == "duplicate_id":
        record["problem_id"] = original
        own = str(original)
    elif kind == "video_row":
        record.update({"data_type": "video", "path": "./videos/clip_000.mp4"})
    else:
        raise ValueError(f"no bad pool record of kind {kind!r}")
    return record, own, json.dumps(record, ensure_ascii=False).encode()


def _json_array(good: list[dict], bad: list[tuple[str, str | None, bytes]], rng: np.random.Generator) -> tuple[bytes, list[dict]]:
    """A JSON array's bytes, one entry per line, the bad ones spread among the good after the
    first (so a duplicate follows its original); the bad entries' expected ids, positions, reasons."""
    entries: list[tuple[dict | None, bytes]] = [(None, json.dumps(r, ensure_ascii=False).encode()) for r in good]
    for kind, own, data in bad:
        at = int(rng.integers(1, len(entries) + 1))
        entries.insert(at, ({"case": kind, "own_id": own}, data))
    expected = []
    for position, (case, _) in enumerate(entries, start=1):
        if case is None:
            continue
        named = case["own_id"] if case["own_id"] is not None and case["case"] != "duplicate_id" else f"line:{position}"
        expected.append({"case": case["case"], "id": named, "line": position, "reason": REASONS[case["case"]]})
    return b"[\n" + b",\n".join(data for _, data in entries) + b"\n]\n", expected


# ---------------------------------------------------------------- all files


def make_gwys_fixture(paths: FixturePaths | str | os.PathLike, seed: int = 0, include_bad: bool = True) -> dict:
    """Write every fixture file (see the module docstring); return the summary."""
    if not isinstance(paths, FixturePaths):
        paths = FixturePaths.under(paths)
    questions = build_questions(seed)
    for items in questions.values():
        for item in items:
            atomic_write_bytes(Path(paths.images) / item["image"], _png(draw_scene(item["objects"])))
    cot = cot_records(questions["cot"])
    pool = video_r1_rows(questions["pool"], first_id=1)
    evaluation = video_r1_rows(questions["eval"], first_id=1)
    rng = np.random.default_rng(seed + 1)
    files = {"cot": (paths.cot, cot), "pool": (paths.pool, pool), "eval": (paths.eval, evaluation)}
    summary: dict = {"paths": asdict(paths), "seed": seed, "files": {},
                     "note": "no bad JSON line: the files are JSON arrays, which parse whole or not at all"}
    for name, (path, good) in files.items():
        bad = []
        if include_bad:
            if name == "cot":
                bad = [(kind, *_bad_sft(kind, good[0], good[-1])[1:]) for kind in SFT_BAD_KINDS]
            else:
                mc = next(r for r in good if r["problem_type"] == "multiple choice" and len(r["options"]) > 2)
                numerical = next(r for r in good if r["problem_type"] == "numerical")
                bad = [(kind, *_bad_pool(kind, mc, numerical, first_id=1000)[1:]) for kind in POOL_BAD_KINDS]
        data, expected = _json_array(good, bad, rng)
        atomic_write_bytes(path, data)
        summary["files"][name] = {"entries": len(good) + len(bad), "good": len(good), "bad": expected}
    for name in ("pool", "eval"):
        types = [r["problem_type"] for r in files[name][1]]
        sources = [r["data_source"] for r in files[name][1]]
        summary["files"][name]["by_type"] = {t: types.count(t) for t in sorted(set(types))}
        summary["files"][name]["by_source"] = {s: sources.count(s) for s in sorted(set(sources))}
    summary["files"]["cot"]["converted"] = N_CONVERTED
    summary["images"] = sum(len(items) for items in questions.values())
    return summary


def fixture_texts(seed: int = 0) -> list[str]:
    """Texts a tiny tokenizer for the demo's Qwen2.5-VL is fitted to: every fixture question as each
    form's prompt asks it (with and without its type instruction: RL and evaluation add it, SFT
    does not), the four-tag and think/answer answers, and the captions."""
    questions = build_questions(seed)
    prompts = [load_question_prompts(form) for form in FORMS]
    texts = []
    for items in questions.values():
        for item in items:
            question = format_question(item["problem"], item["options"])
            for form_prompts in prompts:
                texts.append(form_prompts.user_text(question, item["problem_type"]))
            texts.append(prompts[0].user_text(question))
            texts.append(four_tag_answer(llava_cot_gpt(item)))
            texts.append(think_answer(item))
            texts.append(caption(item["objects"]))
    return texts

"""The CINGS demo fixture: Self-RAG training records and a small vision-language set.

`make_selfrag_fixture` writes `selfrag.jsonl` in the format of `selfrag/selfrag_train_data`
(`id, instruction, input, output, dataset_name`, the output with reflection tokens and
`<paragraph>` passages): single- and multi-passage records, records with an `input`, text before
the first passage, double spaces inside answers, and one record of each kind of bad input, whose
expected reject reason the summary lists. `make_vl_fixture` draws a few scenes of 1-3 shapes
(kinds of differing popularity that tend to come in pairs) with captions in the LCS-558K format
(stage 1), questions in the LLaVA-665K format (stage 2) and the scenes' objects as POPE
annotations (`scenes.json`, read by groundflow.evaluate.pope).

Same seed, same bytes.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from groundflow.evaluate.pope import QUESTION_FIELDS, QUESTION_PROMPT, article
from groundflow.io.artifacts import atomic_write_bytes, atomic_write_text
from groundflow.prompts import load_prompt

# (title, passage, question, answer): short encyclopaedic facts, the shape of Self-RAG's
# Wikipedia passages and the answers grounded in them.
FACTS = [
    ("Mount Kilimanjaro", "Mount Kilimanjaro is a dormant volcano in Tanzania. It is the highest mountain in Africa, about 5,895 metres above sea level.",
     "What is the highest mountain in Africa?", "The highest mountain in Africa is Mount Kilimanjaro, in Tanzania."),
    ("Danube", "The Danube is the second-longest river in Europe. It flows through ten countries and empties into the Black Sea.",
     "Into which sea does the Danube flow?", "The Danube empties into the Black Sea."),
    ("Marie Curie", "Marie Curie was a physicist and chemist who conducted pioneering research on radioactivity. She won the Nobel Prize twice.",
     "What did Marie Curie research?", "Marie Curie did pioneering research on radioactivity and won two Nobel Prizes."),
    ("Honey bee", "The honey bee lives in colonies with a single queen. Worker bees collect nectar and pollen from flowers to make honey.",
     "What do worker bees collect?", "Worker bees collect nectar and pollen from flowers."),
    ("Lake Baikal", "Lake Baikal is a rift lake in Siberia. It is the deepest lake in the world and holds about a fifth of the fresh surface water on Earth.",
     "Which lake is the deepest in the world?", "Lake Baikal in Siberia is the deepest lake in the world."),
    ("Printing press", "Johannes Gutenberg introduced the movable-type printing press in Europe around 1440. It made books cheaper and spread literacy.",
     "Who introduced the printing press in Europe?", "Johannes Gutenberg introduced the printing press in Europe around 1440."),
    ("Photosynthesis", "Photosynthesis is the process by which plants use sunlight, water and carbon dioxide to make sugar. Oxygen is released as a by-product.",
     "What gas do plants release during photosynthesis?", "Plants release oxygen during photosynthesis."),
    ("Saturn", "Saturn is the sixth planet from the Sun. It is a gas giant known for its bright rings made of ice and rock.",
     "What are the rings of Saturn made of?", "The rings of Saturn are made of ice and rock."),
    ("Great Wall of China", "The Great Wall of China is a series of fortifications built across northern China. Its main parts were built during the Ming dynasty.",
     "During which dynasty were the main parts of the Great Wall built?", "The main parts of the Great Wall were built during the Ming dynasty."),
    ("Penguin", "Penguins are flightless seabirds of the Southern Hemisphere. Their wings have become flippers that they use to swim.",
     "Can penguins fly?", "No! Penguins are flightless birds; they use their wings as flippers to swim."),
]
SUPPORT = ["[Fully supported]", "[Partially supported]"]
DATASETS = ["nq", "wow", "asqa", "fever", "gpt4_alpaca"]


def _paragraph(fact) -> str:
    title, passage, _, _ = fact
    return f"[Retrieval]<paragraph>{title}\n{passage}</paragraph>[Relevant]"


def _good_record(index: int, rng: np.random.Generator) -> dict:
    kind = index % 6
    fact = FACTS[index % len(FACTS)]
    other = FACTS[(index + 3) % len(FACTS)]
    _, _, question, answer = fact
    support = SUPPORT[int(rng.integers(0, 2))]
    utility = f"[Utility:{int(rng.integers(3, 6))}]"
    record = {"id": f"selfrag-{index:04d}", "instruction": question, "input": "", "dataset_name": DATASETS[index % len(DATASETS)]}
    if kind == 0:  # one passage
        record["output"] = f"{_paragraph(fact)}{answer}{support}{utility}"
    elif kind == 1:  # two passages, each with its own answer segment
        record["output"] = (
            f"{_paragraph(fact)}{answer}{support}{_paragraph(other)}{other[3]}[Fully supported]{utility}"
        )
    elif kind == 2:  # extra input, appended to the instruction in the user turn
        record["instruction"] = "Answer the question using the retrieved evidence."
        record["input"] = question
        record["output"] = f"{_paragraph(fact)}{answer}{support}{utility}"
    elif kind == 3:  # text before the first passage, double spaces inside the answer
        record["output"] = f"Here is what the sources say.  {_paragraph(fact)}{answer.replace(' ', '  ', 2)}{support}{utility}"
    elif kind == 4:  # continued evidence, then a second passage
        record["output"] = (
            f"{_paragraph(fact)}{answer}[Fully supported][Continue to Use Evidence]It is well documented."
            f"{_paragraph(other)}{other[3]}{support}{utility}"
        )
    else:  # three passages
        third = FACTS[(index + 5) % len(FACTS)]
        record["output"] = (
            f"{_paragraph(fact)}{answer}{support}{_paragraph(other)}{other[3]}[Fully supported]"
            f"{_paragraph(third)}{third[3]}{support}{utility}"
        )
    return record


def _bad_records(rng: np.random.Generator, first_id: str) -> list[tuple[dict, str | dict]]:
    """(expectation, record or raw line) for each kind of bad input."""
    fact = FACTS[1]
    return [
        ({"case": "no_retrieval", "id": "selfrag-bad-noret", "reason": "no retrieved passage"},
         {"id": "selfrag-bad-noret", "instruction": "Write a short greeting.", "input": "",
          "output": "[No Retrieval]Hello, nice to meet you.[Utility:5]", "dataset_name": "gpt4_alpaca"}),
        ({"case": "irrelevant_passage", "id": "selfrag-bad-irrelevant", "reason": "judged [Irrelevant]"},
         {"id": "selfrag-bad-irrelevant", "instruction": fact[2], "input": "",
          "output": f"[Retrieval]<paragraph>{FACTS[4][0]}\n{FACTS[4][1]}</paragraph>[Irrelevant]{fact[3]}[Utility:2]",
          "dataset_name": "nq"}),
        ({"case": "unclosed_paragraph", "id": "selfrag-bad-unclosed", "reason": "unclosed <paragraph>"},
         {"id": "selfrag-bad-unclosed", "instruction": fact[2], "input": "",
          "output": f"[Retrieval]<paragraph>{fact[0]}\n{fact[1]}[Relevant]{fact[3]}", "dataset_name": "nq"}),
        ({"case": "empty_instruction", "id": "selfrag-bad-empty", "reason": "field 'instruction' is empty"},
         {"id": "selfrag-bad-empty", "instruction": "  ", "input": "",
          "output": f"{_paragraph(fact)}{fact[3]}[Fully supported][Utility:5]", "dataset_name": "nq"}),
        ({"case": "marker_in_passage", "id": "selfrag-bad-marker", "reason": "contains the marker '## Answer'"},
         {"id": "selfrag-bad-marker", "instruction": fact[2], "input": "",
          "output": f"[Retrieval]<paragraph>{fact[0]}\n## Answer: {fact[1]}</paragraph>[Relevant]{fact[3]}[Utility:4]",
          "dataset_name": "nq"}),
        ({"case": "duplicate_id", "reason": f"duplicate id {first_id!r}"},
         {"id": first_id, "instruction": fact[2], "input": "", "output": f"{_paragraph(fact)}{fact[3]}[Utility:5]"}),
        ({"case": "invalid_json", "reason": "is not valid JSON"},
         json.dumps({"id": "selfrag-bad-json", "instruction": fact[2], "output": fact[3]})[:40]),
    ]


def make_selfrag_fixture(out_dir: str | os.PathLike, seed: int = 0, n_records: int = 16, include_bad: bool = True) -> dict:
    """Write out_dir/selfrag.jsonl; return a summary with what each bad line must produce."""
    if n_records < 1:
        raise ValueError(f"n_records must be >= 1, got {n_records}")
    rng = np.random.default_rng(seed)
    entries: list[tuple[dict | None, str]] = [
        (None, json.dumps(_good_record(i, rng), ensure_ascii=False)) for i in range(n_records)
    ]
    if include_bad:
        bad = _bad_records(rng, first_id="selfrag-0000")
        slots = sorted(rng.integers(1, len(entries) + 1, size=len(bad)).tolist())
        for offset, (slot, (case, record)) in enumerate(zip(slots, bad)):
            line = record if isinstance(record, str) else json.dumps(record, ensure_ascii=False)
            entries.insert(int(slot) + offset, (dict(case), line))
    bad_cases = []
    for number, (case, _) in enumerate(entries, start=1):
        if case is not None:
            case["line"] = number
            case.setdefault("id", f"line:{number}")
            bad_cases.append(case)
    path = Path(out_dir) / "selfrag.jsonl"
    atomic_write_text(path, "\n".join(line for _, line in entries) + "\n")
    return {"records": str(path), "n_lines": len(entries), "n_good": n_records, "bad_cases": bad_cases}


def fixture_texts() -> list[str]:
    """Text the demo's tiny Llama-3 tokenizer is trained on, so fixture records tokenise compactly."""
    texts = []
    for title, passage, question, answer in FACTS:
        texts += [f"## Context {title}\n{passage} ## Answer {answer}", question, answer]
    texts += [
        "assistant\n\n## Context",
        "user\n\n",
        "system\n\n",
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n",
        "You are a helpful language assistant. You are able to understand the external context that the user provides, and assist the user with a variety of tasks using natural language.",
        "Answer the question using the retrieved evidence. Here is what the sources say. It is well documented.",
    ] + vl_fixture_texts()
    return texts


# ---------------------------------------------------------------- vision-language fixture

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30)}
# The demo's object kinds, with how often a scene starts from each (so some objects are popular)
# and the companion each tends to come with (so objects co-occur): POPE's popular and adversarial
# negatives then differ from its random ones (groundflow.evaluate.pope).
SCENE_OBJECTS = {"circle": 6, "square": 5, "triangle": 3, "star": 2, "cross": 2, "diamond": 1}
COMPANIONS = {"circle": "cross", "cross": "circle", "square": "diamond", "diamond": "square",
              "triangle": "star", "star": "triangle"}
COMPANION_PROBABILITY = 0.8
MAX_SCENE_OBJECTS = 3
NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}
VL_QUESTIONS = ("What shapes are in the image?", "How many shapes are in the image?", "Is there a {object} in the image?")


def _weighted_pick(rng: np.random.Generator, exclude: list[str]) -> str:
    kinds = [k for k in SCENE_OBJECTS if k not in exclude]
    weights = np.array([SCENE_OBJECTS[k] for k in kinds], dtype=float)
    return kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]


def scene_objects(rng: np.random.Generator) -> list[str]:
    """1-3 distinct kinds: a first by popularity, then usually its companion, then any other."""
    count = int(rng.integers(1, MAX_SCENE_OBJECTS + 1))
    objects = [_weighted_pick(rng, [])]
    while len(objects) < count:
        companion = COMPANIONS[objects[0]]
        if len(objects) == 1 and companion not in objects and rng.random() < COMPANION_PROBABILITY:
            objects.append(companion)
        else:
            objects.append(_weighted_pick(rng, objects))
    return objects


def _star(cx: float, cy: float, radius: float) -> list[tuple[float, float]]:
    points = []
    for i in range(10):
        r = radius if i % 2 == 0 else radius * 0.45
        angle = -np.pi / 2 + i * np.pi / 5
        points.append((cx + r * np.cos(angle), cy + r * np.sin(angle)))
    return points


def _draw_object(draw: ImageDraw.ImageDraw, kind: str, box: tuple[int, int, int, int], colour: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = box
    cx, cy, size = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0
    if kind == "circle":
        draw.ellipse(box, fill=colour)
    elif kind == "square":
        draw.rectangle(box, fill=colour)
    elif kind == "triangle":
        draw.polygon([(x0, y1), (cx, y0), (x1, y1)], fill=colour)
    elif kind == "star":
        draw.polygon(_star(cx, cy, size / 2), fill=colour)
    elif kind == "cross":
        bar = max(size // 6, 2)
        draw.rectangle((x0, cy - bar, x1, cy + bar), fill=colour)
        draw.rectangle((cx - bar, y0, cx + bar, y1), fill=colour)
    elif kind == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=colour)
    else:
        raise ValueError(f"no drawing for object kind {kind!r}")


def _draw_scene(rng: np.random.Generator, objects: list[tuple[str, str]]) -> Image.Image:
    """A white canvas with each (kind, colour) in its own quarter, so no object hides another."""
    width, height = int(rng.integers(72, 112)), int(rng.integers(72, 112))
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    cell_w, cell_h = width // 2, height // 2
    size = int(min(cell_w, cell_h) * 0.75)
    for (kind, colour), cell in zip(objects, rng.permutation(4)[: len(objects)]):
        left, top = (int(cell) % 2) * cell_w, (int(cell) // 2) * cell_h
        x0 = left + int(rng.integers(1, cell_w - size))
        y0 = top + int(rng.integers(1, cell_h - size))
        _draw_object(draw, kind, (x0, y0, x0 + size, y0 + size), COLOURS[colour])
    return image


def _listing(objects: list[tuple[str, str]]) -> str:
    phrases = [f"a {colour} {kind}" for kind, colour in objects]
    return phrases[0] if len(phrases) == 1 else f"{', '.join(phrases[:-1])} and {phrases[-1]}"


def scene_caption(objects: list[tuple[str, str]]) -> str:
    text = _listing(objects)
    return f"{text[0].upper()}{text[1:]} on a white background."


def scene_answer(question_index: int, objects: list[tuple[str, str]], asked: str) -> str:
    if question_index == 0:
        return f"The image shows {_listing(objects)}."
    if question_index == 1:
        count = len(objects)
        return "There is one shape." if count == 1 else f"There are {NUMBER_WORDS[count]} shapes."
    return "Yes." if asked in {kind for kind, _ in objects} else "No."


def make_vl_fixture(out_dir: str | os.PathLike, seed: int = 0, n_images: int = 8) -> dict:
    """Write out_dir/images/*.png (scenes of 1-3 drawn shapes), out_dir/scenes.json (POPE's
    annotations: [{image, objects}]), out_dir/pretrain.json (LCS-558K format: a caption naming
    every shape) and out_dir/instruct.json (LLaVA-665K format: what shapes, how many, or whether a
    kind is there, answered from the scene; one text-only record included)."""
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    pretrain, instruct, scenes = [], [], []
    colour_names = sorted(COLOURS)
    kinds = list(SCENE_OBJECTS)
    for index in range(n_images):
        objects = [(kind, colour_names[int(rng.integers(0, len(colour_names)))]) for kind in scene_objects(rng)]
        name = f"shape_{index:03d}.png"
        buffer = io.BytesIO()
        _draw_scene(rng, objects).save(buffer, format="PNG")
        atomic_write_bytes(out / "images" / name, buffer.getvalue())
        scenes.append({"image": name, "objects": [kind for kind, _ in objects]})
        pretrain.append({"id": f"pretrain-{index:03d}", "image": name, "conversations": [
            {"from": "human", "value": "Give a brief description of the image.\n<image>"},
            {"from": "gpt", "value": scene_caption(objects)},
        ]})
        question_index = index % len(VL_QUESTIONS)
        # the yes/no question asks about a present and an absent kind in turn
        present = [kind for kind, _ in objects]
        pool = present if (index // len(VL_QUESTIONS)) % 2 == 0 else [k for k in kinds if k not in present]
        asked = pool[int(rng.integers(0, len(pool)))]
        instruct.append({"id": f"instruct-{index:03d}", "image": name, "conversations": [
            {"from": "human", "value": f"<image>\n{VL_QUESTIONS[question_index].format(object=asked)}"},
            {"from": "gpt", "value": scene_answer(question_index, objects, asked)},
        ]})
    instruct.append({"id": "instruct-text", "conversations": [
        {"from": "human", "value": FACTS[0][2]}, {"from": "gpt", "value": FACTS[0][3]},
    ]})
    atomic_write_text(out / "scenes.json", json.dumps(scenes, indent=1) + "\n")
    atomic_write_text(out / "pretrain.json", json.dumps(pretrain, indent=1) + "\n")
    atomic_write_text(out / "instruct.json", json.dumps(instruct, indent=1) + "\n")
    return {"images": n_images, "pretrain": len(pretrain), "instruct": len(instruct), "scenes": len(scenes)}


def vl_fixture_texts() -> list[str]:
    """The words of the VL fixture's captions, questions and answers, and POPE's questions about its kinds."""
    texts = [f"A {colour} {kind} on a white background. The image shows a {colour} {kind}."
             for kind in SCENE_OBJECTS for colour in COLOURS]
    texts += [question.format(object=kind) for question in VL_QUESTIONS for kind in SCENE_OBJECTS]
    texts += [f"There are {word} shapes." for word in NUMBER_WORDS.values()] + ["There is one shape.", "Yes.", "No."]
    pope = load_prompt(None, QUESTION_PROMPT, fields=QUESTION_FIELDS)
    texts += [pope.format(article=article(kind), object=kind) for kind in SCENE_OBJECTS]
    return texts

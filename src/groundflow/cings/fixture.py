"""The CINGS demo fixture: Self-RAG training records and a small vision-language set.

`make_selfrag_fixture` writes `selfrag.jsonl` in the format of `selfrag/selfrag_train_data`
(`id, instruction, input, output, dataset_name`, the output with reflection tokens and
`<paragraph>` passages): single- and multi-passage records, records with an `input`, text before
the first passage, double spaces inside answers, and one record of each kind of bad input, whose
expected reject reason the summary lists. `make_vl_fixture` draws a few images with captions in
the LCS-558K format (stage 1) and questions in the LLaVA-665K format (stage 2).

Same seed, same bytes.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from groundflow.io.artifacts import atomic_write_bytes, atomic_write_text

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
        ({"case": "empty_instruction", "id": "selfrag-bad-empty", "reason": "empty instruction"},
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
    ] + [caption for _, _, caption in SHAPES] + [q for q, _ in VL_QUESTIONS]
    return texts


# ---------------------------------------------------------------- vision-language fixture

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30)}
SHAPES = [
    ("circle", "ellipse", "A {colour} circle on a white background."),
    ("square", "rectangle", "A {colour} square on a white background."),
    ("triangle", "polygon", "A {colour} triangle on a white background."),
]
VL_QUESTIONS = [("What shape is in the image?", "It is a {colour} {shape}."), ("What colour is the shape?", "The shape is {colour}.")]


def _draw_shape(rng: np.random.Generator, kind: str, colour: tuple[int, int, int]) -> Image.Image:
    width, height = int(rng.integers(56, 96)), int(rng.integers(56, 96))
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    size = min(width, height) // 2
    x0, y0 = int(rng.integers(2, width - size - 1)), int(rng.integers(2, height - size - 1))
    box = (x0, y0, x0 + size, y0 + size)
    if kind == "ellipse":
        draw.ellipse(box, fill=colour)
    elif kind == "rectangle":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(x0, y0 + size), (x0 + size // 2, y0), (x0 + size, y0 + size)], fill=colour)
    return image


def make_vl_fixture(out_dir: str | os.PathLike, seed: int = 0, n_images: int = 8) -> dict:
    """Write out_dir/images/*.png, out_dir/pretrain.json (LCS-558K format) and
    out_dir/instruct.json (LLaVA-665K format, one text-only record included)."""
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    pretrain, instruct = [], []
    colour_names = sorted(COLOURS)
    for index in range(n_images):
        shape, kind, caption = SHAPES[index % len(SHAPES)]
        colour = colour_names[int(rng.integers(0, len(colour_names)))]
        name = f"shape_{index:03d}.png"
        buffer = io.BytesIO()
        _draw_shape(rng, kind, COLOURS[colour]).save(buffer, format="PNG")
        atomic_write_bytes(out / "images" / name, buffer.getvalue())
        pretrain.append({"id": f"pretrain-{index:03d}", "image": name, "conversations": [
            {"from": "human", "value": "Give a brief description of the image.\n<image>"},
            {"from": "gpt", "value": caption.format(colour=colour)},
        ]})
        question, answer = VL_QUESTIONS[index % len(VL_QUESTIONS)]
        instruct.append({"id": f"instruct-{index:03d}", "image": name, "conversations": [
            {"from": "human", "value": f"<image>\n{question}"},
            {"from": "gpt", "value": answer.format(colour=colour, shape=shape)},
        ]})
    instruct.append({"id": "instruct-text", "conversations": [
        {"from": "human", "value": FACTS[0][2]}, {"from": "gpt", "value": FACTS[0][3]},
    ]})
    atomic_write_text(out / "pretrain.json", json.dumps(pretrain, indent=1) + "\n")
    atomic_write_text(out / "instruct.json", json.dumps(instruct, indent=1) + "\n")
    return {"images": n_images, "pretrain": len(pretrain), "instruct": len(instruct)}

"""A small RL pool of drawn images and the texts a tiny model's tokenizer is fitted to, for GWYS's
GRPO stage tests (tests/stage/test_gwys_grpo.py, test_gwys_learns.py)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw

from groundflow.gwys.data import write_pool
from groundflow.gwys.prompts import format_question, load_question_prompts

COLOURS = ("red", "blue", "green", "yellow")
SHAPES = ("circle", "square")
OPTIONS = [f"{chr(65 + k)}. {c}" for k, c in enumerate(COLOURS)]
# a four-tag answer and its parts, which the tokenizer learns as pieces
FOUR_TAG = "<prethink>{plan}</prethink>\n<caption>{caption}</caption>\n<think>{think}</think>\n<answer>{answer}</answer>"


def draw(colour: str, shape: str, size: int = 64, shift: int = 0) -> Image.Image:
    """A shape on white; `shift` moves it right and down, so scenes of one colour and shape differ."""
    image = Image.new("RGB", (size, size), "white")
    offset = shift * size // 16
    box = (size // 6 + offset, size // 6 + offset, size * 2 // 3 + offset, size * 2 // 3 + offset)
    pen = ImageDraw.Draw(image)
    (pen.ellipse if shape == "circle" else pen.rectangle)(box, fill=colour, outline="black")
    return image


def pool_row(i: int, media: str, *, numerical: bool = False, data_type: str = "image") -> dict:
    colour, shape = COLOURS[i % len(COLOURS)], SHAPES[i % len(SHAPES)]
    if numerical:
        problem, options, answer, kind = f"How many {shape}s are there?", [], "1", "numerical"
    else:
        problem, options, answer, kind = f"What colour is the {shape}?", OPTIONS, chr(65 + i % len(COLOURS)), "multiple choice"
    return dict(id=f"q{i}", line=i + 1, problem=problem, problem_type=kind, options=options,
                solution=f"<answer>{answer}</answer>", answer=answer, data_type=data_type, media=media,
                format_question=format_question(problem, options),
                max_frames=16 if data_type == "video" else None, source="drawn")


def write_drawn_pool(folder: Path, n: int = 6, *, extra_rows: list[dict] = ()) -> tuple[Path, Path]:
    """(pool.parquet, media folder): n image rows (multiple choice, every third numerical), plus
    `extra_rows` as given (e.g. a video row, a row whose image is missing)."""
    media = folder / "media"
    media.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        name = f"scene{i}.png"
        draw(COLOURS[i % len(COLOURS)], SHAPES[i % len(SHAPES)], shift=i // len(COLOURS)).save(media / name)
        rows.append(pool_row(i, name, numerical=i % 3 == 2))
    pool = folder / "pool.parquet"
    write_pool(pd.DataFrame([*rows, *extra_rows]).astype({"max_frames": "Int64", "line": "int64"}), pool)
    return pool, media


def tokenizer_texts(form: str = "four_tag", n: int = 6) -> list[str]:
    """The prompts of the pool's questions in `form` and four-tag answers, so the tags and the
    prompt words are whole tokens of the fitted tokenizer."""
    prompts = load_question_prompts(form)
    texts = []
    for i in range(n):
        row = pool_row(i, "x.png", numerical=i % 3 == 2)
        texts.append(prompts.user_text(row["format_question"], row["problem_type"]))
        texts.append(row["problem"])
    for answer in "ABCD1":
        texts += [FOUR_TAG.format(plan="look", caption="a shape", think="it is so", answer=answer)] * 8
        texts += [f"<think>it is so</think><answer>{answer}</answer>"] * 8
    return texts

"""POPE: object hallucination of a vision-language model (Li et al., 2023, "Evaluating Object
Hallucination in Large Vision-Language Models"), for any LLaVA checkpoint.

Scenes. The annotations are `{image, objects: [name, ...]}` records, a JSON list or one per line
(the JSON-lines form of POPE's own annotation files, e.g. its COCO val2014 ground truth): an
image (a path relative to the image folder) and the objects in it; the file is read through
`groundflow.io.lines` (a byte-order mark and CRLF accepted), and a line that is not UTF-8 text or
not JSON is rejected with its line and the reason. Object names are stripped, lower-cased and
de-duplicated (an object is a category: two cups are one "cup"). An entry without an image name,
with a repeated image or without any object is rejected with the reason (its id is `scene:N`, its
1-based position, when it has no usable image name; otherwise the image name).

Questions (`build_questions`), POPE's construction. A scene whose image the folder lacks, or
with fewer than `min_objects` objects, is rejected; of the others, `images` are sampled (seeded;
all when None) and the rest rejected as not sampled. Over the sampled scenes, an object's
frequency is the number of scenes it is in, and two objects co-occur in a scene holding both.
Per image, its first `positives_per_image` objects in annotation order (all when it has fewer)
are asked about, answer "yes"; each split adds one absent object per positive, answer "no":
- random: a seeded sample of the absent objects;
- popular: the absent objects of highest frequency;
- adversarial: for each positive in turn, the absent object not yet taken that co-occurs most
  with it.
Ties (and an adversarial positive with no co-occurring absent object left, where POPE draws at
random) go to the more frequent object, then to the name in alphabetical order. An image with
fewer absent objects than positives cannot fill a split and is rejected with the count. Each
split holds the same positives, as POPE's split files do. Randomness is seeded by (seed, image
name), so an image's random negatives do not depend on the order of the scenes. The question is
the prompt file filled with {article} ("an" before a vowel letter, else "a") and {object}
(POPE swapped "a" for "an" by replacing every "a" of its template, which also wrote "imange").

Answers (`parse_answer`). Only the first sentence counts: the text up to the first ".", "!", "?"
or line break. It is "no" when one of its words (letters and apostrophes, lower-cased) is a
negation: no, not, none, nothing, nobody, never, nope, cannot, or a word ending in "n't"; else
"yes". This extends POPE's own reading (first sentence up to ".", commas removed, words split at
spaces, "no" when one is exactly "No", "no" or "not"): ours also reads "NO", "Not ...", "no!",
"None" and "I don't see one" as no; like POPE it never reads "know" or "notable" as no. An empty
answer has no negation and reads "yes", as in POPE; `pope_metrics` counts such answers
(`n_empty`) so a silent model shows.

Metrics per split (`pope_metrics`), "yes" being the positive class: accuracy, precision, recall,
F1 and the yes-ratio (the share of "yes" predictions). Precision is NaN when the model never says
"yes" (POPE's code divides by zero there); F1 is NaN when precision or recall is, 0 when both are 0.

The model step (`answer_questions`) reaches the model through the `Generator` protocol only
(groundflow.generate.backends, greedy, a few tokens), so an HF LLaVA and an OpenAI-compatible
server answer alike; everything above it is pure (no model, no disk).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from groundflow.io.lines import read_json_records
from groundflow.io.stage import StageResult, rejects_frame
from groundflow.vision.image_io import ImageMemo

if TYPE_CHECKING:  # backends are imported where used, so the pure core stays light
    from groundflow.generate.backends import ChatPrompt, Generator, SamplingParams

QUESTIONS_STAGE = "pope_questions"
ANSWERS_STAGE = "pope_answers"
SPLITS = ("random", "popular", "adversarial")
YES, NO = "yes", "no"
# The packaged question prompt (src/groundflow/prompts/pope/question.txt) and the fields it fills.
QUESTION_PROMPT = "pope/question"
QUESTION_FIELDS = frozenset({"article", "object"})

NEGATIONS = frozenset({"no", "not", "none", "nothing", "nobody", "never", "nope", "cannot"})
_FIRST_SENTENCE_END = re.compile(r"[.!?\n]")
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")


# ---------------------------------------------------------------------------------------------
# scenes


@dataclass(frozen=True)
class Scene:
    id: str
    image: str
    objects: tuple[str, ...]


@dataclass
class ParsedScenes:
    scenes: list[Scene]
    rejects: list[tuple[str, str]]
    input_ids: list[str]  # one per annotation entry, in order: what the accounting counts


def normalise_object(name: str) -> str:
    return " ".join(name.split()).lower()


@dataclass(frozen=True)
class UnparsableLine:
    """A line of a JSON-lines annotation file that is not JSON."""

    error: str


def load_scene_entries(source: str | os.PathLike | bytes, name: str = "annotations") -> list[object]:
    """The entries of an annotation file (a path or its bytes, through `groundflow.io.lines`): a JSON
    list, or one JSON value per non-blank line, where a line that is not UTF-8 text or not JSON
    becomes an `UnparsableLine`; a list that is not JSON is an error."""
    import json

    try:
        return [entry.value if entry.error is None else UnparsableLine(entry.error)
                for entry in read_json_records(source)]
    except json.JSONDecodeError as e:
        raise ValueError(f"{name}: not a valid JSON list of {{image, objects}}: {e}") from None


def parse_scenes(entries: Sequence[object]) -> ParsedScenes:
    """Well-formed scenes of the annotation entries, and the rejected entries with why."""
    if not isinstance(entries, (list, tuple)):
        raise ValueError(f"POPE annotations must be a JSON list of {{image, objects}}, not {type(entries).__name__}")
    scenes: list[Scene] = []
    rejects: list[tuple[str, str]] = []
    input_ids: list[str] = []
    seen: set[str] = set()
    for position, entry in enumerate(entries, start=1):
        image = entry.get("image") if isinstance(entry, dict) else None
        usable_name = isinstance(image, str) and image.strip() != "" and image not in seen
        scene_id = image if usable_name else f"scene:{position}"
        input_ids.append(scene_id)
        if isinstance(entry, UnparsableLine):
            rejects.append((scene_id, f"annotation {position}: {entry.error}"))
            continue
        if not isinstance(entry, dict):
            rejects.append((scene_id, f"annotation {position} is a {type(entry).__name__}, not an object {{image, objects}}"))
            continue
        if not isinstance(image, str) or not image.strip():
            rejects.append((scene_id, f"annotation {position} has no image name"))
            continue
        if image in seen:
            rejects.append((scene_id, f"annotation {position}: image {image!r} was annotated before; only its first annotation counts"))
            continue
        seen.add(image)
        objects = entry.get("objects")
        if not isinstance(objects, list) or not all(isinstance(o, str) for o in objects):
            rejects.append((scene_id, f"image {image!r}: objects must be a list of names"))
            continue
        names = tuple(dict.fromkeys(n for n in (normalise_object(o) for o in objects) if n))
        if not names:
            rejects.append((scene_id, f"image {image!r} has no objects"))
            continue
        scenes.append(Scene(id=scene_id, image=image, objects=names))
    return ParsedScenes(scenes=scenes, rejects=rejects, input_ids=input_ids)


@dataclass(frozen=True)
class ObjectStats:
    """Over a set of scenes: each object's frequency (scenes holding it) and co-occurrences."""

    frequency: dict[str, int]
    cooccurrence: dict[tuple[str, str], int]  # both orders of each pair

    @classmethod
    def of(cls, scenes: Iterable[Scene]) -> "ObjectStats":
        frequency: dict[str, int] = {}
        cooccurrence: dict[tuple[str, str], int] = {}
        for scene in scenes:
            for a in scene.objects:
                frequency[a] = frequency.get(a, 0) + 1
                for b in scene.objects:
                    if a != b:
                        cooccurrence[(a, b)] = cooccurrence.get((a, b), 0) + 1
        return cls(frequency=frequency, cooccurrence=cooccurrence)

    @property
    def vocabulary(self) -> list[str]:
        return sorted(self.frequency)

    def by_popularity(self, candidates: Iterable[str]) -> list[str]:
        return sorted(candidates, key=lambda o: (-self.frequency.get(o, 0), o))

    def by_cooccurrence(self, anchor: str, candidates: Iterable[str]) -> list[str]:
        return sorted(candidates, key=lambda o: (-self.cooccurrence.get((anchor, o), 0), -self.frequency.get(o, 0), o))


# ---------------------------------------------------------------------------------------------
# questions


def _rng(seed: int, image: str, purpose: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}\x00{image}\x00{purpose}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def positive_objects(scene: Scene, n: int) -> list[str]:
    """The first n objects in annotation order, as POPE takes them."""
    return list(scene.objects[:n])


def negative_objects(split: str, scene: Scene, positives: Sequence[str], stats: ObjectStats, seed: int) -> list[str]:
    """The len(positives) absent objects of `split` (the caller checks there are enough)."""
    absent = [o for o in stats.vocabulary if o not in scene.objects]
    n = len(positives)
    if split == "random":
        picked = _rng(seed, scene.image, "random").choice(len(absent), size=n, replace=False)
        return [absent[i] for i in picked]
    if split == "popular":
        return stats.by_popularity(absent)[:n]
    if split == "adversarial":
        chosen: list[str] = []
        for anchor in positives:
            chosen.append(next(o for o in stats.by_cooccurrence(anchor, absent) if o not in chosen))
        return chosen
    raise ValueError(f"unknown POPE split {split!r}; one of {', '.join(SPLITS)}")


def question_id(image: str, split: str, obj: str) -> str:
    return f"{image}|{split}|{obj}"


def article(obj: str) -> str:
    return "an" if obj[:1] in "aeiou" else "a"


def select_scenes(scenes: Sequence[Scene], *, min_objects: int = 1, images: int | None = None, seed: int = 0,
                  image_exists: Callable[[str], bool] | None = None) -> tuple[list[Scene], list[tuple[str, str]]]:
    """The scenes POPE is built on (see the module docstring), and the others with why."""
    if min_objects < 1 or (images is not None and images < 1):
        raise ValueError(f"need min_objects >= 1 and images >= 1 (or None), got {min_objects}, {images}")
    eligible: list[Scene] = []
    rejects: list[tuple[str, str]] = []
    for scene in scenes:
        if image_exists is not None and not image_exists(scene.image):
            rejects.append((scene.id, f"image {scene.image!r} is not in the image folder"))
        elif len(scene.objects) < min_objects:
            rejects.append((scene.id, f"image {scene.image!r} has {len(scene.objects)} objects, fewer than "
                                      f"min_objects={min_objects}"))
        else:
            eligible.append(scene)
    if images is None or images >= len(eligible):
        return eligible, rejects
    picked = set(_rng(seed, "", "images").choice(len(eligible), size=images, replace=False).tolist())
    for index, scene in enumerate(eligible):
        if index not in picked:
            rejects.append((scene.id, f"image {scene.image!r} is not among the {images} images sampled of "
                                      f"{len(eligible)} eligible"))
    return [scene for index, scene in enumerate(eligible) if index in picked], rejects


QUESTION_COLUMNS = ["id", "scene", "image", "split", "object", "label", "question", "prompt_version"]


def build_questions(scenes: Sequence[Scene], *, question_template: str, positives_per_image: int,
                    splits: Sequence[str] = SPLITS, seed: int = 0, min_objects: int = 1, images: int | None = None,
                    image_exists: Callable[[str], bool] | None = None,
                    prompt_version: str = "") -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """The question table of the selected scenes, and the rejected scenes with why.

    `question_template` fills {article} and {object} (the question prompt's text);
    `image_exists(image)`, when given, rejects a scene whose image the folder lacks. Columns:
    id (image|split|object), scene, image, split, object, label (yes/no), question, prompt_version.
    """
    if positives_per_image < 1:
        raise ValueError(f"positives_per_image must be >= 1, not {positives_per_image}")
    unknown = [s for s in splits if s not in SPLITS]
    if unknown or not splits or len(set(splits)) != len(splits):
        raise ValueError(f"POPE splits must be distinct names among {', '.join(SPLITS)}; got {list(splits)}")
    selected, rejects = select_scenes(scenes, min_objects=min_objects, images=images, seed=seed,
                                      image_exists=image_exists)
    stats = ObjectStats.of(selected)
    rows: list[dict] = []
    for scene in selected:
        positives = positive_objects(scene, positives_per_image)
        n_absent = len(stats.vocabulary) - len(scene.objects)
        if n_absent < len(positives):
            rejects.append((scene.id, f"image {scene.image!r}: only {n_absent} of the {len(stats.vocabulary)} known "
                                      f"objects are absent, fewer than the {len(positives)} negatives each split needs"))
            continue
        for split in splits:
            negatives = negative_objects(split, scene, positives, stats, seed)
            for obj, label in [(o, YES) for o in positives] + [(o, NO) for o in negatives]:
                rows.append({"id": question_id(scene.image, split, obj), "scene": scene.id, "image": scene.image,
                             "split": split, "object": obj, "label": label,
                             "question": question_template.format(article=article(obj), object=obj).strip(),
                             "prompt_version": prompt_version})
    return pd.DataFrame(rows, columns=QUESTION_COLUMNS), rejects


# ---------------------------------------------------------------------------------------------
# answers and metrics


def answer_words(text: str) -> list[str]:
    """The words of the answer's first sentence, lower-cased (curly apostrophes made straight)."""
    first = _FIRST_SENTENCE_END.split(text.strip(), maxsplit=1)[0]
    return _WORD.findall(first.lower().replace("\u2019", "'"))


def parse_answer(text: str) -> str:
    """"no" when the first sentence has a negation word, else "yes" (see the module docstring)."""
    negated = any(word in NEGATIONS or word.endswith("n't") for word in answer_words(text))
    return NO if negated else YES


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else math.nan


def split_metrics(labels: Sequence[str], predictions: Sequence[str], n_empty: int = 0) -> dict:
    """Counts and scores of one split, "yes" the positive class."""
    if len(labels) != len(predictions):
        raise ValueError(f"{len(labels)} labels but {len(predictions)} predictions")
    for value in [*labels, *predictions]:
        if value not in (YES, NO):
            raise ValueError(f"labels and predictions are 'yes' or 'no', not {value!r}")
    pairs = list(zip(labels, predictions))
    tp = sum(1 for gold, said in pairs if gold == YES and said == YES)
    fp = sum(1 for gold, said in pairs if gold == NO and said == YES)
    tn = sum(1 for gold, said in pairs if gold == NO and said == NO)
    fn = sum(1 for gold, said in pairs if gold == YES and said == NO)
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    if math.isnan(precision) or math.isnan(recall):
        f1 = math.nan
    else:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"n": len(pairs), "tp": tp, "fp": fp, "tn": tn, "fn": fn, "accuracy": _ratio(tp + tn, len(pairs)),
            "precision": precision, "recall": recall, "f1": f1, "yes_ratio": _ratio(tp + fp, len(pairs)),
            "n_empty": n_empty}


METRIC_COLUMNS = ["split", "n", "tp", "fp", "tn", "fn", "accuracy", "precision", "recall", "f1", "yes_ratio", "n_empty"]


def pope_metrics(answers: pd.DataFrame) -> pd.DataFrame:
    """One row per split (in POPE's order) from answers with split, label, prediction, answer."""
    missing = {"split", "label", "prediction", "answer"} - set(answers.columns)
    if missing:
        raise ValueError(f"POPE answers lack the columns {sorted(missing)}")
    rows = []
    present = [s for s in SPLITS if s in set(answers["split"])]
    strays = sorted(set(answers["split"]) - set(SPLITS))
    if strays:
        raise ValueError(f"unknown POPE splits in the answers: {strays}")
    for split in present:
        part = answers[answers["split"] == split]
        n_empty = sum(1 for text in part["answer"] if not answer_words(str(text)))
        rows.append({"split": split, **split_metrics(list(part["label"]), list(part["prediction"]), n_empty)})
    return pd.DataFrame(rows, columns=METRIC_COLUMNS)


def question_prompt(question: str, image, system_prompt: str = "") -> "ChatPrompt":
    """One user turn with the image and the question (after a system turn when one is given: a
    checkpoint trained with a system prompt is asked with it)."""
    from groundflow.generate.backends import ChatPrompt

    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": question}]
    return ChatPrompt(messages=messages, image=image)


def answer_questions(questions: pd.DataFrame, generator: "Generator", params: "SamplingParams", *,
                     image_dir: str | Path, system_prompt: str = "") -> StageResult:
    """Add `answer` (the model's text) and `prediction` (`parse_answer`) to each question.

    One generate() call for the chunk; each image is read once. A question whose image cannot be
    read is rejected with the reason. Greedy decoding is expected (params.n == 1).
    """
    if params.n != 1:
        raise ValueError(f"POPE takes one answer per question, not n={params.n}")
    image_dir = Path(image_dir)
    records = questions.reset_index(drop=True)
    images = ImageMemo(image_dir)
    prompts, positions, rejected = [], [], []
    for position, row in enumerate(records.itertuples(index=False)):
        image, problem = images.get(str(row.image))
        if problem is not None:
            rejected.append((str(row.id), f"question {row.id}: {problem}"))
            continue
        prompts.append(question_prompt(str(row.question), image, system_prompt))
        positions.append(position)
    outputs = generator.generate(prompts, params) if prompts else []
    from groundflow.generate.backends import check_result_shape

    check_result_shape(outputs, prompts, 1)
    kept = records.iloc[positions].reset_index(drop=True)
    kept["answer"] = pd.Series([texts[0] for texts in outputs], dtype=object)
    kept["prediction"] = pd.Series([parse_answer(texts[0]) for texts in outputs], dtype=object)
    return StageResult(kept=kept, rejects=rejects_frame(ANSWERS_STAGE, rejected))


__all__ = [
    "ANSWERS_STAGE",
    "METRIC_COLUMNS",
    "NEGATIONS",
    "NO",
    "QUESTIONS_STAGE",
    "QUESTION_COLUMNS",
    "QUESTION_FIELDS",
    "QUESTION_PROMPT",
    "SPLITS",
    "YES",
    "ObjectStats",
    "ParsedScenes",
    "Scene",
    "answer_questions",
    "article",
    "UnparsableLine",
    "answer_words",
    "build_questions",
    "negative_objects",
    "parse_answer",
    "load_scene_entries",
    "parse_scenes",
    "pope_metrics",
    "positive_objects",
    "question_id",
    "question_prompt",
    "select_scenes",
    "split_metrics",
]

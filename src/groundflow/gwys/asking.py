"""Asking a policy GWYS' questions: each pool-table row (`schemas/gwys_pool`, the RL pool or an
evaluation set) as one chat prompt with its image, in an output form's prompt.

The user turn is the image, then the form's question prompt around the row's `format_question`
and the type's instruction (`QuestionPrompts.user_text`), with no system turn, as the original asks
in RL and evaluation (a Qwen chat template then adds its default system turn). Each image is read
once however many rows show it. A row whose image cannot be read, or a video row (the vision
generator takes images), is rejected with the reason, naming the row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from groundflow.generate.backends import ChatPrompt
from groundflow.gwys.prompts import QuestionPrompts
from groundflow.vision.image_io import ImageMemo


@dataclass
class AskedRows:
    """The rows that can be asked (in input order), their prompts, and the (id, reason) of the rest."""

    rows: pd.DataFrame
    prompts: list[ChatPrompt]
    rejected: list[tuple[str, str]] = field(default_factory=list)


def row_text(prompts: QuestionPrompts, row) -> str:
    """The user turn's text for one pool row."""
    return prompts.user_text(str(row.format_question), str(row.problem_type))


def ask_rows(records: pd.DataFrame, prompts: QuestionPrompts, media_root: str | Path) -> AskedRows:
    """A chat prompt per row of `records` (see the module docstring)."""
    media_root = Path(media_root)
    records = records.reset_index(drop=True)
    images = ImageMemo(media_root)
    asked, chat, rejected = [], [], []
    for position, row in enumerate(records.itertuples(index=False)):
        if row.data_type != "image":
            rejected.append((str(row.id), f"sample {row.id}: a {row.data_type} row; the vision generator takes images"))
            continue
        image, problem = images.get(str(row.media))
        if problem is not None:
            rejected.append((str(row.id), f"sample {row.id}: {problem}"))
            continue
        chat.append(ChatPrompt(messages=[{"role": "user", "content": row_text(prompts, row)}], image=image))
        asked.append(position)
    return AskedRows(rows=records.iloc[asked].reset_index(drop=True), prompts=chat, rejected=rejected)


def options_list(value) -> list[str] | None:
    """A row's options as a plain list (Parquet gives an array), None when it has none."""
    if value is None:
        return None
    options = [str(option) for option in value]
    return options or None

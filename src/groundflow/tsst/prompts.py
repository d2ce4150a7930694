"""TSST's one question prompt and one option format, for training, search, value labels and judge alike.

The original renders options two ways (`A. x` lines at search and in the tree labeller, `(A) x;`
in its SFT builders, so the policy was trained on one and asked in the other) and says two system
sentences. Here every stage renders `A. x`, one option per line, and the conversation is Vicuna v1
(`train.chat_formats`, "vicuna_v1") with its default system sentence, the one LLaVA-1.5 inference
uses. The prompt texts are files (`prompts/tsst/question_image.txt`, `question_text.txt`): a
question without an image is asked without "Given the image" and without an `<image>` token, in
training and at inference alike (the original put a zero image and the token in at inference only).
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Sequence

from groundflow.prompts import PromptText, load_prompt

CONVERSATION_FORMAT = "vicuna_v1"
LETTERS = string.ascii_uppercase
IMAGE_PLACEHOLDER = "<image>"
FIELDS = frozenset({"question", "options"})


def option_letter(label: int) -> str:
    """The letter of a 1-based answer label (1 -> "A")."""
    if isinstance(label, bool) or not isinstance(label, int) or not 1 <= label <= len(LETTERS):
        raise ValueError(f"an answer label is an integer in 1..{len(LETTERS)}, not {label!r}")
    return LETTERS[label - 1]


def format_options(choices: Sequence[str]) -> str:
    """`A. first` / `B. second` ..., one per line."""
    if not choices:
        raise ValueError("a multiple-choice question needs at least one choice")
    if len(choices) > len(LETTERS):
        raise ValueError(f"{len(choices)} choices; at most {len(LETTERS)} have letters")
    return "\n".join(f"{LETTERS[i]}. {choice}" for i, choice in enumerate(choices))


@dataclass(frozen=True)
class QuestionPrompts:
    """The prompt for questions with an image and for questions without one."""

    with_image: PromptText
    text_only: PromptText

    @property
    def version(self) -> str:
        return f"{self.with_image.version}+{self.text_only.version}"

    def render(self, question: str, choices: Sequence[str], *, has_image: bool) -> str:
        """The user turn's text (without the image placeholder)."""
        template = self.with_image if has_image else self.text_only
        return template.format(question=question, options=format_options(choices))

    def human_turn(self, question: str, choices: Sequence[str], *, has_image: bool) -> str:
        """The user turn as a LLaVA-format record's `human` value: `<image>\\n` first when it has one."""
        text = self.render(question, choices, has_image=has_image)
        return f"{IMAGE_PLACEHOLDER}\n{text}" if has_image else text


def load_question_prompts(with_image: str | None = None, text_only: str | None = None) -> QuestionPrompts:
    """A user's prompt files (config `tsst.prompts`), or ours where a path is None."""
    return QuestionPrompts(
        with_image=load_prompt(with_image, "tsst/question_image", fields=FIELDS),
        text_only=load_prompt(text_only, "tsst/question_text", fields=FIELDS),
    )

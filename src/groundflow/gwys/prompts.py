"""GWYS's prompt texts: one question prompt per output form, shared by SFT, RL and evaluation.

Two forms (spec §3, §4, §5.3):
- "four_tag": `<prethink>plan</prethink>\\n<caption>description</caption>\\n<think>reasoning</think>\\n<answer>X</answer>`
  (the paper's model: cold-start SFT, RL "ours", its evaluation);
- "think_answer": `<think>reasoning</think><answer>X</answer>` (the baseline GRPO from the base model).

The texts are ours (`prompts/gwys/four_tag.txt`, `think_answer.txt`, or a user's file with the one
field `{question}`), written in the spec's structure; the original's strings are not copied. RL and
evaluation append the per-problem-type instruction (`prompts/gwys/type_<type>.txt`, no fields) on a
new line; cold-start SFT does not, as in the original (its LLaVA-CoT records carry no type). The
caption judge's request (spec §5.1) reuses the same per-type instruction, since the judge answers in
the same `<answer>` tag the policy does.

A question with options is `problem`, a new line, "Options:", then one option per line
(`format_question`); the original wrote "Options:" straight after the problem with no separator.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from groundflow.generate.backends import ChatPrompt
from groundflow.prompts import PromptText, load_prompt

FORMS = ("four_tag", "think_answer")
# Video-R1's problem types (spec §2.2); the released RL file holds the first two only.
PROBLEM_TYPES = ("multiple choice", "numerical", "OCR", "free-form", "regression")
TYPE_PROMPT_NAMES = {"multiple choice": "multiple_choice", "numerical": "numerical", "OCR": "ocr",
                     "free-form": "free_form", "regression": "regression"}
QUESTION_FIELDS = frozenset({"question"})
JUDGE_FIELDS = frozenset({"caption", "question", "type_instruction"})

# "A. text", "A) text", "(A) text": an option as Video-R1 stores it, its letter first.
_LETTERED_OPTION = re.compile(r"^\s*\(?([A-Z])[.):]\s*(.*?)\s*$", re.DOTALL)


def split_option(option: str) -> tuple[str, str] | None:
    """("A", "text") of a lettered option ("A. text"), or None when it carries no letter."""
    found = _LETTERED_OPTION.match(option)
    return (found.group(1), found.group(2)) if found else None


def format_question(problem: str, options: Sequence[str] = ()) -> str:
    """The question as the policy and the caption judge see it: the problem, then its options."""
    problem = problem.strip()
    if not options:
        return problem
    return problem + "\nOptions:\n" + "\n".join(option.strip() for option in options)


def check_form(form: str) -> str:
    if form not in FORMS:
        raise ValueError(f"an output form is one of {list(FORMS)}, not {form!r}")
    return form


@dataclass(frozen=True)
class QuestionPrompts:
    """One form's question prompt and the per-type instructions."""

    form: str
    question: PromptText
    type_instructions: Mapping[str, PromptText] = field(default_factory=dict)

    @property
    def version(self) -> str:
        return "+".join([self.question.version, *(self.type_instructions[t].version for t in sorted(self.type_instructions))])

    def type_instruction(self, problem_type: str) -> str:
        if problem_type not in self.type_instructions:
            raise ValueError(f"no instruction for problem_type {problem_type!r} (known: {list(self.type_instructions)})")
        return self.type_instructions[problem_type].text.strip()

    def user_text(self, question: str, problem_type: str | None = None) -> str:
        """The user turn's text: the form's prompt around `question` (a `format_question`), and the
        type's instruction on a new line when `problem_type` is given (RL, evaluation)."""
        text = self.question.format(question=question.strip()).strip()
        if problem_type is None:
            return text
        return f"{text}\n{self.type_instruction(problem_type)}"


def load_type_instructions(paths: Mapping[str, str | None] | None = None) -> dict[str, PromptText]:
    """Ours for every problem type, a user's file where `paths[problem_type]` names one."""
    paths = dict(paths or {})
    unknown = set(paths) - set(PROBLEM_TYPES)
    if unknown:
        raise ValueError(f"type instructions for unknown problem types {sorted(unknown)} (known: {list(PROBLEM_TYPES)})")
    return {t: load_prompt(paths.get(t), f"gwys/type_{TYPE_PROMPT_NAMES[t]}", fields=frozenset()) for t in PROBLEM_TYPES}


def load_question_prompts(form: str, path: str | None = None,
                          type_paths: Mapping[str, str | None] | None = None) -> QuestionPrompts:
    """A form's prompt (a user's file, or ours when `path` is None) with the type instructions."""
    check_form(form)
    return QuestionPrompts(form=form, question=load_prompt(path, f"gwys/{form}", fields=QUESTION_FIELDS),
                           type_instructions=load_type_instructions(type_paths))


@dataclass(frozen=True)
class CaptionJudgePrompts:
    """The caption judge's system and user texts (spec §5.1): the judge sees only the caption and the
    question, never the image."""

    system: PromptText
    user: PromptText
    type_instructions: Mapping[str, PromptText]

    @property
    def version(self) -> str:
        return "+".join([self.system.version, self.user.version,
                         *(self.type_instructions[t].version for t in sorted(self.type_instructions))])

    def request(self, caption: str, question: str, problem_type: str) -> ChatPrompt:
        if problem_type not in self.type_instructions:
            raise ValueError(f"no instruction for problem_type {problem_type!r}")
        user = self.user.format(caption=caption, question=question,
                                type_instruction=self.type_instructions[problem_type].text.strip())
        return ChatPrompt(messages=[{"role": "system", "content": self.system.text.strip()},
                                    {"role": "user", "content": user}])


def load_caption_judge_prompts(user: str | None = None, system: str | None = None,
                               type_paths: Mapping[str, str | None] | None = None) -> CaptionJudgePrompts:
    return CaptionJudgePrompts(system=load_prompt(system, "gwys/caption_judge_system", fields=frozenset()),
                               user=load_prompt(user, "gwys/caption_judge", fields=JUDGE_FIELDS),
                               type_instructions=load_type_instructions(type_paths))

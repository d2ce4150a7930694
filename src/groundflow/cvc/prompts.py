"""What the CVC text-LLM steps put around their prompt files: question construction (step 3)
and answer extraction (T2).

The prompt texts themselves are files (groundflow/prompts/cvc/*.txt, or a user's, read with
groundflow.prompts.load_prompt; the entity prompt of step 1-0 by groundflow.cvc.entities); their
versions, stored with the outputs, come from the files' text. Here: the prefilled answer starts,
the fixed question shape of the typed mode and the suffixes the released data appends.
"""

from __future__ import annotations

# --- step 3: the question (free: the LLM writes it; typed: its type, then the fixed shape) -------
# The prompt texts are files (groundflow/prompts/cvc/instruction_free.txt, instruction_type.txt).

# Free mode: the answer is prefilled with the examples' marker, so the model writes the question.
QUESTION_ASSISTANT_PREFIX = "Question:"
# Typed mode: the type is scored as the continuation of this prefilled answer start.
TYPE_ASSISTANT_PREFIX = "Type:"

# The released data's human turn is the two-sentence header, a newline, then the question; the
# stored instruction keeps that newline (`instructions.INSTRUCTION_SEPARATOR`).
HEADER_SINGULAR = (
    "In the given image, there is {article} {type_phrase} heavily occluded by a cluster of gray blocks. "
    "Please answer the following question."
)
HEADER_PLURAL = (
    "In the given image, there are {type_phrase} heavily occluded by a cluster of gray blocks. "
    "Please answer the following question."
)
QUESTION = "What might the {type_phrase} occluded by the gray blocks be?"
# Appended by whoever builds the final prompt (trials, CoT samples): the seed baked it into the
# question and then appended it a second time when formatting chain-of-thought samples.
REASONING_SUFFIX = "Please provide your reasoning process and confirm a unique answer. Let's think step by step."
ANSWER_SUFFIX = "Please confirm a unique answer."


def type_messages(prompt, label: str, caption: str, object_types: list[str]) -> list[dict[str, str]]:
    """Chat messages asking for the type of one entity, from the typed-mode prompt file."""
    content = prompt.format(types=", ".join(object_types), caption=" ".join(caption.split()), label=label)
    return [{"role": "user", "content": content.rstrip()}]


def question_messages(prompt, label: str) -> list[dict[str, str]]:
    """Chat messages asking the LLM to write the question about one entity (free mode)."""
    return [{"role": "user", "content": prompt.format(label=label).rstrip()}]


# --- step T2: the short answer a trial's rationale settles on -------------------------------
# The prompt texts are files (groundflow/prompts/cvc/extraction_free.txt: the paper's free answer
# with `unknown` and comma-separated hedges; extraction_confined.txt: the demo's rationale-confined
# answer). The seed's few-shot extraction prompt ran to about 3.6k Llama tokens, close to
# Llama-2's 4,096-token window once a 384-token rationale was added; a few short examples carry
# the task.

# The answer is prefilled with the examples' marker, so the model writes the answer directly.
EXTRACTION_ASSISTANT_PREFIX = "Answer:"


def extraction_messages(prompt, rationale: str) -> list[dict[str, str]]:
    """Chat messages asking for the short answer of one rationale (answer prefilled separately).

    The rationale is put on one line (whitespace collapsed) so it reads like the examples.
    """
    return [{"role": "user", "content": prompt.format(rationale=" ".join(rationale.split())).rstrip()}]

"""Prompts of the CVC text-LLM steps: entity extraction (step 1-0); what question construction
(step 3) and answer extraction (T2) put around their prompt files (groundflow/prompts/cvc/*.txt).

The wording is ours; the content follows the seed's prompts. The seed's few-shot entity examples
contradicted its own rules in two places (an example whose label was not part of its full form,
and one that extracted a noun from inside a phrase the rules exclude); every example here obeys the
rules: each full form is copied verbatim from its caption and each label is a part of its full form.

Bump a version string whenever its prompt's text changes: the versions are stored with the
outputs, so a re-run can tell stale results from fresh ones.
"""

from __future__ import annotations

ENTITY_PROMPT_VERSION = "cvc-entities-v1"
PROMPT_VERSION = ENTITY_PROMPT_VERSION

ENTITY_BEGIN = "<begin>"
ENTITY_END = "<end>"
# The answer is prefilled with the opening marker, so the model starts directly with line 1.
ENTITY_ASSISTANT_PREFIX = f"{ENTITY_BEGIN}\n"

ENTITY_INSTRUCTIONS = """\
Read the image caption below and list the entities it mentions.

What is an entity:
- something concrete that one could point at in a picture: an object, an animal, a person, a place, a product;
- it need not have a proper name: "dog", "kitchen" and "traffic light" are entities;
- abstract nouns are never entities: feelings, states, qualities, sensations and actions ("joy", "silence", "speed", "a jump");
- an entity is a single word or a single noun phrase;
- if a noun phrase as a whole is not an entity, the nouns inside it are not entities either ("a moment of calm" gives nothing).

How to write an entity:
- first copy its full form exactly as the caption writes it, modifiers included ("two large brown dogs");
- then drop articles, numbers and describing words to obtain its label, keeping the words that name the thing ("dogs", "traffic light");
- write one entity per line as "N. full form -> label", numbered from 1, between <begin> and <end>.

Examples:

Caption: "Two men row a narrow boat with long oars across a calm lake."
<begin>
1. two men -> men
2. a narrow boat -> boat
3. long oars -> oars
4. a calm lake -> lake
<end>

Caption: "Another skier waits near the ski lift on a snowy mountain."
<begin>
1. another skier -> skier
2. the ski lift -> ski lift
3. a snowy mountain -> mountain
<end>

Caption: "The joy of a sunny afternoon at the beach with a red kite."
<begin>
1. the beach -> beach
2. a red kite -> kite
<end>

Now the caption to process:
Caption: "{caption}"
"""


def entity_messages(caption: str) -> list[dict[str, str]]:
    """Chat messages asking for the entities of one caption (answer prefilled separately)."""
    return [{"role": "user", "content": ENTITY_INSTRUCTIONS.format(caption=" ".join(caption.split()))}]


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

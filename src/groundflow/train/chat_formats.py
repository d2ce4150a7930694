"""Conversation formats by name: the one place that says how a LLaVA conversation becomes text.

A format is a chat template (Jinja, over HF's content-part messages or plain string contents).
Training (`train.conversations.render_conversation`) and prompting (`generate.vision.
render_vision_prompts`) both take their template from here, so a model is prompted in the layout
it was trained on. "model" means the checkpoint's own chat template.

- "vicuna_v1": LLaVA-1.5's `conv_vicuna_v1` (the stage-2 recipe, `--version v1`): the system
  sentence, then per turn "USER: <message>" + sep " " and "ASSISTANT: <answer>" + sep2, where sep2
  is "</s>" (Vicuna's EOS). Written as the tokenizer's `eos_token`, which for Vicuna is "</s>", so a
  tokenizer whose EOS has another spelling (the demo's tiny Llama) still ends each answer with its
  EOS. The image sits as "<image>\\n" before the text of its turn (LLaVA's preprocess_multimodal).
  No BOS in the text: the tokenizer adds it, as LLaVA's tokenizer call does.
- "cvc_t1": the prompt the CVC original sent to llava-hf/llava-1.5-*-hf for trial sampling,
  "USER: <image>\\n{query}\\nASSISTANT:" (a newline, not the HF template's space, before
  "ASSISTANT:"); an answer would follow as "ASSISTANT: <answer>" + EOS.
"""

from __future__ import annotations

MODEL_FORMAT = "model"

VICUNA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)

# Renders a message's text whether its content is a string or HF content parts (images first).
_TEXT_MACRO = (
    "{%- macro text(message) -%}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}"
    "{%- for part in message['content'] if part['type'] == 'image' -%}{{ '<image>\\n' }}{%- endfor -%}"
    "{%- for part in message['content'] if part['type'] == 'text' -%}{{ part['text'] }}{%- endfor -%}"
    "{%- endif -%}"
    "{%- endmacro -%}"
)

VICUNA_V1_CHAT_TEMPLATE = (
    _TEXT_MACRO
    + "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{{- text(messages[0]) + ' ' -}}{%- set messages = messages[1:] -%}"
    "{%- else -%}{{- '" + VICUNA_V1_SYSTEM.replace("'", "\\'") + " ' -}}{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}{{- 'USER: ' + text(message) + ' ' -}}"
    "{%- elif message['role'] == 'assistant' -%}{{- 'ASSISTANT: ' + text(message) + eos_token -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)

CVC_T1_CHAT_TEMPLATE = (
    _TEXT_MACRO
    + "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{- text(message) + '\\n' -}}"
    "{%- elif message['role'] == 'user' -%}{{- 'USER: ' + text(message) + '\\n' -}}"
    "{%- elif message['role'] == 'assistant' -%}{{- 'ASSISTANT: ' + text(message) + eos_token -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)

CONVERSATION_FORMATS = {"vicuna_v1": VICUNA_V1_CHAT_TEMPLATE, "cvc_t1": CVC_T1_CHAT_TEMPLATE}
FORMAT_NAMES = (MODEL_FORMAT, *CONVERSATION_FORMATS)


def chat_template_for(conversation_format: str) -> str | None:
    """The chat template of a named format; None for "model" (the checkpoint's own)."""
    if conversation_format == MODEL_FORMAT:
        return None
    try:
        return CONVERSATION_FORMATS[conversation_format]
    except KeyError:
        raise ValueError(f"unknown conversation format {conversation_format!r}; one of {list(FORMAT_NAMES)}") from None


def resolve_chat_template(chat_template: str | None) -> str | None:
    """A format name turned into its template; a template (or None) passed through unchanged.

    Lets every `chat_template=` argument take a format's name, so callers never hold a copy.
    """
    if chat_template is None:
        return None
    if chat_template in FORMAT_NAMES:
        return chat_template_for(chat_template)
    return chat_template

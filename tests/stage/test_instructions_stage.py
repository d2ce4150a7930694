"""Instruction generation's free mode (the paper's) on a real tiny Llama loaded from disk: plain
greedy generation through the HF backend, every record kept with a question in the released
layout or rejected with the reason (a random model mostly writes text that is no question)."""

import pandas as pd

from groundflow.cvc.instructions import generate_instructions, load_instruction_prompt, revealed_words
from groundflow.generate.backends import HFTextGenerator
from groundflow.io.stage import check_accounting
from groundflow.models.causal_lm import build_tiny_causal_lm, load_causal_lm
from groundflow.models.spec import ModelSpec

INSTANCES = pd.DataFrame({"id": ["a-bicycle", "b-dogs", "c-people"], "label": ["bicycle", "dogs", "people"],
                          "caption": ["A man rides a bicycle.", "Two dogs play.", "People wait for a bus."]})


def test_free_mode_on_a_tiny_llama_keeps_or_rejects_every_record(tmp_path):
    prompt = load_instruction_prompt("free")
    model_dir = build_tiny_causal_lm(tmp_path / "tiny", seed=0, texts=[prompt.text])
    model, tokenizer = load_causal_lm(ModelSpec(str(model_dir), device="cpu"))
    generator = HFTextGenerator(model, tokenizer, batch_size=2)
    result = generate_instructions(INSTANCES, generator, mode="free", prompt=prompt, max_new_tokens=24)
    assert check_accounting("instructions", INSTANCES["id"], result)["in"] == 3
    for row in result.kept.itertuples():
        header, question = row.instruction.split("\n")
        assert header and question and revealed_words(row.instruction, row.label) is None
    for reason in result.rejects["reason"]:
        assert " is unusable: " in reason or " would reveal the entity " in reason
    again = generate_instructions(INSTANCES, generator, mode="free", prompt=prompt, max_new_tokens=24)
    pd.testing.assert_frame_equal(again.kept, result.kept)  # greedy: the same text twice
    pd.testing.assert_frame_equal(again.rejects, result.rejects)

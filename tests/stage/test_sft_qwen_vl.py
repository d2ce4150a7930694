"""The shared SFT trainer on a tiny Qwen2.5-VL (issue 14, GWYS cold-start SFT).

Qwen's processor turns each image into a number of tokens that depends on the image's size, so the
trainer expands `<|image_pad|>` per image; the batches must equal what the processor itself builds
(ids, patches, grids, token modalities), under either label mask. Then full and LoRA training with
images, resume, the checkpoint reloading with from_pretrained and generating, and the GWYS script.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, GenerationConfig, Qwen2_5_VLForConditionalGeneration

from groundflow.models.qwen_vl import build_tiny_qwen_vl
from groundflow.models.vision_families import QWEN2_5_VL, image_tokens
from groundflow.train.config import ALL_BUT_PAD_AND_IMAGE, ASSISTANT_ONLY, SFTConfig
from groundflow.train.conversations import IGNORE_INDEX, loss_mask_fn, num_image_tokens, render_conversation
from groundflow.train.data import SFTCollator, build_examples
from groundflow.train.model_prep import configure_processor, lora_target_names, set_full_trainable
from groundflow.train.sft import train_sft

from script_harness import SCRIPTS, FakeSnakemake, run_script

TEXTS = ["What colour is the sky?", "The sky is blue.", "Name an animal that barks.", "A dog barks.",
         "<prethink>plan</prethink>\n<caption>a red square</caption>\n<think>it is red</think>\n<answer>A</answer>"]
# width x height: 6, 12 and 4 image tokens (the tiny processor resizes to 56..112 px a side)
IMAGES = {"wide.png": (70, 40), "tall.jpg": (90, 120), "small.png": (20, 20)}


def record(rid, image, question, answer):
    human = f"<image>\n{question}" if image else question
    return {"id": rid, **({"image": image} if image else {}),
            "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": answer}]}


RECORDS = [record("wide", "wide.png", TEXTS[0], TEXTS[1]), record("tall", "tall.jpg", TEXTS[2], TEXTS[3]),
           record("small", "small.png", TEXTS[0], TEXTS[4]), record("text", None, TEXTS[2], TEXTS[3])]


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    return build_tiny_qwen_vl(tmp_path_factory.mktemp("qwen") / "tiny-qwen", seed=0, texts=TEXTS)


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name, (width, height) in IMAGES.items():
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(root / name)
    return root


@pytest.fixture()
def processor(tiny_qwen):
    return AutoProcessor.from_pretrained(tiny_qwen)


def _batch(processor, image_root, records, mask):
    examples, skipped = build_examples(records, processor, loss_mask_fn(mask, max_length=4096), max_length=4096,
                                       image_root=image_root, vision=QWEN2_5_VL)
    assert skipped == []
    collator = SFTCollator(processor.tokenizer.pad_token_id, processor=processor, image_root=image_root,
                           vision=QWEN2_5_VL)
    return collator([{"input_ids": e.input_ids, "labels": e.labels, "image": e.image, "id": e.id} for e in examples])


def _summary(out_dir):
    return json.loads((Path(out_dir) / "train_summary.json").read_text())


def test_batches_equal_what_the_processor_builds_with_a_token_count_per_image(processor, image_root):
    batch = _batch(processor, image_root, RECORDS, ASSISTANT_ONLY)
    pad, image_id = processor.tokenizer.pad_token_id, processor.image_token_id
    counts = [int((batch["input_ids"][row] == image_id).sum()) for row in range(len(RECORDS))]
    assert counts == [6, 12, 4, 0]  # a fixed per-image count could not match all three images
    assert counts[:3] == [image_tokens(processor, *IMAGES[r["image"]]) for r in RECORDS[:3]]

    pictures = [Image.open(image_root / r["image"]).convert("RGB") for r in RECORDS[:3]]
    for row, rec in enumerate(RECORDS):
        text = render_conversation(rec["conversations"], processor).text  # one <|image_pad|> per image
        expected = processor(text=[text], images=[pictures[row]] if rec.get("image") else None, return_tensors="pt")
        n = expected["input_ids"].shape[1]
        assert batch["input_ids"][row, :n].tolist() == expected["input_ids"][0].tolist()
        assert batch["input_ids"][row, n:].eq(pad).all() and batch["attention_mask"][row].sum() == n
        assert batch["mm_token_type_ids"][row, :n].tolist() == expected["mm_token_type_ids"][0].tolist()
    together = processor.image_processor(images=pictures, return_tensors="pt")
    assert torch.equal(batch["pixel_values"], together["pixel_values"])  # no square padding
    assert batch["image_grid_thw"].tolist() == [[1, 4, 6], [1, 8, 6], [1, 4, 4]]
    assert (batch["labels"][batch["input_ids"] == image_id] == IGNORE_INDEX).all()


def test_gwys_mask_leaves_out_exactly_padding_and_image_tokens(processor, image_root):
    batch = _batch(processor, image_root, RECORDS, ALL_BUT_PAD_AND_IMAGE)
    ids, labels, attended = batch["input_ids"], batch["labels"], batch["attention_mask"].bool()
    ignored = labels == IGNORE_INDEX
    assert torch.equal(ignored, ~attended | (ids == processor.image_token_id))
    assert torch.equal(labels[~ignored], ids[~ignored])
    # the loss covers the system prompt, the user text and the vision markers (spec §3)
    row = ids[0][~ignored[0]].tolist()
    tok = processor.tokenizer
    assert tok.convert_tokens_to_ids("<|vision_start|>") in row and tok.convert_tokens_to_ids("<|vision_end|>") in row
    assert "You are a helpful assistant." in tok.decode(row) and TEXTS[0] in tok.decode(row)


def test_assistant_only_mask_labels_the_answer_and_its_end_of_turn(processor, image_root):
    batch = _batch(processor, image_root, RECORDS, ASSISTANT_ONLY)
    tok = processor.tokenizer
    for row, rec in enumerate(RECORDS):
        labelled = batch["labels"][row][batch["labels"][row] != IGNORE_INDEX].tolist()
        assert tok.decode(labelled) == rec["conversations"][1]["value"] + "<|im_end|>"
        # contiguous: one span, right after the generation prompt "<|im_start|>assistant\n"
        positions = (batch["labels"][row] != IGNORE_INDEX).nonzero().flatten().tolist()
        assert positions == list(range(positions[0], positions[0] + len(positions)))
        assert tok.decode(batch["input_ids"][row, :positions[0]]).endswith("<|im_start|>assistant\n")


def test_a_fixed_image_token_count_is_refused_for_qwen(processor):
    with pytest.raises(ValueError, match="depends on the image's size"):
        num_image_tokens(processor)


def test_the_collator_refuses_image_tokens_that_do_not_match_the_image(processor, image_root):
    examples, _ = build_examples(RECORDS[:1], processor, loss_mask_fn(ASSISTANT_ONLY, max_length=4096),
                                 max_length=4096, image_root=image_root, vision=QWEN2_5_VL)
    feature = {"input_ids": examples[0].input_ids, "labels": examples[0].labels, "image": "tall.jpg", "id": "swapped"}
    collator = SFTCollator(processor.tokenizer.pad_token_id, processor=processor, image_root=image_root,
                           vision=QWEN2_5_VL)
    with pytest.raises(ValueError, match=r"record swapped: 6 image tokens, but its image tall.jpg is 12 tokens"):
        collator([feature])


def test_max_pixels_caps_the_image_tokens_and_is_refused_for_a_fixed_size_model(processor, image_root):
    configure_processor(processor, QWEN2_5_VL, SFTConfig(max_pixels=84 * 84))
    batch = _batch(processor, image_root, RECORDS[:2], ASSISTANT_ONLY)
    # the wide image (56 x 84 px resized) is under the cap; the tall one, 84 x 112 before, is cut to 84 x 56
    assert [int((batch["input_ids"][r] == processor.image_token_id).sum()) for r in range(2)] == [6, 6]
    assert batch["image_grid_thw"].tolist() == [[1, 4, 6], [1, 6, 4]]
    with pytest.raises(ValueError, match="fixed image size"):
        configure_processor(processor, None, SFTConfig(max_pixels=56 * 56))
    with pytest.raises(ValueError, match="min_pixels 5000 is above max_pixels 4000"):
        SFTConfig.from_dict({"min_pixels": 5000, "max_pixels": 4000})
    with pytest.raises(ValueError, match="loss_mask must be one of"):
        SFTConfig.from_dict({"loss_mask": "prompt_only"})


def test_lora_targets_and_full_fine_tuning_parts(tiny_qwen):
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_qwen)
    names = lora_target_names(model, "all-linear", vision=QWEN2_5_VL)
    assert len(names) == 2 * 7 and all(n.startswith("model.language_model.layers.") for n in names)
    assert lora_target_names(model, ["q_proj"], vision=QWEN2_5_VL) == [
        "model.language_model.layers.0.self_attn.q_proj", "model.language_model.layers.1.self_attn.q_proj"]

    set_full_trainable(model, SFTConfig(freeze_vision_tower=True, train_projector=True), vision=QWEN2_5_VL)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".visual.merger." in f".{n}" or ".visual." not in f".{n}" for n in trainable)
    assert any(".visual.merger." in n for n in trainable) and any("language_model" in n for n in trainable)
    set_full_trainable(model, SFTConfig(freeze_vision_tower=False), vision=QWEN2_5_VL)
    assert all(p.requires_grad for p in model.parameters())


def changed_parameters(before, after) -> set[str]:
    """Names (as the loaded model has them: model.visual.*, model.language_model.*) of the
    parameters that differ between two checkpoints; both must hold the same parameters."""
    first = Qwen2_5_VLForConditionalGeneration.from_pretrained(before).state_dict()
    second = Qwen2_5_VLForConditionalGeneration.from_pretrained(after).state_dict()
    assert first.keys() == second.keys() and any(".visual.merger." in k for k in first)
    return {f".{k}" for k in first if not torch.equal(first[k], second[k])}


def _generates(model_dir, image_root):
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": TEXTS[0]}]}], add_generation_prompt=True)
    inputs = processor(text=[prompt], images=[Image.open(image_root / "wide.png").convert("RGB")], return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]
    eos = GenerationConfig.from_pretrained(model_dir).eos_token_id
    assert processor.tokenizer.convert_tokens_to_ids("<|im_end|>") in (eos if isinstance(eos, list) else [eos])


def test_full_fine_tuning_learns_resumes_and_the_checkpoint_reloads_and_generates(tiny_qwen, image_root, tmp_path):
    records = RECORDS[:3]
    config = SFTConfig(learning_rate=5e-3, max_steps=3, per_device_batch_size=3, lr_scheduler_type="constant",
                       warmup_ratio=0.0, save_steps=3, report_to="none", loss_mask=ALL_BUT_PAD_AND_IMAGE,
                       freeze_vision_tower=True, max_pixels=84 * 84)
    spec = {"path": str(tiny_qwen), "device": "cpu"}
    train_sft(model_spec=spec, records=records, image_root=image_root, out_dir=tmp_path, config=config)
    first = _summary(tmp_path)
    assert first["vision_family"] == "qwen2_5_vl" and first["examples"] == 3 and first["skipped"] == []

    config.max_steps = 12  # goes on from checkpoint-3
    model_dir = train_sft(model_spec=spec, records=records, image_root=image_root, out_dir=tmp_path, config=config)
    summary = _summary(tmp_path)
    losses = [e["loss"] for e in summary["losses"]]
    assert summary["resumed_from"].endswith("checkpoint-3") and summary["steps"] == 12
    assert summary["losses"][:3] == first["losses"]
    assert losses[-1] < 0.7 * losses[0]

    changed = changed_parameters(tiny_qwen, model_dir)
    assert any(".language_model." in k for k in changed) and any(".visual.merger." in k for k in changed)
    assert not any(".visual." in k and ".merger." not in k for k in changed)  # the vision tower stayed frozen
    assert AutoProcessor.from_pretrained(model_dir).image_processor.size["longest_edge"] == 84 * 84
    _generates(model_dir, image_root)


def test_lora_trains_the_language_model_only_and_merges_into_plain_weights(tiny_qwen, image_root, tmp_path):
    config = SFTConfig(learning_rate=5e-3, max_steps=3, per_device_batch_size=2, warmup_ratio=0.0, save_steps=1000,
                       report_to="none", train_projector=False, gradient_checkpointing=True,
                       lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"})
    model_dir = train_sft(model_spec={"path": str(tiny_qwen), "device": "cpu"}, records=RECORDS,
                          image_root=image_root, out_dir=tmp_path, config=config)
    summary = _summary(tmp_path)
    assert summary["steps"] == 3 and summary["examples"] == 4
    assert 0 < summary["trainable_parameters"] < summary["parameters"]
    assert not list(model_dir.glob("adapter_*"))
    changed = changed_parameters(tiny_qwen, model_dir)
    assert any(".language_model." in k and "q_proj" in k for k in changed)
    assert not any(".visual." in k for k in changed)  # vision tower and merger frozen
    _generates(model_dir, image_root)


def test_chunked_loss_equals_the_full_logits_loss_on_qwen(tiny_qwen, processor, image_root):
    from groundflow.train.trainer import (causal_lm_loss_sum, chunked_causal_lm_loss_sum, decoder_and_head,
                                          final_hidden_states)

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_qwen)
    batch = _batch(processor, image_root, RECORDS, ALL_BUT_PAD_AND_IMAGE)
    labels = batch.pop("labels")
    full, count = causal_lm_loss_sum(model(**batch, use_cache=False).logits, labels)
    decoder, head = decoder_and_head(model)
    with final_hidden_states(decoder) as captured:
        model(**batch, use_cache=False, logits_to_keep=1)
    chunked, chunked_count = chunked_causal_lm_loss_sum(captured[0], labels, head, 7)
    assert int(count) == int(chunked_count) and float(chunked) == pytest.approx(float(full), rel=1e-5)


def test_the_value_trainer_refuses_a_qwen_model(tiny_qwen, tmp_path):
    from groundflow.train.value import train_value

    config = SFTConfig(chat_template="vicuna_v1", max_steps=1, report_to="none")
    with pytest.raises(ValueError, match="not a qwen2_5_vl model"):
        train_value(model_spec={"path": str(tiny_qwen), "device": "cpu"}, records=[], image_root=None,
                    out_dir=tmp_path, config=config)


def test_gwys_sft_script_trains_on_the_loaders_records_with_gwys_mask(tiny_qwen, image_root, tmp_path):
    from groundflow.gwys.data import load_sft_records, write_sft_records

    cot = [{"id": f"c{i}", "image": name, "conversations": [
        {"from": "human", "value": f"<image>\n{TEXTS[0]}"},
        {"from": "gpt", "value": "<SUMMARY>plan</SUMMARY> <CAPTION>a red square</CAPTION> <REASONING>it is red</REASONING> "
                                 "<CONCLUSION>A</CONCLUSION>"}]} for i, name in enumerate(IMAGES)]
    (tmp_path / "cot.json").write_text(json.dumps(cot))
    loaded = load_sft_records(tmp_path / "cot.json", image_root=image_root)
    assert len(loaded.records) == 3
    write_sft_records(loaded.records, tmp_path / "sft.json")
    out_dir = tmp_path / "sft"
    train = {"learning_rate": 1e-3, "max_steps": 2, "per_device_batch_size": 3, "save_steps": 1000,
             "report_to": "none", "freeze_vision_tower": False}
    smk = FakeSnakemake(input={"records": str(tmp_path / "sft.json")},
                        output={"model": str(out_dir / "model"), "summary": str(out_dir / "train_summary.json")},
                        params={"model": {"path": str(tiny_qwen), "device": "cpu"}, "train": train,
                                "image_root": str(image_root), "out_dir": str(out_dir)},
                        log=[str(tmp_path / "sft.log")])
    smk.scriptdir = str(SCRIPTS)
    run_script("gwys_sft.py", smk)
    summary = _summary(out_dir)
    assert summary["steps"] == 2 and summary["examples"] == 3 and summary["vision_family"] == "qwen2_5_vl"
    assert summary["config"]["loss_mask"] == ALL_BUT_PAD_AND_IMAGE and summary["config"]["chat_template"] is None
    assert (out_dir / "model" / "model.safetensors").is_file()

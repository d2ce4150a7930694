"""Examples tokenised per item (train.data.LazyExampleDataset), records that fail only when
tokenised trained fully masked and named, and LLaVA's grouping by modality and length in a real
training run, resumed (train.trainer.SFTTrainer._get_train_sampler)."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from transformers import AutoProcessor, AutoTokenizer

from groundflow.models.causal_lm import build_tiny_causal_lm
from groundflow.models.llava import build_tiny_llava
from groundflow.train import sft
from groundflow.train.config import SFTConfig
from groundflow.train.conversations import IGNORE_INDEX, assistant_mask_fn
from groundflow.train.data import (
    MASKED_KEY,
    LazyExampleDataset,
    ModalityLengthGroupedSampler,
    SFTCollator,
    build_examples,
)
from groundflow.train.sft import train_sft

TEXTS = ["What colour is the sky?", "The sky is blue.", "Name an animal that barks.", "A dog barks.",
         "Which fruit is yellow?", "A banana is yellow."]
WORDS = " ".join(TEXTS).split()


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    return build_tiny_causal_lm(tmp_path_factory.mktemp("lm") / "tiny-lm", seed=0, texts=TEXTS)


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("llava") / "tiny-llava", seed=0, texts=TEXTS)


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(root / name)
    return root


def _conversation(seed: int, words: int, image: bool = False):
    rng = np.random.default_rng(seed)
    question = " ".join(rng.choice(WORDS, words))
    return [{"from": "human", "value": ("<image>\n" if image else "") + question},
            {"from": "gpt", "value": " ".join(rng.choice(WORDS, 3 + seed % 5))}]


def _text_records(n):
    return [{"id": f"t{i}", "conversations": _conversation(i, 2 + i % 9)} for i in range(n)]


class CountingMask:
    def __init__(self, mask_fn):
        self.mask_fn, self.calls = mask_fn, 0

    def __call__(self, conversation, tokenizer):
        self.calls += 1
        return self.mask_fn(conversation, tokenizer)


def test_nothing_is_tokenised_up_front_and_items_equal_the_eager_examples(tiny_lm, monkeypatch):
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    records = _text_records(40)
    calls = {"tokenizer": 0}
    for method in ("__call__", "encode", "apply_chat_template"):
        original = getattr(type(tokenizer), method)

        def counted(self, *args, _original=original, **kwargs):
            calls["tokenizer"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(type(tokenizer), method, counted)
    mask = CountingMask(assistant_mask_fn(max_length=512))
    dataset = LazyExampleDataset(records, tokenizer, mask, max_length=512, image_root=None, vision=None)
    assert len(dataset) == 40 and dataset.skipped == []
    assert mask.calls == 0 and calls["tokenizer"] == 0

    first = dataset[7]
    assert mask.calls == 1 and calls["tokenizer"] > 0
    examples, skipped = build_examples(records, tokenizer, assistant_mask_fn(max_length=512), max_length=512,
                                       image_root=None, vision=None)
    assert skipped == []
    assert first == {"input_ids": examples[7].input_ids, "labels": examples[7].labels, "image": None, "id": "t7"}
    for index, example in enumerate(examples):
        item = dataset[index]
        assert (item["id"], item["input_ids"], item["labels"], item["image"]) == (
            example.id, example.input_ids, example.labels, example.image)
    # lengths for grouping come from word counts, not from tokenising
    assert dataset.lengths == [sum(len(t["value"].split()) for t in r["conversations"]) for r in records]


def test_bad_records_are_rejected_up_front_with_their_reasons(tiny_lm):
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    records = _text_records(2) + [
        {"id": "img", "image": "x.png", "conversations": _conversation(5, 3)},
        {"id": "empty", "conversations": []},
        {"id": "none"},
        {"id": "cached", "input_ids": [5, 6, 7], "labels": [IGNORE_INDEX] * 3},  # ahead-tokenised: checked in full
    ]
    mask = CountingMask(assistant_mask_fn(max_length=512))
    dataset = LazyExampleDataset(records, tokenizer, mask, max_length=512, image_root=None, vision=None)
    assert dataset.ids == ["t0", "t1"] and mask.calls == 0
    _, eager_skipped = build_examples(records, tokenizer, mask, max_length=512, image_root=None, vision=None)
    assert dataset.skipped == eager_skipped == [
        {"id": "img", "reason": "record img has image 'x.png' but the model is text-only"},
        {"id": "empty", "reason": "record empty has no conversations"},
        {"id": "none", "reason": "record none has no conversations"},
        {"id": "cached", "reason": "record cached has no supervised token within max_length 512"},
    ]


def _late_failure_records(tokenizer, max_length):
    """Short records that fit, and one whose answer starts past max_length: it fails only when tokenised."""
    records = _text_records(6)
    long = {"id": "long", "conversations": [{"from": "human", "value": " ".join(WORDS * 6)},
                                            {"from": "gpt", "value": TEXTS[1]}]}
    fits = max(len(e.input_ids) for e in build_examples(records, tokenizer, assistant_mask_fn(max_length=4096),
                                                        max_length=4096, image_root=None, vision=None)[0])
    assert fits < max_length
    return records + [long]


def test_a_record_failing_at_tokenisation_is_masked_not_dropped(tiny_lm):
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    records = _late_failure_records(tokenizer, 48)
    dataset = LazyExampleDataset(records, tokenizer, assistant_mask_fn(max_length=48), max_length=48,
                                 image_root=None, vision=None)
    assert len(dataset) == 7 and dataset.skipped == []
    _, eager_skipped = build_examples(records, tokenizer, assistant_mask_fn(max_length=48), max_length=48,
                                      image_root=None, vision=None)
    item = dataset[6]
    assert item[MASKED_KEY] == eager_skipped[0]["reason"] == "record long has no supervised token within max_length 48"
    assert item["labels"] == [IGNORE_INDEX] and len(item["input_ids"]) == 1 and item["image"] is None
    batch = SFTCollator(tokenizer.pad_token_id)([dataset[0], item])
    assert batch[MASKED_KEY] == [{"id": "long", "reason": item[MASKED_KEY]}]
    assert (batch["labels"][1] == IGNORE_INDEX).all()


def test_training_goes_on_past_a_masked_record_and_names_it(tiny_lm, tmp_path):
    """Two dataloader workers tokenise; the masked record is reported from the worker through the batch."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    records = _late_failure_records(tokenizer, 48)
    config = SFTConfig(learning_rate=1e-3, num_train_epochs=1, per_device_batch_size=2, max_length=48,
                       save_steps=1000, report_to="none", dataloader_num_workers=2)
    train_sft(model_spec={"path": str(tiny_lm), "device": "cpu"}, records=records, image_root=None,
              out_dir=tmp_path, config=config)
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["steps"] == 4 and summary["examples"] == 7 and summary["skipped"] == []
    assert summary["masked"] == [{"id": "long", "reason": "record long has no supervised token within max_length 48"}]
    assert all(np.isfinite(e["loss"]) for e in summary["losses"])


def _mixed_records(n_text, n_image):
    images = ["a.png", "b.png", "c.png"]
    return (_text_records(n_text)
            + [{"id": f"i{i}", "image": images[i % 3], "conversations": _conversation(100 + i, 2 + i % 7, image=True)}
               for i in range(n_image)])


def test_llava_batches_are_grouped_by_modality_and_a_resumed_run_goes_on(tiny_llava, image_root, tmp_path, monkeypatch):
    records = _mixed_records(12, 12)
    config = SFTConfig(learning_rate=1e-3, max_steps=3, per_device_batch_size=2, gradient_accumulation_steps=2,
                       max_length=1024, save_steps=3, report_to="none", group_by_modality_length=True, seed=5)
    seen = []
    real_train_resuming = sft.train_resuming

    def recording(trainer, checkpoints_dir, *, resume):
        sampler = trainer._get_train_sampler()
        assert isinstance(sampler, ModalityLengthGroupedSampler) and sampler.megabatch_size == 4
        for batch in trainer.get_train_dataloader():
            rows = batch["input_ids"].shape[0]
            images = batch["pixel_values"].shape[0] if "pixel_values" in batch else 0
            seen.append((rows, images))
        return real_train_resuming(trainer, checkpoints_dir, resume=resume)

    monkeypatch.setattr(sft, "train_resuming", recording)
    spec = {"path": str(tiny_llava), "device": "cpu"}
    train_sft(model_spec=spec, records=records, image_root=image_root, out_dir=tmp_path, config=config)
    # 12 of each in megabatches of 4: every batch of 2 is all image or all text
    assert len(seen) == 12 and all(images in (0, rows) for rows, images in seen)
    assert sum(1 for _, images in seen if images) == 6
    first = json.loads((tmp_path / "train_summary.json").read_text())
    assert first["steps"] == 3 and first["examples"] == 24 and first["masked"] == []

    config.max_steps = 5
    train_sft(model_spec=spec, records=records, image_root=image_root, out_dir=tmp_path, config=config)
    second = json.loads((tmp_path / "train_summary.json").read_text())
    assert second["resumed_from"].endswith("checkpoint-3") and second["steps"] == 5
    assert second["losses"][:3] == first["losses"]
    assert [e["step"] for e in second["losses"]] == [1, 2, 3, 4, 5]


def test_group_by_length_takes_estimated_lengths_without_tokenising(tiny_lm, tmp_path, monkeypatch):
    records = _text_records(10)
    config = SFTConfig(max_steps=1, per_device_batch_size=2, save_steps=1000, report_to="none", group_by_length=True)
    lengths = {}
    real_train_resuming = sft.train_resuming

    def recording(trainer, checkpoints_dir, *, resume):
        lengths["sampler"] = trainer._get_train_sampler().lengths
        lengths["dataset"] = trainer.train_dataset.lengths
        return real_train_resuming(trainer, checkpoints_dir, resume=resume)

    monkeypatch.setattr(sft, "train_resuming", recording)
    train_sft(model_spec={"path": str(tiny_lm), "device": "cpu"}, records=records, image_root=None,
              out_dir=tmp_path, config=config)
    assert lengths["sampler"] == lengths["dataset"] == [sum(len(t["value"].split()) for t in r["conversations"]) for r in records]


def test_both_groupings_at_once_are_refused():
    with pytest.raises(ValueError, match="choose one"):
        SFTConfig.from_dict({"group_by_length": True, "group_by_modality_length": True})
    with pytest.raises(ValueError, match="dataloader_num_workers"):
        SFTConfig.from_dict({"dataloader_num_workers": -1})

"""The value model (models.value_model) and its trainer (train.value) on tiny LLaVAs and a tiny Llama:
the head is saved and reloads to the same values (the reference never saves it), a merged LoRA
checkpoint reloads to the values of the trained adapter, batched scoring equals one row at a time
whatever the padding side, text-only rows carry no image token, and training lowers the MSE on
fixture-like value labels below both the untrained model's and the mean predictor's."""

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from groundflow.models.causal_lm import build_tiny_causal_lm
from groundflow.models.llava import build_tiny_llava
from groundflow.models.value_model import (
    VALUE_CONFIG_FILE,
    VALUE_HEAD_FILE,
    ValueModel,
    ValueScorer,
    load_value_model,
    new_value_head,
    save_value_model,
)
from groundflow.train.config import SFTConfig
from groundflow.train.value import ValueSettings, train_value, wrap_value_model
from groundflow.tsst.prompts import load_question_prompts
from groundflow.tsst.sentences import join_sentences

PROMPTS = load_question_prompts()
QUESTIONS = [
    ("What colour is the square?", ["red", "blue", "green"], 1, "red.png"),
    ("What colour is the circle?", ["yellow", "blue"], 2, "blue.png"),
    ("How many sides does a triangle have?", ["three", "four"], 1, None),
    ("Which shape is round?", ["square", "circle", "triangle"], 2, None),
    ("What colour is the sky in the picture?", ["green", "blue"], 2, "blue.png"),
    ("Which is warmer?", ["ice", "fire"], 2, None),
]
CHAINS = {
    True: ["Step 1: look at the shape.", "Step 2: its colour is clear.", "Step 3: that matches option {letter}.",
           "Final Answer: {letter}."],
    False: ["Step 1: guess quickly.", "Final Answer: {wrong}."],
}
TEXTS = [PROMPTS.render(q, c, has_image=bool(i)) for q, c, _, i in QUESTIONS] + [
    s for chain in CHAINS.values() for s in chain]


def _images(root: Path) -> Path:
    Image.new("RGB", (64, 40), (210, 30, 30)).save(root / "red.png")
    Image.new("RGB", (48, 64), (30, 40, 220)).save(root / "blue.png")
    return root


def value_records() -> list[dict]:
    """Interface-2 value records as the linear rule labels them: step k of a correct N-step chain
    gets k/N, every prefix of an incorrect chain 0."""
    records = []
    for qi, (question, choices, label, image) in enumerate(QUESTIONS):
        letter, wrong = "ABC"[label - 1], "ABC"[label % len(choices)]
        human = PROMPTS.human_turn(question, choices, has_image=image is not None)
        for correct, steps in CHAINS.items():
            steps = [s.format(letter=letter, wrong=wrong) for s in steps]
            for k in range(1, len(steps) + 1):
                record = {"id": f"q{qi}-{int(correct)}-{k}",
                          "conversations": [{"from": "human", "value": human},
                                            {"from": "gpt", "value": join_sentences(steps[:k])}],
                          "value": k / len(steps) if correct else 0.0}
                if image:
                    record["image"] = image
                records.append(record)
    return records


def _rows(records, root):
    """ValueScorer arguments for records: (prompts, prefixes, images, groups)."""
    prompts, prefixes, images, groups = [], [], [], []
    cache = {}
    for r in records:
        human, prefix = r["conversations"][0]["value"], r["conversations"][1]["value"]
        image = r.get("image")
        prompts.append(human.removeprefix("<image>\n"))
        prefixes.append(prefix)
        if image and image not in cache:
            cache[image] = Image.open(root / image).convert("RGB")
        images.append(cache[image] if image else None)
        groups.append(r["id"].split("-")[0])
    return prompts, prefixes, images, groups


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("value") / "tiny-llava", seed=0, texts=TEXTS)


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    return _images(tmp_path_factory.mktemp("value-images"))


def _config(**overrides):
    values = dict(learning_rate=2e-3, max_steps=4, per_device_batch_size=4, lr_scheduler_type="constant",
                  warmup_ratio=0.0, save_steps=1000, report_to="none", chat_template="vicuna_v1",
                  lora={"r": 8, "alpha": 16, "dropout": 0.0}, train_projector=False)
    values.update(overrides)
    return SFTConfig(**values)


def test_batched_scores_equal_one_row_at_a_time_on_either_padding_side(tiny_llava, image_root):
    model, processor = load_value_model({"path": str(tiny_llava), "device": "cpu"})
    prompts, prefixes, images, groups = _rows(value_records(), image_root)
    batched = ValueScorer(model, processor, batch_size=16)
    together = batched.score(prompts, prefixes, images, groups)
    # one pass per question over its shared prompt, then the rows 16 at a time (12 per pair of questions)
    assert batched.forwards == len(set(groups)) + math.ceil(len(prompts) / 16)
    one_by_one = [ValueScorer(model, processor, batch_size=1).score([p], [x], [i], [g])[0]
                  for p, x, i, g in zip(prompts, prefixes, images, groups)]
    left = ValueScorer(model, processor, batch_size=7, padding_side="left").score(prompts, prefixes, images, groups)
    # the fast tokenisation (one render per question, image block collapsed) is training's, row for row
    has_image = [i is not None for i in images]
    assert batched.encode_rows(prompts, prefixes, has_image, groups) == [
        batched.encode_row(p, x, has_image=h) for p, x, h in zip(prompts, prefixes, has_image)]
    torch.testing.assert_close(torch.tensor(together), torch.tensor(one_by_one), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.tensor(left), torch.tensor(one_by_one), rtol=1e-4, atol=1e-5)
    # the scores depend on the rows: a random head over different prefixes gives different values
    assert len({round(v, 6) for v in together}) > len(together) // 2
    # each group's image is spliced into its own rows: another image changes the value
    swapped = [images[-1] if i is not None else None for i in images]
    first_image_row = next(r for r, i in enumerate(images) if i is not None and i is not images[-1])
    moved = ValueScorer(model, processor).score(prompts, prefixes, swapped, groups)
    assert abs(moved[first_image_row] - together[first_image_row]) > 1e-6


def test_value_is_read_at_the_closing_eos_with_position_ids_from_the_mask(tiny_llava):
    model, processor = load_value_model({"path": str(tiny_llava), "device": "cpu"})
    scorer = ValueScorer(model, processor)
    ids = scorer.encode_row("Which is warmer?", "Step 1: fire.", has_image=False)
    assert ids[-1] == processor.tokenizer.eos_token_id
    assert processor.tokenizer.convert_tokens_to_ids("<image>") not in ids  # text-only: no placeholder anywhere
    row = torch.tensor([ids])
    with torch.inference_mode():
        alone = model(input_ids=row).values
        padded = model(input_ids=torch.cat([torch.zeros(1, 3, dtype=torch.long), row], 1),
                       attention_mask=torch.tensor([[0, 0, 0] + [1] * len(ids)])).values
        without_eos = model(input_ids=row[:, :-1]).values
    torch.testing.assert_close(padded, alone, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(without_eos, alone)
    with pytest.raises(ValueError, match="row 0 .*without <image>"):
        scorer.score(["<image>\nq"], ["a"], [None], ["g"])
    with pytest.raises(ValueError, match="group 'g' mixes rows with and without an image"):
        scorer.score(["q", "q"], ["a", "b"], [None, Image.new("RGB", (8, 8))], ["g", "g"])


def test_text_only_value_model_on_a_causal_lm(tmp_path):
    path = build_tiny_causal_lm(tmp_path / "lm", seed=1, texts=TEXTS)
    model, tokenizer = load_value_model({"path": str(path), "device": "cpu"}, head_seed=3)
    prompts = ["Which is warmer?\nA. ice\nB. fire", "Which shape is round?"] * 2
    prefixes = ["Step 1: fire is hot.", "Step 1: a circle.", "Final Answer: B.", ""]
    scorer = ValueScorer(model, tokenizer, batch_size=4)
    batched = scorer.score(prompts, prefixes, [None] * 4, ["a", "b", "a", "b"])
    single = [ValueScorer(model, tokenizer).score([p], [x], [None], [0])[0] for p, x in zip(prompts, prefixes)]
    torch.testing.assert_close(torch.tensor(batched), torch.tensor(single), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="need a LLaVA"):
        scorer.score(["q"], ["a"], [Image.new("RGB", (8, 8))], ["g"])
    # the LoRA targets of a text-only value model leave the head to modules_to_save
    from groundflow.train.value import prepare_value_model

    wrapped = prepare_value_model(model, _config(), vision=None)
    adapted = [n for n, _ in wrapped.named_modules() if n.endswith("lora_A")]
    assert adapted and not any("score_head" in n for n in adapted)


def test_saved_head_reloads_to_the_same_values_and_a_plain_backbone_gets_a_seeded_head(tiny_llava, image_root, tmp_path):
    rows = _rows(value_records()[:8], image_root)
    model, processor = load_value_model({"path": str(tiny_llava), "device": "cpu"}, head_seed=7)
    with torch.no_grad():  # a head unlike any fresh one, as training leaves it
        model.score_head[0].weight.uniform_(0.5, 1.5)
        model.score_head[1].bias.fill_(0.3)
    before = ValueScorer(model, processor).score(*rows)
    save_value_model(model, tmp_path / "v", processor)
    assert (tmp_path / "v" / VALUE_HEAD_FILE).is_file() and (tmp_path / "v" / "config.json").is_file()
    assert json.loads((tmp_path / "v" / VALUE_CONFIG_FILE).read_text())["bounded"] is False
    reloaded, processor2 = load_value_model({"path": str(tmp_path / "v"), "device": "cpu"}, head_seed=99)
    assert ValueScorer(reloaded, processor2).score(*rows) == pytest.approx(before, abs=1e-6)

    fresh_a, _ = load_value_model({"path": str(tiny_llava), "device": "cpu"}, head_seed=7)
    fresh_b, _ = load_value_model({"path": str(tiny_llava), "device": "cpu"}, head_seed=8)
    assert torch.equal(fresh_a.score_head[1].weight, new_value_head(64, 7)[1].weight)
    assert not torch.equal(fresh_a.score_head[1].weight, fresh_b.score_head[1].weight)
    assert float(fresh_a.score_head[1].weight.detach().std()) == pytest.approx(0.02, rel=0.3)
    assert float(fresh_a.score_head[1].bias) == 0.0
    with pytest.raises(ValueError, match="trained with bounded=False"):
        load_value_model({"path": str(tmp_path / "v"), "device": "cpu"}, bounded=True)


def test_lora_training_saves_the_trained_head_and_the_merged_checkpoint_gives_the_adapter_values(tiny_llava, image_root, tmp_path):
    from peft import PeftModel

    records = value_records()
    bad = [{"id": "no-value", "conversations": records[0]["conversations"]},
           {"id": "too-high", "conversations": records[0]["conversations"], "value": 1.5},
           {"id": "no-image", "image": "missing.png", "conversations": records[0]["conversations"], "value": 0.5}]
    config = _config(max_steps=3, save_steps=3)
    model_dir = train_value(model_spec={"path": str(tiny_llava), "device": "cpu"}, records=records + bad,
                            image_root=image_root, out_dir=tmp_path, config=config, settings=ValueSettings(head_seed=5))
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["steps"] == 3 and summary["value"]["head_seed"] == 5
    assert {s["id"] for s in summary["skipped"]} == {"no-value", "too-high", "no-image"}
    assert summary["examples"] == len(records)

    # the adapter file holds the head in full (modules_to_save), not a LoRA on a frozen random head
    adapter = load_file(tmp_path / "checkpoints" / "checkpoint-3" / "adapter_model.safetensors")
    head_keys = [k for k in adapter if "score_head" in k]
    assert any(k.endswith("score_head.1.weight") for k in head_keys) and not any("lora" in k for k in head_keys)
    trained_head = load_file(model_dir / VALUE_HEAD_FILE)
    assert not torch.allclose(trained_head["1.weight"], new_value_head(64, 5)[1].weight)

    rows = _rows(records, image_root)
    merged, processor = load_value_model({"path": str(model_dir), "device": "cpu"})
    start, _ = load_value_model({"path": str(tiny_llava), "device": "cpu"}, head_seed=5)
    adapted = PeftModel.from_pretrained(start, str(tmp_path / "checkpoints" / "checkpoint-3")).eval()
    from_adapter = ValueScorer(adapted, processor).score(*rows)
    from_merged = ValueScorer(merged, processor).score(*rows)
    assert from_merged == pytest.approx(from_adapter, abs=1e-5)
    untrained = ValueScorer(load_value_model({"path": str(tiny_llava), "device": "cpu"}, head_seed=5)[0],
                            processor).score(*rows)
    assert max(abs(a - b) for a, b in zip(from_merged, untrained)) > 1e-3

    # a round starting from that value checkpoint trains on from its head
    again = train_value(model_spec={"path": str(model_dir), "device": "cpu"}, records=records[:4], image_root=image_root,
                        out_dir=tmp_path / "next", config=_config(max_steps=1), settings=ValueSettings(head_seed=123))
    start_of_next = wrap_value_model(start.backbone, str(model_dir), head_seed=123)
    assert torch.equal(start_of_next.score_head[1].weight, trained_head["1.weight"])
    assert (again / VALUE_HEAD_FILE).is_file()


def _mse(values, targets):
    return sum((v - t) ** 2 for v, t in zip(values, targets)) / len(targets)


def test_value_training_lowers_the_mse_on_the_labels_below_untrained_and_mean(tiny_llava, image_root, tmp_path):
    records = value_records()
    assert 30 <= len(records) <= 40
    targets = [r["value"] for r in records]
    rows = _rows(records, image_root)
    model, processor = load_value_model({"path": str(tiny_llava), "device": "cpu"}, head_seed=0)
    untrained = _mse(ValueScorer(model, processor).score(*rows), targets)
    mean = sum(targets) / len(targets)
    mean_mse = _mse([mean] * len(targets), targets)

    config = _config(learning_rate=3e-3, max_steps=40, per_device_batch_size=8, seed=0)
    model_dir = train_value(model_spec={"path": str(tiny_llava), "device": "cpu"}, records=records,
                            image_root=image_root, out_dir=tmp_path, config=config)
    trained_model, processor = load_value_model({"path": str(model_dir), "device": "cpu"})
    trained = _mse(ValueScorer(trained_model, processor).score(*rows), targets)
    print(f"MSE untrained {untrained:.4f}, mean predictor {mean_mse:.4f}, trained {trained:.4f}")
    assert trained < 0.5 * untrained
    assert trained < 0.5 * mean_mse


def test_the_one_forward_per_candidate_reference_gives_the_batched_values(tiny_llava, image_root):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from reference.value_scoring import score_one_at_a_time

    model, processor = load_value_model({"path": str(tiny_llava), "device": "cpu"})
    rows = _rows(value_records(), image_root)
    reference = score_one_at_a_time(model, processor, *rows)
    batched = ValueScorer(model, processor, batch_size=32).score(*rows)
    torch.testing.assert_close(torch.tensor(batched), torch.tensor(reference), rtol=1e-4, atol=1e-5)


def test_a_value_run_killed_after_a_checkpoint_resumes_to_the_uninterrupted_model(tiny_llava, image_root, tmp_path):
    import shutil

    config = dict(max_steps=3, save_steps=1, lora={"r": 4, "alpha": 8, "dropout": 0.0})
    spec = {"path": str(tiny_llava), "device": "cpu"}
    records = value_records()[:12]
    whole = train_value(model_spec=spec, records=records, image_root=image_root, out_dir=tmp_path / "whole",
                        config=_config(**config))
    killed = tmp_path / "killed"
    train_value(model_spec=spec, records=records, image_root=image_root, out_dir=killed, config=_config(**config))
    shutil.rmtree(killed / "model")  # what a kill during step 3 leaves
    shutil.rmtree(killed / "checkpoints" / "checkpoint-3")
    resumed = train_value(model_spec=spec, records=records, image_root=image_root, out_dir=killed, config=_config(**config))
    summary = json.loads((killed / "train_summary.json").read_text())
    assert summary["resumed_from"].endswith("checkpoint-2") and summary["steps"] == 3
    for name in (VALUE_HEAD_FILE, "model.safetensors"):
        expected, got = load_file(whole / name), load_file(resumed / name)
        assert all(torch.allclose(expected[k], got[k], atol=1e-6) for k in expected)

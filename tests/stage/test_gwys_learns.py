"""Signal, not only plumbing: GWYS's GRPO on a tiny Qwen2.5-VL raises the reward it is given, and its
conflict term moves the pooled representations the way its sign says.

Random tiny models only prove the wiring: a reward of 0 everywhere, which a broken advantage, a
loss of the wrong sign or completions that never reach the reward would give too, trains nothing.

1. The format reward. A random policy never writes the four-tag form, so it starts from a policy
   that sometimes does: a few hundred steps of plain teacher forcing on each pool prompt with one
   four-tag completion and three that leave the `<answer>` tags out (the tokenizer is fitted to
   the four-tag texts, so the tags are tokens), which writes the form about half the time. GRPO
   with the format reward alone then lifts that rate; the same run with a learning rate too small
   to move the weights does not.
2. The conflict term alone: with one reward that is 0 for every completion (zero advantages) and
   β = 0, the GRPO loss is exactly 0 and λ·InfoNCE is the only gradient. With θ at the median of
   the partners' cosines, training pulls the positives (cos <= θ) towards their anchors: every
   positive's cosine rises and the negatives' lead over the positives shrinks; with λ negated,
   every positive's cosine falls and the lead grows. (The negatives' own cosines rise too, less
   than the positives': mean-pooled states share most of their tokens, and the shared part grows;
   InfoNCE is invariant to a shift of all cosines, so only the gap is its to set.)
"""

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from groundflow.gwys.grpo import build_rewards, build_trainer, grpo_dataset, load_policy, train_grpo
from groundflow.gwys.grpo_settings import GRPOSettings
from groundflow.gwys.prompts import load_question_prompts
from groundflow.io.artifacts import read_table
from groundflow.models.qwen_vl import build_tiny_qwen_vl
from groundflow.models.spec import ModelSpec

from gwys_grpo_support import FOUR_TAG, tokenizer_texts, write_drawn_pool

GOOD = FOUR_TAG.format(plan="look", caption="a shape", think="it is so", answer="A")
BAD = "<prethink>look</prethink>\n<caption>a shape</caption>\n<think>it is so</think>\nA"  # no <answer> tags
WARM_STEPS, WARM_LR = 200, 5e-3
# Measured (2 CPU cores, ~30 s in all): the mean format reward of the first / last 8 of 30 steps is
# 0.52 / 0.95 here (model and GRPO seed 0), 0.44 / 0.88, 0.36 / 0.97 and 0.48 / 0.75 for (model
# seed, GRPO seed) (1, 1), (2, 2), (3, 0); the frozen run stays at 0.28. A learning rate of 1e-3
# overshoots (the rate rose, then fell to 0); 3e-4 climbs steadily.
GRPO = {"num_generations": 8, "max_completion_length": 48, "max_steps": 30, "learning_rate": 3e-4,
        "lr_scheduler_type": "constant", "beta": 0.0, "save_steps": 1000, "gradient_checkpointing": False,
        # a policy that writes the form every time makes groups of one text: expected here, not a fault
        "max_identical_steps": 1000, "seed": 0}
WINDOW = 8


def warm_start(model_dir, pool, media, out):
    """Teacher forcing on the GRPO prompts: GOOD once and BAD three times per prompt, loss on the
    completion and its end of turn only."""
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir)
    prompts = load_question_prompts("four_tag")
    examples = []
    for row in read_table(pool).to_dict(orient="records"):
        user = prompts.user_text(row["format_question"], row["problem_type"])
        prompt = processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": user}]}],
            tokenize=False, add_generation_prompt=True)
        image = Image.open(media / row["media"]).convert("RGB")
        prompt_tokens = len(processor(text=[prompt], images=[image])["input_ids"][0])
        examples += [(prompt + target + "<|im_end|>", image, prompt_tokens) for target in (GOOD, BAD, BAD, BAD)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=WARM_LR)
    order = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(WARM_STEPS):
        batch = [examples[i] for i in torch.randperm(len(examples), generator=order)[:8].tolist()]
        inputs = processor(text=[t for t, _, _ in batch], images=[im for _, im, _ in batch], padding=True,
                           padding_side="right", return_tensors="pt")
        labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
        for row, (_, _, prompt_tokens) in enumerate(batch):
            labels[row, :prompt_tokens] = -100
        model(**inputs, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def format_rates(out):
    history = json.loads((out / "train_summary.json").read_text())["log_history"]
    rates = [e["rewards/format/mean"] for e in history]
    return float(np.mean(rates[:WINDOW])), float(np.mean(rates[-WINDOW:]))


def test_grpo_raises_the_format_reward(tmp_path):
    tiny = build_tiny_qwen_vl(tmp_path / "tiny", seed=0, texts=tokenizer_texts())
    pool, media = write_drawn_pool(tmp_path, n=8)
    warm = warm_start(tiny, pool, media, tmp_path / "warm")
    run = dict(model=str(warm), reference=None, pool_path=pool, media_root=media, form="four_tag", rewards=["format"])
    train_grpo(**run, out_dir=tmp_path / "trained", settings=GRPO)
    first, last = format_rates(tmp_path / "trained")
    assert 0.2 <= first <= 0.7, f"the warm start writes the form {first:.2f} of the time; the test needs a mix"
    assert last >= 0.75 and last >= first + 0.25, (first, last)
    # the same run whose updates cannot move the weights stays where it began
    train_grpo(**run, out_dir=tmp_path / "frozen", settings={**GRPO, "learning_rate": 1e-12})
    _, still_last = format_rates(tmp_path / "frozen")
    assert still_last < 0.7 and still_last <= last - 0.25, (first, last, still_last)


def conflict_run(tmp_path, model_dir, pool, media, weight):
    """(cos before, cos after, θ) of every (anchor, partner) pair over 10 steps of λ·InfoNCE alone."""
    settings = GRPOSettings.from_dict({"num_generations": 4, "max_completion_length": 8, "max_steps": 10,
                                       "learning_rate": 2e-5, "lr_scheduler_type": "constant", "beta": 0.0,
                                       "save_steps": 1000, "conflict": {"enabled": True, "partners": 3, "weight": weight}})
    policy, processor, family = load_policy(ModelSpec(str(model_dir)), use_bf16=False)
    data = grpo_dataset(read_table(pool), media_root=media, prompts=load_question_prompts("four_tag"),
                        conflict=settings.conflict_settings)
    # a random policy never writes the four-tag form: every reward 0, every advantage 0
    trainer = build_trainer(policy, processor, family, data, build_rewards(["format"], form="four_tag", rules="fixed"),
                            settings=settings, reward_names=["format"], out_dir=tmp_path / f"out{weight}",
                            device=torch.device("cpu"))
    rows = list(range(len(data.records)))

    def pair_cosines():
        with torch.no_grad():
            pooled = torch.nn.functional.normalize(trainer.pooled_representations(trainer.model, rows).float(), dim=-1)
        return np.array([[float(pooled[i] @ pooled[j]) for j in data.partner_ids[i]] for i in rows])

    before = pair_cosines()
    theta = float(np.median(before))
    trainer.conflict = dataclasses.replace(trainer.conflict, threshold=theta)
    trainer.train()
    assert all(e["rewards/format/mean"] == 0.0 for e in trainer.state.log_history if "rewards/format/mean" in e)
    return before, pair_cosines(), theta


def test_the_conflict_term_pulls_positives_in_as_its_sign_says(tmp_path):
    tiny = build_tiny_qwen_vl(tmp_path / "tiny", seed=0, texts=tokenizer_texts())
    pool, media = write_drawn_pool(tmp_path, n=8)
    before, after, theta = conflict_run(tmp_path, tiny, pool, media, weight=1.0)
    positive = before <= theta
    assert 0 < positive.sum() < positive.size
    assert (after[positive] > before[positive]).all()
    assert after[~positive].mean() - after[positive].mean() < 0.7 * (before[~positive].mean() - before[positive].mean())
    # λ negated: the other way
    before, after, theta = conflict_run(tmp_path, tiny, pool, media, weight=-1.0)
    positive = before <= theta
    assert (after[positive] < before[positive]).all()
    assert after[~positive].mean() - after[positive].mean() > 1.3 * (before[~positive].mean() - before[positive].mean())


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)

import math

import numpy as np
import pandas as pd
import pytest
import torch

from groundflow.cvc.causality import (
    ADDED_COLUMNS,
    STAGE,
    mention_texts,
    tag_causality,
    window_reason,
)
from groundflow.generate.masked_lm import MaskedLMScorer, score_span_texts
from groundflow.io.stage import check_accounting
from groundflow.models.masked_lm import build_tiny_masked_lm, load_masked_lm
from groundflow.models.spec import ModelSpec

CAPTIONS = {
    "c1": "A man throws a red frisbee to his Dog on the grass.",
    "c2": "A brown dog jumps over the grass while a man watches.",
    "c3": "A blue car waits at the traffic light on a busy street.",
}


def _row(image_id, label, mentions):
    return {
        "id": f"{image_id}-{label}",
        "image": f"{image_id}.jpg",
        "image_id": image_id,
        "width": 640,
        "height": 480,
        "label": label,
        "caption_ids": [cid for cid, _ in mentions],
        "captions": [CAPTIONS[cid] for cid, _ in mentions],
        "full_forms": [ff for _, ff in mentions],
    }


ENTITIES = pd.DataFrame(
    [
        _row("img1", "dog", [("c1", "his Dog"), ("c2", "A brown dog")]),
        _row("img1", "frisbee", [("c1", "a red frisbee")]),
        _row("img1", "grass", [("c1", "the grass"), ("c2", "the grass")]),
        _row("img1", "man", [("c1", "A man"), ("c2", "a man")]),
        _row("img2", "car", [("c3", "A blue car")]),
        _row("img2", "traffic light", [("c3", "the traffic light")]),
        _row("img2", "street", [("c3", "a busy street")]),
        # a user-supplied row whose full form is not in its caption
        _row("img2", "bus", [("c3", "a red bus")]),
    ]
)


@pytest.fixture(scope="module")
def masked_lm(tmp_path_factory):
    path = build_tiny_masked_lm(tmp_path_factory.mktemp("mlm") / "tiny-roberta", seed=0, texts=CAPTIONS.values())
    model, tokenizer = load_masked_lm(ModelSpec(str(path), device="cpu"))
    return model, tokenizer


@pytest.fixture(scope="module")
def wide(masked_lm):
    model, tokenizer = masked_lm
    return tag_causality(ENTITIES, MaskedLMScorer(model, tokenizer, batch_size=5), ppl_low=0.0, ppl_high=math.inf)


def test_loader_returns_eval_model_and_fast_tokenizer(masked_lm):
    model, tokenizer = masked_lm
    assert type(model).__name__ == "RobertaForMaskedLM"
    assert not model.training
    assert tokenizer.is_fast and tokenizer.mask_token == "<mask>" and tokenizer.pad_token_id == 1
    assert model.config.vocab_size == len(tokenizer)


def test_build_is_deterministic(tmp_path, masked_lm):
    model, _ = masked_lm
    again, _ = load_masked_lm(ModelSpec(str(build_tiny_masked_lm(tmp_path / "again", seed=0, texts=CAPTIONS.values()))))
    other, _ = load_masked_lm(ModelSpec(str(build_tiny_masked_lm(tmp_path / "other", seed=1, texts=CAPTIONS.values()))))
    weights = model.state_dict()
    assert all(torch.equal(weights[k], v) for k, v in again.state_dict().items())
    assert not all(torch.equal(weights[k], v) for k, v in other.state_dict().items())


def test_wide_window_keeps_every_locatable_row(wide):
    counts = check_accounting(STAGE, ENTITIES["id"], wide)
    assert counts == {"stage": STAGE, "in": 8, "out": 7, "rejected": 1}
    assert wide.rejects.to_dict("records") == [
        {"stage": STAGE, "id": "img2-bus", "reason": "no scorable mention of 'bus': full form 'a red bus' not found in caption c3"}
    ]
    kept = wide.kept
    assert list(kept.columns) == list(ENTITIES.columns) + list(ADDED_COLUMNS)
    assert list(kept["id"]) == [i for i in ENTITIES["id"] if i != "img2-bus"]
    assert kept["causality_ppl"].dtype == np.float64 and kept["full_form_ppl"].dtype == np.float64
    assert np.isfinite(kept["causality_ppl"]).all() and (kept["causality_ppl"] > 1).all()
    # the kept mention is one of the row's own mentions
    for row in kept.itertuples():
        k = list(row.caption_ids).index(row.caption_id)
        assert row.caption == row.captions[k] and row.full_form == row.full_forms[k]


def test_best_mention_has_the_lowest_label_perplexity(masked_lm, wide):
    model, tokenizer = masked_lm
    row = wide.kept.set_index("id").loc["img1-dog"]
    label_texts = [mention_texts(CAPTIONS[c], ff, "dog")[1] for c, ff in [("c1", "his Dog"), ("c2", "A brown dog")]]
    ppls = score_span_texts(model, tokenizer, label_texts, batch_size=1)
    assert row["caption_id"] == ["c1", "c2"][int(np.argmin(ppls))]
    assert row["causality_ppl"] == pytest.approx(min(ppls), rel=1e-5)


def test_perplexity_matches_a_direct_forward_pass(masked_lm):
    """The batched scorer against an explicit masked forward pass of one text."""
    model, tokenizer = masked_lm
    full_text, label_text = mention_texts(CAPTIONS["c3"], "A blue car", "car")
    item = full_text
    encoded = tokenizer(item.text, return_offsets_mapping=True)
    ids = torch.tensor(encoded["input_ids"])
    inside = [i for i, (s, e) in enumerate(encoded["offset_mapping"]) if s < item.end and e > item.start and e > s]
    masked = ids.clone()
    masked[inside] = tokenizer.mask_token_id
    with torch.no_grad():
        log_probs = torch.log_softmax(model(input_ids=masked[None]).logits[0].double(), -1)
    expected = math.exp(-float(log_probs[inside, ids[inside]].mean()))
    scored = score_span_texts(model, tokenizer, [label_text, item, label_text], batch_size=3)
    assert scored[1] == pytest.approx(expected, rel=1e-5)
    assert scored[0] == pytest.approx(scored[2], rel=1e-6)


def test_batched_equals_one_at_a_time(masked_lm, wide):
    model, tokenizer = masked_lm
    single = tag_causality(ENTITIES, MaskedLMScorer(model, tokenizer, batch_size=1), ppl_low=0.0, ppl_high=math.inf)
    assert list(single.kept["id"]) == list(wide.kept["id"])
    assert list(single.kept["caption_id"]) == list(wide.kept["caption_id"])
    np.testing.assert_allclose(single.kept["causality_ppl"], wide.kept["causality_ppl"], rtol=1e-4)
    np.testing.assert_allclose(single.kept["full_form_ppl"], wide.kept["full_form_ppl"], rtol=1e-4)


def test_window_keeps_and_rejects(masked_lm, wide):
    model, tokenizer = masked_lm
    ppls = wide.kept.set_index("id")["causality_ppl"]
    ppl_low, ppl_high = 1.0, float(ppls.median())
    result = tag_causality(ENTITIES, MaskedLMScorer(model, tokenizer, batch_size=4), ppl_low=ppl_low, ppl_high=ppl_high)
    check_accounting(STAGE, ENTITIES["id"], result)

    expected_kept = sorted(ppls.index[ppls < ppl_high])
    assert 0 < len(expected_kept) < len(ppls)
    assert sorted(result.kept["id"]) == expected_kept

    reasons = result.rejects.set_index("id")["reason"]
    assert set(reasons.index) == set(ppls.index[ppls >= ppl_high]) | {"img2-bus"}
    best = wide.kept.set_index("id")
    for entity_id in ppls.index[ppls >= ppl_high]:
        assert reasons[entity_id] == window_reason(
            best.loc[entity_id, "causality_ppl"], ppl_low, ppl_high, best.loc[entity_id, "label"], best.loc[entity_id, "caption_id"]
        )
    assert reasons[ppls.index[ppls >= ppl_high][0]].startswith("causality ppl ")


def test_empty_input(masked_lm):
    model, tokenizer = masked_lm
    result = tag_causality(ENTITIES.iloc[0:0], MaskedLMScorer(model, tokenizer, batch_size=4), ppl_low=1.0, ppl_high=3.33)
    assert result.kept.empty and result.rejects.empty
    assert list(result.kept.columns) == list(ENTITIES.columns) + list(ADDED_COLUMNS)

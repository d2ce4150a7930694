"""GWYS's InfoNCE conflict term (spec §5.2, §11.4): partners, the loss, its fallback and gradient."""

import math

import numpy as np
import pytest
import torch

from groundflow.gwys.conflict import ConflictSettings, conflict_term, info_nce, mean_pool, sample_partners

MODALITIES = ["image"] * 12 + ["video"] * 9 + ["image"] * 3


def unit(*xs):
    v = torch.tensor(xs, dtype=torch.float32)
    return v / v.norm()


def test_partners_are_seven_others_of_the_same_modality():
    drawn = sample_partners(MODALITIES, partners=7, seed=3)
    assert drawn.shape == (len(MODALITIES), 7)
    for row, partners in enumerate(drawn):
        assert row not in partners
        assert {MODALITIES[p] for p in partners} == {MODALITIES[row]}
        assert len(set(partners.tolist())) == 7  # enough others: no repeats


def test_partners_are_seeded_and_a_row_keeps_its_partners_when_rows_are_added():
    assert np.array_equal(sample_partners(MODALITIES, seed=3), sample_partners(MODALITIES, seed=3))
    assert not np.array_equal(sample_partners(MODALITIES, seed=3), sample_partners(MODALITIES, seed=4))
    more = sample_partners(MODALITIES + ["audio", "audio"], seed=3)
    assert np.array_equal(more[:len(MODALITIES)], sample_partners(MODALITIES, seed=3))


def test_a_small_modality_draws_with_replacement_and_a_lone_row_is_refused():
    drawn = sample_partners(["image"] * 3, partners=7, seed=0)
    for row, partners in enumerate(drawn):
        assert row not in partners and set(partners.tolist()) <= {0, 1, 2} - {row}
    with pytest.raises(ValueError, match="only 'video' row"):
        sample_partners(["image", "image", "video"], partners=2)


def test_mean_pool_ignores_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    assert torch.allclose(mean_pool(hidden, torch.tensor([[1, 1, 0]])), torch.tensor([[2.0, 3.0]]))


def test_no_loss_and_no_gradient_when_every_partner_is_at_or_below_theta():
    anchor = unit(1, 0, 0).requires_grad_()
    partners = torch.stack([unit(0, 1, 0), unit(0.5, math.sqrt(0.75), 0), unit(0, 0, 1)]).requires_grad_()
    result = info_nce(anchor[None], partners[None], threshold=0.5, tau=0.5)  # cosines 0, 0.5, 0
    assert result.loss.item() == pytest.approx(0.0, abs=1e-7)
    assert result.positives == 3 and result.fallbacks == 0
    result.loss.backward()
    assert anchor.grad.abs().max() < 1e-6 and partners.grad.abs().max() < 1e-6


def test_loss_matches_the_formula_for_mixed_partners():
    anchor = unit(1, 0, 0)
    cosines = [0.9, 0.2, 0.7, -0.3]
    partners = torch.stack([unit(c, math.sqrt(1 - c * c), 0) for c in cosines])
    result = info_nce(anchor[None], partners[None], threshold=0.5, tau=0.5)
    exp = [math.exp(c / 0.5) for c in cosines]
    assert result.loss.item() == pytest.approx(-math.log((exp[1] + exp[3]) / sum(exp)), rel=1e-5)
    assert result.positives == 2 and result.mean_cos == pytest.approx(sum(cosines) / 4, abs=1e-6)


@pytest.mark.parametrize("fallback, numerator", [("least_similar", 0.6), ("most_similar", 0.95), ("none", None)])
def test_fallback_when_no_partner_is_at_or_below_theta(fallback, numerator):
    anchor = unit(1, 0, 0)
    cosines = [0.8, 0.6, 0.95]
    partners = torch.stack([unit(c, math.sqrt(1 - c * c), 0) for c in cosines])
    result = info_nce(anchor[None], partners[None], threshold=0.5, tau=0.5, fallback=fallback)
    assert result.positives == 0 and result.fallbacks == 1
    total = sum(math.exp(c / 0.5) for c in cosines)
    expected = 0.0 if numerator is None else -math.log(math.exp(numerator / 0.5) / total)
    assert result.loss.item() == pytest.approx(expected, abs=1e-6)
    assert torch.isfinite(result.loss)


def test_one_step_pulls_positives_together_and_pushes_negatives_apart():
    torch.manual_seed(0)
    anchor = unit(1, 0, 0, 0)
    positive = unit(0.2, math.sqrt(1 - 0.04), 0, 0)  # cos 0.2 <= θ
    negative = unit(0.9, 0, math.sqrt(1 - 0.81), 0)  # cos 0.9 > θ
    reps = torch.stack([anchor, positive, negative]).requires_grad_()
    optimizer = torch.optim.SGD([reps], lr=0.1)

    def cosines():
        return [torch.nn.functional.cosine_similarity(reps[0], reps[k], dim=0).item() for k in (1, 2)]

    before = cosines()
    info_nce(reps[0][None], reps[1:][None], threshold=0.5, tau=0.5).loss.backward()
    optimizer.step()
    after = cosines()
    assert after[0] > before[0] + 1e-4  # the positive moved closer
    assert after[1] < before[1] - 1e-4  # the negative moved away


def test_term_is_computed_once_per_unique_prompt_in_one_embedding_call():
    torch.manual_seed(1)
    table = torch.randn(10, 6)
    partner_ids = sample_partners(["image"] * 10, partners=3, seed=0)
    calls = []

    def embed(rows):
        calls.append(list(rows))
        return table[rows]

    settings = ConflictSettings(partners=3)
    result = conflict_term(torch.tensor([4, 4, 4, 7, 7, 7]), partner_ids, embed, settings)
    assert len(calls) == 1 and len(calls[0]) == len(set(calls[0])) == result.rows_embedded
    assert set(calls[0]) == {4, 7} | set(partner_ids[4]) | set(partner_ids[7])
    assert result.prompts == 2
    by_hand = [info_nce(table[a][None], table[partner_ids[a]][None]).loss.item() for a in (4, 7)]
    assert result.loss.item() == pytest.approx(sum(by_hand) / 2, rel=1e-5)
    assert result.weighted.item() == pytest.approx(0.01 * result.loss.item(), rel=1e-6)


def test_settings_are_checked():
    with pytest.raises(ValueError, match="fallback"):
        ConflictSettings(fallback="random")
    with pytest.raises(ValueError, match="tau"):
        ConflictSettings(tau=0)

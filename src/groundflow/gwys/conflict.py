"""GWYS's conflict regulariser (spec §5.2): an InfoNCE term over pooled representations, pure torch.

The paper regulates the NTK similarity of training samples; the code, and this module, use a cheap
proxy instead: the cosine of mean-pooled last-layer hidden states (no gradient inner products).
For an anchor sample and its partners (seven other samples of the same modality):

    s_j = cos(h_0, h_j);  P = {j : s_j <= θ} (dissimilar pairs, pulled together);
    L = −log( Σ_{j∈P} exp(s_j/τ) / Σ_j exp(s_j/τ) ),   added to the GRPO loss as λ·L,

so partners above θ (too similar) are pushed apart, and L = 0 with no gradient once every partner is
at or below θ. With P empty the original takes the least similar partner as the positive
(`fallback="least_similar"`, the default, the code's reproducible behaviour; the code's comment says
"most similar": `"most_similar"`; `"none"` gives such a sample no term). θ = 0.5, τ = 0.5, λ = 0.01.

Fixes of the original (spec §10.9), each a setting or visible here: partners are drawn per sample
with a seed (`sample_partners`: the original's `random.sample` had none and each rank drew its own),
never include the sample itself (the original's could, a cos-1 partner that is always a negative),
and θ, τ and λ are settings rather than constants. Cosines are computed in float32 (the original
computed them in bf16). The term is computed once per unique prompt of a batch (`conflict_term`:
TRL repeats each prompt G times; the original took `inputs[0]` only, with one prompt per device),
from one embedding call over the distinct rows the anchors and their partners need.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

# torch is imported where a tensor is computed: the settings and the partner draw are read by the
# GRPO settings (`grpo_settings`), which the workflow checks without loading torch.
if TYPE_CHECKING:
    import torch

FALLBACKS = ("least_similar", "most_similar", "none")


@dataclass(frozen=True)
class ConflictSettings:
    weight: float = 0.01  # λ
    threshold: float = 0.5  # θ
    tau: float = 0.5  # τ
    partners: int = 7
    fallback: str = "least_similar"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.fallback not in FALLBACKS:
            raise ValueError(f"fallback is one of {list(FALLBACKS)}, not {self.fallback!r}")
        if self.tau <= 0:
            raise ValueError(f"tau must be > 0, not {self.tau}")
        if self.partners < 1:
            raise ValueError(f"partners must be >= 1, not {self.partners}")


def sample_partners(modalities: Sequence[str], *, partners: int = 7, seed: int = 0) -> np.ndarray:
    """Row i: `partners` indices of other rows of row i's modality, drawn with a generator seeded by
    (seed, i), so a row's partners do not depend on which rows come before it, on the rank, or on the
    run. Without replacement when the modality has enough other rows, else with replacement; a row
    alone in its modality has no partner to draw and is refused."""
    modalities = list(modalities)
    members: dict[str, np.ndarray] = {}
    for modality in dict.fromkeys(modalities):
        members[modality] = np.flatnonzero(np.asarray([m == modality for m in modalities]))
    drawn = np.empty((len(modalities), partners), dtype=np.int64)
    for row, modality in enumerate(modalities):
        pool = members[modality]
        others = len(pool) - 1
        if others < 1:
            raise ValueError(f"row {row} is the only {modality!r} row: it has no partner of its modality")
        rng = np.random.default_rng([seed, row])
        picks = rng.choice(others, size=partners, replace=others < partners)
        own = np.searchsorted(pool, row)
        drawn[row] = pool[picks + (picks >= own)]  # skip the row itself
    return drawn


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T, D] hidden states -> [B, D]: the mean over each row's attended (non-pad) positions."""
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1)


@dataclass
class InfoNCEResult:
    loss: torch.Tensor  # the mean over anchors (a scalar with gradient)
    per_anchor: torch.Tensor  # [B]
    positives: int  # partners at or below θ, over all anchors
    fallbacks: int  # anchors with no partner at or below θ
    mean_cos: float


def info_nce(anchors: torch.Tensor, partners: torch.Tensor, *, threshold: float = 0.5, tau: float = 0.5,
             fallback: str = "least_similar") -> InfoNCEResult:
    """The term for anchors [B, D] and their partners [B, P, D] (see the module docstring)."""
    import torch

    if fallback not in FALLBACKS:
        raise ValueError(f"fallback is one of {list(FALLBACKS)}, not {fallback!r}")
    if anchors.dim() != 2 or partners.dim() != 3 or partners.shape[0] != anchors.shape[0] \
            or partners.shape[2] != anchors.shape[1]:
        raise ValueError(f"anchors [B, D] and partners [B, P, D], not {tuple(anchors.shape)} and {tuple(partners.shape)}")
    cos = torch.nn.functional.cosine_similarity(anchors.float().unsqueeze(1), partners.float(), dim=-1)
    logits = cos / tau
    positive = cos <= threshold
    empty = ~positive.any(dim=1)
    with torch.no_grad():
        if fallback == "none":  # numerator = denominator: no loss, no gradient
            chosen = torch.ones_like(positive)
        else:
            pick = cos.argmin(dim=1) if fallback == "least_similar" else cos.argmax(dim=1)
            chosen = torch.nn.functional.one_hot(pick, cos.shape[1]).bool()
        numerator_mask = torch.where(empty.unsqueeze(1), chosen, positive)
    # never all -inf: every row keeps at least one numerator term, so no NaN reaches the gradient
    numerator = torch.logsumexp(logits.masked_fill(~numerator_mask, float("-inf")), dim=1)
    per_anchor = torch.logsumexp(logits, dim=1) - numerator
    return InfoNCEResult(loss=per_anchor.mean(), per_anchor=per_anchor, positives=int(positive.sum()),
                         fallbacks=int(empty.sum()), mean_cos=float(cos.detach().mean()))


@dataclass
class ConflictResult:
    loss: torch.Tensor  # L_NCE, the mean over unique prompts
    weighted: torch.Tensor  # λ · L_NCE, what is added to the GRPO loss (before gradient-accumulation scaling)
    positives: int
    fallbacks: int
    mean_cos: float
    prompts: int  # unique prompts the term was computed for
    rows_embedded: int  # rows the embedding call was given


def conflict_term(sample_index: Sequence[int] | torch.Tensor, partner_ids: np.ndarray,
                  embed: Callable[[list[int]], torch.Tensor], settings: ConflictSettings = ConflictSettings()) -> ConflictResult:
    """λ·InfoNCE for a batch whose rows are completions of the pool samples `sample_index` (each
    repeated once per completion): once per unique sample, its partners `partner_ids[sample]`, all
    pooled by one `embed(rows)` call -> [len(rows), D] (with gradient) over the distinct rows."""
    import torch

    if isinstance(sample_index, torch.Tensor):
        sample_index = sample_index.tolist()
    anchors = list(dict.fromkeys(int(i) for i in sample_index))
    if not anchors:
        raise ValueError("no samples to compute the conflict term for")
    partner_rows = np.asarray(partner_ids)[anchors]
    rows = list(dict.fromkeys([*anchors, *(int(r) for r in partner_rows.ravel())]))
    pooled = embed(rows)
    if pooled.shape[0] != len(rows):
        raise ValueError(f"embed returned {pooled.shape[0]} rows for {len(rows)}")
    where = {row: k for k, row in enumerate(rows)}
    anchor_vectors = pooled[torch.tensor([where[a] for a in anchors], device=pooled.device)]
    partner_vectors = pooled[torch.tensor([[where[int(r)] for r in partners] for partners in partner_rows],
                                          device=pooled.device)]
    result = info_nce(anchor_vectors, partner_vectors, threshold=settings.threshold, tau=settings.tau,
                      fallback=settings.fallback)
    return ConflictResult(loss=result.loss, weighted=settings.weight * result.loss, positives=result.positives,
                          fallbacks=result.fallbacks, mean_cos=result.mean_cos, prompts=len(anchors),
                          rows_embedded=len(rows))

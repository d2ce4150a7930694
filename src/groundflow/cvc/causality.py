"""Causality tagging (CVC step 1-1): how strongly the rest of a caption implies an entity.

For each mention of an entity (a caption and the entity's full form in it) two masked copies of
the caption are scored by a masked LM:
- the full form's tokens masked in the caption itself,
- the caption with the label in place of the full form, the label's tokens masked.
An entity's perplexity is exp(-mean log p(true token at each masked position)); a low label
perplexity means the context predicts the label well (high causality).

Which text is scored (the original, spec step 1-1, found the full form's words in the caption's
words case-sensitively and put the LLM's label in its place):
- the full form is found case-insensitively (the original missed "Dog" for "dog"), at word
  boundaries, and the caption's own characters of that occurrence are masked;
- the label put in its place is the label as the caption writes it: the label's words are found
  (case-insensitively) inside that occurrence of the full form and their characters taken
  verbatim ("Dog on a couch" scores "Dog", not our lower-cased label "dog"), so both copies are
  the caption's own words and the model is not scored on a case the caption never had;
- when the label's words are not inside the full form (only possible for entity rows not made by
  our entity stage, whose labels are always part of their full forms), the label is put in as
  stored, as the original put in whatever the LLM wrote.

Masking works on character spans: the UNMASKED text is tokenised with offsets and the ids of the
tokens inside the span are replaced by the mask id. The masked sequence therefore has exactly the
true text's tokenisation, which the seed only approximated by encoding a prefix and a prefix plus
the entity separately and re-joining CoreNLP words with spaces.

A row (one image's entity) may have several mentions (one per caption that yielded it); the
mention with the lowest label perplexity represents the row. When the full form occurs several
times in one caption, the first occurrence is masked (the seed scored every occurrence, but the
stage keeps a single mention per row, and the first one is the one a reader resolves first).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Protocol, Sequence

import pandas as pd

from groundflow.cvc.words import find_phrase_spans
from groundflow.generate.spans import SpanText
from groundflow.io.stage import StageResult, rejects_frame

log = logging.getLogger(__name__)

STAGE = "causality"
ADDED_COLUMNS = {
    "caption_id": str,
    "caption": str,
    "full_form": str,
    "causality_ppl": float,
    "full_form_ppl": float,
}


# ---------------------------------------------------------------------------------------------
# pure core


@dataclass(frozen=True)
class Mention:
    """One scorable mention of an entity: both masked copies of its caption."""

    caption_id: str
    caption: str
    full_form: str
    full_form_text: SpanText
    label_text: SpanText


def label_as_written(full_form_text: str, label: str) -> str:
    """The label's first word-aligned occurrence in `full_form_text` (the caption's own characters
    of the full form), as written there; `label` itself when it does not occur in it."""
    spans = find_phrase_spans(full_form_text, label)
    if not spans:
        return label
    start, end = spans[0]
    return full_form_text[start:end]


def mention_texts(caption: str, full_form: str, label: str) -> tuple[SpanText, SpanText] | None:
    """The full-form and label span texts of the first word-aligned occurrence of `full_form`.

    None when the full form does not occur in the caption (matching ignores case). The label
    copy puts the label as the caption writes it (`label_as_written`) in place of the full form.
    """
    spans = find_phrase_spans(caption, full_form)
    if not spans:
        return None
    start, end = spans[0]
    label_text = label_as_written(caption[start:end], label)
    label_caption = caption[:start] + label_text + caption[end:]
    return SpanText(caption, start, end), SpanText(label_caption, start, start + len(label_text))


def in_causality_window(ppl: float, ppl_low: float, ppl_high: float) -> bool:
    """High causality: ppl_low < ppl < ppl_high, both bounds excluded (NaN is never inside)."""
    return bool(ppl_low < ppl < ppl_high)


def window_reason(ppl: float, ppl_low: float, ppl_high: float, label: str, caption_id: str) -> str:
    return (
        f"causality ppl {ppl:.2f} outside ({float(ppl_low)}, {float(ppl_high)}) "
        f"for '{label}' in caption {caption_id}"
    )


class SpanScorer(Protocol):
    """What scores masked spans: groundflow.generate.masked_lm.MaskedLMScorer (a masked LM)."""

    def score_spans(self, items: Sequence[SpanText]) -> list[float]:
        """Perplexity of each item's masked span; NaN for one that cannot be scored."""
        ...


# ---------------------------------------------------------------------------------------------
# stage


def tag_causality(
    entities_df: pd.DataFrame,
    scorer: SpanScorer,
    *,
    ppl_low: float,
    ppl_high: float,
) -> StageResult:
    """Score every mention of every entity row; keep rows whose best label ppl is in the window.

    All masked texts of the whole frame (two per mention) go to the scorer in one call (a masked
    LM scores them in batches of its batch size). Kept rows gain caption_id, caption, full_form (of the best mention),
    causality_ppl (its label perplexity) and full_form_ppl.
    """
    rows_mentions: list[list[Mention]] = []
    rows_problems: list[list[str]] = []
    for row in entities_df.itertuples(index=False):
        mentions, problems = _row_mentions(row)
        rows_mentions.append(mentions)
        rows_problems.append(problems)

    span_texts = [
        text for mentions in rows_mentions for m in mentions for text in (m.full_form_text, m.label_text)
    ]
    scores = iter(scorer.score_spans(span_texts))

    kept_positions: list[int] = []
    added: dict[str, list] = {column: [] for column in ADDED_COLUMNS}
    rejects: list[tuple[str, str]] = []
    for position, (row, mentions, problems) in enumerate(
        zip(entities_df.itertuples(index=False), rows_mentions, rows_problems)
    ):
        best: tuple[float, float, Mention] | None = None
        for mention in mentions:
            full_form_ppl, label_ppl = next(scores), next(scores)
            if math.isnan(full_form_ppl) or math.isnan(label_ppl):
                problems.append(f"caption {mention.caption_id}: no scorable tokens (empty or too long)")
                continue
            if best is None or label_ppl < best[0]:
                best = (label_ppl, full_form_ppl, mention)
        label = str(row.label)
        if best is None:
            rejects.append((str(row.id), f"no scorable mention of '{label}': " + "; ".join(problems)))
            continue
        label_ppl, full_form_ppl, mention = best
        if not in_causality_window(label_ppl, ppl_low, ppl_high):
            reason = window_reason(label_ppl, ppl_low, ppl_high, label, mention.caption_id)
            rejects.append((str(row.id), reason))
            continue
        kept_positions.append(position)
        added["caption_id"].append(mention.caption_id)
        added["caption"].append(mention.caption)
        added["full_form"].append(mention.full_form)
        added["causality_ppl"].append(label_ppl)
        added["full_form_ppl"].append(full_form_ppl)

    kept = entities_df.iloc[kept_positions].reset_index(drop=True).copy()
    for column, dtype in ADDED_COLUMNS.items():
        pandas_dtype = "float64" if dtype is float else "str"
        kept[column] = pd.Series(added[column], dtype=pandas_dtype, index=kept.index)
    skipped = sum(len(problems) for problems in rows_problems)
    if skipped:
        log.warning("causality: %d mentions could not be scored (rows left with none are rejected)", skipped)
    log.info(
        "causality: %d rows in, %d kept, %d rejected (window %s..%s)",
        len(entities_df), len(kept), len(rejects), ppl_low, ppl_high,
    )
    return StageResult(kept=kept, rejects=rejects_frame(STAGE, rejects))


def _row_mentions(row) -> tuple[list[Mention], list[str]]:
    """The scorable mentions of one entity row, and why the others are not scorable."""
    label = str(row.label).strip()
    caption_ids, captions, full_forms = list(row.caption_ids), list(row.captions), list(row.full_forms)
    if not (len(caption_ids) == len(captions) == len(full_forms)):
        return [], [
            f"caption_ids, captions and full_forms differ in length "
            f"({len(caption_ids)}, {len(captions)}, {len(full_forms)})"
        ]
    if not label:
        return [], ["empty label"]
    mentions, problems = [], []
    for caption_id, caption, full_form in zip(caption_ids, captions, full_forms):
        texts = mention_texts(str(caption), str(full_form), label)
        if texts is None:
            problems.append(f"full form '{full_form}' not found in caption {caption_id}")
            continue
        mentions.append(Mention(str(caption_id), str(caption), str(full_form), *texts))
    return mentions, problems

"""Offline evaluation metrics: BLEU, chrF and ROUGE.

These helpers compute the same numbers as HuggingFace ``evaluate``'s
``sacrebleu``, ``chrf`` and ``rouge`` metric scripts by calling the libraries
those scripts wrap (``sacrebleu`` and ``rouge_score``) directly.

Why not ``evaluate.load("sacrebleu")``? ``evaluate.load`` fetches the metric
script from the HuggingFace Hub on first use, so it fails on machines without
hub access (air-gapped clusters, CI sandboxes). The metric scripts are thin
wrappers, so reproducing them here costs little and removes that dependency.

Reference layout: every function accepts either one reference per prediction
(``list[str]``) or several (``list[list[str]]``, one inner list per
prediction, as ``evaluate`` expects). Inputs are validated up front so that a
misaligned prediction/reference pair fails loudly instead of silently scoring
the wrong rows.
"""

from __future__ import annotations

from typing import Sequence, Union

import sacrebleu
from rouge_score import rouge_scorer

References = Union[Sequence[str], Sequence[Sequence[str]]]

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def _normalize_references(
    predictions: Sequence[str], references: References
) -> list[list[str]]:
    """Validate inputs and return references as one list per prediction.

    Raises:
        ValueError: on empty input, a length mismatch, an empty reference
            list, or a differing number of references per prediction.
    """
    if len(predictions) == 0:
        raise ValueError("predictions is empty; need at least one example")
    if len(predictions) != len(references):
        raise ValueError(
            f"got {len(predictions)} predictions but {len(references)} "
            "references; they must align one-to-one"
        )
    per_example = [[r] if isinstance(r, str) else list(r) for r in references]
    counts = {len(refs) for refs in per_example}
    if 0 in counts:
        raise ValueError("every prediction needs at least one reference")
    # sacrebleu consumes reference *streams* of equal length, so a ragged
    # reference set cannot be expressed; evaluate rejects it for the same reason.
    if len(counts) != 1:
        raise ValueError(
            "every prediction must have the same number of references, "
            f"got counts {sorted(counts)}"
        )
    return per_example


def _reference_streams(per_example: list[list[str]]) -> list[list[str]]:
    """Transpose per-prediction references into sacrebleu's stream layout.

    sacrebleu wants ``refs[k][i]`` = k-th reference of the i-th prediction,
    i.e. one full-length list per reference "set".
    """
    n_refs = len(per_example[0])
    return [[refs[k] for refs in per_example] for k in range(n_refs)]


def bleu(predictions: Sequence[str], references: References) -> dict:
    """Corpus BLEU with sacreBLEU's defaults (tokenizer ``13a``, exp smoothing).

    Returns a dict with ``bleu`` (0-100), ``counts``, ``totals``,
    ``precisions``, ``bp``, ``sys_len`` and ``ref_len`` -- the fields that
    evaluate's ``sacrebleu`` reports (it names the score ``score``).
    """
    streams = _reference_streams(_normalize_references(predictions, references))
    result = sacrebleu.corpus_bleu(list(predictions), streams)
    return {
        "bleu": result.score,
        "counts": list(result.counts),
        "totals": list(result.totals),
        "precisions": list(result.precisions),
        "bp": result.bp,
        "sys_len": result.sys_len,
        "ref_len": result.ref_len,
    }


def chrf(predictions: Sequence[str], references: References) -> dict:
    """Corpus chrF with sacreBLEU's defaults (char order 6, word order 0, beta 2).

    Returns ``{"chrf": score}`` with the score on a 0-100 scale.
    """
    streams = _reference_streams(_normalize_references(predictions, references))
    return {"chrf": sacrebleu.corpus_chrf(list(predictions), streams).score}


def translation_metrics(predictions: Sequence[str], references: References) -> dict:
    """BLEU and chrF together: all fields of :func:`bleu` plus ``chrf``."""
    return {**bleu(predictions, references), **chrf(predictions, references)}


def rouge(
    predictions: Sequence[str], references: References, use_stemmer: bool = True
) -> dict:
    """ROUGE-1/2/L/Lsum F-measures, averaged over examples, scaled to 0-100.

    Aggregation: the plain mean of per-example F1. evaluate's ``rouge``
    (``use_aggregator=True``) instead reports the ``mid`` value of
    rouge_score's ``BootstrapAggregator``, which is a bootstrap estimate of
    that same mean and so differs only by resampling noise (and varies from
    run to run unless seeded). The plain mean is exact and deterministic.

    rougeLsum splits summaries into sentences on ``"\\n"`` only; rouge_score's
    optional nltk sentence splitter (``split_summaries=True``) is left off, as
    in evaluate, so no nltk ``punkt`` data is ever needed or downloaded.
    Single-line texts therefore score the same on rougeL and rougeLsum.

    With several references per prediction the best-scoring reference is
    used per ROUGE type (rouge_score's ``score_multi``), as evaluate does.
    """
    per_example = _normalize_references(predictions, references)
    scorer = rouge_scorer.RougeScorer(
        list(ROUGE_TYPES), use_stemmer=use_stemmer, split_summaries=False
    )
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for prediction, refs in zip(predictions, per_example):
        scores = scorer.score_multi(refs, prediction)
        for rouge_type in ROUGE_TYPES:
            totals[rouge_type] += scores[rouge_type].fmeasure
    n = len(predictions)
    return {t: 100.0 * total / n for t, total in totals.items()}

"""Tests for bild.metrics: parity with sacrebleu / rouge_score, plus edge cases."""

import nltk
import pytest
import sacrebleu
from rouge_score import rouge_scorer

from bild import metrics

PREDICTIONS = [
    "This package provides a library for reading image files.",
    "The tool compresses log files and removes old backups.",
    "Documentation for the command line client is included.",
]
REFERENCES = [
    "This package contains a library to read image files.",
    "The tool compresses old log files and deletes outdated backups.",
    "This package includes the documentation for the command-line client.",
]
# Second reference set, one per prediction, for the multi-reference tests.
ALT_REFERENCES = [
    "A library for reading image files is provided by this package.",
    "This utility compresses log files and removes old backups.",
    "Documentation for the command line client.",
]
MULTI_REFERENCES = [[a, b] for a, b in zip(REFERENCES, ALT_REFERENCES)]

ROUGE_TYPES = ["rouge1", "rouge2", "rougeL", "rougeLsum"]


def _reference_rouge(predictions, references, use_stemmer=True):
    """Mean F1 x 100 computed straight from rouge_score, as the expected value."""
    scorer = rouge_scorer.RougeScorer(ROUGE_TYPES, use_stemmer=use_stemmer)
    per_example = [scorer.score(r, p) for p, r in zip(predictions, references)]
    return {
        t: 100 * sum(s[t].fmeasure for s in per_example) / len(per_example)
        for t in ROUGE_TYPES
    }


# --- BLEU / chrF ---------------------------------------------------------


def test_bleu_matches_sacrebleu():
    expected = sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES])
    result = metrics.bleu(PREDICTIONS, REFERENCES)
    assert result["bleu"] == pytest.approx(expected.score)
    assert result["bp"] == pytest.approx(expected.bp)
    assert result["sys_len"] == expected.sys_len
    assert result["ref_len"] == expected.ref_len
    assert result["precisions"] == pytest.approx(expected.precisions)
    assert 0 < result["bleu"] < 100  # the fixture is a genuinely partial match


def test_chrf_matches_sacrebleu():
    expected = sacrebleu.corpus_chrf(PREDICTIONS, [REFERENCES])
    assert metrics.chrf(PREDICTIONS, REFERENCES)["chrf"] == pytest.approx(
        expected.score
    )


def test_translation_metrics_combines_bleu_and_chrf():
    result = metrics.translation_metrics(PREDICTIONS, REFERENCES)
    assert result["bleu"] == pytest.approx(metrics.bleu(PREDICTIONS, REFERENCES)["bleu"])
    assert result["chrf"] == pytest.approx(metrics.chrf(PREDICTIONS, REFERENCES)["chrf"])


def test_single_ref_strings_equal_singleton_lists():
    wrapped = [[r] for r in REFERENCES]
    assert metrics.bleu(PREDICTIONS, wrapped) == metrics.bleu(PREDICTIONS, REFERENCES)


def test_multi_reference_is_transposed_for_sacrebleu():
    # sacrebleu takes one stream per reference set, not one list per prediction.
    expected_bleu = sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES, ALT_REFERENCES])
    expected_chrf = sacrebleu.corpus_chrf(PREDICTIONS, [REFERENCES, ALT_REFERENCES])
    result = metrics.translation_metrics(PREDICTIONS, MULTI_REFERENCES)
    assert result["bleu"] == pytest.approx(expected_bleu.score)
    assert result["chrf"] == pytest.approx(expected_chrf.score)
    # An extra reference can only add matching n-grams.
    assert result["bleu"] > metrics.bleu(PREDICTIONS, REFERENCES)["bleu"]


def test_bleu_identical_is_100_and_disjoint_is_0():
    assert metrics.bleu(REFERENCES, REFERENCES)["bleu"] == pytest.approx(100.0)
    disjoint = metrics.bleu(["alpha beta gamma delta"], ["one two three four"])
    assert disjoint["bleu"] == pytest.approx(0.0)


# --- ROUGE ---------------------------------------------------------------


def test_rouge_matches_rouge_score():
    result = metrics.rouge(PREDICTIONS, REFERENCES)
    expected = _reference_rouge(PREDICTIONS, REFERENCES)
    assert set(result) == set(ROUGE_TYPES)
    for rouge_type in ROUGE_TYPES:
        assert result[rouge_type] == pytest.approx(expected[rouge_type])


def test_rouge_without_stemmer_matches_rouge_score():
    result = metrics.rouge(PREDICTIONS, REFERENCES, use_stemmer=False)
    expected = _reference_rouge(PREDICTIONS, REFERENCES, use_stemmer=False)
    assert result == pytest.approx(expected)


def test_rouge_identical_is_100_and_disjoint_is_0():
    identical = metrics.rouge(REFERENCES, REFERENCES)
    assert identical == pytest.approx(dict.fromkeys(ROUGE_TYPES, 100.0))
    disjoint = metrics.rouge(["alpha beta gamma"], ["one two three"])
    assert disjoint == pytest.approx(dict.fromkeys(ROUGE_TYPES, 0.0))


def test_rouge_multi_reference_takes_best_reference():
    prediction = "the tool compresses log files"
    result = metrics.rouge([prediction], [["unrelated words here", prediction]])
    assert result == pytest.approx(dict.fromkeys(ROUGE_TYPES, 100.0))


def test_rougelsum_splits_on_newlines():
    # Same sentences in swapped order: one LCS over the whole text only matches
    # one sentence, while summary-level LCS matches each sentence separately.
    prediction = "the parser reads files\nthe writer saves output"
    reference = "the writer saves output\nthe parser reads files"
    result = metrics.rouge([prediction], [reference])
    assert result["rougeLsum"] == pytest.approx(100.0)
    assert result["rougeL"] < result["rougeLsum"]
    assert result == pytest.approx(_reference_rouge([prediction], [reference]))


def test_rougelsum_equals_rougel_on_single_line_text():
    result = metrics.rouge(PREDICTIONS, REFERENCES)
    assert result["rougeLsum"] == pytest.approx(result["rougeL"])


def test_rouge_never_uses_nltk_sentence_splitting(monkeypatch):
    # punkt data may be absent and downloading it needs network; fail loudly
    # if the rougeLsum path ever reaches for it.
    def forbidden(*args, **kwargs):
        raise AssertionError("nltk sentence splitting / download must not be used")

    monkeypatch.setattr(nltk, "sent_tokenize", forbidden)
    monkeypatch.setattr(nltk, "download", forbidden)
    metrics.rouge(["first line\nsecond line"], ["first line\nanother line"])


# --- input validation ----------------------------------------------------


@pytest.mark.parametrize("func", [metrics.bleu, metrics.chrf, metrics.rouge])
def test_length_mismatch_raises(func):
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        func(["a b c", "d e f"], ["a b c"])


@pytest.mark.parametrize("func", [metrics.bleu, metrics.chrf, metrics.rouge])
def test_empty_input_raises(func):
    with pytest.raises(ValueError, match="empty"):
        func([], [])


def test_ragged_multi_reference_raises():
    with pytest.raises(ValueError, match="same number of references"):
        metrics.bleu(["a b", "c d"], [["a b"], ["c d", "c e"]])


def test_empty_reference_list_raises():
    with pytest.raises(ValueError, match="at least one reference"):
        metrics.bleu(["a b"], [[]])

import math

import pytest

from bild import ALWAYS_FALLBACK, AUTO, PAPER_FALLBACK, BiLDConfig


def test_defaults_and_zero_is_kept():
    assert BiLDConfig() == BiLDConfig(AUTO, 2.0, 10)  # the measured rule by default (RESULTS.md A19)
    assert PAPER_FALLBACK == 0.6 and BiLDConfig(PAPER_FALLBACK).fallback_threshold == 0.6
    cfg = BiLDConfig(fallback_threshold=0.0, rollback_threshold=0.0)
    assert cfg.fallback_threshold == 0.0 and cfg.rollback_threshold == 0.0
    assert BiLDConfig(1.0, math.inf, 1).rollback_threshold == math.inf
    assert BiLDConfig(ALWAYS_FALLBACK).fallback_threshold == math.inf


def test_fallback_rule_is_left_out_of_files_at_its_default():
    assert "fallback_rule" not in BiLDConfig().to_dict()
    assert BiLDConfig(0.6, fallback_rule="round").to_dict()["fallback_rule"] == "round"


def test_keep_fallback_draft_is_on_by_default_only_when_lossless():
    assert BiLDConfig().keep_fallback_draft is None and BiLDConfig().keeps_fallback_draft is True  # auto keeps it
    assert BiLDConfig(0.6).keeps_fallback_draft is False  # the paper's rule throws the unsure token away
    assert BiLDConfig(0.6, 0.0).keeps_fallback_draft is True
    assert BiLDConfig(0.6, 0.0, 10, False).keeps_fallback_draft is False
    assert BiLDConfig(0.6, 2.0, 10, True).keeps_fallback_draft is True


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(fallback_threshold=1.5), "fallback_threshold must be in \\[0, 1\\]"),
        (dict(fallback_threshold=-0.1), "fallback_threshold must be in \\[0, 1\\]"),
        (dict(fallback_threshold=math.nan), "fallback_threshold must be a number"),
        (dict(fallback_threshold="0.5"), "fallback_threshold must be a number"),
        (dict(rollback_threshold=-1.0), "rollback_threshold must be a number >= 0"),
        (dict(rollback_threshold=math.nan), "rollback_threshold must be a number >= 0"),
        (dict(max_small_steps=0), "max_small_steps must be an integer >= 1"),
        (dict(max_small_steps=2.5), "max_small_steps must be an integer >= 1"),
        (dict(keep_fallback_draft=1), "keep_fallback_draft must be True, False or None"),
        (dict(fallback_rule="auto"), "fallback_rule must be one of"),
    ],
)
def test_bad_values_are_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BiLDConfig(**kwargs)


def test_the_round_rule_needs_a_number_as_threshold():
    with pytest.raises(ValueError, match="pass a number as fallback_threshold"):
        BiLDConfig(fallback_rule="round")
    assert BiLDConfig(0.6, fallback_rule="round").fallback_rule == "round"

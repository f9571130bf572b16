import math

import pytest

from bild import ALWAYS_FALLBACK, BiLDConfig


def test_defaults_and_zero_is_kept():
    assert BiLDConfig() == BiLDConfig(0.6, 2.0, 10)
    cfg = BiLDConfig(fallback_threshold=0.0, rollback_threshold=0.0)
    assert cfg.fallback_threshold == 0.0 and cfg.rollback_threshold == 0.0
    assert BiLDConfig(1.0, math.inf, 1).rollback_threshold == math.inf
    assert BiLDConfig(ALWAYS_FALLBACK).fallback_threshold == math.inf


def test_draft_threshold_defaults_to_the_papers_rule():
    assert BiLDConfig(0.6).stop_threshold == 0.6 and not BiLDConfig(0.6).drafts_through_unsure
    assert not BiLDConfig(0.6, draft_threshold=0.6).drafts_through_unsure
    cfg = BiLDConfig(0.6, draft_threshold=0)
    assert cfg.stop_threshold == 0.0 and cfg.drafts_through_unsure and isinstance(cfg.draft_threshold, float)


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
        (dict(fallback_threshold=0.5, draft_threshold=0.7), "draft_threshold must be a number in \\[0, fallback"),
        (dict(draft_threshold=-0.1), "draft_threshold must be a number in"),
        (dict(draft_threshold=math.nan), "draft_threshold must be a number in"),
    ],
)
def test_bad_values_are_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BiLDConfig(**kwargs)

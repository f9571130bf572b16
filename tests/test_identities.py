"""The identities of docs/decoding.md, for every supported architecture, in float32."""

import math

import pytest
import torch

from bild import ALWAYS_FALLBACK, BiLDGenerator, bild_generate
from reference import reference_bild
from tiny_models import ARCHITECTURES, ENCODER_DECODER, EOS, PAD, batch_inputs, prompts, tiny_pair

MAX_NEW = 24


def _pair(arch, mode):
    return tiny_pair(arch, mode, seed=ARCHITECTURES.index(arch))


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("mode", ["disagree", "agree"])
def test_rollback_zero_equals_large_greedy(arch, mode):
    small, large = _pair(arch, mode)
    inputs = batch_inputs(prompts(1, seed=1, min_len=4), arch in ENCODER_DECODER)
    expected = large.generate(**inputs, do_sample=False, max_new_tokens=MAX_NEW)
    for fb, n, keep, rule in ((0.0, 10, None, "token"), (0.5, 4, None, "token"), (1.0, 1, None, "token"),
                              (0.5, 4, False, "token"), (0.3, 6, None, "round"), (0.3, 6, False, "round")):
        out = BiLDGenerator(small, large, fb, 0.0, n, keep_fallback_draft=keep, fallback_rule=rule).generate(
            **inputs, max_new_tokens=MAX_NEW, return_dict_in_generate=True)
        assert torch.equal(out.sequences, expected), (fb, n, keep, rule)
        out.stats.check()


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_always_fallback_equals_large_greedy(arch):
    small, large = _pair(arch, "disagree")
    inputs = batch_inputs(prompts(1, seed=2, min_len=4), arch in ENCODER_DECODER)
    expected = large.generate(**inputs, do_sample=False, max_new_tokens=MAX_NEW)
    out = BiLDGenerator(small, large, ALWAYS_FALLBACK, 5.0).generate(**inputs, max_new_tokens=MAX_NEW, return_dict_in_generate=True)
    assert torch.equal(out.sequences, expected)
    total = out.stats.total()
    assert total["drafted_tokens"] == 0 and total["batch_small_calls"] == 0
    assert total["large_forward_calls"] == total["committed_tokens"] == total["bonus_tokens"]


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("mode", ["disagree", "agree"])
@pytest.mark.parametrize("keep_fallback_draft, rule", [(False, "token"), (True, "token"), (None, "round")])
def test_batch_rows_equal_rows_alone(arch, mode, keep_fallback_draft, rule):
    small, large = _pair(arch, mode)
    enc_dec = arch in ENCODER_DECODER
    rows = prompts(4, seed=3)
    gen = BiLDGenerator(small, large, 0.4 if rule == "token" else 0.2, 1.5, 5, keep_fallback_draft=keep_fallback_draft,
                        fallback_rule=rule)
    batched = gen.generate(**batch_inputs(rows, enc_dec), max_new_tokens=MAX_NEW, return_dict_in_generate=True)
    for i, row in enumerate(rows):
        alone = gen.generate(**batch_inputs([row], enc_dec), max_new_tokens=MAX_NEW, return_dict_in_generate=True)
        got = batched.sequences[i]
        if not enc_dec:  # this row's share of the left padding
            got = got[max(map(len, rows)) - len(row):]
        expected = alone.sequences[0]
        assert torch.equal(got[: len(expected)], expected), i
        assert (got[len(expected):] == PAD).all(), i
        for name in ("drafted_tokens", "accepted_drafts", "fallbacks", "rollbacks", "corrections", "bonus_tokens"):
            assert getattr(batched.stats, name)[i] == getattr(alone.stats, name)[0], (i, name)


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("fb, rb, n", [(0.5, 1.0, 4), (0.2, 3.0, 10), (0.0, math.inf, 3)])
def test_cached_equals_no_cache_reference(arch, fb, rb, n):
    small, large = _pair(arch, "agree" if rb > 2 else "disagree")
    row = prompts(1, seed=4, min_len=5)[0]
    inputs = batch_inputs([row], arch in ENCODER_DECODER)
    out = BiLDGenerator(small, large, fb, rb, n).generate(**inputs, max_new_tokens=MAX_NEW, return_dict_in_generate=True)
    expected, counts = reference_bild(small, large, row, fb, rb, n, MAX_NEW, EOS)
    assert out.sequences[0].tolist() == expected
    total = out.stats.total()
    assert total["drafted_tokens"] == counts["drafted"]
    assert total["fallbacks"] == counts["fallbacks"]
    assert total["rollbacks"] == counts["rollbacks"]
    assert total["large_forward_calls"] == counts["rounds"]


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("fb, rb, n, keep", [(0.3, 1.0, 6, False), (0.2, 3.0, 10, True)])
def test_round_rule_equals_reference(arch, fb, rb, n, keep):
    """fallback_rule="round": a round ends when the product of its max probabilities falls below fb."""
    small, large = _pair(arch, "agree" if rb > 2 else "disagree")
    row = prompts(1, seed=7, min_len=5)[0]
    inputs = batch_inputs([row], arch in ENCODER_DECODER)
    out = BiLDGenerator(small, large, fb, rb, n, keep_fallback_draft=keep, fallback_rule="round").generate(
        **inputs, max_new_tokens=MAX_NEW, return_dict_in_generate=True)
    expected, counts = reference_bild(small, large, row, fb, rb, n, MAX_NEW, EOS, keep_fallback=keep, rule="round")
    assert out.sequences[0].tolist() == expected
    total = out.stats.total()
    assert (total["drafted_tokens"], total["fallbacks"], total["rollbacks"], total["large_forward_calls"]) == (
        counts["drafted"], counts["fallbacks"], counts["rollbacks"], counts["rounds"])
    assert counts["fallbacks"] > 0 or arch in ENCODER_DECODER  # the tiny seq2seq pairs repeat one token


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("fb, rb, n", [(0.6, 2.0, 6), (0.9, math.inf, 4)])
def test_kept_fallback_draft_equals_reference(arch, fb, rb, n):
    """keep_fallback_draft: the unsure token ends the round as a draft checked exactly, the others with RB."""
    small, large = _pair(arch, "disagree")
    row = prompts(1, seed=6, min_len=5)[0]
    inputs = batch_inputs([row], arch in ENCODER_DECODER)
    out = BiLDGenerator(small, large, fb, rb, n, keep_fallback_draft=True).generate(
        **inputs, max_new_tokens=MAX_NEW, return_dict_in_generate=True)
    expected, counts = reference_bild(small, large, row, fb, rb, n, MAX_NEW, EOS, keep_fallback=True)
    assert out.sequences[0].tolist() == expected
    total = out.stats.total()
    assert (total["drafted_tokens"], total["fallbacks"], total["rollbacks"], total["large_forward_calls"]) == (
        counts["drafted"], counts["fallbacks"], counts["rollbacks"], counts["rounds"])
    out.stats.check()
    lossless = BiLDGenerator(small, large, fb, 0.0, n, keep_fallback_draft=True).generate(**inputs, max_new_tokens=MAX_NEW)
    assert torch.equal(lossless, large.generate(**inputs, do_sample=False, max_new_tokens=MAX_NEW))


def test_kept_fallback_drafts_are_checked_exactly_and_save_rounds():
    """With RB = inf every confident draft is accepted; a kept unsure one only if it is the large argmax. Over
    the seven architectures the kept drafts must commit some tokens (fewer rounds) and be rejected somewhere."""
    fewer_rounds = rejected_kept = 0
    for arch in ARCHITECTURES:
        small, large = _pair(arch, "disagree")
        row = prompts(1, seed=6, min_len=5)[0]
        _, kept = reference_bild(small, large, row, 0.9, math.inf, 4, MAX_NEW, EOS, keep_fallback=True)
        _, paper = reference_bild(small, large, row, 0.9, math.inf, 4, MAX_NEW, EOS)
        assert kept["rounds"] <= paper["rounds"], arch
        fewer_rounds += kept["rounds"] < paper["rounds"]
        rejected_kept += kept["rollbacks"] > 0  # with RB = inf only a kept unsure draft can be rejected
    assert fewer_rounds > 0 and rejected_kept > 0


@pytest.mark.parametrize("arch", ["qwen2", "t5"])
def test_custom_generate_inside_transformers(arch):
    small, large = _pair(arch, "disagree")
    inputs = batch_inputs(prompts(2, seed=5), arch in ENCODER_DECODER)
    via_hf = large.generate(**inputs, custom_generate=bild_generate, small_model=small, fallback_threshold=0.5,
                            rollback_threshold=1.0, max_small_steps=4, do_sample=False, max_new_tokens=MAX_NEW)
    via_bild = BiLDGenerator(small, large, 0.5, 1.0, 4).generate(**inputs, max_new_tokens=MAX_NEW)
    assert torch.equal(via_hf, via_bild)
    lossless = large.generate(**inputs, custom_generate=bild_generate, small_model=small, rollback_threshold=0.0,
                              do_sample=False, max_new_tokens=MAX_NEW)
    assert torch.equal(lossless, large.generate(**inputs, do_sample=False, max_new_tokens=MAX_NEW))

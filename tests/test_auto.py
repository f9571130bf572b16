"""fallback_threshold="auto": the policy's numbers, its bookkeeping, and the decode loop against the reference."""

import math

import numpy as np
import pytest
import torch

import reference
from bild import AUTO, BiLDConfig, BiLDGenerator
from bild.acceptance import AcceptanceTracker, AutoRound, CostClock
from bild.policy import (CONFIDENCE_EDGES, PRIOR_ACCEPTANCE, PRIOR_WEIGHT, acceptance_table, confidence_bins,
                         drafting_stop_level, next_draft_acceptance)
from reference import reference_auto
from tiny_models import ARCHITECTURES, ENCODER_DECODER, EOS, batch_inputs, prompts, tiny_pair

MAX_NEW = 20


def test_the_reference_states_the_same_constants():
    assert reference.AUTO_EDGES == CONFIDENCE_EDGES
    assert reference.AUTO_PRIOR == PRIOR_ACCEPTANCE and reference.AUTO_WEIGHT == PRIOR_WEIGHT


def test_confidence_bins_count_the_edges_at_or_below():
    p = torch.tensor([0.0, 0.2999, 0.3, 0.55, 0.9, 0.9899, 0.99, 1.0])
    assert confidence_bins(p).tolist() == [0, 0, 1, 2, 6, 8, 9, 9]


def test_acceptance_estimates_start_at_the_prior_and_follow_the_counts():
    accepted, seen = np.zeros((2, 10)), np.zeros((2, 10))
    accepted[1, 9], seen[1, 9] = 0, 8  # row 1: eight confident drafts, all rejected
    table = acceptance_table(accepted, seen)
    assert np.allclose(table[0], PRIOR_ACCEPTANCE)
    assert table[1, 9] == pytest.approx(2 * 0.995 / 10)
    q = next_draft_acceptance(accepted, seen)
    assert q[0] == pytest.approx(np.mean(PRIOR_ACCEPTANCE))
    assert q[1] == pytest.approx(2 * np.mean(PRIOR_ACCEPTANCE) / 10)


def test_the_bar_is_cost_times_rate_over_acceptance():
    q = np.array([0.8, 0.8, 0.2])
    committed, rounds, steps = np.array([0, 9, 9]), np.array([0, 2, 2]), np.array([0, 10, 10])
    level = drafting_stop_level(q, 0.25, committed, rounds, steps)
    # row 0: rate 1 -> 0.25 / 0.8; row 1: rate 10 / (2 + 2.5 + 1) = 1.818 -> 0.568; row 2: over 1, no drafting.
    assert level.tolist() == pytest.approx([0.3125, 0.25 * (10 / 5.5) / 0.8, 0.25 * (10 / 5.5) / 0.2])
    assert (level <= 1).tolist() == [True, True, False]


def test_a_row_that_stops_drafting_resumes_once_plain_steps_bring_its_rate_down():
    """Issue #19 item 4: a row whose drafting stopped paying takes plain large-model steps (one token per round, no
    small step), which lower its rate towards 1, so it drafts again as soon as its drafts would beat that rate."""
    q = np.array([0.41])  # its drafts' estimated acceptance: not worth its current rate at cost 0.3
    committed, rounds, steps = np.array([20]), np.array([5]), np.array([20])
    assert drafting_stop_level(q, 0.3, committed, rounds, steps)[0] > 1  # rate 21 / 12: stops drafting
    plain = 0
    while drafting_stop_level(q, 0.3, committed, rounds, steps)[0] > 1:
        committed, rounds, plain = committed + 1, rounds + 1, plain + 1  # a plain step: one token, one large pass
        assert plain < 100
    # it resumes when 0.3 * (21 + m) / (12 + m) <= 0.41, i.e. after m = 13 plain steps
    assert plain == 13
    # a row whose drafts are worth less than a small step never resumes: the bar stays above 1 at rate 1
    assert drafting_stop_level(np.array([0.25]), 0.3, np.array([1000]), np.array([1000]), np.array([0]))[0] > 1


def test_learning_counts_drafts_up_to_the_first_rejection():
    tracker = AcceptanceTracker(3, 4, CostClock(0.3, measure=False))
    auto = tracker.round(np.zeros(3), np.zeros(3), np.zeros(3), "cpu")
    auto.bins[:] = [[9, 9, 5, 2], [9, 3, 3, 3], [0, 0, 0, 0]]
    tracker.learn(auto, drafts=np.array([4, 2, 0]), accepted=np.array([2, 2, 0]))
    # row 0: two accepted (bin 9), the third judged and rejected (bin 5), the fourth never judged.
    assert tracker.seen[0].tolist() == [0, 0, 0, 0, 0, 1, 0, 0, 0, 2] and tracker.accepted[0, 9] == 2
    assert tracker.accepted[0].sum() == 2
    # row 1: both drafts accepted; row 2 drafted nothing.
    assert tracker.seen[1, 9] == 1 and tracker.seen[1, 3] == 1 and tracker.accepted[1].sum() == 2
    assert tracker.seen[2].sum() == 0


def test_the_clock_skips_the_first_round_and_measures_per_step():
    clock = CostClock(0.4, measure=True)
    clock.add_round(5.0, 3, 9.0, 3)  # prefills: ignored
    assert clock.ratio == 0.4
    clock.add_round(0.3, 3, 0.5, 3)
    clock.add_round(0.3, 3, 0.5, 3)
    assert clock.ratio == pytest.approx(0.1 / 0.5)  # one width only: no per-draft cost fitted
    assert CostClock(0.4, measure=False).ratio == 0.4


def test_the_clock_adds_what_a_draft_costs_the_large_pass():
    clock = CostClock(0.4, measure=True)
    clock.add_round(9.0, 1, 9.0, 1)
    for width in (0, 2, 4, 6):  # verify = 0.5 s + 0.02 s per draft; a small step 0.1 s
        clock.add_round(0.1 * width, width, 0.5 + 0.02 * width, width)
    assert clock.verify_fit() == pytest.approx((0.5, 0.02))
    assert clock.ratio == pytest.approx((0.1 + 0.02) / 0.5)
    noisy = CostClock(0.4, measure=True)
    noisy.add_round(0, 0, 0, 0)
    for width, t in ((1, 0.5), (2, 0.5), (3, 2.0)):  # a stall: the slope is capped at the pass without drafts
        noisy.add_round(0.1 * width, width, t, width)
    base, per_draft = noisy.verify_fit()
    assert per_draft == pytest.approx(1 / 3) and base == pytest.approx(per_draft)
    # A CPU without native matrix units: each draft widens the pass by 0.45 s, far more than a 0.1 s small step.
    # The widening is counted in full (it used to be clamped to one small step, which hid that drafting cannot pay).
    wide = CostClock(0.4, measure=True)
    wide.add_round(9.0, 1, 9.0, 1)
    for width in (0, 1, 2, 3):
        wide.add_round(0.1 * width, width, 0.5 + 0.45 * width, width)
    assert wide.verify_fit() == pytest.approx((0.5, 0.45))
    assert wide.ratio == pytest.approx((0.1 + 0.45) / 0.5)


def test_config_checks():
    assert BiLDConfig(AUTO, 0.0).fallback_threshold == "auto" and BiLDConfig(AUTO, 2.0).keeps_fallback_draft
    assert BiLDConfig(AUTO, 2.0, cost_ratio=0.3).to_dict()["cost_ratio"] == 0.3
    assert "cost_ratio" not in BiLDConfig().to_dict()
    with pytest.raises(ValueError, match="auto"):
        BiLDConfig("automatic")
    with pytest.raises(ValueError, match="fallback_rule"):
        BiLDConfig(AUTO, 0.0, fallback_rule="round")
    for bad in (0, -1.0, math.inf, "0.3", True):
        with pytest.raises(ValueError, match="cost_ratio"):
            BiLDConfig(AUTO, 0.0, cost_ratio=bad)


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("rb, cost, mode", [(1.0, 0.2, "disagree"), (3.0, 0.5, "agree"), (0.0, 0.3, "agree")])
def test_auto_equals_the_reference(arch, rb, cost, mode):
    small, large = tiny_pair(arch, mode, noise=0.3 if mode == "agree" else 0.02)
    row = prompts(1, seed=4, min_len=5)[0]
    inputs = batch_inputs([row], arch in ENCODER_DECODER)
    out = BiLDGenerator(small, large, AUTO, rb, 5, cost_ratio=cost).generate(
        **inputs, max_new_tokens=MAX_NEW, return_dict_in_generate=True)
    expected, counts = reference_auto(small, large, row, rb, 5, MAX_NEW, EOS, cost)
    assert out.sequences[0].tolist() == expected
    total = out.stats.total()
    assert (total["drafted_tokens"], total["fallbacks"], total["rollbacks"], total["large_forward_calls"],
            total["small_forward_calls"]) == (counts["drafted"], counts["fallbacks"], counts["rollbacks"],
                                              counts["rounds"], counts["small_steps"])
    out.stats.check()


@pytest.mark.parametrize("arch", ["llama", "gpt2", "t5", "bart"])
@pytest.mark.parametrize("cost", [None, 0.3])
def test_lossless_auto_is_large_greedy_in_batches(arch, cost):
    small, large = tiny_pair(arch, "agree", noise=0.3)
    inputs = batch_inputs(prompts(3, seed=2, min_len=3), arch in ENCODER_DECODER)
    out = BiLDGenerator(small, large, AUTO, 0.0, 6, cost_ratio=cost).generate(**inputs, max_new_tokens=MAX_NEW)
    assert torch.equal(out, large.generate(**inputs, do_sample=False, max_new_tokens=MAX_NEW))


def test_each_row_of_a_batch_learns_on_its_own():
    """Rows keep their own counts: with a fixed cost ratio, row i of a batch is row i alone (rollback > 0 too)."""
    small, large = tiny_pair("llama", "agree", noise=0.3)
    inputs = batch_inputs(prompts(4, seed=3, min_len=3), False)
    gen = BiLDGenerator(small, large, AUTO, 2.0, 5, cost_ratio=0.3)
    batched = gen.generate(**inputs, max_new_tokens=MAX_NEW, return_dict_in_generate=True)
    for i in range(4):
        start = int((~inputs["attention_mask"][i].bool()).sum())
        alone = gen.generate(**{k: v[i : i + 1, start:] for k, v in inputs.items()}, max_new_tokens=MAX_NEW,
                             return_dict_in_generate=True)
        got = batched.sequences[i, start:]
        assert got[: alone.sequences.shape[1]].tolist() == alone.sequences[0].tolist(), i
        for name in ("small_forward_calls", "large_forward_calls", "drafted_tokens", "accepted_drafts", "fallbacks"):
            assert getattr(batched.stats, name)[i] == getattr(alone.stats, name)[0], (i, name)


def test_a_small_model_whose_drafts_are_rejected_stops_drafting():
    """Never much slower than the large model: once its drafts are seen to fail, a row takes plain large steps."""
    small, large = tiny_pair("llama", "disagree")
    inputs = batch_inputs(prompts(1, seed=2, min_len=3), False)
    gen = BiLDGenerator(small, large, AUTO, 0.0, 5, cost_ratio=0.3)
    short, long = (gen.generate(**inputs, max_new_tokens=n, return_dict_in_generate=True).stats.total() for n in (40, 80))
    assert short["accepted_drafts"] == long["accepted_drafts"] == 0
    assert 0 < short["small_forward_calls"] == long["small_forward_calls"] <= 8  # a few rounds, then none at all
    assert long["large_forward_calls"] == long["committed_tokens"] == 80
    fixed = BiLDGenerator(small, large, 0.0, 0.0, 5).generate(**inputs, max_new_tokens=80, return_dict_in_generate=True)
    assert fixed.stats.total()["small_forward_calls"] > 10 * long["small_forward_calls"]


def test_a_small_model_that_agrees_drafts_long_rounds_and_longer_the_cheaper_its_step():
    small, large = tiny_pair("llama", "agree", noise=0.0)  # the same model: every draft is accepted
    inputs = batch_inputs(prompts(2, seed=2, min_len=3), False)
    per_call = []
    for cost in (0.5, 0.2, 0.1):
        out = BiLDGenerator(small, large, AUTO, 0.0, 8, cost_ratio=cost).generate(
            **inputs, max_new_tokens=40, return_dict_in_generate=True)
        assert out.stats.total()["acceptance_rate"] == 1.0
        per_call.append(out.stats.total()["mean_tokens_per_large_call"])
    assert per_call[0] < per_call[1] < per_call[2] and per_call[1] > 4, per_call


def test_a_small_step_as_dear_as_a_large_one_is_not_taken():
    """cost_ratio 1: a draft would have to be accepted more often than always to pay."""
    small, large = tiny_pair("llama", "agree", noise=0.0)
    inputs = batch_inputs(prompts(1, seed=2, min_len=3), False)
    out = BiLDGenerator(small, large, AUTO, 0.0, 8, cost_ratio=1.0).generate(
        **inputs, max_new_tokens=20, return_dict_in_generate=True)
    assert out.stats.total()["small_forward_calls"] == 0
    assert torch.equal(out.sequences, large.generate(**inputs, do_sample=False, max_new_tokens=20))


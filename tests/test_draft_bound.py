"""benchmarks/draft_bound.py: its replay of lossless policies is BiLD's own schedule, and the oracle bounds them."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bild import BiLDGenerator
from tiny_models import EOS, prompts, tiny_pair

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("draft_bound", ROOT / "benchmarks" / "draft_bound.py")
draft_bound = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(draft_bound)

# The real pair's measured costs (benchmarks/step_costs.py on this CPU).
COSTS = json.loads((ROOT / "benchmarks" / "results" / "step_costs_qwen_cpu.json").read_text())["costs_ms"]


def replays(mode: str, fb: float, n: int, keep: bool = False, rule: str = "token") -> list[tuple[dict, object]]:
    """(replay of lossless BiLD over teacher-forced agreement, the decoder's own stats) for six prompts;
    keep: BiLD keeps its fallback drafts (the replay's "keep" policy), else the paper's rule; rule "round":
    fallback_rule="round" with kept drafts (the replay's "cumulative" policy)."""
    small, large = tiny_pair("qwen2", mode, seed=3)
    policy = "cumulative" if rule == "round" else "keep" if keep else "bild"
    out_pairs = []
    for row in prompts(6, seed=5, min_len=3):
        inputs = {"input_ids": torch.tensor([row]), "attention_mask": torch.ones(1, len(row), dtype=torch.long)}
        out = BiLDGenerator(small, large, fb, 0.0, n, keep_fallback_draft=keep, fallback_rule=rule,
                            drafting_guard=False).generate(
            **inputs, max_new_tokens=20, return_dict_in_generate=True)
        target = out.sequences[0, len(row):].tolist()
        if EOS in target:
            target = target[: target.index(EOS) + 1]
        match, probs = draft_bound.along(small, row, target)
        out_pairs.append((draft_bound.replay(match, probs, policy, fb, n, COSTS), out.stats))
    return out_pairs


@pytest.mark.parametrize("mode", ["agree", "disagree"])
@pytest.mark.parametrize("fb, n", [(0.0, 10), (0.5, 4), (0.8, 3), (0.3, 1)])
@pytest.mark.parametrize("keep", [False, True])
def test_replay_counts_the_calls_bild_makes(mode, fb, n, keep):
    """Replaying lossless BiLD over teacher-forced agreement gives the decoder's rounds exactly, and at most its
    small steps (the replay stops a round at its first wrong draft; the decoder may draft on)."""
    for replayed, stats in replays(mode, fb, n, keep):
        assert replayed["large_calls"] == stats.large_forward_calls[0]
        assert replayed["small_steps"] <= stats.small_forward_calls[0]


@pytest.mark.parametrize("mode", ["agree", "disagree"])
@pytest.mark.parametrize("fb, n", [(0.2, 10), (0.5, 4), (0.05, 6)])
def test_replay_counts_the_calls_of_the_round_rule(mode, fb, n):
    """fallback_rule="round" (product of the round's max probabilities): the replay's "cumulative" policy gives the
    decoder's rounds exactly, and ends rounds no later than the per-token rule at the same threshold."""
    for (replayed, stats), (token_replayed, _) in zip(replays(mode, fb, n, True, "round"), replays(mode, fb, n, True)):
        assert replayed["large_calls"] == stats.large_forward_calls[0]
        assert replayed["small_steps"] <= stats.small_forward_calls[0]
        assert replayed["large_calls"] >= token_replayed["large_calls"]


@pytest.mark.parametrize("mode, fb, n", [("agree", 0.0, 10), ("agree", 0.5, 4), ("agree", 0.8, 3), ("agree", 0.3, 1),
                                         ("disagree", 0.3, 1)])
@pytest.mark.parametrize("keep", [False, True])
def test_replay_counts_the_small_steps_exactly_where_no_draft_follows_a_wrong_one(mode, fb, n, keep):
    """With one draft per round (n = 1), or hardly any wrong drafts, most replays match the decoder's small steps."""
    exact = sum(replayed["small_steps"] == stats.small_forward_calls[0] for replayed, stats in replays(mode, fb, n, keep))
    assert exact >= 3


def test_all_accepted_is_one_round_per_window():
    match, probs = [True] * 7, [0.99] * 7
    r = draft_bound.replay(match, probs, "bild", 0.5, 3, COSTS)
    # Rounds commit 3 drafts + 1 bonus, then the last 3 drafts reach the end.
    assert (r["small_steps"], r["large_calls"]) == (6, 2)
    assert r["ms"] == pytest.approx(6 * COSTS["small_step"] + 2 * draft_bound.verify_ms(COSTS, 4))
    o = draft_bound.oracle(match, COSTS)
    # One round: 6 drafts, and the large pass supplies the 7th token.
    assert (o["small_steps"], o["large_calls"]) == (6, 1)


def test_assisted_keeps_the_unsure_draft():
    match, probs = [False, True, True], [0.1, 0.9, 0.9]
    costs = {"small_step": 1.0, "large_step": 10.0, "verify": {"1": 10.0, "2": 10.5, "3": 11.0, "4": 11.5}}
    bild = draft_bound.replay(match, probs, "bild", 0.4, 5, costs)
    assisted = draft_bound.replay(match, probs, "assisted", 0.4, 5, costs)
    # BiLD falls back at once: a small step, then a large pass over 1 token gives token 0. Assisted drafts
    # token 0 anyway (rejected): its large pass covers 2 tokens. Both then draft tokens 1 and 2.
    assert bild == {"ms": 1 + 10.0 + 2 + 11.0, "small_steps": 3, "large_calls": 2}
    assert assisted == {"ms": 1 + 10.5 + 2 + 11.0, "small_steps": 3, "large_calls": 2}


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.booleans(), st.floats(0, 1)), min_size=1, max_size=60),
       st.sampled_from(["bild", "assisted"]), st.floats(0, 1), st.integers(1, 12))
def test_oracle_bounds_every_lossless_policy(seq, policy, threshold, n):
    match, probs = [m for m, _ in seq], [p for _, p in seq]
    assert draft_bound.oracle(match, COSTS)["ms"] <= draft_bound.replay(match, probs, policy, threshold, n, COSTS)["ms"]


def test_summary_speedups_are_relative_to_one_large_step_per_token():
    sequences = [([True, False, True], [0.9, 0.9, 0.2])]
    out = draft_bound.summarize(sequences, COSTS, [("oracle", "oracle", None, None)])
    assert out["oracle"]["speedup_vs_large"] == pytest.approx(3 * COSTS["large_step"] / draft_bound.oracle(
        sequences[0][0], COSTS)["ms"])


def test_verify_cost_is_monotone_and_extrapolated():
    costs = {"verify": {"1": 10.0, "2": 14.0, "3": 12.0}}
    assert [draft_bound.verify_ms(costs, k) for k in (1, 2, 3)] == [10.0, 12.0, 12.0]
    assert draft_bound.verify_ms(costs, 5) == pytest.approx(12.0 + 2 * (12.0 - 10.0) / 2)

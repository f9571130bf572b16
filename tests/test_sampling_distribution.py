"""In distribution: the first two tokens of many seeded BiLD samples against the exact distribution of
transformers' sampling (computed from its own processed scores, not sampled), for rollback_threshold 0;
and visibly not, for a large threshold. One fixed seed, so the verdicts are deterministic."""

import functools
import math

import pytest
import torch

from bild import BiLDGenerator
from tiny_models import batch_inputs, tiny_pair

WARPERS = dict(temperature=1.5, top_k=6)  # at most 6 x 6 pairs of first two tokens: a tiny vocabulary
ROWS = 4000  # samples: one prompt, num_return_sequences=ROWS (the rows are independent)
PROMPT = [[5, 17, 9, 30]]


# disagree: supports barely overlap (drafts mostly rejected, corrections ~ p); overlap: about half the
# drafts rejected, corrections from a residual unlike p; agree: drafts mostly accepted.
PAIRS = {"disagree": dict(mode="disagree"), "overlap": dict(mode="agree", noise=0.3), "agree": dict(mode="agree")}


@functools.lru_cache(maxsize=None)
def pair(name):
    return tiny_pair("qwen2", seed=3, **PAIRS[name])


def next_token_probs(large, prefix):
    """transformers' own processed next-token distribution (V,) after `prefix`, from output_scores."""
    out = large.generate(**batch_inputs([prefix], False), do_sample=True, max_new_tokens=1, output_scores=True,
                         return_dict_in_generate=True, **WARPERS)
    return torch.softmax(out.scores[0][0].double(), -1)


@functools.lru_cache(maxsize=None)
def large_two_token_distribution(mode) -> dict[tuple[int, int], float]:
    """Exact P(t1, t2) of large.generate(do_sample=True, max_new_tokens=2)."""
    large = pair(mode)[1]
    first = next_token_probs(large, PROMPT[0])
    joint = {}
    for t1 in first.nonzero().flatten().tolist():
        second = next_token_probs(large, PROMPT[0] + [t1])
        for t2 in second.nonzero().flatten().tolist():
            joint[(t1, t2)] = float(first[t1] * second[t2])
    return joint


def bild_samples(mode, fb, rb, n, keep_fallback_draft=False):
    small, large = pair(mode)
    out = BiLDGenerator(small, large, fb, rb, n, keep_fallback_draft=keep_fallback_draft).generate(
        **batch_inputs(PROMPT, False), do_sample=True, max_new_tokens=2, num_return_sequences=ROWS,
        generator=torch.Generator().manual_seed(1234), return_dict_in_generate=True, **WARPERS)
    return out.sequences[:, len(PROMPT[0]):], out.stats.total()


def total_variation(samples: torch.Tensor, expected: dict) -> float:
    counts = {}
    for pair_ in map(tuple, samples.tolist()):
        counts[pair_] = counts.get(pair_, 0) + 1
    cells = set(counts) | set(expected)
    return 0.5 * sum(abs(counts.get(c, 0) / len(samples) - expected.get(c, 0.0)) for c in cells)


def chi_square_p_value(samples: torch.Tensor, expected: dict) -> float:
    """Pearson's test; cells expected fewer than 5 times are pooled, anything outside `expected` goes there too."""
    n = len(samples)
    big = {c for c, p in expected.items() if p * n >= 5}
    observed = {c: 0 for c in big}
    pooled_obs = 0
    for c in map(tuple, samples.tolist()):
        if c in big:
            observed[c] += 1
        else:
            pooled_obs += 1
    pooled_exp = n * (1 - sum(expected[c] for c in big))
    stat = sum((observed[c] - n * expected[c]) ** 2 / (n * expected[c]) for c in big)
    df = len(big) - 1
    if pooled_exp > 1e-9:
        stat += (pooled_obs - pooled_exp) ** 2 / pooled_exp
        df += 1
    elif pooled_obs:
        return 0.0  # a pair the large model never samples
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), torch.tensor(stat / 2, dtype=torch.float64)))


@pytest.mark.parametrize("mode, fb, n", [("disagree", 0.0, 3), ("overlap", 0.0, 3), ("overlap", 0.3, 1), ("agree", 0.0, 2)])
def test_rollback_zero_samples_the_large_distribution(mode, fb, n):
    samples, stats = bild_samples(mode, fb, 0.0, n)
    expected = large_two_token_distribution(mode)
    assert stats["drafted_tokens"] > ROWS and stats["rollbacks"] > 100  # drafts were verified and rejected
    assert stats["accepted_drafts"] > 40
    tv, p_value = total_variation(samples, expected), chi_square_p_value(samples, expected)
    print(f"{mode} fb={fb} n={n}: TV={tv:.4f} chi2 p={p_value:.3f}", {k: stats[k] for k in ("drafted_tokens", "accepted_drafts", "rollbacks")})
    assert tv < 0.05 and p_value > 1e-3


def test_kept_fallback_drafts_are_judged_exactly_whatever_the_rollback_threshold():
    """FB 1.0: every draft is a kept fallback draft, judged with RB 0 although RB is inf: exact sampling."""
    samples, stats = bild_samples("overlap", 1.0, math.inf, 3, keep_fallback_draft=True)
    assert stats["drafted_tokens"] == stats["fallbacks"] > ROWS and stats["rollbacks"] > 100
    expected = large_two_token_distribution("overlap")
    assert total_variation(samples, expected) < 0.05 and chi_square_p_value(samples, expected) > 1e-3


@pytest.mark.parametrize("mode, rb", [("disagree", math.inf), ("overlap", math.inf), ("overlap", 2.0)])
def test_large_rollback_threshold_samples_something_else(mode, rb):
    samples, stats = bild_samples(mode, 0.0, rb, 3)  # inf never rolls back: the small model's text
    expected = large_two_token_distribution(mode)
    tv, p_value = total_variation(samples, expected), chi_square_p_value(samples, expected)
    print(f"{mode} rb={rb}: TV={tv:.4f} chi2 p={p_value:.3g}", stats["rollbacks"])
    assert stats["rollbacks"] == 0 or rb < math.inf
    assert tv > (0.5 if rb == math.inf else 0.07) and p_value < 1e-9


def test_rows_of_one_prompt_are_independent():
    """Rows 2i and 2i+1 (same prompt): their first tokens' joint distribution is the product of the marginals."""
    samples, _ = bild_samples("disagree", 0.0, 0.0, 3)
    marginal = {}
    for (t1, _t2), p in large_two_token_distribution("disagree").items():
        marginal[t1] = marginal.get(t1, 0.0) + p
    product = {(a, b): pa * pb for a, pa in marginal.items() for b, pb in marginal.items()}
    pairs = torch.stack([samples[0::2, 0], samples[1::2, 0]], dim=1)
    tv, p_value = total_variation(pairs, product), chi_square_p_value(pairs, product)
    print(f"independence: TV={tv:.4f} chi2 p={p_value:.3f}")
    assert tv < 0.08 and p_value > 1e-3

"""Sampling (do_sample=True): the speculative-sampling policy exactly, then the whole loop against
transformers' own sampling: token for token when every step falls back, in distribution otherwise."""

import math

import pytest
import torch

from bild import ALWAYS_FALLBACK, BiLDGenerator, bild_generate
from bild.policy import acceptance_probability, residual_distribution
from tiny_models import ARCHITECTURES, ENCODER_DECODER, batch_inputs, prompts, tiny_pair


def committed_distribution(p, q, rb):
    """P(token) after one verified draft d ~ q: kept with acceptance probability, else a residual draw."""
    keep = q * acceptance_probability(p, q, rb)  # (V,) P(draft d is drawn and kept)
    return keep + (1 - keep.sum()) * residual_distribution(p, q)


def _dist(*values):
    t = torch.tensor(values, dtype=torch.float64)
    return t / t.sum()


POLICY_CASES = {
    "generic": (_dist(5, 3, 2, 0), _dist(1, 1, 4, 4)),  # token 3: a draft outside p's support
    "ties": (_dist(1, 1, 2), _dist(1, 1, 2)),  # p == q: never rejected, residual never used
    "tied maxima": (_dist(3, 3, 1, 1), _dist(1, 3, 3, 1)),
    "q one-hot": (_dist(1, 1, 2), _dist(1, 0, 0)),
    "p one-hot": (_dist(0, 0, 1, 0), _dist(1, 2, 3, 4)),
    "top-k truncated": (_dist(4, 3, 0, 0, 0), _dist(0, 2, 2, 1, 0)),  # p kept 2 tokens, q 3 others partly
    "disjoint supports": (_dist(1, 1, 0, 0), _dist(0, 0, 1, 1)),
}


@pytest.mark.parametrize("case", POLICY_CASES)
def test_rollback_zero_commits_exactly_p(case):
    p, q = POLICY_CASES[case]
    torch.testing.assert_close(committed_distribution(p, q, 0.0), p, rtol=0, atol=1e-15)
    alpha = acceptance_probability(p, q, 0.0)
    assert ((alpha >= 0) & (alpha <= 1)).all()
    residual = residual_distribution(p, q)
    assert (residual >= 0).all() and abs(float(residual.sum()) - 1) < 1e-15
    assert (residual[p == 0] == 0).all()  # a correction never leaves p's support


def test_draft_outside_p_is_always_rejected_and_sure_drafts_always_kept():
    p, q = POLICY_CASES["generic"]
    assert acceptance_probability(p, q, 0.0)[3] == 0
    assert acceptance_probability(p, q, 50.0)[3] == 0  # -log 0 = inf exceeds any finite threshold
    assert acceptance_probability(p, q, 0.0)[0] == 1  # p(d) >= q(d)
    assert acceptance_probability(p, q, 0.0)[2] == pytest.approx(0.5)  # p/q = 0.2 / 0.4


def test_large_rollback_threshold_shifts_the_distribution_towards_q():
    p, q = POLICY_CASES["generic"]
    # -log p(2) = 1.61 <= 2: token 2 is kept outright, so it gets q(2) = 0.4 > p(2) = 0.2.
    relaxed = committed_distribution(p, q, 2.0)
    assert relaxed[2] == pytest.approx(0.4) and (relaxed - p).abs().sum() > 0.3
    torch.testing.assert_close(committed_distribution(p, q, math.inf), q, rtol=0, atol=1e-15)  # never roll back


WARPERS = [
    dict(temperature=0.8, top_k=10, top_p=0.9),
    dict(temperature=1.2, min_p=0.05),
    dict(typical_p=0.8, no_repeat_ngram_size=2),
]


@pytest.mark.parametrize("arch, settings", [(arch, WARPERS[0]) for arch in ARCHITECTURES]
                         + [(arch, s) for arch in ("qwen2", "t5") for s in WARPERS[1:]],
                         ids=lambda v: v if isinstance(v, str) else ",".join(v))
def test_always_fallback_equals_large_sampling_token_for_token(arch, settings):
    """Every step is one (rows, V) draw from p, in transformers' order: the same seed, the same tokens."""
    small, large = tiny_pair(arch, "disagree", seed=ARCHITECTURES.index(arch))
    enc_dec = arch in ENCODER_DECODER
    # Encoder-decoder rows are decoded one at a time, so only a single row draws as transformers does.
    inputs = batch_inputs(prompts(1 if enc_dec else 2, seed=1, min_len=4), enc_dec)
    kwargs = dict(do_sample=True, max_new_tokens=10, num_return_sequences=1 if enc_dec else 2, **settings)
    torch.manual_seed(11)
    expected = large.generate(**inputs, **kwargs)
    torch.manual_seed(11)
    got = BiLDGenerator(small, large, ALWAYS_FALLBACK, 2.0).generate(**inputs, **kwargs)
    assert torch.equal(got, expected)
    torch.manual_seed(11)
    via_hf = large.generate(**inputs, custom_generate=bild_generate, small_model=small,
                            fallback_threshold=ALWAYS_FALLBACK, **kwargs)
    assert torch.equal(via_hf, expected)


def test_the_models_own_sampling_config_just_works():
    """The quickstart with an instruct model's generation_config.json (do_sample, temperature, top_p, top_k)."""
    small, large = tiny_pair("qwen2", "agree", seed=1)
    inputs = batch_inputs(prompts(1, seed=2, min_len=4), False)
    saved = large.generation_config
    large.generation_config = saved.__class__.from_dict({**saved.to_dict(), "do_sample": True, "temperature": 0.7,
                                                         "top_p": 0.8, "top_k": 20})
    try:
        out = BiLDGenerator(small, large).generate(**inputs, max_new_tokens=12, return_dict_in_generate=True)
        assert out.sequences.shape[1] > inputs["input_ids"].shape[1]
        out.stats.check()
        torch.manual_seed(5)
        expected = large.generate(**inputs, max_new_tokens=12)
        torch.manual_seed(5)
        assert torch.equal(BiLDGenerator(small, large, ALWAYS_FALLBACK).generate(**inputs, max_new_tokens=12), expected)
    finally:
        large.generation_config = saved


def test_a_generator_makes_runs_reproducible_and_leaves_the_global_seed_alone():
    small, large = tiny_pair("llama", "disagree", seed=2)
    inputs = batch_inputs(prompts(2, seed=3, min_len=3), False)
    gen = BiLDGenerator(small, large, 0.3, 1.0, 4)
    state = torch.get_rng_state()

    def run(seed):
        return gen.generate(**inputs, do_sample=True, max_new_tokens=8, generator=torch.Generator().manual_seed(seed))

    first = run(0)
    assert torch.equal(run(0), first)
    assert not torch.equal(run(1), first)
    assert torch.equal(torch.get_rng_state(), state)


def test_greedy_mode_draws_nothing_and_keeps_its_lossless_fast_path(monkeypatch):
    """Greedy costs what it did: no random draw, no softmax, no log-softmax at rollback_threshold 0."""
    import bild.choosers

    def forbidden(*args, **kwargs):
        raise AssertionError("greedy BiLD called a sampling or log-softmax function")

    small, large = tiny_pair("qwen2", "disagree", seed=0)
    inputs = batch_inputs(prompts(2, seed=4), False)
    expected = large.generate(**inputs, do_sample=False, max_new_tokens=16)
    for name in ("sample", "token_logprobs"):
        monkeypatch.setattr(bild.choosers, name, forbidden)
    monkeypatch.setattr(torch, "softmax", forbidden)
    got = BiLDGenerator(small, large, 0.4, 0.0, 4).generate(**inputs, max_new_tokens=16)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("arch", ["qwen2", "t5"])
def test_static_cache_samples_what_the_dynamic_cache_samples(arch):
    """Same generator seed, same draws in the same order: the fast path changes no sampled token."""
    small, large = tiny_pair(arch, "agree", seed=4)
    inputs = batch_inputs(prompts(1, seed=9, min_len=4), arch in ENCODER_DECODER)
    kwargs = dict(do_sample=True, temperature=1.2, max_new_tokens=16)
    outs = [BiLDGenerator(small, large, 0.3, 1.0, 4, static_cache=static).generate(
        **inputs, generator=torch.Generator().manual_seed(7), **kwargs) for static in (False, True)]
    assert torch.equal(outs[0], outs[1])

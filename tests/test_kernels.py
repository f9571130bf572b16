"""bild.kernels: the weight-stationary form of a few-row matmul, the measured per-machine rule that says where it is
used (a pure function of measured pass times, tested under injected times like the cost model), that it applies per
product to the row counts chosen and leaves the model as it was, and that BiLD's output is unchanged with it: lossless
BiLD is still large greedy, and the large model's own loop (where drafting cannot pay) still the large model's."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bild.kernels as kernels
from bild import AUTO, BiLDGenerator
from bild.costs import ModelCosts, PairCosts, measure_model
from bild.kernels import (FEW_ROWS, few_token_matmuls, interpolate, kernel_rows, weight_stationary_linear,
                          weight_stationary_rows)
from bild.plan import pair_kernel_rows
from tiny_models import batch_inputs, injected_costs, prompts, tiny_pair


def test_weight_stationary_linear_computes_the_linear_layer():
    torch.manual_seed(0)
    layer = nn.Linear(24, 40)
    for shape in ((3, 24), (2, 5, 24), (1, 1, 24), (1, 24), (16, 24)):
        x = torch.randn(*shape)
        got = weight_stationary_linear(layer, x)
        assert got.shape == F.linear(x, layer.weight, layer.bias).shape and got.is_contiguous()
        assert torch.allclose(got, F.linear(x, layer.weight, layer.bias), atol=1e-6)
    layer.bias = None
    assert torch.allclose(weight_stationary_linear(layer, x), x @ layer.weight.T, atol=1e-6)
    layer16 = nn.Linear(24, 40).to(torch.bfloat16)
    x16 = torch.randn(1, 24).to(torch.bfloat16)
    assert torch.allclose(weight_stationary_linear(layer16, x16).float(), layer16(x16).float(), atol=2e-2)


# ---- the rule, from measured pass times (seconds by width) ---------------------------------------------------------

ZEN5_FP32 = ({1: 0.30, 2: 0.60, 3: 0.90, 5: 1.5, 11: 3.3}, {1: 0.31, 2: 0.33, 3: 0.35, 5: 0.36, 11: 0.40})
XEON_FP32 = ({1: 0.317, 2: 0.342, 3: 0.349, 5: 0.633, 11: 1.034}, {1: 0.327, 2: 0.555, 3: 0.525, 5: 0.554, 11: 0.566})
XEON_BF16 = ({1: 0.274, 2: 0.266, 3: 0.227, 5: 0.238, 11: 0.233}, {1: 0.248, 2: 0.255, 3: 0.212, 5: 0.244, 11: 0.258})


def test_the_rule_takes_the_form_where_it_was_measured_faster_by_the_margin():
    assert weight_stationary_rows(*ZEN5_FP32) == tuple(range(2, 17))  # every few-row pass but the one-token step
    xeon = weight_stationary_rows(*XEON_FP32)  # loses at 2-3 rows, wins from 5 (in between: interpolated)
    assert 2 not in xeon and 3 not in xeon and {5, 11, 16} <= set(xeon) and xeon == tuple(range(min(xeon), 17))
    assert weight_stationary_rows(*XEON_BF16) == (1, 3)  # 9.5% and 6.6% cheaper; 4% at 2 rows is inside the margin
    assert weight_stationary_rows(*XEON_BF16, margin=0.0) == (1, 2, 3, 4)  # 4: interpolated
    assert weight_stationary_rows(XEON_FP32[0], {}) == ()  # not compared (a GPU): never
    assert weight_stationary_rows({1: 0.13}, {1: 0.10}) == (1,)  # one width measured: that width only
    assert weight_stationary_rows({1: 0.13}, {1: 0.125}) == ()
    assert interpolate({1: 1.0, 3: 2.0, 5: 2.5}, 4) == pytest.approx(2.25)
    assert interpolate({1: 1.0, 3: 2.0}, 5) == pytest.approx(3.0)  # past the widest: the last slope


def test_forced_or_measured_rows_per_model():
    small = ModelCosts({1: 0.1}, 0.0, weight_stationary=(1,))
    large = ModelCosts({1: 0.3, 5: 0.3}, 0.0, weight_stationary=(5, 6))
    costs = PairCosts(small, large)
    assert pair_kernel_rows(None, costs) == {"small": (1,), "large": (5, 6)}
    assert pair_kernel_rows(True, costs) == pair_kernel_rows(True, None) == {"small": tuple(FEW_ROWS),
                                                                              "large": tuple(FEW_ROWS)}
    assert pair_kernel_rows(False, costs) == pair_kernel_rows(None, None) == {"small": (), "large": ()}
    assert kernel_rows(None, (3, 2)) == (2, 3)


# ---- applying it -----------------------------------------------------------------------------------------------------

def _count_forms(monkeypatch) -> Counter:
    """Row counts of the products computed in the weight-stationary form."""
    seen = Counter()
    real = kernels.weight_stationary_linear
    monkeypatch.setattr(kernels, "weight_stationary_linear",
                        lambda m, x: seen.update([x.numel() // x.shape[-1]]) or real(m, x))
    return seen


def test_only_the_chosen_row_counts_take_the_form_and_the_model_is_left_as_it_was(monkeypatch):
    seen = _count_forms(monkeypatch)
    small, _ = tiny_pair("llama")
    linears = [m for m in small.modules() if type(m) is nn.Linear]
    own = linears[0].forward = lambda x, m=linears[0]: F.linear(x, m.weight, m.bias)  # e.g. accelerate's hook
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    want = {n: small(input_ids=ids[:, :n]).logits for n in (1, 3, 6)}
    with few_token_matmuls(small, (1, 3)):
        assert all("forward" in vars(m) for m in linears)
        got = {n: small(input_ids=ids[:, :n]).logits for n in (1, 3, 6)}
    assert set(seen) == {1, 3} and seen[1] == seen[3] == len(linears)  # 6 rows (a prefill here): F.linear
    assert all(torch.allclose(want[n], got[n], atol=1e-5) for n in want)
    assert vars(linears[0])["forward"] is own and not any("forward" in vars(m) for m in linears[1:])
    with few_token_matmuls(small, (1, 3), pass_rows=2):  # a pass whose row count is not chosen: nothing patched
        assert not any("forward" in vars(m) for m in linears[1:])
    seen.clear()
    with few_token_matmuls(small, ()):
        assert not any("forward" in vars(m) for m in linears[1:])
        small(input_ids=ids[:, :3])
    assert not seen


def test_measure_model_compares_both_forms_on_a_cpu_and_keeps_the_cheaper():
    _, large = tiny_pair("llama", "agree")
    costs = measure_model(large, (1, 2, 3, 5), context=8, repeats=2)
    assert sorted(costs.linear_passes) == sorted(costs.stationary_passes) == [1, 2, 3, 5]
    assert costs.weight_stationary == weight_stationary_rows(costs.linear_passes, costs.stationary_passes)
    for w, s in costs.passes.items():
        assert s == (costs.stationary_passes[w] if w in costs.weight_stationary else costs.linear_passes[w])
    plain = measure_model(large, (1, 2), context=8, repeats=1, forms=False)
    assert plain.weight_stationary == () and not plain.linear_passes and not plain.stationary_passes


def _with_rows(costs: PairCosts, small_rows, large_rows) -> PairCosts:
    return dataclasses.replace(costs, small=dataclasses.replace(costs.small, weight_stationary=small_rows),
                               large=dataclasses.replace(costs.large, weight_stationary=large_rows))


@pytest.mark.parametrize("arch", ["llama", "gpt2", "t5"])
def test_lossless_bild_uses_the_measured_rows_and_stays_large_greedy(monkeypatch, arch):
    seen = _count_forms(monkeypatch)
    small, large = tiny_pair(arch, "agree")
    inputs = batch_inputs(prompts(2, seed=3), arch == "t5")
    want = large.generate(**inputs, do_sample=False, max_new_tokens=20)
    assert not seen  # transformers' own generate is untouched
    costs = _with_rows(injected_costs(1.0), tuple(FEW_ROWS), tuple(FEW_ROWS))
    out = BiLDGenerator(small, large, AUTO, 0.0, 6, cost_model=costs).generate(
        **inputs, max_new_tokens=20, return_dict_in_generate=True)
    assert torch.equal(out.sequences, want)
    # one-token steps of the two rows (2 rows a product) and verify passes (more)
    assert seen[2] and max(seen) > 2 and max(out.stats.accepted_drafts) > 0


def test_the_large_models_own_loop_uses_its_rows_and_stays_the_large_models_output(monkeypatch):
    seen = _count_forms(monkeypatch)
    small, large = tiny_pair("llama", "agree", noise=0.3)
    inputs = batch_inputs(prompts(2, seed=2, min_len=3), False)
    want = large.generate(**inputs, do_sample=False, max_new_tokens=12)
    costs = _with_rows(injected_costs(2.0), (), (2,))  # drafting cannot pay; one-token steps of 2 rows: the form
    with pytest.warns(RuntimeWarning, match="drafting cannot pay"):
        out = BiLDGenerator(small, large, AUTO, 0.0, 6, cost_model=costs).generate(**inputs, max_new_tokens=12)
    assert torch.equal(out, want) and set(seen) == {2}


def test_forced_on_and_off_and_fixed_thresholds_measure_nothing(monkeypatch):
    seen = _count_forms(monkeypatch)
    small, large = tiny_pair("gpt2", "agree")
    inputs = batch_inputs([[5, 17, 9, 30]], False)
    want = large.generate(**inputs, do_sample=False, max_new_tokens=12)
    off = BiLDGenerator(small, large, 0.3, 0.0, 6).generate(**inputs, max_new_tokens=12)
    assert torch.equal(off, want) and not seen  # the paper's rule: no cost model, plain F.linear
    forced_off = BiLDGenerator(small, large, AUTO, 0.0, 6, cost_model=_with_rows(injected_costs(1.0), (1, 2), (1, 2)),
                               weight_stationary=False).generate(**inputs, max_new_tokens=12)
    assert torch.equal(forced_off, want) and not seen
    on = BiLDGenerator(small, large, 0.3, 0.0, 6, weight_stationary=True).generate(**inputs, max_new_tokens=12)
    assert torch.equal(on, want) and seen[1]
    small16, large16 = (m.to(torch.bfloat16) for m in tiny_pair("gpt2", "agree"))
    seen.clear()
    BiLDGenerator(small16, large16, 0.3, 0.0, 6, weight_stationary=True).generate(**inputs, max_new_tokens=12)
    assert seen[1]  # any floating-point dtype takes it when the rule (here: forced) says so

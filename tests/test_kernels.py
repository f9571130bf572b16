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
from bild.kernels import (FEW_ROWS, faster_rows, few_token_matmuls, interpolate, kernel_rows,
                          weight_stationary_linear)
from bild.config import BiLDConfig
from bild.plan import costs_for, draft_int8_rows, pair_kernel_rows
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
    assert faster_rows(*ZEN5_FP32) == tuple(range(2, 17))  # every few-row pass but the one-token step
    xeon = faster_rows(*XEON_FP32)  # loses at 2-3 rows, wins from 5 (in between: interpolated)
    assert 2 not in xeon and 3 not in xeon and {5, 11, 16} <= set(xeon) and xeon == tuple(range(min(xeon), 17))
    assert faster_rows(*XEON_BF16) == (1, 3)  # 9.5% and 6.6% cheaper; 4% at 2 rows is inside the margin
    assert faster_rows(*XEON_BF16, margin=0.0) == (1, 2, 3, 4)  # 4: interpolated
    assert faster_rows(XEON_FP32[0], {}) == ()  # not compared (a GPU): never
    assert faster_rows({1: 0.13}, {1: 0.10}) == (1,)  # one width measured: that width only
    assert faster_rows({1: 0.13}, {1: 0.125}) == ()
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
    assert costs.weight_stationary == faster_rows(costs.linear_passes, costs.stationary_passes)
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


# ---- the draft model's int8 weight-only form -------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_weight_linear_approximates_the_layer_and_keeps_its_copy_until_the_weight_changes(dtype):
    torch.manual_seed(0)
    layer = nn.Linear(64, 48).to(dtype)
    assert kernels.int8_weight_usable(layer)
    for shape in ((1, 64), (3, 64), (2, 5, 64)):
        x = torch.randn(*shape).to(dtype)
        want, got = layer(x).float(), kernels.int8_weight_linear(layer, x).float()
        assert got.shape == want.shape
        assert (got - want).abs().max() <= 0.03 * want.abs().max()  # per-channel rounding of the weight: ~1%
    q, scales = kernels.int8_weights(layer)
    assert q.dtype == torch.int8 and scales.dtype == dtype and kernels.int8_weights(layer)[0] is q  # kept
    with torch.no_grad():
        layer.weight.mul_(2)  # an in-place update: a new copy
    q2, scales2 = kernels.int8_weights(layer)
    assert q2 is not q and torch.allclose(scales2.float(), 2 * scales.float(), rtol=1e-2)
    layer.weight = nn.Parameter(layer.weight.detach().clone())  # a new tensor: a new copy
    assert kernels.int8_weights(layer)[0] is not q2


def test_int8_form_only_for_layers_its_kernel_computes_right():
    assert not kernels.int8_weight_usable(nn.Linear(40, 48).to(torch.bfloat16))  # input width not a multiple of 32

    class Sub(nn.Linear):
        pass
    assert not kernels.int8_weight_usable(Sub(64, 48))


def test_the_int8_form_is_chosen_against_the_better_of_the_other_two():
    costs = ModelCosts.from_forms({1: 0.124}, {1: 0.112}, 0.0, int8={1: 0.077})
    assert costs.weight_stationary == (1,) and costs.int8_rows == (1,) and costs.step == 0.077
    off = costs.without_int8()  # draft_int8=False: the small step the call then runs
    assert off.step == 0.112 and off.int8_rows == () and off.weight_stationary == (1,)
    pair = PairCosts(costs, ModelCosts({1: 0.2}, 0.0))
    assert costs_for(BiLDConfig(AUTO), None, None, pair, draft_int8=False).small.step == 0.112
    assert costs_for(BiLDConfig(AUTO), None, None, pair).small.step == 0.077
    close = ModelCosts.from_forms({1: 0.124}, {1: 0.100}, 0.0, int8={1: 0.098})  # within the margin of the better
    assert close.int8_rows == () and close.step == 0.100
    assert ModelCosts.from_forms({1: 0.124}, {1: 0.13}, 0.0).int8_rows == ()  # not timed: never
    costs = PairCosts(ModelCosts({1: 0.05}, 0.0, int8_rows=(1,)), ModelCosts({1: 0.2}, 0.0, int8_rows=(1,)))
    assert draft_int8_rows(None, costs) == (1,) and draft_int8_rows(None, None) == ()
    assert draft_int8_rows(True, None) == tuple(FEW_ROWS) and draft_int8_rows(False, costs) == ()
    assert "small int8 weight-only over 1 rows" in costs.summary(4)


def _count_int8(monkeypatch) -> Counter:
    """Modules whose products were computed in the int8 form, by their model's role (filled by the test)."""
    seen = Counter()
    real = kernels.int8_weight_linear
    monkeypatch.setattr(kernels, "int8_weight_linear", lambda m, x: seen.update([m]) or real(m, x))
    return seen


def test_measure_model_times_the_int8_form_for_a_draft_and_leaves_the_model_as_it_was():
    small, _ = tiny_pair("llama", "agree")
    costs = measure_model(small, (1,), context=8, repeats=2, int8=True)
    assert list(costs.int8_passes) == [1]
    base = {1: costs.stationary_passes[1] if costs.weight_stationary else costs.linear_passes[1]}
    assert costs.int8_rows == faster_rows(base, costs.int8_passes)
    assert costs.passes[1] == (costs.int8_passes[1] if costs.int8_rows else base[1])
    assert not any("forward" in vars(m) for m in small.modules())
    assert measure_model(small, (1,), context=8, repeats=1).int8_passes == {}  # not asked (a large model): not timed


@pytest.mark.parametrize("arch", ["llama", "t5"])
def test_lossless_bild_with_an_int8_draft_stays_large_greedy_and_the_large_model_never_takes_it(monkeypatch, arch):
    seen = _count_int8(monkeypatch)
    small, large = tiny_pair(arch, "agree")
    inputs = batch_inputs(prompts(2, seed=3), arch == "t5")
    want = large.generate(**inputs, do_sample=False, max_new_tokens=20)
    costs = injected_costs(1.0)
    costs = dataclasses.replace(costs, small=dataclasses.replace(costs.small, int8_rows=tuple(FEW_ROWS)))
    out = BiLDGenerator(small, large, AUTO, 0.0, 6, cost_model=costs).generate(
        **inputs, max_new_tokens=20, return_dict_in_generate=True)
    assert torch.equal(out.sequences, want) and max(out.stats.accepted_drafts) > 0
    small_linears = {m for m in small.modules() if type(m) is nn.Linear}
    assert seen and set(seen) <= small_linears  # the drafts took it; no large-model product did
    seen.clear()
    forced = BiLDGenerator(small, large, 0.3, 0.0, 6, draft_int8=True).generate(**inputs, max_new_tokens=20)
    assert torch.equal(forced, want) and seen and set(seen) <= small_linears
    seen.clear()
    BiLDGenerator(small, large, 0.3, 0.0, 6).generate(**inputs, max_new_tokens=20)
    assert not seen  # fixed thresholds: the small model exactly as given
    BiLDGenerator(small, large, AUTO, 0.0, 6, cost_model=costs, draft_int8=False).generate(**inputs, max_new_tokens=20)
    assert not seen

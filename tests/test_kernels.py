"""bild.kernels: the weight-stationary form of a few-row float32 matmul on a CPU, where it is used, and that BiLD's
lossless output is unchanged with it (the identity suites run with it too, since their models are float32)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import bild.kernels as kernels
from bild import BiLDGenerator
from bild.kernels import few_token_matmuls, prefers_weight_stationary, weight_stationary_linear
from tiny_models import batch_inputs, tiny_pair


def test_weight_stationary_linear_computes_the_linear_layer():
    torch.manual_seed(0)
    layer = nn.Linear(24, 40)
    for shape in ((3, 24), (2, 5, 24), (1, 1, 24)):
        x = torch.randn(*shape)
        got = weight_stationary_linear(layer, x)
        assert got.shape == F.linear(x, layer.weight, layer.bias).shape and got.is_contiguous()
        assert torch.allclose(got, F.linear(x, layer.weight, layer.bias), atol=1e-6)
    layer.bias = None
    assert torch.allclose(weight_stationary_linear(layer, x), x @ layer.weight.T, atol=1e-6)


def test_the_rule_and_that_the_model_is_left_as_it_was():
    small, _ = tiny_pair("llama")
    assert not prefers_weight_stationary(small, 1) and not prefers_weight_stationary(small, 17)
    assert all(prefers_weight_stationary(small, r) for r in range(2, 17))
    linears = [m for m in small.modules() if type(m) is nn.Linear]
    with few_token_matmuls(small, 3):
        assert all("forward" in vars(m) for m in linears)
    assert not any("forward" in vars(m) for m in linears)
    with few_token_matmuls(small, 1):
        assert not any("forward" in vars(m) for m in linears)
    assert not prefers_weight_stationary(small.to(torch.bfloat16), 3)  # bfloat16: F.linear is the faster one here


def test_lossless_bild_uses_it_for_verify_passes_and_stays_large_greedy(monkeypatch):
    calls = []
    real = kernels.weight_stationary_linear
    monkeypatch.setattr(kernels, "weight_stationary_linear", lambda m, x: calls.append(x.shape) or real(m, x))
    small, large = tiny_pair("llama", "agree")
    inputs = batch_inputs([[5, 17, 9, 30], [7, 8]], False)
    want = large.generate(**inputs, do_sample=False, max_new_tokens=20)
    assert not calls  # transformers' own generate is untouched
    out = BiLDGenerator(small, large, 0.3, 0.0, 6).generate(**inputs, max_new_tokens=20, return_dict_in_generate=True)
    assert torch.equal(out.sequences, want)
    assert calls and out.stats.accepted_drafts and max(out.stats.accepted_drafts) > 0


def test_it_can_be_switched_off_and_on(monkeypatch):
    calls = []
    real = kernels.weight_stationary_linear
    monkeypatch.setattr(kernels, "weight_stationary_linear", lambda m, x: calls.append(1) or real(m, x))
    small, large = tiny_pair("gpt2", "agree")
    inputs = batch_inputs([[5, 17, 9, 30]], False)
    want = large.generate(**inputs, do_sample=False, max_new_tokens=12)
    off = BiLDGenerator(small, large, 0.3, 0.0, 6, weight_stationary=False).generate(**inputs, max_new_tokens=12)
    assert torch.equal(off, want) and not calls
    small16, large16 = (m.to(torch.bfloat16) for m in tiny_pair("gpt2", "agree"))
    BiLDGenerator(small16, large16, 0.3, 0.0, 6).generate(**inputs, max_new_tokens=12)
    assert not calls  # bfloat16: not by the rule
    BiLDGenerator(small16, large16, 0.3, 0.0, 6, weight_stationary=True).generate(**inputs, max_new_tokens=12)
    assert not calls  # forced, but only float32 layers take the form
    on = BiLDGenerator(small, large, 0.3, 0.0, 6, weight_stationary=True).generate(**inputs, max_new_tokens=12)
    assert torch.equal(on, want) and calls

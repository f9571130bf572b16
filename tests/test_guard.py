"""The drafting guard: a row whose drafting costs more than it saves stops drafting; exactness is unchanged."""

import copy

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from bild import BiLDGenerator
from bild.architecture import step_cost_ratio, step_weights
from bild.policy import GUARD_ROUNDS, drafting_pays
from reference import reference_bild
from tiny_models import EOS, batch_inputs, prompts, tiny_model, tiny_pair

MAX_NEW = 20


def test_drafting_pays_after_the_first_rounds_only_while_drafting_saved_something():
    rounds = np.array([3, 4, 4, 10, 10])
    small_steps = np.array([3, 4, 4, 30, 30])
    committed = np.array([3, 6, 5, 19, 20])
    # row 0: too early to judge; row 1: 4 + 0.25*4 = 5 < 6; row 2: 5 >= 5; row 3: 17.5 < 19; row 4 too.
    assert drafting_pays(rounds, small_steps, committed, 0.25).tolist() == [True, True, False, True, True]
    assert drafting_pays(rounds, small_steps, committed, 0.5).tolist() == [True, False, False, False, False]


def _generate(small, large, guard, fb=0.999, keep=False, batch=1):
    inputs = batch_inputs(prompts(batch, seed=2, min_len=3), small.config.is_encoder_decoder)
    gen = BiLDGenerator(small, large, fb, 0.0, 4, keep_fallback_draft=keep, drafting_guard=guard)
    return inputs, gen.generate(**inputs, max_new_tokens=MAX_NEW, return_dict_in_generate=True)


@pytest.mark.parametrize("arch", ["llama", "t5"])
def test_a_small_model_that_always_falls_back_stops_drafting_after_the_first_rounds(arch):
    small, large = tiny_pair(arch, "disagree")
    inputs, guarded = _generate(small, large, True)
    _, plain = _generate(small, large, False)
    expected = large.generate(**inputs, do_sample=False, max_new_tokens=MAX_NEW)
    assert torch.equal(guarded.sequences, expected) and torch.equal(plain.sequences, expected)
    g, p = guarded.stats.total(), plain.stats.total()
    assert p["fallbacks"] == p["small_forward_calls"] == p["large_forward_calls"] > GUARD_ROUNDS  # never drafts
    assert g["small_forward_calls"] == GUARD_ROUNDS  # then plain large-model steps
    assert g["large_forward_calls"] == p["large_forward_calls"]


def test_the_guard_judges_each_row_of_a_batch_on_its_own():
    small, large = tiny_pair("llama", "agree", noise=0.3)
    inputs, batched = _generate(small, large, True, fb=0.5, keep=True, batch=4)
    for i in range(4):
        row = {k: v[i : i + 1, int((~inputs["attention_mask"][i].bool()).sum()):] for k, v in inputs.items()}
        gen = BiLDGenerator(small, large, 0.5, 0.0, 4, keep_fallback_draft=True, drafting_guard=True)
        alone = gen.generate(**row, max_new_tokens=MAX_NEW, return_dict_in_generate=True)
        assert batched.stats.small_forward_calls[i] == alone.stats.small_forward_calls[0]
        assert batched.stats.large_forward_calls[i] == alone.stats.large_forward_calls[0]


def _bigger_twin(small, extra_layers=4, noise=0.02):
    """A large model that agrees with `small` but reads more weights per step: the small model's layers plus
    layers whose output projections are zero (they pass the residual stream on unchanged), slightly perturbed."""
    config = copy.deepcopy(small.config)
    config.num_hidden_layers += extra_layers
    large = LlamaForCausalLM(config).eval()
    large.load_state_dict(small.state_dict(), strict=False)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for layer in large.model.layers[small.config.num_hidden_layers:]:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        for p in large.lm_head.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * noise * p.std())
    large.generation_config = copy.deepcopy(small.generation_config)
    return large


def test_a_pair_that_drafts_well_is_never_stopped():
    small = tiny_model("llama", 0, width=32, layers=1)
    large = _bigger_twin(small)
    assert step_cost_ratio(small, large) < 0.4
    _, guarded = _generate(small, large, True, fb=0.3, keep=True, batch=3)
    _, plain = _generate(small, large, False, fb=0.3, keep=True, batch=3)
    assert guarded.stats.small_forward_calls == plain.stats.small_forward_calls
    assert plain.stats.total()["accepted_drafts"] > plain.stats.total()["large_forward_calls"]
    # The same small model against a same-size twin: drafting never pays in weights read, and the guard stops it.
    twin = _bigger_twin(small, extra_layers=0)
    _, same_size = _generate(small, twin, True, fb=0.3, keep=True, batch=3)
    assert sum(same_size.stats.small_forward_calls) < sum(plain.stats.small_forward_calls)


@pytest.mark.parametrize("tied", [False, True])
def test_step_weights_leave_out_an_input_embedding_that_is_only_looked_up(tied):
    config = LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tied)
    model = LlamaForCausalLM(config)
    total = sum(p.numel() for p in model.parameters())
    assert step_weights(model) == (total if tied else total - 100 * 16)
    small, large = tiny_pair("llama")
    assert 0 < step_cost_ratio(small, large) < 1


@pytest.mark.parametrize("arch, mode, rb", [("llama", "disagree", 0.0), ("llama", "disagree", 0.5), ("t5", "disagree", 1.0)])
def test_guarded_decoder_equals_the_reference_loop_with_the_guard(arch, mode, rb):
    small, large = tiny_pair(arch, mode)
    row = prompts(1, seed=2, min_len=3)[0]
    inputs = batch_inputs([row], small.config.is_encoder_decoder)
    out = BiLDGenerator(small, large, 0.9, rb, 4, keep_fallback_draft=rb == 0.0, drafting_guard=True).generate(
        **inputs, max_new_tokens=MAX_NEW, return_dict_in_generate=True)
    expected, counts = reference_bild(small, large, row, 0.9, rb, 4, MAX_NEW, EOS,
                                      keep_fallback=rb == 0.0, cost_ratio=step_cost_ratio(small, large))
    assert out.sequences[0].tolist() == expected
    total = out.stats.total()
    assert (total["small_forward_calls"], total["large_forward_calls"]) == (counts["small_steps"], counts["rounds"])
    _, unguarded = reference_bild(small, large, row, 0.9, rb, 4, MAX_NEW, EOS, keep_fallback=rb == 0.0)
    if arch != "t5":  # the tiny T5 pair ends after one round
        assert counts["small_steps"] < unguarded["small_steps"]  # the guard stopped drafting

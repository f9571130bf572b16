"""draft_vocab: the small model drafts from part of the vocabulary; BiLD's exactness must not change.

Identities: the view's logits are the model's own on the chosen ids and -inf elsewhere; the model passed in
is untouched; lossless BiLD with a restricted drafter equals large greedy (batch 1 and padded batches,
decoder-only and encoder-decoder), even when the chosen ids leave out tokens the large model writes; drafts
only ever come from the chosen ids; sampling at rollback 0 still has the large model's distribution.
"""

import pytest
import torch
from torch import nn

from bild import BiLDGenerator, frequent_tokens, restrict_draft_vocab
from bild.draft_vocab import SubsetHead
from test_sampling_distribution import (PROMPT, ROWS, WARPERS, chi_square_p_value, large_two_token_distribution,
                                        pair, total_variation)
from tiny_models import EOS, VOCAB, batch_inputs, prompts, tiny_pair

SUBSET = sorted({EOS} | set(range(3, VOCAB, 2)))  # EOS and every odd token: leaves out half of what large writes


def _logits(model, ids, encoder_decoder):
    kwargs = {"decoder_input_ids": ids} if encoder_decoder else {}
    return model(input_ids=ids, **kwargs).logits


@pytest.mark.parametrize("arch", ["qwen2", "t5"])
def test_view_scores_only_the_chosen_ids_and_leaves_the_model_alone(arch):
    small, _ = tiny_pair(arch)
    head = small.get_output_embeddings()
    ids = torch.tensor([[5, 9, 11, 30, 7]])
    before = _logits(small, ids, small.config.is_encoder_decoder)
    view = restrict_draft_vocab(small, SUBSET)
    got = _logits(view, ids, small.config.is_encoder_decoder)
    chosen = torch.tensor(SUBSET)
    others = torch.tensor([i for i in range(VOCAB) if i not in SUBSET])
    torch.testing.assert_close(got[..., chosen], before[..., chosen])
    assert torch.isneginf(got[..., others]).all()
    assert small.get_output_embeddings() is head  # the model passed in keeps its own head
    torch.testing.assert_close(_logits(small, ids, small.config.is_encoder_decoder), before, rtol=0, atol=0)
    assert isinstance(view.get_output_embeddings(), SubsetHead)
    assert all(p is q for p, q in zip(view.get_input_embeddings().parameters(), small.get_input_embeddings().parameters()))


@pytest.mark.parametrize("arch, batch", [("llama", 1), ("llama", 3), ("qwen2", 3), ("t5", 1), ("t5", 3), ("bart", 3)])
def test_lossless_with_a_restricted_drafter_is_large_greedy(arch, batch):
    small, large = tiny_pair(arch, mode="agree", seed=2, noise=0.05)
    inputs = batch_inputs(prompts(batch, seed=4), small.config.is_encoder_decoder)
    expected = large.generate(**inputs, do_sample=False, max_new_tokens=12)
    start = 1 if small.config.is_encoder_decoder else inputs["input_ids"].shape[1]
    written = sorted({t for row in expected[:, start:].tolist() for t in row[: row.index(EOS) if EOS in row else None]})
    left_out = set(written[::3])  # a third of the tokens the large model writes: only it can write them
    subset = [i for i in range(VOCAB) if i not in left_out]
    gen = BiLDGenerator(small, large, 0.3, 0.0, 4, draft_vocab=subset, drafting_guard=False)
    out = gen.generate(**inputs, max_new_tokens=12, return_dict_in_generate=True)
    assert torch.equal(out.sequences, expected)
    if not small.config.is_encoder_decoder:  # the tiny seq2seq pairs write one or two distinct tokens only
        assert out.stats.total()["accepted_drafts"] > 0 and len(left_out) >= 2


def test_drafts_only_come_from_the_chosen_ids():
    """RB inf never rolls back: every committed token that is not a fallback correction is the drafter's."""
    small, large = tiny_pair("qwen2", mode="agree", seed=2, noise=0.05)
    inputs = batch_inputs(prompts(4, seed=5), False)
    out = BiLDGenerator(small, large, 0.0, float("inf"), 10, draft_vocab=SUBSET).generate(
        **inputs, max_new_tokens=10, return_dict_in_generate=True)
    stats = out.stats.total()
    # FB 0, 10 drafts for 10 new tokens: one round of drafts only, all accepted, no large-model token.
    assert stats["large_forward_calls"] == 4 and stats["accepted_drafts"] == stats["committed_tokens"] == 40
    new = out.sequences[:, inputs["input_ids"].shape[1]:]
    assert set(new.flatten().tolist()) - {0} <= set(SUBSET)
    full = BiLDGenerator(small, large, 0.0, float("inf"), 10).generate(**inputs, max_new_tokens=10)
    assert set(full[:, inputs["input_ids"].shape[1]:].flatten().tolist()) - set(SUBSET)  # the restriction mattered


def test_sampling_at_rollback_zero_keeps_the_large_distribution():
    small, large = pair("overlap")
    subset = list(range(0, VOCAB, 2))
    out = BiLDGenerator(small, large, 0.0, 0.0, 3, draft_vocab=subset).generate(
        **batch_inputs(PROMPT, False), do_sample=True, max_new_tokens=2, num_return_sequences=ROWS,
        generator=torch.Generator().manual_seed(99), return_dict_in_generate=True, **WARPERS)
    samples, stats = out.sequences[:, len(PROMPT[0]):], out.stats.total()
    assert stats["accepted_drafts"] > 40 and stats["rollbacks"] > 100
    expected = large_two_token_distribution("overlap")
    assert set(t for pair_ in expected for t in pair_) - set(subset)  # the large model samples tokens not drafted
    assert total_variation(samples, expected) < 0.05 and chi_square_p_value(samples, expected) > 1e-3


@pytest.mark.parametrize("ids, message", [
    ([], "non-empty"), ([[1, 2]], "1-D"), ([1.0, 2.0], "token ids"), ([1, VOCAB], "outside"), ([-1, 3], "outside"),
    ([3, 3, 4], "repeated"),
])
def test_bad_ids_are_refused(ids, message):
    small, large = tiny_pair("llama")
    with pytest.raises(ValueError, match=message):
        BiLDGenerator(small, large, draft_vocab=ids)


def test_a_head_that_is_not_a_linear_attribute_is_refused():
    small, large = tiny_pair("llama")

    class Scaled(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, h):
            return self.inner(h) * 2

    small.lm_head = Scaled(small.lm_head)
    small.get_output_embeddings = lambda: small.lm_head
    with pytest.raises(ValueError, match="nn.Linear"):
        restrict_draft_vocab(small, SUBSET)


class _Tok:
    """A whitespace tokenizer with one special token: enough to count frequencies."""

    all_special_ids = [2]
    vocab = {w: i for i, w in enumerate("<pad> <s> </s> a b c d e".split())}

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [self.vocab[w] for w in text.split()]}


def test_frequent_tokens_counts_breaks_ties_by_id_and_adds_special_tokens():
    texts = ["a b b c", "c b d", "e e"]  # b 3, c 2, e 2, a 1, d 1
    assert frequent_tokens(_Tok(), texts, size=1).tolist() == [2, 4]  # b, plus </s>
    assert frequent_tokens(_Tok(), texts, size=3).tolist() == [2, 4, 5, 7]  # b, c, e (c before e: tie, lower id)
    assert frequent_tokens(_Tok(), texts, size=2, always=[0]).tolist() == [0, 2, 4, 5]
    with pytest.raises(ValueError, match="size"):
        frequent_tokens(_Tok(), texts, size=0)


def test_the_cost_model_measures_a_restricted_drafter():
    """The cost measurement takes a drafter whose output layer is a SubsetHead (it has no .weight)."""
    from bild.costs import measure_pair_costs

    small, large = tiny_pair("llama")
    costs = measure_pair_costs(restrict_draft_vocab(small, SUBSET), large, max_width=3, context=8, repeats=1,
                               cached=False)
    assert costs.small.step > 0 and sorted(costs.large.passes) == [1, 2, 3]


@pytest.mark.parametrize("arch", ["llama", "t5"])
def test_a_restricted_drafters_head_takes_the_int8_draft_form_and_lossless_stays_large_greedy(monkeypatch, arch):
    """The subset head's product is a plain nn.Linear, so bild.kernels' int8 draft form reaches it like every other
    layer of the small model; the large model checks every draft, so lossless output is unchanged."""
    import bild.kernels as kernels

    seen = []
    real = kernels.int8_weight_linear
    monkeypatch.setattr(kernels, "int8_weight_linear", lambda m, x: seen.append(m) or real(m, x))
    small, large = tiny_pair(arch, mode="agree", seed=2, noise=0.05)
    inputs = batch_inputs(prompts(2, seed=4), small.config.is_encoder_decoder)
    expected = large.generate(**inputs, do_sample=False, max_new_tokens=12)
    gen = BiLDGenerator(small, large, 0.3, 0.0, 4, draft_vocab=SUBSET, draft_int8=True)
    assert torch.equal(gen.generate(**inputs, max_new_tokens=12), expected)
    head = gen.drafter.get_output_embeddings()
    assert isinstance(head, SubsetHead) and head.sub in seen
    assert not any(m in seen for m in large.modules())

"""BiLD's decisions on hand-made tensors: no model in sight."""

import math

import torch

from bild.policy import fallback_mask, first_rejection, first_true_index, max_prob_and_argmax, rejection_mask, token_logprobs


def test_max_prob_and_argmax_matches_softmax():
    scores = torch.tensor([[1.0, 3.0, 0.5], [0.0, 0.0, 0.0]])
    p, tok = max_prob_and_argmax(scores)
    torch.testing.assert_close(p, torch.softmax(scores, -1).max(-1).values)
    assert tok.tolist() == [1, 0]


def test_max_prob_ignores_minus_inf():
    p, tok = max_prob_and_argmax(torch.tensor([[0.0, -math.inf, 0.0, -math.inf]]))
    assert tok.item() in (0, 2) and abs(p.item() - 0.5) < 1e-6


def test_fallback_mask_is_strict_and_zero_never_falls_back():
    probs = torch.tensor([0.59, 0.6, 0.61, 0.0])
    assert fallback_mask(probs, 0.6).tolist() == [True, False, False, True]
    assert not fallback_mask(probs, 0.0).any()
    assert fallback_mask(torch.tensor([1.0]), math.inf).all()


def test_token_logprobs():
    scores = torch.tensor([[[2.0, 1.0, 0.0], [0.0, 0.0, 5.0]]])
    lp = token_logprobs(scores, torch.tensor([[1, 2]]))
    torch.testing.assert_close(lp, torch.log_softmax(scores, -1)[0, [0, 1], [1, 2]].unsqueeze(0))


def test_rejection_needs_high_cross_entropy_and_not_argmax():
    logprobs = torch.tensor([[-0.1, -5.0, -5.0, -2.0]])
    drafts = torch.tensor([[4, 5, 6, 7]])
    argmax = torch.tensor([[4, 9, 6, 8]])
    # draft 1: likely -> kept; draft 2: unlikely and not argmax -> rejected;
    # draft 3: unlikely but the large argmax -> kept; draft 4: exactly at threshold -> kept (strict >).
    assert rejection_mask(logprobs, drafts, argmax, 2.0).tolist() == [[False, True, False, False]]


def test_first_true_index_respects_lengths():
    mask = torch.tensor([[False, True, True], [False, False, False], [True, False, False], [False, False, True]])
    lengths = torch.tensor([3, 3, 0, 2])
    assert first_true_index(mask, lengths).tolist() == [1, 3, 0, 2]
    assert first_true_index(torch.zeros(2, 0, dtype=torch.bool), torch.tensor([0, 0])).tolist() == [0, 0]


def test_first_rejection_rollback_zero_is_lossless_and_inf_never_rejects():
    drafts = torch.tensor([[3, 4, 5]])
    argmax = torch.tensor([[3, 9, 5]])
    logprobs = torch.tensor([[-0.01, -0.02, -0.03]])
    # rb = 0: any draft that is not the large argmax is rejected, however likely.
    assert first_rejection(logprobs, drafts, argmax, torch.tensor([3]), 0.0).tolist() == [1]
    assert first_rejection(torch.full((1, 3), -1e9), drafts, argmax, torch.tensor([3]), math.inf).tolist() == [3]

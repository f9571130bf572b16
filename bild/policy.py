"""BiLD's decisions as pure tensor functions: no model, no cache, no state.

Shapes: B = rows, K = drafts per row (padded), V = vocabulary.
"""

from __future__ import annotations

import torch


def max_prob_and_argmax(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, V) processed logits -> max softmax probability (B,) and argmax token (B,)."""
    scores = scores.float()
    top, token = scores.max(dim=-1)
    # max softmax = exp(max - logsumexp): no (B, V) probability tensor is materialised.
    return torch.exp(top - torch.logsumexp(scores, dim=-1)), token


def fallback_mask(max_probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """True where the small model is too unsure to keep drafting: max p_S < threshold."""
    return max_probs < threshold


def token_logprobs(scores: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log-softmax of (..., V) processed logits, read only at `tokens` (...)."""
    scores = scores.float()
    picked = scores.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(scores, dim=-1)


def rejection_mask(draft_logprobs: torch.Tensor, drafts: torch.Tensor, large_argmax: torch.Tensor,
                   threshold: float | torch.Tensor) -> torch.Tensor:
    """(B, K) True where a draft is rejected: -log p_L(d) > threshold and d != argmax p_L.

    threshold: one number, or one per draft (B, K) (0 where a draft must be the large argmax exactly)."""
    return (-draft_logprobs > threshold) & (drafts != large_argmax)


def first_true_index(mask: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(B, K) bool, (B,) valid lengths -> index of the first True within each row's length, else its length."""
    K = mask.shape[-1]
    if K == 0:
        return torch.zeros_like(lengths)
    positions = torch.arange(K, device=mask.device).expand_as(mask)
    mask = mask & (positions < lengths.unsqueeze(-1))
    return torch.where(mask, positions, torch.full_like(positions, K)).min(dim=-1).values.clamp(max=lengths)


def first_rejection(
    draft_logprobs: torch.Tensor,
    drafts: torch.Tensor,
    large_argmax: torch.Tensor,
    num_drafts: torch.Tensor,
    threshold: float | torch.Tensor,
) -> torch.Tensor:
    """Number of drafts accepted per row (B,): the index of the first rejected draft, or num_drafts."""
    return first_true_index(rejection_mask(draft_logprobs, drafts, large_argmax, threshold), num_drafts)


def rollback_thresholds(unsure: torch.Tensor, threshold: float) -> torch.Tensor:
    """(B, K) rollback threshold of each draft: 0 (exact) where the small model was unsure, else `threshold`."""
    return torch.where(unsure, 0.0, threshold)

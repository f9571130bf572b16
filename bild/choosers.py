"""How a round picks tokens: greedy (the paper) or sampling (exact speculative sampling, relaxed by RB).

Both choosers have the same two calls, so the decode loop never asks which mode it runs in:
    propose(scores, rows, step) -> (max_prob, token)    the small model's draft at draft index `step`
    judge(scores, drafts, k, active, exact) -> (accepted, new_token)    the large model's verdict on a round
(`exact` (B, K): drafts judged with rollback threshold 0, the kept fallback drafts).
See docs/decoding.md ("One round", "Sampling"). Shapes: B rows, K drafts (padded), V vocabulary.
"""

from __future__ import annotations

from typing import Protocol

import torch

from .policy import (
    acceptance_probability, first_rejection, first_true_index, max_prob_and_argmax, residual_distribution,
    rollback_thresholds, token_logprobs,
)


class Chooser(Protocol):
    def propose(self, scores: torch.Tensor, rows: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """scores (n, V) processed small logits of `rows`, each at draft index `step` -> (max prob (n,), draft (n,))."""

    def judge(self, scores: torch.Tensor, drafts: torch.Tensor, k: torch.Tensor, active: torch.Tensor,
              exact: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """scores (B, K+1, V) processed large logits, drafts (B, K), k (B,) -> (accepted (B,), new token (B,))."""


class Greedy:
    """Drafts are argmaxes; a draft is rejected iff -log p(d) > RB and d != argmax p; new tokens are argmaxes."""

    def __init__(self, rollback_threshold: float):
        self.rollback_threshold = rollback_threshold

    def propose(self, scores: torch.Tensor, rows: torch.Tensor, step: int):
        return max_prob_and_argmax(scores)

    def judge(self, scores: torch.Tensor, drafts: torch.Tensor, k: torch.Tensor, active: torch.Tensor,
              exact: torch.Tensor):
        """scores (B, K+1, V) processed large logits, drafts (B, K), k (B,) drafts per row, active (B,),
        exact (B, K) drafts judged with rollback threshold 0."""
        large_argmax = scores.argmax(dim=-1)  # (B, K+1); positions past a row's k are never read
        K = drafts.shape[1]
        threshold = self.rollback_threshold
        if threshold == 0.0:
            # Lossless mode: rejection is exactly "differs from the large argmax"; no log-softmax needed.
            logprobs = torch.where(drafts == large_argmax[:, :K], 0.0, -torch.inf)
        else:
            logprobs = token_logprobs(scores[:, :K], drafts)
            threshold = rollback_thresholds(exact, threshold)
        accepted = first_rejection(logprobs, drafts, large_argmax[:, :K], k, threshold)
        accepted = torch.where(active, accepted, 0)
        return accepted, large_argmax.gather(1, accepted.unsqueeze(1)).squeeze(1)


def sample(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """(n, V) probabilities -> (n,) tokens, drawn as transformers' sampling draws them."""
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)


class Sampler:
    """d ~ q; keep d with probability acceptance_probability(p(d), q(d), RB); at the first rejection a
    correction ~ residual_distribution(p, q), else a bonus token ~ p.

    Randomness comes from `generator` (None: torch's global generator, as transformers' sampling). The
    last draw of a round is always one (B, V) multinomial, inactive rows included, so with every step
    falling back the draws are exactly those of transformers' sampling loop.
    """

    def __init__(self, rollback_threshold: float, batch_size: int, max_drafts: int, generator: torch.Generator | None = None):
        self.rollback_threshold = rollback_threshold
        self.generator = generator
        self.shape = (batch_size, max_drafts)
        self.q: torch.Tensor | None = None  # (B, N, V) the small model's probabilities at this round's drafts

    def propose(self, scores: torch.Tensor, rows: torch.Tensor, step: int):
        probs = torch.softmax(scores.float(), dim=-1)  # (n, V)
        if self.q is None:
            self.q = probs.new_zeros(*self.shape, probs.shape[-1])
        self.q[rows, step] = probs
        return probs.max(dim=-1).values, sample(probs, self.generator)

    def judge(self, scores: torch.Tensor, drafts: torch.Tensor, k: torch.Tensor, active: torch.Tensor,
              exact: torch.Tensor):
        """scores (B, K+1, V) processed large logits, drafts (B, K), k (B,) drafts per row, active (B,),
        exact (B, K) drafts judged with rollback threshold 0."""
        B, width, V = scores.shape
        K = width - 1
        p = torch.softmax(scores, dim=-1)  # (B, K+1, V); NaN where nothing was processed, never read
        rows = torch.arange(B, device=scores.device)
        if K == 0:
            accepted = torch.zeros_like(k)
            new_dist = p[:, 0]
        else:
            q = self.q[:, :K]
            if q.shape[-1] < V:  # the large head is padded wider: the small model puts no mass there
                q = torch.nn.functional.pad(q, (0, V - q.shape[-1]))
            p_d = p[:, :K].gather(2, drafts.unsqueeze(-1)).squeeze(-1)  # (B, K)
            q_d = q.gather(2, drafts.unsqueeze(-1)).squeeze(-1)
            coins = torch.rand(B, K, generator=self.generator, device=scores.device)
            threshold = rollback_thresholds(exact, self.rollback_threshold)
            rejected = ~(coins < acceptance_probability(p_d, q_d, threshold))
            accepted = torch.where(active, first_true_index(rejected, k), 0)
            p_a = p[rows, accepted]  # (B, V)
            residual = residual_distribution(p_a, q[rows, accepted.clamp(max=K - 1)])
            new_dist = torch.where((accepted < k).unsqueeze(1), residual, p_a)
        # Finished rows still take part in the draw (a dummy distribution) so its shape is always (B, V).
        new_dist = torch.where(active.unsqueeze(1), new_dist, 1.0 / V)
        return accepted, sample(new_dist, self.generator)

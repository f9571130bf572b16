"""BiLD's decisions as pure tensor functions: no model, no cache, no state.

Shapes: B = rows, K = drafts per row (padded), V = vocabulary.
"""

from __future__ import annotations

import numpy as np
import torch

#: Rounds a row drafts before the drafting guard judges it (see `drafting_pays`).
GUARD_ROUNDS = 4


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


def acceptance_probability(p_draft: torch.Tensor, q_draft: torch.Tensor, threshold: float | torch.Tensor) -> torch.Tensor:
    """Probability of keeping a draft d ~ q in sampling mode, elementwise over (...) tensors.

    p_draft, q_draft: the large and small model's processed probabilities of the draft. Speculative
    sampling keeps it with probability min(1, p/q) (Leviathan et al. / Chen et al.); BiLD's rollback
    relaxes that: a draft with cross-entropy -log p <= threshold is kept outright, so threshold 0 is exact.
    """
    p_draft, q_draft = p_draft.double(), q_draft.double()
    # q(d) > 0 for every drawn draft; the guard only keeps padded positions finite.
    ratio = torch.where(q_draft > 0, p_draft / q_draft.clamp(min=torch.finfo(torch.float64).tiny), 1.0).clamp(max=1.0)
    return torch.where(-torch.log(p_draft) <= threshold, 1.0, ratio)


def residual_distribution(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """normalize(max(0, p - q)) over the last dim (..., V): where a rejected draft's replacement is drawn from.

    A rejection needs p(d) < q(d), so some token has p > q and the sum is positive; p is returned
    where it is not (p == q up to rounding), so the result is always a distribution.
    """
    excess = (p - q).clamp(min=0)
    total = excess.sum(dim=-1, keepdim=True)
    return torch.where(total > 0, excess / torch.where(total > 0, total, 1.0), p)


def rollback_thresholds(exact: torch.Tensor, threshold: float) -> torch.Tensor:
    """(B, K) rollback threshold of each draft: 0 where it must be judged exactly, else `threshold`."""
    return torch.where(exact, 0.0, threshold)


def drafting_pays(rounds: np.ndarray, small_steps: np.ndarray, committed: np.ndarray, cost_ratio: float,
                  min_rounds: int = GUARD_ROUNDS) -> np.ndarray:
    """(B,) host: whether each row keeps drafting (the drafting guard).

    Counted in large-model steps: a row's rounds cost one large pass each and its small steps `cost_ratio`
    each; the large model alone would have taken one step per committed token. Once a row has had
    `min_rounds` rounds and drafting has cost it at least that (rounds + cost_ratio * small_steps >=
    committed), it stops drafting: its later rounds are plain large-model steps, which keep the difference
    as it is, so the decision holds for the rest of the call. Counts, not clocks: the same inputs give the
    same decisions on every machine.
    """
    return (rounds < min_rounds) | (rounds + cost_ratio * small_steps < committed)


#: fallback_threshold="auto": upper edges of the confidence bins its acceptance estimates are kept in, and each
#: bin's prior acceptance (the small model's own confidence, at the bin's middle), worth PRIOR_WEIGHT drafts.
CONFIDENCE_EDGES = (0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
PRIOR_ACCEPTANCE = (0.15, 0.4, 0.55, 0.65, 0.75, 0.85, 0.925, 0.965, 0.985, 0.995)
PRIOR_WEIGHT = 2.0


def confidence_bins(max_probs: torch.Tensor, edges: torch.Tensor | None = None) -> torch.Tensor:
    """(...) max probabilities -> their bin (...) in 0..len(CONFIDENCE_EDGES): how many edges are <= p.
    edges: CONFIDENCE_EDGES as a float32 tensor on the probabilities' device (made here if not given)."""
    if edges is None:
        edges = torch.tensor(CONFIDENCE_EDGES, dtype=torch.float32, device=max_probs.device)
    return torch.bucketize(max_probs.float(), edges, right=True)


def acceptance_table(accepted: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """(B, bins) host counts of verified drafts -> the estimated chance that a draft in each bin is accepted,
    given that every draft before it in its round was: the prior, worth PRIOR_WEIGHT drafts, plus what was seen."""
    prior = np.asarray(PRIOR_ACCEPTANCE)
    return (accepted + PRIOR_WEIGHT * prior) / (seen + PRIOR_WEIGHT)


def next_draft_acceptance(accepted: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """(B,) the estimated chance that a row's next draft is accepted, its confidence not yet known: all its
    verified drafts, with the priors' mean worth PRIOR_WEIGHT drafts."""
    prior = float(np.mean(PRIOR_ACCEPTANCE))
    return (accepted.sum(-1) + PRIOR_WEIGHT * prior) / (seen.sum(-1) + PRIOR_WEIGHT)


def drafting_stop_level(next_acceptance: np.ndarray, cost_ratio: float, committed: np.ndarray, rounds: np.ndarray,
                        small_steps: np.ndarray) -> np.ndarray:
    """(B,) host: fallback_threshold="auto"'s bar. A round goes on while P(every draft so far is accepted) is at
    least this, and drafts at all only while it is at most 1.

    Time in large-model steps: a round's large pass costs 1 and a small step `cost_ratio`. One more small step
    adds P(all so far accepted) * next_acceptance expected tokens for cost_ratio: worth it while that is at
    least cost_ratio times the row's own rate, rate = (committed + 1) / (rounds + cost_ratio * small_steps + 1)
    tokens per step so far (one token at the large model's rate as a prior). So the bar is
    cost_ratio * rate / next_acceptance. Before a round's first draft the chance is 1: a row whose drafts are
    accepted less often than cost_ratio * rate stops drafting, and its rounds are plain large-model steps
    (its rate then drifts towards 1, so it drafts again if next_acceptance > cost_ratio).
    """
    rate = (committed + 1) / (rounds + cost_ratio * small_steps + 1)
    return cost_ratio * rate / np.maximum(next_acceptance, 1e-6)


def drafts_in_first_round(cost_ratio: float) -> bool:
    """Pure: whether "auto"'s per-round rule lets a row draft in its first round when a draft costs `cost_ratio`
    large steps. Where it does not, the row never drafts in that call: its plain large-model steps keep its rate at
    one token per step and teach it nothing about acceptance, so its bar stays cost_ratio over the priors' mean
    acceptance (and a cost measured by the call needs drafts to measure)."""
    bins = len(CONFIDENCE_EDGES) + 1
    none = np.zeros((1, bins))
    level = drafting_stop_level(next_draft_acceptance(none, none), cost_ratio, np.zeros(1), np.zeros(1), np.zeros(1))
    return bool(level[0] <= 1.0)

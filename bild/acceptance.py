"""fallback_threshold="auto": what each row has learned of its drafts, and what a small step costs.

The decode loop owns one `AcceptanceTracker` per call (nothing is kept between calls). Before each round
it gives the loop that round's `AutoRound`: per row, the estimated chance that a draft of each confidence
bin is accepted, and the bar that the chance of the whole round so far must stay above
(`bild.policy.drafting_stop_level`). After the round it learns from what the large model accepted: each
drafted token up to and including the first rejected one is one observation of its confidence bin (the
drafts after a rejection were never judged on the large model's prefix, so they say nothing).

The cost of a draft, in large-model steps, is either given (`BiLDConfig.cost_ratio`) or measured here from
the call's own rounds, from the second round on (the first one pays both prompt prefills): the drafting
phase's wall time per small-model step, plus what one more position adds to a round's verify-and-commit
wall time, over that time for a round without drafts (`CostClock`). Until then the pair's ratio of weights
read per step stands in. Wall time, not forward time: it is what the user waits for, and it needs no device
synchronisation beyond the loop's own host reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .adapters import to_device
from .policy import CONFIDENCE_EDGES, acceptance_table, drafting_stop_level, next_draft_acceptance


@dataclass
class AutoRound:
    """One round's decision inputs: device tensors read by the draft steps, and the host bins they fill."""

    table: torch.Tensor  # (B, bins) device: estimated acceptance of a draft in each confidence bin
    level: torch.Tensor  # (B,) device: the round goes on while P(all drafts so far accepted) >= this
    allowed: np.ndarray  # (B,) host bool: rows for which drafting pays at all this round
    bins: np.ndarray  # (B, N) host: the confidence bin of each draft of the round, filled by the draft steps
    edges: torch.Tensor  # the bins' edges on the device (policy.confidence_bins)


class CostClock:
    """What one more draft costs, in large-model steps: fixed, or measured from the call's rounds after the first.

    Measured: a draft costs one small step (the drafting phase's wall time per small-model step) plus the
    widening of that round's large pass by one position; a round's verify-and-commit wall time is fitted as
    base + per_draft * drafts (least squares over the rounds; per_draft kept in [0, base], and 0 until three rounds of
    different widths are seen). Until the call has measured its own, `prior` stands in: the cost model's
    (`bild.costs.PairCosts.draft_cost_ratio`) where one was consulted, else the pair's ratio of weights read. The cost is (small step + per_draft) / base.
    """

    def __init__(self, prior: float, measure: bool):
        self.prior, self.measure = prior, measure
        self.draft_seconds = 0.0
        self.draft_steps = 0
        self._fit = np.zeros(5)  # rounds, sum w, sum t, sum w*w, sum w*t (w: drafts in the round, t: its verify)
        self._seen_first = False

    def add_round(self, draft_seconds: float, draft_steps: int, verify_seconds: float, width: int) -> None:
        """One round: its drafting time and batched small steps, its verify-and-commit time and widest draft count."""
        if not self._seen_first:  # the first round carries both prompt prefills
            self._seen_first = True
            return
        self.draft_seconds += draft_seconds
        self.draft_steps += draft_steps
        self._fit += (1, width, verify_seconds, width * width, width * verify_seconds)

    def verify_fit(self) -> tuple[float, float]:
        """(base, per_draft) seconds of a round's large pass, from the rounds so far."""
        n, w, t, ww, wt = self._fit
        mean_w, mean_t = w / n, t / n
        var = ww / n - mean_w * mean_w
        per_draft = 0.0
        if n >= 3 and var > 1e-9:
            # Not clamped to a small step (where a wide pass costs more than a step, as on CPUs without native
            # matrix units for the dtype, a draft's share of it can be most of a large step), only kept >= 0 and
            # at most the fitted pass without drafts (base >= per_draft: a stall in one round is not read as a
            # draft costing more than a whole pass).
            per_draft = min(max((wt / n - mean_w * mean_t) / var, 0.0), mean_t / (mean_w + 1))
        base = mean_t - per_draft * mean_w
        return (base, per_draft) if base > 0 else (mean_t, 0.0)

    @property
    def ratio(self) -> float:
        if not self.measure or self.draft_steps == 0 or self._fit[0] == 0 or self._fit[2] <= 0:
            return self.prior
        base, per_draft = self.verify_fit()
        return (self.draft_seconds / self.draft_steps + per_draft) / base


class AcceptanceTracker:
    """Per-row counts of verified drafts by confidence bin, for one call."""

    def __init__(self, batch_size: int, max_small_steps: int, cost: CostClock):
        bins = len(CONFIDENCE_EDGES) + 1
        self.accepted = np.zeros((batch_size, bins))
        self.seen = np.zeros((batch_size, bins))
        self.max_small_steps = max_small_steps
        self.cost = cost
        self._edges = None

    def round(self, rounds: np.ndarray, small_steps: np.ndarray, committed: np.ndarray, device) -> AutoRound:
        """The next round's inputs, from the rows' counts so far (all host arrays, (B,))."""
        level = drafting_stop_level(next_draft_acceptance(self.accepted, self.seen), self.cost.ratio, committed,
                                    rounds, small_steps)
        table = acceptance_table(self.accepted, self.seen)
        bins = np.zeros((len(level), self.max_small_steps), dtype=np.int64)
        if self._edges is None:  # once per call
            self._edges = torch.tensor(CONFIDENCE_EDGES, dtype=torch.float32, device=device)
        return AutoRound(torch.tensor(table, dtype=torch.float32, device=device),
                         to_device(level.astype(np.float32), device), level <= 1.0, bins, self._edges)

    def learn(self, auto: AutoRound, drafts: np.ndarray, accepted: np.ndarray) -> None:
        """drafts (B,) host: drafts per row this round; accepted (B,): how many of them the large model accepted."""
        j = np.arange(auto.bins.shape[1])
        judged = (j <= accepted[:, None]) & (j < drafts[:, None])  # up to and including the first rejection
        kept = j < np.minimum(accepted, drafts)[:, None]
        rows = np.broadcast_to(np.arange(len(drafts))[:, None], auto.bins.shape)
        np.add.at(self.seen, (rows[judged], auto.bins[judged]), 1)
        np.add.at(self.accepted, (rows[kept], auto.bins[kept]), 1)

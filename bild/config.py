"""`BiLDConfig`: the three numbers that define Big Little Decoder, validated once."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

#: Pass as `fallback_threshold` to hand every step to the large model. `1.0` is not quite that:
#: a float softmax can reach exactly 1.0, and `1.0 < 1.0` does not fall back.
ALWAYS_FALLBACK = math.inf
#: Pass as `fallback_threshold` to let the decode loop decide when drafting pays (`bild.acceptance`): it learns,
#: per row, how often drafts of each confidence are accepted and keeps drafting while the expected accepted
#: tokens of one more small step are worth its measured cost.
AUTO = "auto"
#: The paper's fallback threshold (its best-quality IWSLT point): `fallback_threshold=PAPER_FALLBACK` with
#: `rollback_threshold=2.0` .. 5.0 is exactly the paper's rule.
PAPER_FALLBACK = 0.6
#: What fallback_threshold is compared with: each draft's max probability, or their product over the round.
FALLBACK_RULES = ("token", "round")


@dataclass(frozen=True)
class BiLDConfig:
    """Thresholds of Big Little Decoder (Kim et al., NeurIPS 2023).

    fallback_threshold: `"auto"` (`bild.AUTO`, the default): no threshold to tune; a round goes on while the
        chance that every draft so far is accepted, times the chance that the next one is, is worth a small step
        at the row's own rate of tokens per unit of time (see `bild.acceptance`); a row whose drafts do not pay
        stops drafting (and drafts again when it would pay); where the pair's measured cost model (`bild.costs`)
        says even every draft accepted cannot beat the large model, the call is the large model's own loop. Both
        chances are learned per row from the verification results of the call, starting from the small model's
        own confidence. It is the default because it was at least as fast as 0.6 on both validation sets and never
        slower than the large model (benchmarks/RESULTS.md, A19). A number: the paper's rule, the small model stops
        drafting when its (processed) max probability is below it. In [0, 1], or `ALWAYS_FALLBACK`. 0.0 never
        falls back. `PAPER_FALLBACK` (0.6) is the paper's setting for its best-quality IWSLT point. With
        rollback > 0, "auto"'s decisions follow measured time, so outputs can differ from run to run: pass a
        number (or a fixed cost_ratio) for outputs that do not.
    rollback_threshold: a draft is rejected when the large model's cross-entropy on it, in nats,
        exceeds this and it is not the large model's argmax. >= 0; 0.0 makes BiLD lossless
        (identical to large greedy); `math.inf` never rolls back. Default 2.0: the low end of
        the paper's 2-5 range, the point that kept quality at the large model's level
        (IWSLT 40.33 BLEU vs 40.3 for large alone, at 1.43x).
    max_small_steps: at most this many drafts per round (paper and reference default: 10).
    keep_fallback_draft: when the small model falls back, keep the token it was unsure of as the
        round's last draft, checked exactly: committed only if it is the large model's own argmax there
        (the token the paper's rule would take from the large model at that position), else replaced
        by it. The round still ends there. It costs no small-model step (that step was taken anyway)
        and one more position in the large pass; with rollback 0 the output is unchanged. False: the
        paper's rule (the unsure token is thrown away). None (default): True with rollback 0, where it
        is free speed, and with fallback_threshold "auto"; False otherwise, where it changes which tokens are committed (see
        benchmarks/RESULTS.md for what it measured).
    fallback_rule: what is compared with fallback_threshold. "token" (default, the paper's rule): each draft's
        max probability. "round": the product of the max probabilities of the round's drafts so far, the small
        model's own estimate that every draft of the round survives verification; a round ends when that
        falls below the threshold, so long rounds of fairly sure tokens end before their likely failure.
    drafting_guard: stop drafting for a row once drafting has cost it more than it saved (default False): after
        a few rounds, if its large passes plus its small steps (each costed at the pair's ratio of weights
        read per step) add up to at least its committed tokens, its later rounds are plain large-model steps.
        So a small model that keeps falling back costs at most a few rounds. With rollback 0 the output is
        unchanged; see `bild.policy.drafting_pays`. Off by default: on the real pair's translations it cost large
        calls (its decision is final for the call; benchmarks/RESULTS.md, A11).
    cost_ratio: what one small-model step costs in large-model steps, for "auto" and the drafting guard. None
        (default): "auto" measures it during the call (the wall time of the draft steps against that of the
        verify rounds, from the second round on; the pair's ratio of weights read per step before that), and
        the guard uses the ratio of weights. With rollback 0 the output never depends on it; with rollback > 0
        and "auto", a measured ratio can make outputs differ from run to run, so give a number to fix them.
    """

    fallback_threshold: float | str = AUTO
    rollback_threshold: float = 2.0
    max_small_steps: int = 10
    keep_fallback_draft: bool | None = None
    fallback_rule: str = "token"
    drafting_guard: bool = False
    cost_ratio: float | None = None

    def __post_init__(self):
        fb, rb, n = self.fallback_threshold, self.rollback_threshold, self.max_small_steps
        if isinstance(fb, str) and fb != AUTO:
            raise ValueError(f"fallback_threshold must be a number in [0, 1], bild.ALWAYS_FALLBACK or \"auto\", got {fb!r}.")
        if fb != AUTO and (not isinstance(fb, (int, float)) or isinstance(fb, bool) or math.isnan(fb)):
            raise ValueError(f"fallback_threshold must be a number in [0, 1] (or bild.ALWAYS_FALLBACK, or \"auto\"), got {fb!r}.")
        if fb != AUTO and not (0.0 <= fb <= 1.0 or fb == ALWAYS_FALLBACK):
            raise ValueError(
                f"fallback_threshold must be in [0, 1], got {fb!r}. It is compared with a probability; "
                "to send every step to the large model pass bild.ALWAYS_FALLBACK."
            )
        if not isinstance(rb, (int, float)) or isinstance(rb, bool) or math.isnan(rb) or rb < 0:
            raise ValueError(
                f"rollback_threshold must be a number >= 0 (nats; 0 = lossless, math.inf = never roll back), got {rb!r}."
            )
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"max_small_steps must be an integer >= 1, got {n!r}.")
        if self.keep_fallback_draft is not None and not isinstance(self.keep_fallback_draft, bool):
            raise ValueError(f"keep_fallback_draft must be True, False or None, got {self.keep_fallback_draft!r}.")
        if self.fallback_rule not in FALLBACK_RULES:
            raise ValueError(f"fallback_rule must be one of {FALLBACK_RULES}, got {self.fallback_rule!r}.")
        if not isinstance(self.drafting_guard, bool):
            raise ValueError(f"drafting_guard must be True or False, got {self.drafting_guard!r}.")
        if fb == AUTO and self.fallback_rule != "token":
            raise ValueError('fallback_rule="round" compares a fallback threshold with the product of the round\'s max '
                             'probabilities, and fallback_threshold="auto" (the default) makes its own round-level '
                             'decision: pass a number as fallback_threshold (e.g. 0.6) with fallback_rule="round".')
        cr = self.cost_ratio
        if cr is not None and (not isinstance(cr, (int, float)) or isinstance(cr, bool) or not 0 < cr < math.inf):
            raise ValueError(f"cost_ratio must be None (measure it) or a positive number (a small step in large steps), got {cr!r}.")
        if cr is not None:
            object.__setattr__(self, "cost_ratio", float(cr))
        if fb != AUTO:
            object.__setattr__(self, "fallback_threshold", float(fb))
        object.__setattr__(self, "rollback_threshold", float(rb))

    @property
    def keeps_fallback_draft(self) -> bool:
        """keep_fallback_draft resolved: None means on exactly when BiLD is lossless (rollback 0) or the fallback
        threshold is "auto" (whose stop says the round is unlikely to survive, not that this token is unsure)."""
        if self.keep_fallback_draft is None:
            return self.rollback_threshold == 0.0 or self.fallback_threshold == AUTO
        return self.keep_fallback_draft

    def to_dict(self) -> dict:
        """The fields, leaving out keep_fallback_draft, fallback_rule, drafting_guard and cost_ratio at their defaults
        (so files and fingerprints of default settings read as they always have)."""
        out = asdict(self)
        if out["keep_fallback_draft"] is None:
            del out["keep_fallback_draft"]
        if out["fallback_rule"] == "token":
            del out["fallback_rule"]
        if not out["drafting_guard"]:
            del out["drafting_guard"]
        if out["cost_ratio"] is None:
            del out["cost_ratio"]
        return out

"""`BiLDStats`: what every generation reports, per row and summed, so that speed-ups can be explained."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

PER_ROW = (
    "small_forward_calls",  # draft steps this row took part in
    "large_forward_calls",  # verification passes (= rounds) this row took part in
    "drafted_tokens",
    "accepted_drafts",  # drafts that passed verification and were committed
    "fallbacks",  # rounds that ended because the small model was unsure
    "rollbacks",  # rounds in which the large model rejected a draft
    "corrections",  # large-model tokens committed in place of a rejected draft
    "bonus_tokens",  # large-model tokens committed after the last accepted draft (also k = 0 rounds)
)


@dataclass
class BiLDStats:
    """Counters per row (lists of length B) plus batch-level forward counts.

    Identities (checked by `check()`): committed = accepted_drafts + corrections + bonus_tokens;
    tokens_from_small = accepted_drafts; tokens_from_large = corrections + bonus_tokens;
    rollbacks <= large_forward_calls; accepted_drafts <= drafted_tokens.
    """

    small_forward_calls: list[int] = field(default_factory=list)
    large_forward_calls: list[int] = field(default_factory=list)
    drafted_tokens: list[int] = field(default_factory=list)
    accepted_drafts: list[int] = field(default_factory=list)
    fallbacks: list[int] = field(default_factory=list)
    rollbacks: list[int] = field(default_factory=list)
    corrections: list[int] = field(default_factory=list)
    bonus_tokens: list[int] = field(default_factory=list)
    # Model invocations for the whole batch (one forward serves all rows).
    batch_small_calls: int = 0
    batch_large_calls: int = 0
    # Seconds spent inside model forwards vs the whole decode loop (device synchronised when profiling).
    forward_seconds: float = 0.0
    loop_seconds: float = 0.0
    # forward_seconds split by model (not part of total(): callers that sum rows never see them)
    small_forward_seconds: float = 0.0
    large_forward_seconds: float = 0.0
    # "on", or "off: ..." where fallback_threshold="auto" found that drafting cannot pay (bild.plan); the cost model
    # the call decided from (bild.costs.PairCosts.to_dict()), or None where no costs were consulted.
    drafting: str = "on"
    costs: dict | None = None
    # "shared" (one vocabulary) or "bridged" (two tokenizers, bild.bridge: drafted_tokens are large-model tokens);
    # bridged only: the small-model draft tokens (kept draft steps) per row that the proposals came from.
    tokenizers: str = "shared"
    small_drafted_tokens: list[int] | None = None

    @classmethod
    def zeros(cls, batch_size: int) -> "BiLDStats":
        return cls(**{name: [0] * batch_size for name in PER_ROW})

    @classmethod
    def concat(cls, parts: list["BiLDStats"]) -> "BiLDStats":
        """Stats of row groups generated separately, as one batch."""
        out = cls(**{name: [v for p in parts for v in getattr(p, name)] for name in PER_ROW})
        for name in ("batch_small_calls", "batch_large_calls", "forward_seconds", "loop_seconds",
                     "small_forward_seconds", "large_forward_seconds"):
            setattr(out, name, sum(getattr(p, name) for p in parts))
        if parts:
            out.drafting, out.costs, out.tokenizers = parts[0].drafting, parts[0].costs, parts[0].tokenizers
            if all(p.small_drafted_tokens is not None for p in parts):
                out.small_drafted_tokens = [v for p in parts for v in p.small_drafted_tokens]
        return out

    def add(self, name: str, row: int, value: int = 1) -> None:
        getattr(self, name)[row] += value

    @property
    def tokens_from_small(self) -> list[int]:
        return list(self.accepted_drafts)

    @property
    def tokens_from_large(self) -> list[int]:
        return [c + b for c, b in zip(self.corrections, self.bonus_tokens)]

    @property
    def committed_tokens(self) -> list[int]:
        return [s + l for s, l in zip(self.tokens_from_small, self.tokens_from_large)]

    def total(self) -> dict:
        """Counters summed over rows, plus the ratios that explain the speed."""
        out = {name: sum(getattr(self, name)) for name in PER_ROW}
        out["tokens_from_small"] = out["accepted_drafts"]
        out["tokens_from_large"] = out["corrections"] + out["bonus_tokens"]
        out["committed_tokens"] = out["tokens_from_small"] + out["tokens_from_large"]
        out["mean_tokens_per_large_call"] = out["committed_tokens"] / max(out["large_forward_calls"], 1)
        out["acceptance_rate"] = out["accepted_drafts"] / max(out["drafted_tokens"], 1)
        out["batch_small_calls"] = self.batch_small_calls
        out["batch_large_calls"] = self.batch_large_calls
        out["forward_seconds"] = self.forward_seconds
        out["loop_seconds"] = self.loop_seconds
        return out

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["committed_tokens"] = self.committed_tokens
        out["total"] = self.total()
        return out

    def check(self) -> None:
        """Raise AssertionError if the counters do not add up (each round ends in at most one
        fallback, one rollback and one large-model token)."""
        for r in range(len(self.drafted_tokens)):
            rounds = self.large_forward_calls[r]
            assert self.accepted_drafts[r] <= self.drafted_tokens[r], (r, "accepted > drafted")
            assert self.corrections[r] <= self.rollbacks[r] <= rounds, (r, "corrections <= rollbacks <= rounds")
            assert self.fallbacks[r] <= rounds, (r, "fallbacks > rounds")
            assert self.corrections[r] + self.bonus_tokens[r] <= rounds, (r, "large tokens > rounds")


class RowCounters:
    """The per-row counters of one generation as a device tensor (len(PER_ROW), B), so that counting
    never reads the device; `stats()` reads them once, into a BiLDStats."""

    def __init__(self, batch_size: int, device):
        self.values = torch.zeros(len(PER_ROW), batch_size, dtype=torch.long, device=device)
        self.batch_small_calls = 0
        self.batch_large_calls = 0

    def add(self, name: str, rows: torch.Tensor, amount) -> None:
        """counter[name][rows] += amount: a number, or one (bool or int) tensor entry per row; rows distinct."""
        if isinstance(amount, torch.Tensor):
            amount = amount.to(self.values.dtype)
        self.values[_INDEX[name], rows] += amount

    def stats(self) -> BiLDStats:
        per_row = dict(zip(PER_ROW, self.values.tolist()))
        return BiLDStats(**per_row, batch_small_calls=self.batch_small_calls, batch_large_calls=self.batch_large_calls)


_INDEX = {name: i for i, name in enumerate(PER_ROW)}

"""Per-token scores and logits, as `large.generate(output_scores=True, output_logits=True)` returns them.

The large model's verify pass computes the next-token logits at every position it checks, so every
committed token already has them: its raw logits and the same logits after the logits processors (the
"scores"). A round records those of its committed tokens; at the end they are laid out as transformers
lays them out, one (B, V) float32 tensor per generated position, so `model.compute_transition_scores(
out.sequences, out.scores)` works unchanged. Where a row had already finished, its entries are 0
(transformers keeps running finished rows on padding; bild does not).

The small model's processed scores come as an extra, cheap because its draft steps compute them anyway:
at positions the small model scored during the round that committed them (its drafts and the position
where it fell back); NaN where it did not (a large-model step without drafts, the bonus token after
max_small_steps drafts).

Shapes: B = rows, W = verify width, V = vocabulary, T = generated positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .adapters import to_device

#: What `output_scores` / `output_logits` ask for: the output field and the value of positions nobody scored.
FIELDS = {"scores": 0.0, "logits": 0.0, "small_scores": float("nan")}


@dataclass
class StepOutputs:
    """Recorded values per field: (T, B, V) device tensors once assembled."""

    values: dict[str, torch.Tensor] = field(default_factory=dict)

    def as_tuples(self) -> dict[str, tuple[torch.Tensor, ...]]:
        """transformers' layout: one (B, V) tensor per generated position."""
        return {name: tuple(v.unbind(0)) for name, v in self.values.items()}

    @classmethod
    def concat(cls, parts: list["StepOutputs"]) -> "StepOutputs":
        """Row groups generated separately as one batch: rows stacked, shorter groups padded with each field's fill."""
        out = cls()
        for name in parts[0].values:
            T = max(p.values[name].shape[0] for p in parts)
            blocks = []
            for p in parts:
                v = p.values[name]
                if v.shape[0] < T:
                    v = torch.cat([v, v.new_full((T - v.shape[0], *v.shape[1:]), FIELDS[name])])
                blocks.append(v)
            out.values[name] = torch.cat(blocks, dim=1)
        return out


class ScoreRecorder:
    """Collects the values of committed tokens round by round, as (rows, steps, (n, V) values) blocks on the
    device, and lays them out once at the end. Host arrays index the blocks, so recording never reads the device."""

    def __init__(self, names: tuple[str, ...], prompt_length: int):
        unknown = set(names) - set(FIELDS)
        if unknown:
            raise ValueError(f"unknown score fields {sorted(unknown)}")
        self.names = names
        self.prompt_length = prompt_length
        self.blocks: dict[str, list[tuple[np.ndarray, np.ndarray, torch.Tensor]]] = {n: [] for n in names}
        self._small_round: list[tuple[np.ndarray, np.ndarray, torch.Tensor]] = []

    @property
    def wants_small(self) -> bool:
        return "small_scores" in self.names

    def small_step(self, rows: np.ndarray, step: int, scores: torch.Tensor) -> None:
        """A draft step's processed small-model scores (n, V) for `rows` (host), at the round's offset `step`."""
        if self.wants_small:
            self._small_round.append((rows, np.full(len(rows), step), scores))

    def commit(self, before: np.ndarray, new: np.ndarray, scores: torch.Tensor, logits: torch.Tensor) -> None:
        """A round committed new[r] tokens after each row's length before[r] (host, (B,)); scores and logits
        (B, W, V) are the large model's at the positions it checked, position j = the (j+1)-th new token."""
        W = logits.shape[1]
        rows, j = np.nonzero(np.arange(W)[None, :] < new[:, None])
        steps = before[rows] + j - self.prompt_length
        if rows.size:
            rows_d, j_d = to_device(rows, logits.device), to_device(j, logits.device)
            for name, values in (("scores", scores), ("logits", logits)):
                if name in self.names:
                    self.blocks[name].append((rows, steps, values[rows_d, j_d]))
        for r, s, v in self._small_round:  # a small step at offset s counts where the row committed more than s tokens
            keep = s < new[r]
            if keep.any():
                self.blocks["small_scores"].append((r[keep], before[r[keep]] + s[keep] - self.prompt_length,
                                                    v[to_device(np.flatnonzero(keep), v.device)]))
        self._small_round = []

    def assemble(self, batch_size: int, generated: int) -> StepOutputs:
        """(T = generated, B, V) per field, unscored positions filled with the field's fill value."""
        out = StepOutputs()
        for name in self.names:
            blocks = self.blocks[name]
            if not blocks:
                continue
            values = torch.cat([v for _, _, v in blocks])
            full = values.new_full((generated, batch_size, values.shape[-1]), FIELDS[name], dtype=torch.float32)
            rows = np.concatenate([r for r, _, _ in blocks])
            steps = np.concatenate([s for _, s, _ in blocks])
            full[to_device(steps, full.device), to_device(rows, full.device)] = values.float()
            out.values[name] = full
        return out

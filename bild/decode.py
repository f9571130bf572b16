"""The BiLD decode loop. `bild.hf.bild_generate` runs it as a transformers `custom_generate`.

One round, for every unfinished row at once:
    draft (small, autoregressive) -> fallback? -> verify (large, one pass) -> rollback? -> commit
Rows keep their own committed length; each model's adapter feeds it exactly the tokens it has not
seen. A chooser (`bild.choosers`: greedy or sampling) picks drafts and judges them; the loop is the
same for both. See docs/decoding.md for the contract this implements.

Shapes: B = rows, S = token buffer length, K = drafts per row (padded), V = vocabulary.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from transformers import LogitsProcessorList, StoppingCriteriaList
from transformers.utils import ModelOutput

from .adapters import ModelAdapter
from .choosers import Chooser
from .config import ALWAYS_FALLBACK, BiLDConfig
from .policy import fallback_mask
from .row_processors import for_rows
from .stats import BiLDStats


@dataclass
class BiLDOutput(ModelOutput):
    """What `generate(..., return_dict_in_generate=True)` returns with BiLD."""

    sequences: torch.LongTensor | None = None
    stats: BiLDStats | None = None


@dataclass
class Rows:
    """The committed state of every row: one token buffer and a length pointer per row."""

    seq: torch.Tensor  # (B, S) prompt (as given, padding included) + generated + pending drafts
    seq_valid: torch.Tensor  # (B, S) False at left padding
    n_pad: torch.Tensor  # (B,)
    length: torch.Tensor  # (B,) committed tokens, padding included
    done: torch.Tensor  # (B,) bool
    unsure: torch.Tensor  # (B, S) True at kept fallback drafts (checked exactly)


def _grouped_by_length(rows: torch.Tensor, prefix_lens: torch.Tensor):
    """Yield (selector, length) so that rows sharing a prefix length are handled in one call."""
    for length in prefix_lens.unique().tolist():
        yield (prefix_lens == length).nonzero().squeeze(1), length


def process(processors: LogitsProcessorList, seq: torch.Tensor, rows: torch.Tensor, prefix_lens: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Apply the logits processors to scores (n, V), entry i with the prefix seq[rows[i], :prefix_lens[i]]."""
    if not processors:
        return scores
    out = torch.empty_like(scores)
    for sel, length in _grouped_by_length(rows, prefix_lens):
        out[sel] = for_rows(processors, rows[sel])(seq[rows[sel], :length], scores[sel])
    return out


def stops(criteria: StoppingCriteriaList, seq: torch.Tensor, rows: torch.Tensor, prefix_lens: torch.Tensor) -> torch.Tensor:
    """(n,) bool: whether the stopping criteria fire on seq[rows[i], :prefix_lens[i]]."""
    out = torch.zeros(rows.shape[0], dtype=torch.bool, device=seq.device)
    if not criteria:
        return out
    for sel, length in _grouped_by_length(rows, prefix_lens):
        out[sel] = criteria(seq[rows[sel], :length], None).to(seq.device)
    return out


def draft(small: ModelAdapter, state: Rows, choose: Chooser, processors, criteria, cfg: BiLDConfig, stats: BiLDStats) -> torch.Tensor:
    """Small model drafts up to N tokens per active row into state.seq after each row's length; returns k (B,)."""
    active = ~state.done
    k = torch.zeros_like(state.length)
    if cfg.fallback_threshold == ALWAYS_FALLBACK:
        for r in active.nonzero().flatten().tolist():
            stats.add("fallbacks", r)
        return k
    drafting = active.clone()
    one = torch.ones_like(k)
    for step in range(cfg.max_small_steps):  # every drafting row has exactly `step` drafts
        upto = state.length + k
        logits = small.feed(state.seq, state.seq_valid, state.n_pad, upto, drafting, one)[:, 0]  # (B, V)
        stats.batch_small_calls += 1
        rows = drafting.nonzero().flatten()
        scores = process(processors, state.seq, rows, upto[rows], logits[rows])
        max_p, token = choose.propose(scores, rows, step)
        fell_back = fallback_mask(max_p, cfg.fallback_threshold)
        for r, fb in zip(rows.tolist(), fell_back.tolist()):
            stats.add("small_forward_calls", r)
            if fb:
                stats.add("fallbacks", r)
        kept = torch.ones_like(fell_back) if cfg.keeps_fallback_draft else ~fell_back
        keep = rows[kept]
        state.seq[keep, upto[keep]] = token[kept]
        if cfg.keeps_fallback_draft:
            state.unsure[keep, upto[keep]] = fell_back[kept]
        k[keep] += 1
        for r in keep.tolist():
            stats.add("drafted_tokens", r)
        finished = (k[keep] >= cfg.max_small_steps) | fell_back[kept] | stops(criteria, state.seq, keep, upto[keep] + 1)
        drafting[:] = False
        drafting[keep[~finished]] = True
        if not bool(drafting.any()):
            break
    return k


def verify(large: ModelAdapter, state: Rows, k: torch.Tensor, choose: Chooser, processors, stats: BiLDStats):
    """One large forward over every unseen token; returns (accepted drafts (B,), new token (B,))."""
    active = ~state.done
    logits = large.feed(state.seq, state.seq_valid, state.n_pad, state.length + k, active, k + 1)  # (B, K+1, V)
    stats.batch_large_calls += 1
    width = logits.shape[1]
    scores = logits
    if processors:  # each (row, position) with its own prefix: seq[row, :length + position]
        rows, j = torch.where((torch.arange(width, device=k.device) <= k.unsqueeze(1)) & active.unsqueeze(1))
        scores = torch.full_like(logits, float("-inf"))
        scores[rows, j] = process(processors, state.seq, rows, state.length[rows] + j, logits[rows, j])
    draft_index = (state.length.unsqueeze(1) + torch.arange(width - 1, device=k.device)).clamp(max=state.seq.shape[1] - 1)
    drafts = state.seq.gather(1, draft_index)  # (B, K)
    accepted, new_token = choose.judge(scores, drafts, k, active, state.unsure.gather(1, draft_index))
    for r in active.nonzero().flatten().tolist():
        stats.add("large_forward_calls", r)
    return accepted, new_token


def commit(state: Rows, k, accepted, new_token, criteria, max_length: int, stats: BiLDStats) -> None:
    """Write accepted drafts + the large model's token, cut at the first stop; mark finished rows."""
    for r in (~state.done).nonzero().flatten().tolist():
        start, a, n = int(state.length[r]), int(accepted[r]), int(k[r])
        state.seq[r, start + a] = new_token[r]
        m = min(a + 1, max_length - start)
        row = torch.tensor([r], device=state.seq.device)
        for t in range(1, m + 1):
            if bool(stops(criteria, state.seq, row, torch.tensor([start + t], device=row.device))):
                m, state.done[r] = t, True
                break
        if start + m >= max_length:
            state.done[r] = True
        from_small = min(m, a)
        stats.add("accepted_drafts", r, from_small)
        if a < n:
            stats.add("rollbacks", r)
        if m > a:
            stats.add("corrections" if a < n else "bonus_tokens", r)
        state.length[r] = start + m


def decode(small: ModelAdapter, large: ModelAdapter, prompt, prompt_valid, processors, criteria, choose: Chooser,
           cfg: BiLDConfig, max_length: int, pad_token_id: int, streamer=None) -> tuple[torch.Tensor, BiLDStats]:
    """Generate for a batch of (left-padded) prompts (B, P); returns sequences (B, <= max_length) and stats.

    streamer (batch 1): gets the prompt, then each round's committed tokens once verified, then end(),
    as transformers' own loops feed it.
    """
    B, P = prompt.shape
    device = prompt.device
    S = max(max_length, P) + cfg.max_small_steps + 1
    seq = torch.full((B, S), pad_token_id, dtype=torch.long, device=device)
    seq[:, :P] = prompt
    seq_valid = torch.ones(B, S, dtype=torch.bool, device=device)
    seq_valid[:, :P] = prompt_valid
    state = Rows(seq, seq_valid, (~prompt_valid).sum(1), torch.full((B,), P, device=device),
                 torch.zeros(B, dtype=torch.bool, device=device), torch.zeros(B, S, dtype=torch.bool, device=device))
    state.done |= state.length >= max_length
    stats = BiLDStats.zeros(B)
    if streamer is not None:
        streamer.put(prompt.cpu())
    start = time.perf_counter()
    while not bool(state.done.all()):
        before = state.length.clone()
        k = draft(small, state, choose, processors, criteria, cfg, stats)
        accepted, new_token = verify(large, state, k, choose, processors, stats)
        commit(state, k, accepted, new_token, criteria, max_length, stats)
        if streamer is not None:
            streamer.put(state.seq[0, int(before[0]) : int(state.length[0])].cpu())
        # Both caches keep exactly the committed prefix they have seen: old length + accepted drafts.
        keep = before + accepted
        small.rollback_to(keep)
        large.rollback_to(keep)
    stats.loop_seconds = time.perf_counter() - start
    if streamer is not None:
        streamer.end()
    stats.forward_seconds = small.seconds + large.seconds
    stats.small_forward_seconds, stats.large_forward_seconds = small.seconds, large.seconds
    end = int(state.length.max())
    out = state.seq[:, :end].clone()
    out[torch.arange(end, device=device) >= state.length.unsqueeze(1)] = pad_token_id
    return out, stats

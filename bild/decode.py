"""The BiLD decode loop. `bild.hf.bild_generate` runs it as a transformers `custom_generate`.

One round, for every unfinished row at once:
    draft (small, autoregressive) -> fallback? -> verify (large, one pass) -> rollback? -> commit
Rows keep their own committed length; each model's adapter feeds it exactly the tokens it has not
seen. A chooser (`bild.choosers`: greedy or sampling) picks drafts and judges them; the loop is the
same for both. See docs/decoding.md for the contract this implements.

Where things live: tokens, drafts, scores and the per-row counters stay on the device; every row's
committed length, draft count and done flag are mirrored on the host (numpy), so shapes, masks and
crops never wait for the device. The loop reads the device once per draft step (which rows keep
drafting) and once per round (what was committed); see docs/decoding.md, "Host reads".

Shapes: B = rows, S = token buffer length, K = drafts per row (padded), V = vocabulary.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from transformers import LogitsProcessorList, StoppingCriteriaList
from transformers.generation.logits_process import (
    EpsilonLogitsWarper, EtaLogitsWarper, InfNanRemoveLogitsProcessor, LogitNormalization, MinPLogitsWarper,
    SuppressTokensLogitsProcessor, TemperatureLogitsWarper, TopHLogitsWarper, TopKLogitsWarper, TopPLogitsWarper,
    TypicalLogitsWarper,
)
from transformers.generation.stopping_criteria import EosTokenCriteria, MaxLengthCriteria
from transformers.utils import ModelOutput

from .acceptance import AcceptanceTracker, AutoRound, CostClock
from .adapters import ModelAdapter, to_device
from .choosers import Chooser
from .config import ALWAYS_FALLBACK, AUTO, BiLDConfig
from .policy import confidence_bins, drafting_pays, fallback_mask, first_true_index
from .row_processors import for_rows
from .scores import ScoreRecorder, StepOutputs
from .stats import BiLDStats, RowCounters

#: Processors that read only the scores, never the prefix: one call serves rows of any prefix length.
PREFIX_FREE = (
    TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper, MinPLogitsWarper, TypicalLogitsWarper,
    EpsilonLogitsWarper, EtaLogitsWarper, TopHLogitsWarper, InfNanRemoveLogitsProcessor, LogitNormalization,
    SuppressTokensLogitsProcessor,
)


@dataclass
class BiLDOutput(ModelOutput):
    """What `generate(..., return_dict_in_generate=True)` returns with BiLD."""

    sequences: torch.LongTensor | None = None
    scores: tuple[torch.FloatTensor, ...] | None = None  # output_scores: the large model's processed logits per new token
    logits: tuple[torch.FloatTensor, ...] | None = None  # output_logits: its raw logits per new token
    small_scores: tuple[torch.FloatTensor, ...] | None = None  # output_scores: the small model's, NaN where it did not score
    stats: BiLDStats | None = None


@dataclass
class Rows:
    """The committed state of every row: one token buffer on the device, lengths and flags on the host."""

    seq: torch.Tensor  # (B, S) device: prompt (as given, padding included) + generated + pending drafts
    unsure: torch.Tensor  # (B, S) device: True at kept fallback drafts (checked exactly)
    n_pad: np.ndarray  # (B,) host: left padding
    length: np.ndarray  # (B,) host: committed tokens, padding included
    done: np.ndarray  # (B,) host bool


def _grouped_by_length(prefix_lens: np.ndarray):
    """Yield (host selector, length) so that entries sharing a prefix length are handled in one call."""
    for length in np.unique(prefix_lens).tolist():
        yield np.flatnonzero(prefix_lens == length), length


def process(processors: LogitsProcessorList, seq: torch.Tensor, rows: np.ndarray, prefix_lens: np.ndarray,
            scores: torch.Tensor) -> torch.Tensor:
    """Apply the logits processors to scores (n, V), entry i with the prefix seq[rows[i], :prefix_lens[i]]."""
    if not processors:
        return scores
    if all(type(p) in PREFIX_FREE for p in processors):  # temperature, top-k, top-p, ...: one batched call
        return processors(seq[to_device(rows, seq.device), : int(prefix_lens.min())], scores)
    out = torch.empty_like(scores)
    for sel, length in _grouped_by_length(prefix_lens):
        sel_d = to_device(sel, scores.device)
        out[sel_d] = for_rows(processors, rows[sel].tolist())(seq[to_device(rows[sel], seq.device), :length], scores[sel_d])
    return out


@dataclass
class Stopping:
    """The stopping criteria, evaluated on many (row, prefix length) pairs at once.

    EOS and the length limit are tensor operations; any other criterion (stop strings, a user's own) is
    called once per distinct prefix length, as transformers would call it after each token."""

    eos: torch.Tensor | None  # token ids that end a row
    max_length: int | None  # a prefix this long stops
    others: StoppingCriteriaList

    @classmethod
    def of(cls, criteria: StoppingCriteriaList, device) -> "Stopping":
        eos, max_length, others = [], None, StoppingCriteriaList()
        for c in criteria or ():
            if type(c) is EosTokenCriteria:
                eos.append(c.eos_token_id.to(device).flatten())
            elif type(c) is MaxLengthCriteria:
                max_length = c.max_length if max_length is None else min(max_length, c.max_length)
            else:
                others.append(c)
        return cls(torch.cat(eos) if eos else None, max_length, others)

    def hits(self, seq: torch.Tensor, rows: np.ndarray, prefix_lens: np.ndarray) -> torch.Tensor:
        """(n,) device bool: whether the criteria fire on seq[rows[i], :prefix_lens[i]] (host arrays)."""
        out = torch.zeros(len(rows), dtype=torch.bool, device=seq.device)
        if self.max_length is not None:
            out |= to_device(prefix_lens >= self.max_length, seq.device)
        if self.eos is not None:
            last = seq[to_device(rows, seq.device), to_device(np.maximum(prefix_lens - 1, 0), seq.device)]
            out |= torch.isin(last, self.eos)
        for sel, length in _grouped_by_length(prefix_lens) if self.others else ():
            sel_d = to_device(sel, seq.device)
            out[sel_d] |= self.others(seq[to_device(rows[sel], seq.device), :length], None).to(seq.device)
        return out


def falls_back(max_p, chain, rows_d, cfg: BiLDConfig, counts: RowCounters, auto: AutoRound | None = None):
    """One draft step's fallback decision for rows_d, counted, and (with auto) the drafts' confidence bins (else
    None): chain holds the round's product, of max probabilities for fallback_rule "round", of estimated
    acceptances for "auto". Shared by both loops (`bild.cross_decode` too)."""
    bins = None
    if auto is not None:
        bins = confidence_bins(max_p, auto.edges)
        chain[rows_d] *= auto.table[rows_d, bins]
        fell_back = chain[rows_d] < auto.level[rows_d]
    else:
        if chain is not None:
            chain[rows_d] *= max_p.float()
            max_p = chain[rows_d]
        fell_back = fallback_mask(max_p, cfg.fallback_threshold)
    counts.add("small_forward_calls", rows_d, 1)
    counts.add("fallbacks", rows_d, fell_back)
    return fell_back, bins


def draft(small: ModelAdapter, state: Rows, choose: Chooser, processors, stopping: Stopping, cfg: BiLDConfig,
          counts: RowCounters, allowed: np.ndarray, small_steps: np.ndarray, auto: AutoRound | None = None,
          recorder: ScoreRecorder | None = None) -> np.ndarray:
    """Small model drafts up to N tokens per active row into state.seq after each row's length; returns k (B,) host.

    allowed (B,) host or None (all): rows that draft this round (the others get k = 0: a plain large-model step); small_steps
    (B,) host: each drafting row's count is raised by its small steps. auto (fallback_threshold "auto"): the
    round's acceptance table and bar; the steps write each draft's confidence bin into auto.bins. One host read
    per step: which rows fell back and which stop drafting (and, with auto, the drafts' bins). recorder: keeps each
    step's processed scores when the small model's scores are asked for."""
    active = ~state.done
    k = np.zeros_like(state.length)
    device = state.seq.device
    if cfg.fallback_threshold == ALWAYS_FALLBACK:
        counts.add("fallbacks", to_device(np.flatnonzero(active), device), 1)
        return k
    drafting = active.copy() if allowed is None else active & allowed
    if not drafting.any():
        return k
    one = np.ones_like(k)
    # fallback_rule "round": the product of the round's max probabilities so far, per row (device); auto: the
    # product of their estimated acceptance.
    chain = torch.ones(len(k), device=device) if cfg.fallback_rule == "round" or auto is not None else None
    for step in range(cfg.max_small_steps):  # every drafting row has exactly `step` drafts
        upto = state.length + k
        logits = small.feed(state.seq, state.n_pad, upto, drafting, one)[:, 0]  # (B, V)
        counts.batch_small_calls += 1
        rows = np.flatnonzero(drafting)
        small_steps[rows] += 1
        rows_d, at = to_device(rows, device), to_device(upto[rows], device)
        scores = process(processors, state.seq, rows, upto[rows], logits[rows_d])
        max_p, token = choose.propose(scores, rows_d, step)
        if recorder is not None:
            recorder.small_step(rows, step, scores)
        fell_back, bins = falls_back(max_p, chain, rows_d, cfg, counts, auto)
        # Written for every row: a fallback token that is not kept lies past the row's drafts (scratch).
        state.seq[rows_d, at] = token
        if cfg.keeps_fallback_draft:
            state.unsure[rows_d, at] = fell_back
            counts.add("drafted_tokens", rows_d, 1)
        else:
            counts.add("drafted_tokens", rows_d, ~fell_back)
        finished = fell_back | stopping.hits(state.seq, rows, upto[rows] + 1)
        if auto is None:
            fell_back_h, finished_h = np.array(torch.stack([fell_back, finished]).tolist())  # the step's host read
        else:
            fell_back_h, finished_h, auto.bins[rows, step] = np.array(torch.stack([fell_back, finished, bins]).tolist())
        fell_back_h, finished_h = fell_back_h.astype(bool), finished_h.astype(bool)
        k[rows] += 1 if cfg.keeps_fallback_draft else ~fell_back_h
        drafting[:] = False
        if step + 1 < cfg.max_small_steps:
            drafting[rows[~finished_h]] = True
        if not drafting.any():
            break
    return k


def verify(large: ModelAdapter, state: Rows, k: np.ndarray, choose: Chooser, processors, counts: RowCounters):
    """One large forward over every unseen token; returns accepted drafts (B,), the new token (B,), and the processed
    scores and raw logits (B, K+1, V) it judged them by, on the device."""
    active = ~state.done
    device = state.seq.device
    logits = large.feed(state.seq, state.n_pad, state.length + k, active, k + 1)  # (B, K+1, V)
    counts.batch_large_calls += 1
    width = logits.shape[1]
    scores = logits
    if processors:  # each (row, position) with its own prefix: seq[row, :length + position]
        rows, j = np.nonzero((np.arange(width) <= k[:, None]) & active[:, None])
        rows_d, j_d = to_device(rows, device), to_device(j, device)
        scores = torch.full_like(logits, float("-inf"))
        scores[rows_d, j_d] = process(processors, state.seq, rows, state.length[rows] + j, logits[rows_d, j_d])
    draft_index = to_device(np.minimum(state.length[:, None] + np.arange(width - 1), state.seq.shape[1] - 1), device)
    drafts = state.seq.gather(1, draft_index)  # (B, K)
    accepted, new_token = choose.judge(scores, drafts, to_device(k, device), to_device(active, device),
                                       state.unsure.gather(1, draft_index))
    counts.add("large_forward_calls", to_device(np.flatnonzero(active), device), 1)
    return accepted, new_token, scores, logits


def commit(state: Rows, k: np.ndarray, accepted, new_token, stopping: Stopping, max_length: int,
           counts: RowCounters) -> np.ndarray:
    """Write accepted drafts + the large model's token, cut at the first stop; mark finished rows.

    Every candidate prefix of every row is checked at once. One host read: the new lengths, done flags
    and accepted counts. Returns the accepted drafts per row (host)."""
    device = state.seq.device
    rows = np.flatnonzero(~state.done)
    rows_d = to_device(rows, device)
    start_h = state.length[rows]
    start, a, n = to_device(start_h, device), accepted[rows_d], to_device(k[rows], device)
    state.seq[rows_d, start + a] = new_token[rows_d]
    W = int(k[rows].max()) + 1  # candidates: a accepted drafts and the large model's token, a <= k
    t = np.arange(1, W + 1)  # candidate prefix lengths start + t
    hit = stopping.hits(state.seq, np.repeat(rows, W), (start_h[:, None] + t).reshape(-1)).view(len(rows), W)
    hit &= to_device(t, device) <= (a + 1).unsqueeze(1)
    t_stop = first_true_index(hit, torch.full_like(a, W)) + 1  # W + 1: no criterion fired
    limit = torch.minimum(a + 1, max_length - start)
    m = torch.minimum(limit, t_stop)
    done = (t_stop <= limit) | (start + m >= max_length)
    counts.add("accepted_drafts", rows_d, torch.minimum(m, a))
    counts.add("rollbacks", rows_d, a < n)
    counts.add("corrections", rows_d, (m > a) & (a < n))
    counts.add("bonus_tokens", rows_d, (m > a) & (a >= n))
    length_h, done_h, accepted_h = np.array(torch.stack([start + m, done.long(), a]).tolist())  # the round's host read
    state.length[rows] = length_h
    state.done[rows] |= done_h.astype(bool)
    out = np.zeros_like(state.length)
    out[rows] = accepted_h
    return out


def decode(small: ModelAdapter, large: ModelAdapter, prompt, prompt_valid, processors, criteria, choose: Chooser,
           cfg: BiLDConfig, max_length: int, pad_token_id: int, streamer=None,
           cost_ratio: float | None = None, record: tuple[str, ...] = ()) -> tuple[torch.Tensor, BiLDStats, StepOutputs | None]:
    """Generate for a batch of (left-padded) prompts (B, P); returns sequences (B, <= max_length), stats, and the
    per-token values named in `record` ("scores", "logits", "small_scores"; see bild.scores), or None.

    streamer (batch 1): gets the prompt, then each round's committed tokens once verified, then end(),
    as transformers' own loops feed it. cost_ratio: a small step's cost in large steps, for the drafting
    guard (cfg.drafting_guard; None: every row drafts every round) and, with fallback_threshold "auto", the
    estimate used until the call has measured its own (cfg.cost_ratio None) or the fixed value (cfg.cost_ratio).
    """
    B, P = prompt.shape
    device = prompt.device
    S = max(max_length, P) + cfg.max_small_steps + 1
    seq = torch.full((B, S), pad_token_id, dtype=torch.long, device=device)
    seq[:, :P] = prompt
    n_pad = np.array((~prompt_valid).sum(1).tolist(), dtype=np.int64)  # left padding (checked to be left)
    state = Rows(seq, torch.zeros(B, S, dtype=torch.bool, device=device), n_pad, np.full(B, P, dtype=np.int64),
                 np.zeros(B, dtype=bool))
    state.done |= state.length >= max_length
    stopping = Stopping.of(criteria, device)
    counts = RowCounters(B, device)
    if streamer is not None:
        streamer.put(prompt.cpu())
    rounds, small_steps = np.zeros(B, dtype=np.int64), np.zeros(B, dtype=np.int64)  # host, per row
    guard = cfg.drafting_guard and cost_ratio is not None
    tracker = None
    if cfg.fallback_threshold == AUTO:
        clock = CostClock(cfg.cost_ratio or cost_ratio or 1.0, measure=cfg.cost_ratio is None)
        tracker = AcceptanceTracker(B, cfg.max_small_steps, clock)
    recorder = ScoreRecorder(record, P) if record else None
    start = time.perf_counter()
    while not state.done.all():
        before = state.length.copy()
        allowed = drafting_pays(rounds, small_steps, before - P, cost_ratio) if guard else None
        auto = tracker.round(rounds, small_steps, before - P, device) if tracker is not None else None
        if auto is not None:
            allowed = auto.allowed if allowed is None else allowed & auto.allowed
        rounds += ~state.done
        t0, steps0 = time.perf_counter(), counts.batch_small_calls
        k = draft(small, state, choose, processors, stopping, cfg, counts, allowed, small_steps, auto, recorder)
        t1 = time.perf_counter()
        accepted, new_token, scores, logits = verify(large, state, k, choose, processors, counts)
        accepted = commit(state, k, accepted, new_token, stopping, max_length, counts)
        if recorder is not None:
            recorder.commit(before, state.length - before, scores, logits)
        if streamer is not None:
            streamer.put(state.seq[0, int(before[0]) : int(state.length[0])].cpu())
        # Both caches keep exactly the committed prefix they have seen: old length + accepted drafts.
        keep = before + accepted
        small.rollback_to(keep)
        large.rollback_to(keep)
        if tracker is not None:
            tracker.learn(auto, k, accepted)
            tracker.cost.add_round(t1 - t0, counts.batch_small_calls - steps0, time.perf_counter() - t1, int(k.max()))
    loop_seconds = time.perf_counter() - start
    stats = counts.stats()  # the counters' one host read
    stats.loop_seconds = loop_seconds
    if streamer is not None:
        streamer.end()
    stats.forward_seconds = small.seconds + large.seconds
    stats.small_forward_seconds, stats.large_forward_seconds = small.seconds, large.seconds
    end = int(state.length.max())
    out = state.seq[:, :end].clone()
    out.masked_fill_(torch.arange(end, device=device) >= to_device(state.length, device).unsqueeze(1), pad_token_id)
    return out, stats, recorder.assemble(B, end - P) if recorder is not None else None

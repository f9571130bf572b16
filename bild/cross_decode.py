"""The BiLD loop for a pair whose tokenizers differ: the small model drafts in its own vocabulary, the large model
judges large-model tokens, and `bild.bridge.TokenBridge` carries the text between them. Sampling drafts from the
two vocabularies' shared tokens instead (`SharedVocabulary`), so that each draft's probability is known.

One round, for every unfinished row at once:
    small drafts (its tokens, until a fallback, its EOS or N steps) -> draft text -> proposals (large tokens,
    `TokenBridge.proposals`) -> verify and commit (`bild.decode.verify` / `commit`, as for a shared vocabulary)
    -> the small side re-synced to the committed text (re-encoded whole; its cache kept up to the first token
    that changed).
The large side is exactly the shared-vocabulary loop's (the same buffer, verify, rollback rule, stopping and
commit), so rollback 0 returns the large model's greedy output whatever the small model drafted.

fallback_threshold="auto" decides each round as on the shared path (`bild.acceptance`): a draft step goes on while
the estimated chance that the round's drafts so far are all accepted stays above the row's bar, and a row whose
drafts stop paying takes plain large-model steps. Its estimates are kept per small draft: a round's small drafts
count as accepted in the share of their large proposals the large model accepted (all of them where every
proposal was; the exact count needs each proposal's source draft, which re-encoded text does not give), and a draft
is priced as a small step plus what a proposal adds to the large pass. Drafts are
counted in large tokens (`drafted_tokens`); `BiLDStats.small_drafted_tokens` says how many small tokens (kept
draft steps) produced them. A kept fallback draft makes the proposals that need its text exact-checked, as on
the shared path, and so is a last proposal that more text could still change.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from .acceptance import AcceptanceTracker, AutoRound, CostClock
from .adapters import ModelAdapter, to_device
from .bridge import SharedVocabulary, TokenBridge
from .config import ALWAYS_FALLBACK, AUTO, BiLDConfig
from .decode import Rows, Stopping, commit, falls_back, process, verify
from .policy import max_prob_and_argmax
from .scores import ScoreRecorder, StepOutputs
from .stats import BiLDStats, RowCounters

#: At most this many large tokens are proposed per round, in units of max_small_steps.
PROPOSALS_PER_DRAFT_STEP = 2


class SmallSide:
    """The small model's own token buffer: left-padded prompts, then the committed text's small tokens, then drafts.

    Host mirrors: each row's committed small tokens (`generated`) and length; the adapter keeps its cache."""

    def __init__(self, adapter: ModelAdapter, prompts: list[list[int]], pad: int, eos: set[int], room: int, device,
                 limit: int | None):
        W = max(len(p) for p in prompts)
        self.adapter, self.pad, self.eos, self.room, self.device, self.limit = adapter, pad, eos, room, device, limit
        self.P = W
        self.n_pad = np.array([W - len(p) for p in prompts], dtype=np.int64)
        self.seq = torch.full((len(prompts), W + room), pad, dtype=torch.long, device=device)
        for r, p in enumerate(prompts):
            self.seq[r, W - len(p):W] = torch.tensor(p, dtype=torch.long)
        self.prompts = [list(p) for p in prompts]
        self.generated: list[list[int]] = [[] for _ in prompts]
        self.length = np.full(len(prompts), W, dtype=np.int64)

    def fits(self, extra: np.ndarray | int = 0) -> np.ndarray:
        """(B,) host: rows whose next draft (after `extra` drafts) stays within the small model's positions."""
        if self.limit is None:
            return np.ones(len(self.length), dtype=bool)
        return self.length + extra - self.n_pad + 1 <= self.limit

    def resync(self, rows: list[int], tokens: list[list[int]]) -> None:
        """Rows `rows` now hold `tokens` (the small tokens of their committed text). Each cache keeps its slots up to
        the first token that changed, and the last token stays unseen (the next draft step feeds it); every other
        row's drafts are forgotten."""
        need = self.P + max((len(t) for t in tokens), default=0) + self.room
        if need > self.seq.shape[1]:
            grown = torch.full((self.seq.shape[0], need), self.pad, dtype=torch.long, device=self.device)
            grown[:, : self.seq.shape[1]] = self.seq
            self.seq = grown
        keep = self.length - 1
        for r, new in zip(rows, tokens):
            old, c = self.generated[r], 0
            while c < min(len(old), len(new)) and old[c] == new[c]:
                c += 1
            if len(new) > c:
                self.seq[r, self.P + c: self.P + len(new)] = torch.tensor(new[c:], dtype=torch.long)
            self.generated[r] = new
            self.length[r] = self.P + len(new)
            keep[r] = min(self.P + c, self.length[r] - 1)
        self.adapter.rollback_to(keep)


def decode_across(small: ModelAdapter, large: ModelAdapter, bridge: TokenBridge, prompt, prompt_valid,
                  small_prompts: list[list[int]], small_pad: int, processors, criteria, choose, cfg: BiLDConfig,
                  max_length: int, pad_token_id: int, streamer=None, record: tuple[str, ...] = (),
                  small_limit: int | None = None, shared: SharedVocabulary | None = None,
                  cost_ratio: float | None = None):
    """Generate for left-padded prompts (B, P) in large tokens while the small model reads `small_prompts`; returns
    (sequences, stats, per-token values) as `bild.decode.decode` does. small_limit: the small model's positions
    (a row stops drafting before its small tokens reach it). shared (sampling): the two vocabularies' common
    tokens; the small model then drafts only those, and its drafts are the proposals (see `SharedVocabulary`).
    cost_ratio: a small step in large steps, "auto"'s estimate until the call has measured its own (as in
    `bild.decode.decode`)."""
    B, P = prompt.shape
    device = prompt.device
    cap = PROPOSALS_PER_DRAFT_STEP * cfg.max_small_steps
    S = max(max_length, P) + cap + 1
    seq = torch.full((B, S), pad_token_id, dtype=torch.long, device=device)
    seq[:, :P] = prompt
    n_pad = np.array((~prompt_valid).sum(1).tolist(), dtype=np.int64)
    state = Rows(seq, torch.zeros(B, S, dtype=torch.bool, device=device), n_pad, np.full(B, P, dtype=np.int64),
                 np.zeros(B, dtype=bool))
    state.done |= state.length >= max_length
    stopping = Stopping.of(criteria, device)
    counts = RowCounters(B, device)
    side = SmallSide(small, small_prompts, small_pad, bridge.small_eos, cfg.max_small_steps + 1, device, small_limit)
    # host: each row's large tokens, prompt (without padding) and generated, and how many of them are generated
    context = [row[int(n_pad[r]):] for r, row in enumerate(prompt.tolist())]
    n_generated = np.zeros(B, dtype=np.int64)
    small_drafted = np.zeros(B, dtype=np.int64)
    recorder = ScoreRecorder(record, P) if record else None
    rounds, small_steps = np.zeros(B, dtype=np.int64), np.zeros(B, dtype=np.int64)  # host, per row
    tracker = None
    if cfg.fallback_threshold == AUTO:
        clock = CostClock(cfg.cost_ratio or cost_ratio or 1.0, measure=cfg.cost_ratio is None)
        tracker = AcceptanceTracker(B, cfg.max_small_steps, clock)
    if streamer is not None:
        streamer.put(prompt.cpu())
    start = time.perf_counter()
    while not state.done.all():
        before = state.length.copy()
        live = np.flatnonzero(~state.done)
        auto = tracker.round(rounds, small_steps, n_generated, device) if tracker is not None else None
        rounds += ~state.done
        t0, steps0 = time.perf_counter(), counts.batch_small_calls
        used = np.zeros(B, dtype=np.int64)  # small drafts behind each row's proposals
        if shared is not None:
            k = _draft_shared(side, state, shared, choose, processors, stopping, cfg, counts, auto, small_steps)
            small_drafted += k
            used[:] = k
            drafts = []
        else:
            drafts, fell, ended = _draft(side, ~state.done, cfg, counts, auto, small_steps)
            k = np.zeros(B, dtype=np.int64)
        t1 = time.perf_counter()  # the round's own cost from here on: proposals, verify, commit, re-sync
        for r in live.tolist() if shared is None else ():
            ids, exact, n_used = bridge.round_proposals(side.prompts[r] + side.generated[r], context[r], drafts[r], fell[r],
                                                      ended[r], cfg.keeps_fallback_draft)
            ids = ids[: min(cap, max_length - int(state.length[r]))]
            if ids:
                at = int(state.length[r])
                state.seq[r, at: at + len(ids)] = torch.tensor(ids, dtype=torch.long)
                state.unsure[r, at: at + len(ids)] = torch.tensor(exact[: len(ids)], dtype=torch.bool)
            k[r] = len(ids)
            used[r] = n_used
            small_drafted[r] += n_used
        live_d = to_device(live, device)
        counts.add("drafted_tokens", live_d, to_device(k[live], device))
        accepted, new_token, scores, logits = verify(large, state, k, choose, processors, counts)
        accepted = commit(state, k, accepted, new_token, stopping, max_length, counts)
        if tracker is not None:
            judged = np.where(k > 0, used, 0)  # drafts whose text made no proposal were never judged
            tracker.learn(auto, judged, accepted_drafts(judged, k, accepted))
        if recorder is not None:
            recorder.commit(before, state.length - before, scores, logits)
        lo, hi = int(before[live].min()), int(state.length[live].max())
        block = state.seq[live_d, lo:hi].tolist()  # the round's committed tokens, for the text (one host read)
        for i, r in enumerate(live.tolist()):
            context[r].extend(block[i][before[r] - lo: state.length[r] - lo])
            n_generated[r] += state.length[r] - before[r]
        if streamer is not None:
            streamer.put(state.seq[0, int(before[0]): int(state.length[0])].cpu())
        large.rollback_to(before + accepted)
        resync = [r for r in np.flatnonzero(~state.done & side.fits()).tolist()]
        side.resync(resync, [bridge.small_tokens(context[r], int(n_generated[r])) for r in resync])
        if tracker is not None:
            tracker.cost.add_round(t1 - t0, counts.batch_small_calls - steps0, time.perf_counter() - t1, int(k.max()))
    loop_seconds = time.perf_counter() - start
    stats = counts.stats()
    stats.loop_seconds = loop_seconds
    stats.forward_seconds = small.seconds + large.seconds
    stats.small_forward_seconds, stats.large_forward_seconds = small.seconds, large.seconds
    stats.small_drafted_tokens = small_drafted.tolist()
    stats.tokenizers = "bridged"
    if streamer is not None:
        streamer.end()
    end = int(state.length.max())
    out = state.seq[:, :end].clone()
    out.masked_fill_(torch.arange(end, device=device) >= to_device(state.length, device).unsqueeze(1), pad_token_id)
    steps: StepOutputs | None = recorder.assemble(B, end - P) if recorder is not None else None
    return out, stats, steps


def accepted_drafts(used: np.ndarray, proposals: np.ndarray, accepted: np.ndarray) -> np.ndarray:
    """Pure, (B,) host: how many of a round's `used` small drafts count as accepted when the large model accepted
    `accepted` of the `proposals` large tokens made from them: all where every proposal was, else the same share
    (rounded down, so a rejected proposal always counts against a draft)."""
    share = np.where(proposals > 0, np.minimum(accepted, proposals) / np.maximum(proposals, 1), 0.0)
    return np.where(accepted >= proposals, used, np.minimum(np.floor(share * used), np.maximum(used - 1, 0))).astype(np.int64)


def _draft(side: SmallSide, active: np.ndarray, cfg: BiLDConfig, counts: RowCounters, auto: AutoRound | None = None,
           small_steps: np.ndarray | None = None):
    """The small model's draft steps for the active rows, in its own tokens; returns per row (host) the drafted
    tokens, whether the last one fell back, and whether it is one of the small model's end-of-sequence tokens.
    auto ("auto"): the round's acceptance table and bar (rows it does not allow take a plain large step); the steps
    write each draft's confidence bin into auto.bins and count themselves in small_steps. One host read per step."""
    B = len(active)
    drafts: list[list[int]] = [[] for _ in range(B)]
    fell, ended = np.zeros(B, dtype=bool), np.zeros(B, dtype=bool)
    device = side.device
    drafting = active & side.fits() & (auto.allowed if auto is not None else True)
    if cfg.fallback_threshold == ALWAYS_FALLBACK or not drafting.any():
        counts.add("fallbacks", to_device(np.flatnonzero(active), device), 1)
        return drafts, fell, ended
    chain = torch.ones(B, device=device) if cfg.fallback_rule == "round" or auto is not None else None
    one = np.ones(B, dtype=np.int64)
    k = np.zeros(B, dtype=np.int64)
    for step in range(cfg.max_small_steps):
        upto = side.length + k
        logits = side.adapter.feed(side.seq, side.n_pad, upto, drafting, one)[:, 0]
        counts.batch_small_calls += 1
        rows = np.flatnonzero(drafting)
        rows_d = to_device(rows, device)
        max_p, token = max_prob_and_argmax(logits[rows_d])
        fell_back, bins = falls_back(max_p, chain, rows_d, cfg, counts, auto)
        side.seq[rows_d, to_device(upto[rows], device)] = token
        if auto is None:
            token_h, fell_h = torch.stack([token, fell_back.long()]).tolist()  # the step's host read
        else:
            token_h, fell_h, auto.bins[rows, step] = torch.stack([token, fell_back.long(), bins]).tolist()
            small_steps[rows] += 1
        k[rows] += 1
        drafting[:] = False
        for r, t, f in zip(rows.tolist(), token_h, fell_h):
            drafts[r].append(t)
            fell[r], ended[r] = bool(f), t in side.eos
            drafting[r] = not (fell[r] or ended[r]) and step + 1 < cfg.max_small_steps
        drafting &= side.fits(k)
        if not drafting.any():
            break
    return drafts, fell, ended



def _draft_shared(side: SmallSide, state: Rows, shared: SharedVocabulary, choose, processors, stopping: Stopping,
                  cfg: BiLDConfig, counts: RowCounters, auto: AutoRound | None = None,
                  small_steps: np.ndarray | None = None) -> np.ndarray:
    """Sampling: the small model drafts shared tokens (drawn from q by `choose`, the Sampler) into both buffers, as
    `bild.decode.draft` does with one vocabulary (large processors on the large prefix, the same fallback rules,
    "auto" included, the same stopping); returns the drafts per row (B,), host. One host read per step."""
    active = ~state.done
    B = len(active)
    k = np.zeros(B, dtype=np.int64)
    device = side.device
    drafting = active & side.fits() & (auto.allowed if auto is not None else True)
    if cfg.fallback_threshold == ALWAYS_FALLBACK or not drafting.any():
        counts.add("fallbacks", to_device(np.flatnonzero(active), device), 1)
        return k
    chain = torch.ones(B, device=device) if cfg.fallback_rule == "round" or auto is not None else None
    one = np.ones(B, dtype=np.int64)
    steps = np.zeros(B, dtype=np.int64)  # small steps this round (a dropped fallback draft is one, not a draft)
    for step in range(cfg.max_small_steps):
        upto_small = side.length + steps
        logits = side.adapter.feed(side.seq, side.n_pad, upto_small, drafting, one)[:, 0]
        counts.batch_small_calls += 1
        rows = np.flatnonzero(drafting)
        rows_d = to_device(rows, device)
        at = state.length[rows] + k[rows]
        at_d = to_device(at, device)
        scores = process(processors, state.seq, rows, at, shared.scores(logits[rows_d]))
        max_p, token = choose.propose(scores, rows_d, step)
        fell_back, bins = falls_back(max_p, chain, rows_d, cfg, counts, auto)
        state.seq[rows_d, at_d] = token
        side.seq[rows_d, to_device(upto_small[rows], device)] = shared.to_small[token]
        if cfg.keeps_fallback_draft:
            state.unsure[rows_d, at_d] = fell_back
        finished = fell_back | stopping.hits(state.seq, rows, at + 1)
        if auto is None:
            fell_h, finished_h = np.array(torch.stack([fell_back, finished]).tolist(), dtype=bool)  # the step's host read
        else:
            fell_h, finished_h, auto.bins[rows, step] = np.array(torch.stack([fell_back, finished, bins]).tolist())
            fell_h, finished_h = fell_h.astype(bool), finished_h.astype(bool)
            small_steps[rows] += 1
        steps[rows] += 1
        k[rows] += 1 if cfg.keeps_fallback_draft else ~fell_h
        drafting[:] = False
        if step + 1 < cfg.max_small_steps:
            drafting[rows[~finished_h]] = True
        drafting &= side.fits(steps)
        if not drafting.any():
            break
    return k

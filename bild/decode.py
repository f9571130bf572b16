"""The BiLD decode loop, and `bild_generate`: the same loop as a transformers `custom_generate`.

One round, for every unfinished row at once:
    draft (small, autoregressive) -> fallback? -> verify (large, one pass) -> rollback? -> commit
Rows keep their own committed length; each model's adapter feeds it exactly the tokens it has not
seen. See docs/decoding.md for the contract this implements.

Shapes: B = rows, S = token buffer length, K = drafts per row (padded), V = vocabulary.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, LogitsProcessorList, PreTrainedModel, StoppingCriteriaList
from transformers.utils import ModelOutput

from .adapters import DecoderOnlyAdapter, EncoderDecoderAdapter, ModelAdapter, encode
from .config import ALWAYS_FALLBACK, BiLDConfig
from .policy import fallback_mask, first_rejection, max_prob_and_argmax, token_logprobs
from .stats import BiLDStats
from .validation import check_generation_config, check_left_padding, check_lengths, check_pair


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
        out[sel] = processors(seq[rows[sel], :length], scores[sel])
    return out


def stops(criteria: StoppingCriteriaList, seq: torch.Tensor, rows: torch.Tensor, prefix_lens: torch.Tensor) -> torch.Tensor:
    """(n,) bool: whether the stopping criteria fire on seq[rows[i], :prefix_lens[i]]."""
    out = torch.zeros(rows.shape[0], dtype=torch.bool, device=seq.device)
    if not criteria:
        return out
    for sel, length in _grouped_by_length(rows, prefix_lens):
        out[sel] = criteria(seq[rows[sel], :length], None).to(seq.device)
    return out


def draft(small: ModelAdapter, state: Rows, processors, criteria, cfg: BiLDConfig, stats: BiLDStats) -> torch.Tensor:
    """Small model drafts up to N tokens per active row into state.seq after each row's length; returns k (B,)."""
    active = ~state.done
    k = torch.zeros_like(state.length)
    if cfg.fallback_threshold == ALWAYS_FALLBACK:
        for r in active.nonzero().flatten().tolist():
            stats.add("fallbacks", r)
        return k
    drafting = active.clone()
    one = torch.ones_like(k)
    for _ in range(cfg.max_small_steps):
        upto = state.length + k
        logits = small.feed(state.seq, state.seq_valid, state.n_pad, upto, drafting, one)[:, 0]  # (B, V)
        stats.batch_small_calls += 1
        rows = drafting.nonzero().flatten()
        scores = process(processors, state.seq, rows, upto[rows], logits[rows])
        max_p, token = max_prob_and_argmax(scores)
        fell_back = fallback_mask(max_p, cfg.fallback_threshold)
        for r, fb in zip(rows.tolist(), fell_back.tolist()):
            stats.add("small_forward_calls", r)
            if fb:
                stats.add("fallbacks", r)
        keep = rows[~fell_back]
        state.seq[keep, upto[keep]] = token[~fell_back]
        k[keep] += 1
        for r in keep.tolist():
            stats.add("drafted_tokens", r)
        finished = (k[keep] >= cfg.max_small_steps) | stops(criteria, state.seq, keep, upto[keep] + 1)
        drafting[:] = False
        drafting[keep[~finished]] = True
        if not bool(drafting.any()):
            break
    return k


def verify(large: ModelAdapter, state: Rows, k: torch.Tensor, processors, cfg: BiLDConfig, stats: BiLDStats):
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
    large_argmax = scores.argmax(dim=-1)  # (B, K+1); positions past a row's k are never read
    K = width - 1
    draft_index = (state.length.unsqueeze(1) + torch.arange(K, device=k.device)).clamp(max=state.seq.shape[1] - 1)
    drafts = state.seq.gather(1, draft_index)  # (B, K)
    if cfg.rollback_threshold == 0.0:
        # Lossless mode: rejection is exactly "differs from the large argmax"; no log-softmax needed.
        logprobs = torch.where(drafts == large_argmax[:, :K], 0.0, -torch.inf)
    else:
        logprobs = token_logprobs(scores[:, :K], drafts)
    accepted = first_rejection(logprobs, drafts, large_argmax[:, :K], k, cfg.rollback_threshold)
    accepted = torch.where(active, accepted, 0)
    new_token = large_argmax.gather(1, accepted.unsqueeze(1)).squeeze(1)
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


def decode(small: ModelAdapter, large: ModelAdapter, prompt, prompt_valid, processors, criteria, cfg: BiLDConfig, max_length: int, pad_token_id: int) -> tuple[torch.Tensor, BiLDStats]:
    """Generate for a batch of (left-padded) prompts (B, P); returns sequences (B, <= max_length) and stats."""
    B, P = prompt.shape
    device = prompt.device
    S = max(max_length, P) + cfg.max_small_steps + 1
    seq = torch.full((B, S), pad_token_id, dtype=torch.long, device=device)
    seq[:, :P] = prompt
    seq_valid = torch.ones(B, S, dtype=torch.bool, device=device)
    seq_valid[:, :P] = prompt_valid
    state = Rows(seq, seq_valid, (~prompt_valid).sum(1), torch.full((B,), P, device=device), torch.zeros(B, dtype=torch.bool, device=device))
    state.done |= state.length >= max_length
    stats = BiLDStats.zeros(B)
    start = time.perf_counter()
    while not bool(state.done.all()):
        before = state.length.clone()
        k = draft(small, state, processors, criteria, cfg, stats)
        accepted, new_token = verify(large, state, k, processors, cfg, stats)
        commit(state, k, accepted, new_token, criteria, max_length, stats)
        # Both caches keep exactly the committed prefix they have seen: old length + accepted drafts.
        keep = before + accepted
        small.rollback_to(keep)
        large.rollback_to(keep)
    stats.loop_seconds = time.perf_counter() - start
    stats.forward_seconds = small.seconds + large.seconds
    end = int(state.length.max())
    out = state.seq[:, :end].clone()
    out[torch.arange(end, device=device) >= state.length.unsqueeze(1)] = pad_token_id
    return out, stats


_IGNORED_MODEL_KWARGS = {
    "attention_mask", "encoder_outputs", "position_ids", "cache", "past_key_values", "use_cache",
    "logits_to_keep", "cache_position", "decoder_attention_mask", "token_type_ids", "output_attentions",
    "output_hidden_states", "return_dict",
}


def _pad_token_id(config: GenerationConfig) -> int:
    for value in (config.pad_token_id, config.eos_token_id):
        if isinstance(value, list):
            value = value[0] if value else None
        if isinstance(value, torch.Tensor):
            value = int(value.flatten()[0])
        if value is not None:
            return int(value)
    return 0


def bild_generate(
    model: PreTrainedModel,
    input_ids: torch.LongTensor,
    logits_processor: LogitsProcessorList | None = None,
    stopping_criteria: StoppingCriteriaList | None = None,
    generation_config: GenerationConfig | None = None,
    small_model: PreTrainedModel | None = None,
    fallback_threshold: float = BiLDConfig.fallback_threshold,
    rollback_threshold: float = BiLDConfig.rollback_threshold,
    max_small_steps: int = BiLDConfig.max_small_steps,
    bild_config: BiLDConfig | None = None,
    small_tokenizer=None,
    large_tokenizer=None,
    bild_profile: bool = False,
    static_cache: bool = False,
    compile: bool | str = False,
    inputs_tensor: torch.Tensor | None = None,
    **model_kwargs,
):
    """Big Little Decoder as a transformers decoding strategy.

        large.generate(**inputs, custom_generate=bild_generate, small_model=small,
                       fallback_threshold=0.6, rollback_threshold=2.0, do_sample=False)

    transformers prepares the generation config, logits processors, stopping criteria and the large
    model's encoder outputs, then calls this with the large model as `model`.

    static_cache: preallocated KV caches (prompt + max_new_tokens + one draft window); a rollback
        moves a write pointer instead of cropping. Batch size 1 for decoder-only models.
    compile: implies static_cache; the one-token draft step and the fixed-width verify step run
        through `torch.compile` ("reduce-overhead", i.e. CUDA graphs, on a GPU). Drafts shorter
        than the window are padded to max_small_steps + 1 so shapes never change. True compiles
        both models; "small" or "large" only that one (the other runs eagerly on its static cache).
    bild_profile: synchronise the device around each forward so stats.forward_seconds is exact.
    """
    cfg = bild_config if bild_config is not None else BiLDConfig(fallback_threshold, rollback_threshold, max_small_steps)
    generation_config = generation_config if generation_config is not None else model.generation_config
    check_generation_config(generation_config)
    vocab = check_pair(small_model, model, small_tokenizer, large_tokenizer)
    unknown = sorted(k for k, v in model_kwargs.items() if v is not None and k not in _IGNORED_MODEL_KWARGS)
    if unknown:
        raise ValueError(f"BiLD does not support these model inputs yet: {unknown}. Pass input_ids and attention_mask only.")
    processors = logits_processor if logits_processor is not None else LogitsProcessorList()
    criteria = stopping_criteria if stopping_criteria is not None else StoppingCriteriaList()
    max_length = generation_config.max_length
    pad = _pad_token_id(generation_config)
    device = input_ids.device
    compiled = compile_roles(compile)
    fast = _fast_path_options(static_cache or bool(compiled), compiled, cfg, max_length, input_ids, model)

    if model.config.is_encoder_decoder:
        source_mask = model_kwargs.get("attention_mask")
        if inputs_tensor is None:
            raise ValueError("Encoder-decoder BiLD needs the source tokens: call generate(input_ids=..., attention_mask=...).")
        check_lengths({"small": small_model, "large": model}, inputs_tensor.shape[1])
        check_lengths({"small": small_model, "large": model}, input_ids.shape[1], max_length)
        small_enc = encode(small_model, inputs_tensor, source_mask)
        large_enc = model_kwargs["encoder_outputs"]
        outs, parts = [], []
        for r in range(input_ids.shape[0]):  # row by row: see EncoderDecoderAdapter
            mask_r = None if source_mask is None else source_mask[r : r + 1]
            small = EncoderDecoderAdapter(
                small_model, 1, device, vocab, **fast(small_model, "small"),
                encoder_outputs=_row(small_enc, r), encoder_mask=None if mask_r is None else mask_r.to(small_model.device),
            )
            large = EncoderDecoderAdapter(
                model, 1, device, **fast(model, "large"),
                encoder_outputs=_row(large_enc, r), encoder_mask=None if mask_r is None else mask_r.to(model.device),
            )
            for a in (small, large):
                a.sync = bild_profile
            seq, st = decode(small, large, input_ids[r : r + 1], torch.ones_like(input_ids[r : r + 1], dtype=torch.bool),
                             processors, criteria, cfg, max_length, pad)
            outs.append(seq)
            parts.append(st)
        width = max(o.shape[1] for o in outs) if outs else input_ids.shape[1]
        sequences = torch.full((len(outs), width), pad, dtype=torch.long, device=device)
        for r, o in enumerate(outs):
            sequences[r, : o.shape[1]] = o
        stats = BiLDStats.concat(parts)
    else:
        mask = model_kwargs.get("attention_mask")
        if input_ids.shape[1] == 0:
            raise ValueError("The prompt is empty: give at least one token (for example the tokenizer's BOS token).")
        check_left_padding(mask)
        check_lengths({"small": small_model, "large": model}, input_ids.shape[1], max_length)
        valid = torch.ones_like(input_ids, dtype=torch.bool) if mask is None else mask.to(device).bool()
        small = DecoderOnlyAdapter(small_model, input_ids.shape[0], device, vocab, **fast(small_model, "small"))
        large = DecoderOnlyAdapter(model, input_ids.shape[0], device, **fast(model, "large"))
        small.sync = large.sync = bild_profile
        sequences, stats = decode(small, large, input_ids, valid, processors, criteria, cfg, max_length, pad)
    if generation_config.return_dict_in_generate:
        return BiLDOutput(sequences=sequences, stats=stats)
    return sequences


def compile_roles(compile: bool | str) -> tuple[str, ...]:
    """Which models `compile` asks to compile: True both, "small" or "large" one, False none."""
    if compile is True:
        return ("small", "large")
    if compile is False or compile is None:
        return ()
    if compile in ("small", "large"):
        return (compile,)
    raise ValueError(f"compile must be True, False, 'small' or 'large', got {compile!r}.")


def _fast_path_options(static: bool, compiled: tuple[str, ...], cfg: BiLDConfig, max_length: int, input_ids, large):
    """Adapter options of the static-cache / compiled path, per model (a function of the model and its role)."""
    if not static:
        return lambda model, role: {}
    if not large.config.is_encoder_decoder and input_ids.shape[0] > 1:
        raise ValueError(
            "static_cache/compile support batch size 1 for decoder-only models (rows of a batch leave masked holes "
            "that a fixed-size cache cannot bound). Generate rows one at a time, or use the default dynamic cache."
        )
    window = cfg.max_small_steps + 1
    # Slots: the committed sequence, one draft window, and the padding of a fixed-width step; rounded
    # up to a multiple of 256 so prompts of different lengths share one cache shape (and compiled graph).
    length = -(-(max_length + 2 * window) // 256) * 256

    def pad_to(width: int) -> int | None:
        return None if width > window else (1 if width == 1 else window)

    def options(model, role: str):
        out = {"static_length": length}
        if role in compiled:
            mode = "reduce-overhead" if model.device.type == "cuda" else None
            # Dynamo caches graphs on the forward's code, so later calls reuse them.
            out.update(pad_to=pad_to, compiled_forward=torch.compile(model.forward, mode=mode, dynamic=False))
        return out

    return options


def _row(encoder_outputs, r: int):
    """Row r of an encoder output (keeps its ModelOutput type)."""
    out = encoder_outputs.__class__(**{k: v[r : r + 1] if isinstance(v, torch.Tensor) else v for k, v in encoder_outputs.items()})
    return out

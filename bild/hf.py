"""`bild_generate`: the BiLD loop as a transformers decoding strategy (`generate(custom_generate=...)`).

transformers prepares the generation config, the logits processors (for sampling, its warpers
too: temperature, top-k, top-p, min-p, typical), the stopping criteria, the expanded rows of
`num_return_sequences` and the large model's encoder outputs, then calls `bild_generate` with the
large model as `model`. Here: the request checks, one adapter pair per path (decoder-only: one
batch; encoder-decoder: row by row) and the static-cache / compiled options (`FastPath`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import GenerationConfig, LogitsProcessorList, PreTrainedModel, StoppingCriteriaList
from transformers.generation.stopping_criteria import StopStringCriteria

from .adapters import DecoderOnlyAdapter, EncoderDecoderAdapter, RightAlignedEncoderDecoderAdapter, encode
from .architecture import batches_encoder_decoder, needs_row_by_row, step_cost_ratio
from .bridge import TokenBridge
from .choosers import Greedy, Sampler
from .config import AUTO, BiLDConfig
from .costs import PairCosts
from .cross_decode import decode_across
from .decode import BiLDOutput, decode
from .plan import costs_for, draft_int8_rows, drafts_at_all, large_alone, pair_kernel_rows, warn_large_alone
from .row_processors import for_rows
from .scores import StepOutputs
from .stats import BiLDStats
from .validation import (
    bridges_tokenizers, check_bridged, check_generation_config, check_left_padding, check_lengths, check_pair,
    max_positions, output_vocab_size,
)

_IGNORED_MODEL_KWARGS = {
    "attention_mask", "encoder_outputs", "position_ids", "cache", "past_key_values", "use_cache",
    "logits_to_keep", "cache_position", "decoder_attention_mask", "token_type_ids", "output_attentions",
    "output_hidden_states", "return_dict",
}


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
    keep_fallback_draft: bool | None = BiLDConfig.keep_fallback_draft,
    fallback_rule: str = BiLDConfig.fallback_rule,
    drafting_guard: bool = BiLDConfig.drafting_guard,
    cost_ratio: float | None = BiLDConfig.cost_ratio,
    bild_config: BiLDConfig | None = None,
    small_tokenizer=None,
    large_tokenizer=None,
    bild_profile: bool = False,
    static_cache: bool = False,
    compile: bool | str = False,
    generator: torch.Generator | None = None,
    bild_streamer=None,
    stop_strings: str | list[str] | None = None,
    cost_model: PairCosts | None = None,
    cross_tokenizer: bool | None = None,
    weight_stationary: bool | None = None,
    draft_int8: bool | None = None,
    inputs_tensor: torch.Tensor | None = None,
    **model_kwargs,
):
    """Big Little Decoder as a transformers decoding strategy.

        large.generate(**inputs, custom_generate=bild_generate, small_model=small,
                       fallback_threshold=0.6, rollback_threshold=2.0)

    do_sample=True (e.g. from the model's own generation config) samples by speculative sampling
    (see the spec's "Sampling"); num_return_sequences > 1 then returns independent rows.

    generator: a `torch.Generator` for every random draw (default: torch's global one, like
        transformers' sampling, so `torch.manual_seed` makes runs reproducible).
    bild_streamer: a transformers streamer (TextStreamer, TextIteratorStreamer), batch 1; it gets the
        prompt, then each round's verified tokens, then `end()`. transformers does not hand its own
        `streamer=` to a custom_generate function (it only puts the prompt), hence the name.
    static_cache: preallocated KV caches (prompt + max_new_tokens + one draft window); a rollback
        moves a write pointer instead of cropping. A decoder-only batch shares one static cache per model:
        the slots of rejected drafts stay as masked holes, and when they fill the cache every row's slots are
        moved to the front in place. Encoder-decoder batches run row by row on this path.
    compile: implies static_cache; the one-token draft step and the fixed-width verify step run
        through `torch.compile` ("reduce-overhead", i.e. CUDA graphs, on a GPU). Drafts shorter
        than the window are padded to max_small_steps + 1 so shapes never change. True compiles
        both models; "small" or "large" only that one (the other runs eagerly on its static cache).
    fallback_threshold, fallback_rule, drafting_guard, cost_ratio: see `BiLDConfig` (fallback_threshold: "auto" by default, the measured rule; a number for the paper's; with two tokenizers too). A draft vocabulary goes in as the small model itself:
        `small_model=bild.restrict_draft_vocab(small, ids)`.
    stop_strings: end a row when its text ends with one of these, judged on verified tokens only (as
        `StopStringCriteria`), with `large_tokenizer` (or `small_tokenizer`): transformers does not hand its own
        `tokenizer=` to a custom_generate function. `BiLDGenerator.generate(..., stop_strings=...)` passes its own.
    output_scores / output_logits (generation config, with return_dict_in_generate): the large model's processed
        scores / raw logits per generated token, as `large.generate` returns them, and the small model's processed
        scores as `small_scores` (see `bild.scores`).
    cost_model: a `bild.costs.PairCosts` to decide from instead of measuring one (fallback_threshold "auto" measures
        the pair once per process and device when cost_ratio is None). Under "auto", where even every draft accepted
        cannot beat the large model alone (`PairCosts.drafting_can_pay`), or where the per-round rule would never
        draft at the cost per draft it starts from (`bild.plan.drafts_at_all`), the call is the large model's own
        loop and a warning says so; otherwise its draft cost seeds "auto"'s cost per draft. stats.costs holds it.
    small_tokenizer, large_tokenizer, cross_tokenizer: when both tokenizers are given and disagree (or
        cross_tokenizer=True), the pair decodes through `bild.bridge`: the small model drafts in its own vocabulary,
        its draft text is re-encoded into large-model tokens, and the large model judges those (rollback 0 is still
        exactly large greedy; sampling drafts from the tokens both vocabularies share, and stays exact).
        cross_tokenizer=False refuses differing tokenizers instead.
    weight_stationary: passes over 1-16 rows through `bild.kernels`' weight-stationary matmul form: None (default)
        for the row counts where the pair's measured cost model found it faster for that model (fallback_threshold
        "auto" measures one; fixed thresholds measure nothing, so plain F.linear), True always, False never.
    draft_int8: the small model's passes over 1-16 rows with its weights rounded to int8 per output channel
        (`bild.kernels`' int8 weight-only form; a copy of its weights kept for the process): None (default) where the
        measured cost model found it faster (fallback_threshold "auto"; fixed thresholds keep the small model as given),
        True always, False never. Only the drafts change: lossless BiLD is still the large model's greedy output.
    bild_profile: synchronise the device around each forward so stats.forward_seconds is exact.
    """
    cfg = bild_config if bild_config is not None else BiLDConfig(fallback_threshold, rollback_threshold, max_small_steps,
                                                                 keep_fallback_draft, fallback_rule, drafting_guard,
                                                                 cost_ratio)
    generation_config = generation_config if generation_config is not None else model.generation_config
    bridged = bridges_tokenizers(cross_tokenizer, small_tokenizer, large_tokenizer)
    vocab = check_request(model, small_model, input_ids, generation_config, small_tokenizer, large_tokenizer,
                          bild_streamer, model_kwargs, bridged)
    if bridged:
        check_bridged(generation_config, cfg, static_cache, compile)
    check_call_lengths(model, small_model, input_ids, inputs_tensor, generation_config.max_length, bridged)
    stopping_criteria = with_stop_strings(stopping_criteria, stop_strings, large_tokenizer, small_tokenizer)
    costs = costs_for(cfg, small_model, model, cost_model, draft_int8)
    kernel_rows = pair_kernel_rows(weight_stationary, costs)
    int8_rows = draft_int8_rows(draft_int8, costs)
    if not drafts_at_all(cfg, costs):  # under "auto", on either path: the large model alone where drafting cannot pay
        warn_large_alone(costs, cfg, small_model, model)
        return large_alone(model, input_ids, logits_processor if logits_processor is not None else LogitsProcessorList(),
                           stopping_criteria if stopping_criteria is not None else StoppingCriteriaList(),
                           generation_config, bild_streamer, model_kwargs, _pad_token_id(generation_config), costs, cfg,
                           kernel_rows["large"])
    fast = FastPath.build(static_cache, compile_roles(compile), cfg, generation_config.max_length, input_ids, model)
    run = Run(
        processors=logits_processor if logits_processor is not None else LogitsProcessorList(),
        criteria=stopping_criteria if stopping_criteria is not None else StoppingCriteriaList(),
        cfg=cfg, max_length=generation_config.max_length, pad=_pad_token_id(generation_config),
        sampling=bool(generation_config.do_sample), generator=generator, streamer=bild_streamer, profile=bild_profile,
        cost_ratio=costs.draft_cost_ratio(cfg.max_small_steps) if costs is not None else _cost_ratio(cfg, small_model, model),
        record=recorded_fields(generation_config), kernel_rows=kernel_rows, int8_rows=int8_rows,
    )
    if bridged:
        bridge = TokenBridge.of(small_tokenizer, large_tokenizer, small_model.generation_config.eos_token_id,
                                generation_config.eos_token_id)
        sequences, stats, steps = _bridged(model, small_model, bridge, input_ids, inputs_tensor, model_kwargs, run)
    elif model.config.is_encoder_decoder:
        sequences, stats, steps = _encoder_decoder(model, small_model, vocab, input_ids, inputs_tensor, model_kwargs, fast, run)
    else:
        sequences, stats, steps = _decoder_only(model, small_model, vocab, input_ids, model_kwargs.get("attention_mask"), fast,
                                                run)
    stats.costs = costs.to_dict() if costs is not None else None
    if generation_config.return_dict_in_generate:
        return BiLDOutput(sequences=sequences, stats=stats, **(steps.as_tuples() if steps is not None else {}))
    return sequences


def recorded_fields(generation_config: GenerationConfig) -> tuple[str, ...]:
    """What the decode loop keeps per token: output_scores -> scores (and the small model's), output_logits -> logits;
    nothing unless return_dict_in_generate, as transformers."""
    if not generation_config.return_dict_in_generate:
        return ()
    return (("scores", "small_scores") if generation_config.output_scores else ()) + \
        (("logits",) if generation_config.output_logits else ())


def with_stop_strings(criteria: StoppingCriteriaList | None, stop_strings, large_tokenizer, small_tokenizer):
    """The stopping criteria plus transformers' own StopStringCriteria for `stop_strings` (None: unchanged)."""
    if not stop_strings:
        return criteria
    tokenizer = large_tokenizer if large_tokenizer is not None else small_tokenizer
    if tokenizer is None:
        raise ValueError(
            "stop_strings need the tokenizer, and transformers does not pass `tokenizer=` on to a custom_generate "
            "function. Pass it as large_tokenizer=tok (large.generate(..., custom_generate=bild_generate, "
            "large_tokenizer=tok, stop_strings=...)), or use BiLDGenerator(small, large, tokenizer=tok).generate(...)."
        )
    out = StoppingCriteriaList(criteria or [])
    out.append(StopStringCriteria(tokenizer=tokenizer, stop_strings=stop_strings))
    return out


def check_call_lengths(large, small, input_ids, inputs_tensor, max_length: int, bridged: bool) -> None:
    """The prompt (and source) and the requested length against each model's positions, before anything is decided
    or generated, so that whether a call is refused never depends on measured costs (under "auto" the call may
    then run the large model alone). Bridged, the small model reads its own tokens and stops drafting at its
    limit, so only the large model is checked here."""
    models = {"large": large} if bridged else {"small": small, "large": large}
    if large.config.is_encoder_decoder and inputs_tensor is not None:
        check_lengths(models, inputs_tensor.shape[1])
    check_lengths(models, input_ids.shape[1], max_length)


def _cost_ratio(cfg: BiLDConfig, small, large) -> float | None:
    """A small step in large steps, for the guard and "auto": the given one, else the pair's ratio of weights read."""
    if not (cfg.drafting_guard or cfg.fallback_threshold == AUTO):
        return None
    return cfg.cost_ratio if cfg.cost_ratio is not None else step_cost_ratio(small, large)


def check_request(large, small, input_ids, generation_config, small_tokenizer, large_tokenizer, streamer, model_kwargs,
                  bridged: bool = False) -> int | None:
    """Every refusal of a custom_generate call, before any forward; returns the shared vocabulary size (None when
    bridged)."""
    check_generation_config(generation_config)
    vocab = check_pair(small, large, small_tokenizer, large_tokenizer, bridged)
    unknown = sorted(k for k, v in model_kwargs.items() if v is not None and k not in _IGNORED_MODEL_KWARGS)
    if unknown:
        raise ValueError(f"BiLD does not support these model inputs yet: {unknown}. Pass input_ids and attention_mask only.")
    check_streamer(streamer, input_ids.shape[0])
    if not large.config.is_encoder_decoder:
        if input_ids.shape[1] == 0:
            raise ValueError("The prompt is empty: give at least one token (for example the tokenizer's BOS token).")
        check_left_padding(model_kwargs.get("attention_mask"))
    return vocab


def check_streamer(streamer, rows: int) -> None:
    """Streaming is for one sequence, as transformers' streamers are (rows = prompts x num_return_sequences)."""
    if streamer is not None and rows != 1:
        raise ValueError(
            f"Streaming supports one sequence (batch size 1, num_return_sequences=1), as transformers' streamers "
            f"do; this request has {rows} rows. Generate one prompt at a time, or drop the streamer."
        )


@dataclass(frozen=True)
class Run:
    """What the decode loop needs from the request, the same for every adapter pair."""

    processors: LogitsProcessorList
    criteria: StoppingCriteriaList
    cfg: BiLDConfig
    max_length: int
    pad: int
    sampling: bool
    generator: torch.Generator | None
    streamer: object
    profile: bool
    cost_ratio: float | None = None  # a small step in large steps, for the drafting guard and "auto"
    record: tuple[str, ...] = ()  # per-token values to return (bild.scores)
    #: role ("small", "large") -> the row counts its passes take bild.kernels' weight-stationary form for
    kernel_rows: dict = field(default_factory=dict)
    #: the row counts whose small-model passes take bild.kernels' int8 weight-only form (the large model's never do)
    int8_rows: tuple[int, ...] = ()

    def adapter_options(self, role: str) -> dict:
        return {"sync": self.profile, "kernel_rows": self.kernel_rows.get(role, ()),
                "int8_rows": self.int8_rows if role == "small" else ()}


    def decode(self, small, large, prompt, prompt_valid, rows: list[int]):
        """Decode `prompt`, rows `rows` of the request (row-wise processors get those rows' state)."""
        B = prompt.shape[0]
        choose = Sampler(self.cfg.rollback_threshold, B, self.cfg.max_small_steps, self.generator) if self.sampling \
            else Greedy(self.cfg.rollback_threshold)
        return decode(small, large, prompt, prompt_valid, for_rows(self.processors, rows), self.criteria, choose,
                      self.cfg, self.max_length, self.pad, self.streamer, self.cost_ratio, self.record)


def _decoder_only(model, small_model, vocab, input_ids, mask, fast: "FastPath", run: Run):
    """One batch: rows share each model's cache (holes masked, explicit position ids); row by row (each row
    keeping its left padding, as in transformers' batch) where holes in a shared cache would shift positions
    or windows: see architecture.needs_row_by_row."""
    check_lengths({"small": small_model, "large": model}, input_ids.shape[1], run.max_length)
    device = input_ids.device
    valid = torch.ones_like(input_ids, dtype=torch.bool) if mask is None else mask.to(device).bool()
    B = input_ids.shape[0]
    groups = [[r] for r in range(B)] if B > 1 and needs_row_by_row(model) else [list(range(B))]
    results = []
    for rows in groups:
        g = slice(rows[0], rows[-1] + 1)
        small = DecoderOnlyAdapter(small_model, len(rows), device, vocab, **run.adapter_options("small"), **fast.options(small_model, "small"))
        large = DecoderOnlyAdapter(model, len(rows), device, **run.adapter_options("large"), **fast.options(model, "large"))
        results.append(run.decode(small, large, input_ids[g], valid[g], rows))
    return _joined(results, run.pad)


def _encoder_decoder(model, small_model, vocab, input_ids, inputs_tensor, model_kwargs, fast: "FastPath", run: Run):
    """One batched decoder pass for the T5 family (rows right-aligned in one cache: see
    RightAlignedEncoderDecoderAdapter), row by row otherwise (see EncoderDecoderAdapter) and on the static
    path; each model encodes the source once."""
    if inputs_tensor is None:
        raise ValueError("Encoder-decoder BiLD needs the source tokens: call generate(input_ids=..., attention_mask=...).")
    models = {"small": small_model, "large": model}
    check_lengths(models, inputs_tensor.shape[1])
    check_lengths(models, input_ids.shape[1], run.max_length)
    device = input_ids.device
    per_source = _expansion(input_ids, inputs_tensor)
    source_mask = model_kwargs.get("attention_mask")  # (rows, S): expanded by transformers, inputs_tensor is not
    small_enc = encode(small_model, inputs_tensor, None if source_mask is None else source_mask[::per_source])
    large_enc = model_kwargs["encoder_outputs"]  # (rows, S, H), expanded

    B = input_ids.shape[0]
    if B > 1 and fast.static_length is None and batches_encoder_decoder(model, small_model):
        small = RightAlignedEncoderDecoderAdapter(
            small_model, B, device, vocab, encoder_outputs=_repeat_rows(small_enc, per_source), **run.adapter_options("small"),
            encoder_mask=None if source_mask is None else source_mask.to(small_model.device))
        large = RightAlignedEncoderDecoderAdapter(
            model, B, device, None, encoder_outputs=large_enc, **run.adapter_options("large"),
            encoder_mask=None if source_mask is None else source_mask.to(model.device))
        return run.decode(small, large, input_ids, torch.ones_like(input_ids, dtype=torch.bool), list(range(B)))

    def adapter(m, role, vocab_size, encoder_outputs, mask):
        return EncoderDecoderAdapter(m, 1, device, vocab_size, **run.adapter_options(role), **fast.options(m, role),
                                     encoder_outputs=encoder_outputs, encoder_mask=None if mask is None else mask.to(m.device))

    results = []
    for r in range(input_ids.shape[0]):
        mask_r = None if source_mask is None else source_mask[r : r + 1]
        small = adapter(small_model, "small", vocab, _row(small_enc, r // per_source), mask_r)
        large = adapter(model, "large", None, _row(large_enc, r), mask_r)
        results.append(run.decode(small, large, input_ids[r : r + 1],
                                  torch.ones_like(input_ids[r : r + 1], dtype=torch.bool), [r]))
    return _joined(results, run.pad)


def _bridged(model, small_model, bridge: TokenBridge, input_ids, inputs_tensor, model_kwargs, run: Run):
    """Two tokenizers (`bild.cross_decode`): decoder-only rows share one batch where both models allow it (else row
    by row, as `_decoder_only`); encoder-decoder pairs run row by row, each model encoding its own tokens of the
    source."""
    small_tok = bridge.small
    small_vocab = min(output_vocab_size(small_model), len(small_tok))  # ids past the tokenizer: padding rows
    small_pad = next((int(v) for v in (small_tok.pad_token_id, small_tok.eos_token_id) if v is not None), 0)
    device = input_ids.device
    record = tuple(f for f in run.record if f != "small_scores")  # the small model scores its own vocabulary
    limit = max_positions(small_model)
    # Sampling drafts from the tokens both vocabularies have (bild.bridge.SharedVocabulary).
    shared = bridge.shared_vocabulary(output_vocab_size(model), small_vocab, device) if run.sampling else None

    def decode(small, large, prompt, valid, small_prompts, rows):
        choose = Sampler(run.cfg.rollback_threshold, prompt.shape[0], run.cfg.max_small_steps, run.generator) \
            if run.sampling else Greedy(run.cfg.rollback_threshold)
        return decode_across(small, large, bridge, prompt, valid, small_prompts, small_pad, for_rows(run.processors, rows),
                             run.criteria, choose, run.cfg, run.max_length, run.pad, run.streamer, record, limit, shared,
                             run.cost_ratio)

    B = input_ids.shape[0]
    results = []
    if not model.config.is_encoder_decoder:
        check_lengths({"large": model}, input_ids.shape[1], run.max_length)
        mask = model_kwargs.get("attention_mask")
        valid = torch.ones_like(input_ids, dtype=torch.bool) if mask is None else mask.to(device).bool()
        alone = B > 1 and (needs_row_by_row(model) or needs_row_by_row(small_model))
        for rows in [[r] for r in range(B)] if alone else [list(range(B))]:
            g = slice(rows[0], rows[-1] + 1)
            prompts = [bridge.small_prompt(input_ids[r][valid[r]].tolist()) for r in rows]
            small = DecoderOnlyAdapter(small_model, len(rows), device, small_vocab, **run.adapter_options("small"))
            large = DecoderOnlyAdapter(model, len(rows), device, **run.adapter_options("large"))
            results.append(decode(small, large, input_ids[g], valid[g], prompts, rows))
        return _joined(results, run.pad)
    if inputs_tensor is None:
        raise ValueError("Encoder-decoder BiLD needs the source tokens: call generate(input_ids=..., attention_mask=...).")
    check_lengths({"large": model}, inputs_tensor.shape[1])
    check_lengths({"large": model}, input_ids.shape[1], run.max_length)
    per_source = _expansion(input_ids, inputs_tensor)
    source_mask = model_kwargs.get("attention_mask")
    large_enc = model_kwargs["encoder_outputs"]
    start = small_model.generation_config.decoder_start_token_id
    start = small_model.config.decoder_start_token_id if start is None else start
    for r in range(B):
        s = r // per_source
        src = inputs_tensor[s] if source_mask is None else inputs_tensor[s][source_mask[r].to(inputs_tensor.device).bool()]
        small_source = torch.tensor([bridge.small_prompt(src.tolist(), is_source=True)], device=device)
        check_lengths({"small": small_model}, small_source.shape[1])
        small = EncoderDecoderAdapter(small_model, 1, device, small_vocab, **run.adapter_options("small"),
                                      encoder_outputs=encode(small_model, small_source, None), encoder_mask=None)
        mask_r = None if source_mask is None else source_mask[r : r + 1].to(model.device)
        large = EncoderDecoderAdapter(model, 1, device, None, **run.adapter_options("large"), encoder_outputs=_row(large_enc, r),
                                      encoder_mask=mask_r)
        results.append(decode(small, large, input_ids[r : r + 1], torch.ones_like(input_ids[r : r + 1], dtype=torch.bool),
                              [[int(start)]], [r]))
    return _joined(results, run.pad)


def _joined(results: list[tuple], pad: int):
    """(sequences, stats, per-token values) of row groups decoded separately, as one batch."""
    if len(results) == 1:
        return results[0]
    outs, parts, steps = zip(*results)
    return (_stack_rows(list(outs), pad), BiLDStats.concat(list(parts)),
            StepOutputs.concat(list(steps)) if steps[0] is not None else None)


def _stack_rows(outs: list[torch.Tensor], pad: int) -> torch.Tensor:
    """One (B, max width) tensor from rows generated alone, right-padded with `pad`."""
    if not outs:
        return torch.empty(0, 0, dtype=torch.long)
    sequences = torch.full((len(outs), max(o.shape[1] for o in outs)), pad, dtype=torch.long, device=outs[0].device)
    for r, o in enumerate(outs):
        sequences[r, : o.shape[1]] = o
    return sequences


def _expansion(input_ids, inputs_tensor) -> int:
    """Rows per source: transformers expands input_ids for num_return_sequences, not inputs_tensor."""
    return max(1, input_ids.shape[0] // max(1, inputs_tensor.shape[0]))


def compile_roles(compile: bool | str) -> tuple[str, ...]:
    """Which models `compile` asks to compile: True both, "small" or "large" one, False none."""
    if compile is True:
        return ("small", "large")
    if compile is False or compile is None:
        return ()
    if compile in ("small", "large"):
        return (compile,)
    raise ValueError(f"compile must be True, False, 'small' or 'large', got {compile!r}.")


@dataclass(frozen=True)
class FastPath:
    """Adapter options of the static-cache / compiled path; the default is dynamic caches, eager forwards."""

    static_length: int | None = None  # slots of each static KV cache
    window: int = 0  # max_small_steps + 1: the fixed width of a compiled verify step
    compiled: tuple[str, ...] = ()  # "small" / "large": whose steps run through torch.compile

    @classmethod
    def build(cls, static: bool, compiled: tuple[str, ...], cfg: BiLDConfig, max_length: int, input_ids, large) -> "FastPath":
        if not (static or compiled):
            return cls()
        window = cfg.max_small_steps + 1
        # Slots: the committed sequence, one draft window, and the padding of a fixed-width step; rounded
        # up to a multiple of 256 so prompts of different lengths share one cache shape (and compiled graph).
        return cls(static_length=-(-(max_length + 2 * window) // 256) * 256, window=window, compiled=compiled)

    def pad_to(self, width: int) -> int | None:
        """Fixed width of a step of `width` tokens: 1 (a draft), the window (a verify), None (eager prefill)."""
        return None if width > self.window else (1 if width == 1 else self.window)

    def options(self, model: PreTrainedModel, role: str) -> dict:
        if self.static_length is None:
            return {}
        out = {"static_length": self.static_length}
        if role in self.compiled:
            mode = "reduce-overhead" if model.device.type == "cuda" else None
            # Dynamo caches graphs on the forward's code, so later calls reuse them.
            out.update(pad_to=self.pad_to, compiled_forward=torch.compile(model.forward, mode=mode, dynamic=False))
        return out


def _pad_token_id(config: GenerationConfig) -> int:
    for value in (config.pad_token_id, config.eos_token_id):
        if isinstance(value, list):
            value = value[0] if value else None
        if isinstance(value, torch.Tensor):
            value = int(value.flatten()[0])
        if value is not None:
            return int(value)
    return 0


def _repeat_rows(encoder_outputs, n: int):
    """Each row of an encoder output n times (num_return_sequences), as transformers expands its own."""
    if n == 1:
        return encoder_outputs
    return encoder_outputs.__class__(**{k: v.repeat_interleave(n, dim=0) if isinstance(v, torch.Tensor) else v
                                        for k, v in encoder_outputs.items()})


def _row(encoder_outputs, r: int):
    """Row r of an encoder output (keeps its ModelOutput type)."""
    return encoder_outputs.__class__(**{k: v[r : r + 1] if isinstance(v, torch.Tensor) else v for k, v in encoder_outputs.items()})

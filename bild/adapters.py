"""One thin adapter per model kind: every transformers-specific call the decode loop needs.

An adapter owns one model's KV cache and answers one question: "here are the tokens of each
row's sequence that you have not seen yet; give me your logits at the last few of them". It
remembers which sequence index each cache slot holds, so a rollback is "forget every slot past
index n" (a mask update) followed by cropping the cache's tail; nothing committed is recomputed.

What differs between transformers releases stays here: the `past_key_values` -> `cache` keyword
rename (5.17 vs 5.24), whether a model takes `logits_to_keep`, and `Cache.crop`, which since 5.18
removes `-n` tokens and rejects the old absolute-length form.

Masks: where a model's own mask code would read the device (transformers checks whether a 2-D mask is all
ones before it builds the 4-D one), the adapter builds that same 4-D mask itself with transformers' own mask
function and passes it prepared (`prepared_mask_implementation`); elsewhere it passes the 2-D mask.

Shapes: B = rows, T = tokens fed this call, L = cache slots, V = vocabulary.
"""

from __future__ import annotations

import inspect
import time

import numpy as np
import torch
from transformers import DynamicCache, EncoderDecoderCache, PreTrainedModel, StaticCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer, StaticLayer, StaticSlidingWindowLayer
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, bidirectional_mask_function, causal_mask_function

from .architecture import layer_types, sliding_window
from .kernels import few_token_matmuls


def _forward_params(model: PreTrainedModel) -> set[str]:
    return set(inspect.signature(model.forward).parameters)


#: transformers modeling modules (transformers.models.<name>.modeling_<name>) whose decoder uses its attention mask
#: only through masking_utils' `create_causal_mask` (for the T5s: the decoder mask, and the source mask only through
#: `create_bidirectional_mask`), which returns a prepared 4-D mask as it is. Read in the 5.17 and 5.24 sources; what
#: else a listed model does with the 2-D mask is dead code here: OPT and BioGPT derive positions from it only without
#: position ids, GPT-2 and CTRL reshape it only when it has fewer than 4 dimensions, Qwen2/Qwen3/SmolLM3 also take a
#: dict. Not listed, so they keep the 2-D mask: Falcon (ALiBi from the 2-D mask), LongT5 (its decoder turns no mask
#: into an all-ones one, which transformers then checks), the BERT family (bidirectional unless configured as
#: decoders), and every module not read (a model's remote code, a subclass defined elsewhere).
PREPARED_MASK_MODULES = frozenset({
    "apertus", "apertus1p5", "arcee", "aria", "axk1", "biogpt", "bitnet", "codegen", "cohere", "ctrl", "deepseek_v2",
    "deepseek_v3", "diffllama", "doge", "ernie4_5", "ernie4_5_moe", "flex_olmo", "gemma", "glm", "glm4", "glm4_moe",
    "glm4_moe_lite", "gpt2", "gpt_bigcode", "gpt_neox", "gpt_neox_japanese", "gptj", "granite", "granitemoe",
    "granitemoeshared", "helium", "hunyuan_v1_dense", "hunyuan_v1_moe", "hy_v3", "hyperclovax", "jais2", "jetmoe",
    "llama", "longcat_flash", "minicpm3", "minimax_m2", "ministral3", "mixtral", "nanochat", "nemotron", "olmo",
    "olmo2", "olmoe", "opt", "persimmon", "phi", "phi3", "phimoe", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe",
    "seed_oss", "smollm3", "solar_open", "stablelm", "starcoder2", "xglm", "youtu",
    "t5", "mt5", "umt5",
})
#: Attention implementations whose masking_utils mask is a plain 4-D tensor (bool for sdpa, additive float for eager).
#: Flash attention takes the 2-D mask itself (and reads it); flex builds a compiled block mask.
_PREPARED_MASK_IMPLEMENTATIONS = ("sdpa", "eager")


def _decoder_of(model: PreTrainedModel):
    return model.get_decoder() if model.config.is_encoder_decoder else model


def prepared_mask_implementation(model: PreTrainedModel) -> str | None:
    """The attention implementation ("sdpa" or "eager") whose 4-D masks the adapter builds for this model, or None
    where it passes today's 2-D mask.

    Exact where the model's own code would build the same mask from the 2-D one and use nothing else of it: a listed
    module (PREPARED_MASK_MODULES), every layer full causal attention (no sliding window, chunks or bidirectional
    parts, which get masks of their own per layer type), sdpa or eager attention, and float embeddings (whose dtype
    is the one an eager mask is built in).
    """
    module = type(model).__module__.split(".")
    if len(module) != 4 or module[:2] != ["transformers", "models"] or module[3] != f"modeling_{module[2]}":
        return None
    if module[2] not in PREPARED_MASK_MODULES:
        return None
    config = _decoder_of(model).config
    impl = getattr(config, "_attn_implementation", None)
    if impl not in _PREPARED_MASK_IMPLEMENTATIONS:
        return None
    if getattr(config, "is_causal", True) is False or getattr(model.config, "is_causal", True) is False:
        return None
    if set(layer_types(model)) != {"full_attention"} or sliding_window(model) is not None:
        return None
    embeddings = model.get_input_embeddings()
    weight = getattr(embeddings, "weight", None)
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
        return None
    return impl


def crop_cache(cache, tokens_to_remove: int) -> None:
    """Drop the last `tokens_to_remove` slots of a decoder self-attention cache.

    Dynamic layers are sliced (`crop(-n)`, the form both 5.17 and 5.24 accept). A static layer only
    moves its write pointer back, so the next update overwrites the stale slots; 5.17's static
    layers have no `crop`, so the pointer is moved here, as 5.24's `StaticLayer.crop` does.
    """
    if tokens_to_remove <= 0:
        return
    if isinstance(cache, EncoderDecoderCache):
        cache = cache.self_attention_cache
    for layer in cache.layers:
        if isinstance(layer, StaticLayer):
            if layer.is_initialized:
                layer.cumulative_length.sub_(tokens_to_remove)
        else:
            layer.crop(-tokens_to_remove)


def keep_every_slot(cache, static_length: int | None = None):
    """Replace sliding-window layers by full ones, in place; returns the cache.

    A sliding layer drops slots past its window, so a rollback there cannot be cropped back. A full
    layer keeps them, and the window still holds: transformers builds the sliding-window mask from
    cache positions for these layers whatever the cache keeps. The cost is memory: such a layer holds
    the whole sequence instead of `sliding_window` slots.
    """
    for i, layer in enumerate(cache.layers):
        if type(layer) is DynamicSlidingWindowLayer:
            cache.layers[i] = DynamicLayer()
        elif type(layer) is StaticSlidingWindowLayer:
            cache.layers[i] = StaticLayer(max_cache_len=static_length)
    return cache


class ModelAdapter:
    """A model plus its KV cache and the bookkeeping that makes rollback a pointer move.

    The bookkeeping (which sequence index each cache slot holds, what each row has seen) lives on the
    host as numpy arrays: the decode loop knows every row's lengths there, so a forward's shapes, masks
    and crops never wait for the device (see docs/decoding.md, "Host reads").
    """

    #: Whether rows of different committed lengths can share one cache (needs explicit position ids).
    batched_rows: bool = True

    def __init__(
        self,
        model: PreTrainedModel,
        batch_size: int,
        work_device: torch.device,
        vocab_size: int | None = None,
        static_length: int | None = None,
        pad_to=None,
        compiled_forward=None,
        sync: bool = False,
        kernel_rows: tuple[int, ...] = (),
        int8_rows: tuple[int, ...] = (),
    ):
        self.model = model
        self.static_length = static_length  # preallocate a static KV cache of this many slots
        self.pad_to = pad_to  # block width -> fixed width of a compiled step, or None (eager, e.g. prefill)
        # Compiled forward for the fixed-shape steps (padded widths); eager for the prefill.
        self.compiled_forward = compiled_forward
        self.device = model.device
        self.work_device = work_device
        self.vocab_size = vocab_size  # logits beyond this id are padding of the embedding matrix
        params = _forward_params(model)
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        self.keeps_logits = "logits_to_keep" in params
        self.cache = self._new_cache()
        # The 4-D masks built here (None: pass the 2-D mask), in the dtype the model's own eager mask would have.
        self.mask_impl = prepared_mask_implementation(model)
        self.mask_config = _decoder_of(model).config if self.mask_impl else None
        self.mask_dtype = model.get_input_embeddings().weight.dtype if self.mask_impl else None
        self.slot_index = np.empty((batch_size, 0), dtype=np.int64)  # (B, L) host, -1 = none
        self.slot_valid = np.empty((batch_size, 0), dtype=bool)  # (B, L) host
        self.seen = np.zeros(batch_size, dtype=np.int64)  # (B,) host: sequence prefix in the cache
        self.calls = 0
        self.compactions = 0  # static cache: times the rows' slots were moved to the front (see _compact)
        self.seconds = 0.0
        self.sync = sync  # synchronise the device around forwards when profiling
        self.kernel_rows = kernel_rows  # row counts whose passes take bild.kernels' weight-stationary form
        self.int8_rows = int8_rows  # (a draft model) row counts whose passes take bild.kernels' int8 weight-only form

    def _new_cache(self):
        if self.static_length is not None:
            return keep_every_slot(StaticCache(config=self.model.config, max_cache_len=self.static_length), self.static_length)
        return keep_every_slot(DynamicCache(config=self.model.config))

    def feed(
        self,
        seq: torch.Tensor,
        n_pad: np.ndarray,
        upto: np.ndarray,
        rows: np.ndarray,
        n_logits: np.ndarray,
    ) -> torch.Tensor:
        """Run the model over seq[r, seen[r]:upto[r]] for each row in `rows` (one batched forward).

        seq (B, S) token buffer (device). Host arrays: n_pad (B,) left padding per row; upto (B,);
        rows (B,) bool; n_logits (B,) how many trailing positions need logits.
        Returns float32 logits (B, max n_logits, V): row r's first n_logits[r] entries are the
        next-token logits after seq indices upto[r]-n_logits[r] ... upto[r]-1.
        """
        chunk = np.where(rows, np.maximum(upto - self.seen, 0), 0)  # (B,)
        T = int(chunk.max())
        if T == 0:
            raise RuntimeError("bild: nothing to feed; this is a bug in the decode loop.")
        # A fixed width (trailing dummy slots, masked and dropped right after) for the compiled forward.
        width = self.pad_to(T) if self.pad_to is not None else None
        T = width or T
        forward = self.compiled_forward if width else self.model.forward
        if self.static_length is not None and self.slot_valid.shape[1] + T > self.static_length:
            self._compact()  # a batch's holes filled the cache: move every row's slots to the front
        if self.static_length is not None and self.slot_valid.shape[1] + T > self.static_length:
            raise RuntimeError(
                f"bild: the static cache of {self.static_length} slots is full; use the dynamic cache for this request."
            )
        offsets = np.arange(T)
        index = self.seen[:, None] + offsets  # (B, T) sequence index of each block slot
        real = (offsets < chunk[:, None]) & (index >= n_pad[:, None])  # (B, T): not a dummy, not left padding
        index_c = np.minimum(index, seq.shape[1] - 1)
        tokens = seq.gather(1, to_device(index_c, seq.device))
        positions = np.maximum(index - n_pad[:, None], 0)  # position ids skip left padding

        n_logits = np.where(rows, n_logits, 1)
        first = np.maximum(chunk - n_logits, 0)  # (B,) block offset of the first needed position
        # A compiled step keeps every position: a varying logits_to_keep would recompile it.
        keep = T if width else (T - int(first[rows].min()) if rows.any() else 1)
        holes = not self.slot_valid.all() or _has_gap(real)
        mask = np.concatenate([self.slot_valid, real], axis=1) if holes else None
        if mask is not None and self.static_length is not None:  # one mask shape for every step: the whole cache
            mask = np.pad(mask, ((0, 0), (0, self.static_length - mask.shape[1])))

        start = time.perf_counter()
        if self.sync and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        rows, int8 = ((), ()) if width else (self.kernel_rows, self.int8_rows)  # eager only (a compiled one keeps its graph)
        with few_token_matmuls(self.model, rows, tokens.shape[0] * T, int8):  # where measured faster here: bild.kernels
            logits = self._forward(forward, tokens, mask, positions, keep)  # (B, keep, V)
        if self.sync and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds += time.perf_counter() - start
        self.calls += 1

        logits = logits.to(self.work_device, torch.float32)
        if self.vocab_size is not None and logits.shape[-1] > self.vocab_size:
            logits = logits[..., : self.vocab_size]
        self.slot_index = np.concatenate([self.slot_index, np.where(real, index, -1)], axis=1)
        self.slot_valid = np.concatenate([self.slot_valid, real], axis=1)
        self.seen = np.where(chunk > 0, upto, self.seen)
        self._crop_tail()

        width = int(n_logits.max())
        picks = first[:, None] + np.arange(width) - (T - keep)  # (B, width)
        picks = to_device(np.clip(picks, 0, keep - 1), logits.device)
        return logits.gather(1, picks.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))

    def rollback_to(self, n_valid: np.ndarray) -> None:
        """Forget every cached slot holding sequence index >= n_valid[r]; crop the all-empty tail."""
        self.slot_valid &= self.slot_index < n_valid[:, None]
        self.seen = np.minimum(self.seen, n_valid)
        self._crop_tail()

    def _crop_tail(self) -> None:
        used = np.flatnonzero(self.slot_valid.any(axis=0))
        new_len = int(used[-1]) + 1 if used.size else 0
        crop_cache(self.cache, self.slot_valid.shape[1] - new_len)
        self.slot_index = self.slot_index[:, :new_len]
        self.slot_valid = self.slot_valid[:, :new_len]

    def _compact(self) -> None:
        """Static cache: move each row's valid slots to the front, in order, in place (same tensors, so compiled
        steps and CUDA graphs keep their addresses). Exact where positions are position ids (the slots carry them),
        which is where rows share a cache (architecture.needs_row_by_row)."""
        counts = self.slot_valid.sum(axis=1)
        new_len = int(counts.max())
        order = np.argsort(~self.slot_valid, axis=1, kind="stable")[:, :new_len]  # valid columns first, in order
        keep = np.arange(new_len)[None, :] < counts[:, None]
        self.slot_index = np.where(keep, np.take_along_axis(self.slot_index, order, 1), -1)
        self.slot_valid = keep
        index = to_device(order, self.device)[:, None, :, None]
        cache = self.cache.self_attention_cache if isinstance(self.cache, EncoderDecoderCache) else self.cache
        for layer in cache.layers:
            if layer.is_initialized:
                idx = index.expand(-1, layer.keys.shape[1], -1, layer.keys.shape[3])
                layer.keys[:, :, :new_len].copy_(layer.keys.gather(2, idx))
                layer.values[:, :, :new_len].copy_(layer.values.gather(2, idx))
                layer.cumulative_length.fill_(new_len)
        self.compactions += 1

    def _forward(self, forward, tokens, mask, positions, keep) -> torch.Tensor:
        """Run `forward` (the model's, or its compiled step) on one block; logits (B, keep, V).

        mask: host (B, L + T) bool over cache slots and block tokens, or None where no slot is a hole."""
        raise NotImplementedError

    def _self_attention_mask(self, mask: np.ndarray | None, q_length: int):
        """The decoder's attention mask for one forward of `q_length` tokens: None, the 2-D or the prepared 4-D mask.

        The 4-D mask is the one the model's `create_causal_mask` builds from the 2-D mask: the same mask function
        (causal and the padding mask), the sizes and offsets it reads from the same cache layer (the first: every
        layer is full attention), the model's dtype. It skips only the check whether the mask can be dropped for
        sdpa's `is_causal` (a read of the device), whose answer is no: a mask is passed only where a slot in the
        window is a hole."""
        if mask is None:
            return None
        padding = to_device(mask, self.device)
        if self.mask_impl is None:
            return padding.long()
        cache = self.cache.self_attention_cache if isinstance(self.cache, EncoderDecoderCache) else self.cache
        kv_length, kv_offset = cache.get_mask_sizes(q_length, 0)
        q_offset = cache.get_query_offset(0)
        if isinstance(q_offset, torch.Tensor):  # a static layer's write pointer
            q_offset = q_offset.to(self.device)
        return ALL_MASK_ATTENTION_FUNCTIONS[self.mask_impl](
            batch_size=padding.shape[0], q_length=q_length, kv_length=kv_length, q_offset=q_offset,
            kv_offset=kv_offset, mask_function=causal_mask_function, attention_mask=padding, allow_is_causal_skip=False,
            allow_is_bidirectional_skip=False, dtype=self.mask_dtype, config=self.mask_config, use_vmap=False,
            device=self.device,
        )


class DecoderOnlyAdapter(ModelAdapter):
    """GPT-2, Llama, Qwen2, ...: rows share one cache; holes and left padding are masked and
    explicit position ids keep every row's positions what they would be alone."""

    def _forward(self, forward, tokens, mask, positions, keep):
        # Without holes (every cached slot valid, dummies only after the real tokens) the causal mask
        # alone is exact: no mask lets attention take its fast path and keeps compiled shapes fixed.
        kwargs = {self.cache_kw: self.cache}
        if self.keeps_logits:
            kwargs["logits_to_keep"] = keep
        out = forward(
            input_ids=tokens.to(self.device),
            attention_mask=self._self_attention_mask(mask, tokens.shape[1]),
            position_ids=to_device(positions, self.device),
            use_cache=True,
            **kwargs,
        )
        return out.logits[:, -keep:]


class EncoderDecoderAdapter(ModelAdapter):
    """T5, mT5, BART, Marian, ...: the encoder runs once; the decoder cache holds one row.

    Decoder positions (T5's relative bias, BART's learned positions) come from the cache length,
    not from position ids, so rows of different lengths cannot share a cache with holes. Batches of
    these models run row by row (`batched_rows = False`), except the T5 family, whose relative bias
    allows RightAlignedEncoderDecoderAdapter.
    """

    batched_rows = False

    def __init__(self, model, batch_size, work_device, vocab_size=None, *, encoder_outputs, encoder_mask, **kwargs):
        if batch_size != 1 and not self.batched_rows:
            raise ValueError("EncoderDecoderAdapter holds one row; split the batch first.")
        self.encoder_outputs = encoder_outputs
        self.encoder_mask = encoder_mask
        super().__init__(model, batch_size, work_device, vocab_size, **kwargs)
        self.source_padding = None  # the source mask as transformers' mask functions take it, for prepared masks
        self._source_masks: dict[int, torch.Tensor] = {}  # prepared source masks by query length (fixed per call)
        if self.mask_impl is not None and encoder_mask is not None:
            if bool(encoder_mask.all()):  # one read, here instead of one per forward
                self.encoder_mask = None  # transformers drops an all-ones source mask: drop it once
            else:
                self.source_padding = encoder_mask.to(self.device, torch.bool)

    def _new_cache(self):
        if self.static_length is not None:
            source_length = self.encoder_outputs.last_hidden_state.shape[1]
            return EncoderDecoderCache(
                keep_every_slot(StaticCache(config=self.model.config, max_cache_len=self.static_length), self.static_length),
                keep_every_slot(StaticCache(config=self.model.config, max_cache_len=source_length), source_length),
            )
        # Cross-attention never slides: its cache holds the whole source (T5Gemma 2's decoder has sliding layers).
        return EncoderDecoderCache(keep_every_slot(DynamicCache(config=self.model.config)),
                                   keep_every_slot(DynamicCache(config=self.model.config)))

    def _forward(self, forward, tokens, mask, positions, keep):
        # One row: padding dummies may only trail the real tokens (the decoder has no position ids to skip
        # holes). Right-aligned rows (the subclass) mask their empty slots.
        if mask is not None and not self.batched_rows:
            raise RuntimeError("bild: an encoder-decoder cache got a hole; this is a bug in the decode loop.")
        kwargs = {self.cache_kw: self.cache}
        if self.keeps_logits:
            kwargs["logits_to_keep"] = keep
        out = forward(
            encoder_outputs=self.encoder_outputs,
            attention_mask=self._cross_attention_mask(tokens.shape[1]),
            decoder_input_ids=tokens.to(self.device),
            decoder_attention_mask=self._self_attention_mask(mask, tokens.shape[1]),
            use_cache=True,
            **kwargs,
        )
        return out.logits[:, -keep:]

    def _cross_attention_mask(self, q_length: int):
        """The source mask for one forward: the 2-D mask, or the prepared 4-D one that the decoder's
        `create_bidirectional_mask` builds from it (sizes from the mask, no cache; the encoder states' dtype).
        Prepared only where the source has padding (an all-ones mask was dropped in __init__), so transformers
        would not drop it either. It depends only on the query length, so each width is built once per call."""
        padding = self.source_padding
        if padding is None:
            return self.encoder_mask
        if q_length not in self._source_masks:
            self._source_masks[q_length] = ALL_MASK_ATTENTION_FUNCTIONS[self.mask_impl](
                batch_size=padding.shape[0], q_length=q_length, kv_length=padding.shape[-1], q_offset=0, kv_offset=0,
                mask_function=bidirectional_mask_function, attention_mask=padding, allow_is_causal_skip=False,
                allow_is_bidirectional_skip=False, dtype=self.encoder_outputs.last_hidden_state.dtype,
                config=self.mask_config, use_vmap=False, device=self.device,
            )
        return self._source_masks[q_length]


class RightAlignedEncoderDecoderAdapter(EncoderDecoderAdapter):
    """T5, mT5, UMT5, LongT5: a batch of rows in one decoder cache, exactly.

    These decoders see positions only through a relative bias computed from cache slots (key slot minus
    query slot), which is shift-invariant. So rows of different lengths can share a cache if each row's
    slots are contiguous and end at the same column: before every forward each row is shifted right over its
    trailing empty slots (rejected drafts, a block's dummies), the empty slots on the left are masked, and
    columns no row uses are dropped. A row then sees exactly the distances it would see alone.
    Dynamic caches only (the static path runs these row by row).
    """

    batched_rows = True

    def feed(self, seq, n_pad, upto, rows, n_logits):
        self._right_align()
        return super().feed(seq, n_pad, upto, rows, n_logits)

    def _layers(self):
        return [layer for layer in self.cache.self_attention_cache.layers if layer.is_initialized]

    def _right_align(self) -> None:
        L = self.slot_valid.shape[1]
        if L == 0:
            return
        reversed_first = np.argmax(self.slot_valid[:, ::-1], axis=1)  # trailing empty slots (0 if none valid)
        shift = np.where(self.slot_valid.any(axis=1), reversed_first, 0)
        if shift.any():
            cols = np.arange(L)
            src = np.clip(cols[None, :] - shift[:, None], 0, L - 1)  # (B, L) the slot each slot takes
            moved = cols[None, :] >= shift[:, None]
            self.slot_index = np.where(moved, np.take_along_axis(self.slot_index, src, 1), -1)
            self.slot_valid = moved & np.take_along_axis(self.slot_valid, src, 1)
            index = to_device(src, self.device)[:, None, :, None]
            for layer in self._layers():
                idx = index.expand(-1, layer.keys.shape[1], -1, layer.keys.shape[3])
                layer.keys, layer.values = layer.keys.gather(2, idx), layer.values.gather(2, idx)
        used = np.flatnonzero(self.slot_valid.any(axis=0))
        first = int(used[0]) if used.size else L
        if first > 0:  # leading columns that no row uses
            for layer in self._layers():
                layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
            self.slot_index, self.slot_valid = self.slot_index[:, first:], self.slot_valid[:, first:]


def _has_gap(real: np.ndarray) -> bool:
    """(B, T) host bool: True if some row has a real token after a dummy (a hole, not just trailing padding)."""
    return real.shape[1] > 1 and not (real[:, :-1] | ~real[:, 1:]).all()


def to_device(array: np.ndarray, device) -> torch.Tensor:
    """A host array on `device`: a host-to-device copy, which never waits for the device."""
    return torch.from_numpy(np.ascontiguousarray(array)).to(device, non_blocking=True)


def encode(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor | None):
    """Run an encoder-decoder model's encoder once over the source."""
    mask = None if attention_mask is None else attention_mask.to(model.device)
    return model.get_encoder()(input_ids=input_ids.to(model.device), attention_mask=mask, return_dict=True)

"""One thin adapter per model kind: every transformers-specific call the decode loop needs.

An adapter owns one model's KV cache and answers one question: "here are the tokens of each
row's sequence that you have not seen yet; give me your logits at the last few of them". It
remembers which sequence index each cache slot holds, so a rollback is "forget every slot past
index n" (a mask update) followed by cropping the cache's tail; nothing committed is recomputed.

What differs between transformers releases stays here: the `past_key_values` -> `cache` keyword
rename (5.17 vs 5.24), whether a model takes `logits_to_keep`, and `Cache.crop`, which since 5.18
removes `-n` tokens and rejects the old absolute-length form.

Shapes: B = rows, T = tokens fed this call, L = cache slots, V = vocabulary.
"""

from __future__ import annotations

import inspect
import time

import numpy as np
import torch
from transformers import DynamicCache, EncoderDecoderCache, PreTrainedModel, StaticCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer, StaticLayer, StaticSlidingWindowLayer


def _forward_params(model: PreTrainedModel) -> set[str]:
    return set(inspect.signature(model.forward).parameters)


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
        self.slot_index = np.empty((batch_size, 0), dtype=np.int64)  # (B, L) host, -1 = none
        self.slot_valid = np.empty((batch_size, 0), dtype=bool)  # (B, L) host
        self.seen = np.zeros(batch_size, dtype=np.int64)  # (B,) host: sequence prefix in the cache
        self.calls = 0
        self.compactions = 0  # static cache: times the rows' slots were moved to the front (see _compact)
        self.seconds = 0.0
        self.sync = sync  # synchronise the device around forwards when profiling

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
            attention_mask=None if mask is None else to_device(mask, self.device).long(),
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
            attention_mask=self.encoder_mask,
            decoder_input_ids=tokens.to(self.device),
            decoder_attention_mask=None if mask is None else to_device(mask, self.device).long(),
            use_cache=True,
            **kwargs,
        )
        return out.logits[:, -keep:]


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

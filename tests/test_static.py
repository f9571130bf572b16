"""The static-cache path (rollback = moving a write pointer) gives the dynamic path's output."""

import pytest
import torch

from bild import BiLDGenerator
from bild.adapters import DecoderOnlyAdapter
from tiny_models import ARCHITECTURES, ENCODER_DECODER, batch_inputs, prompts, tiny_pair


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_static_cache_equals_dynamic(arch):
    small, large = tiny_pair(arch, "agree", seed=4)
    enc_dec = arch in ENCODER_DECODER
    for th in ((0.3, 1.0), (0.0, 0.0)):
        inputs = batch_inputs(prompts(2 if enc_dec else 1, seed=9, min_len=4), enc_dec)
        dynamic = BiLDGenerator(small, large, *th, 6).generate(**inputs, max_new_tokens=20, return_dict_in_generate=True)
        static = BiLDGenerator(small, large, *th, 6, static_cache=True).generate(**inputs, max_new_tokens=20,
                                                                              return_dict_in_generate=True)
        assert torch.equal(static.sequences, dynamic.sequences), th
        assert static.stats.total()["rollbacks"] == dynamic.stats.total()["rollbacks"]


def test_fixed_width_steps_pad_and_drop_dummies():
    """The compiled path's padding, run eagerly: same output, and the cache never keeps a dummy slot."""
    small, large = tiny_pair("llama", "disagree", seed=1)
    inputs = batch_inputs(prompts(1, seed=3, min_len=4), False)
    expected = BiLDGenerator(small, large, 0.3, 1.0, 4).generate(**inputs, max_new_tokens=16)
    window = 5
    seen_widths = []

    def pad_to(width):
        fixed = None if width > window else (1 if width == 1 else window)
        seen_widths.append(fixed)
        return fixed

    original = DecoderOnlyAdapter.__init__

    def patched(self, *args, **kwargs):
        original(self, *args, **kwargs, pad_to=pad_to, compiled_forward=None)
        self.compiled_forward = self.model.forward  # eager stand-in for torch.compile
        assert self.static_length is not None

    original_feed, kept = DecoderOnlyAdapter.feed, []

    def feed(self, *args, **kwargs):
        logits = original_feed(self, *args, **kwargs)
        # One row: every slot left after a step holds a real token, and the static cache's write pointer is
        # right after them (a dummy slot is overwritten by the next step, never kept).
        pointer = int(self.cache.layers[0].cumulative_length)
        kept.append((bool(self.slot_valid.all()), pointer, self.slot_valid.shape[1]))
        return logits

    DecoderOnlyAdapter.__init__ = patched
    DecoderOnlyAdapter.feed = feed
    try:
        got = BiLDGenerator(small, large, 0.3, 1.0, 4, static_cache=True).generate(**inputs, max_new_tokens=16)
    finally:
        DecoderOnlyAdapter.__init__ = original
        DecoderOnlyAdapter.feed = original_feed
    assert torch.equal(got, expected)
    assert window in seen_widths and None in seen_widths  # padded steps and an eager prefill both ran
    assert kept and all(valid and cached == slots for valid, cached, slots in kept), kept


@pytest.mark.parametrize("arch, mode, seed", [("gpt2", "disagree", 5), ("llama", "agree", 2), ("qwen2", "agree", 2)])
def test_static_cache_batch_equals_dynamic_and_compacts_its_holes_exactly(arch, mode, seed, monkeypatch):
    """A decoder-only batch on one static cache per model: rejected drafts leave holes; when they fill the
    cache every row's slots move to the front in place. Same tokens as the dynamic path and large greedy."""
    import dataclasses

    import bild.hf

    small, large = tiny_pair(arch, mode, seed=seed)  # pairs whose rows leave enough holes to fill the cache
    inputs = batch_inputs(prompts(3, seed=2, min_len=1, max_len=6), False)
    compactions = []
    original = DecoderOnlyAdapter._compact
    monkeypatch.setattr(DecoderOnlyAdapter, "_compact", lambda self: (compactions.append(1), original(self))[1])
    build = bild.hf.FastPath.build.__func__
    # No rounding up to 256 slots: the cache holds just the longest sequence plus two draft windows, so the
    # holes of rejected drafts fill it within a few rounds.
    tight = lambda cls, static, compiled, cfg, max_length, *a: dataclasses.replace(
        build(cls, static, compiled, cfg, max_length, *a), static_length=max_length + 2 * (cfg.max_small_steps + 1))
    monkeypatch.setattr(bild.hf.FastPath, "build", classmethod(tight))
    kwargs = dict(max_new_tokens=40, min_new_tokens=40)
    for th in ((0.3, 1.0), (0.0, 0.0)):
        # The guard off: it would stop this same-size pair's drafting, and with it the holes that force compactions.
        dynamic = BiLDGenerator(small, large, *th, 6, drafting_guard=False).generate(**inputs, **kwargs)
        static = BiLDGenerator(small, large, *th, 6, static_cache=True, drafting_guard=False).generate(**inputs, **kwargs)
        assert torch.equal(static, dynamic), th
    assert torch.equal(static, large.generate(**inputs, do_sample=False, **kwargs))
    assert compactions


@pytest.mark.parametrize("compile, compiled", [(True, {"small", "large"}), ("small", {"small"}), ("large", {"large"})])
def test_compile_picks_the_models_it_names(compile, compiled, monkeypatch):
    """compile=True compiles both models' steps, "small"/"large" only that one; output as the dynamic path."""
    import bild.hf

    small, large = tiny_pair("qwen2", "disagree", seed=2)
    inputs = batch_inputs(prompts(1, seed=4, min_len=4), False)
    expected = BiLDGenerator(small, large, 0.4, 1.0, 4).generate(**inputs, max_new_tokens=12)
    owners = {id(small): "small", id(large): "large"}
    seen = set()

    def fake_compile(fn, **kwargs):  # eager stand-in: records whose forward was compiled
        seen.add(owners[id(fn.__self__)])
        return fn

    monkeypatch.setattr(bild.hf.torch, "compile", fake_compile)
    got = BiLDGenerator(small, large, 0.4, 1.0, 4, compile=compile).generate(**inputs, max_new_tokens=12)
    assert seen == compiled
    assert torch.equal(got, expected)


def test_compile_rejects_other_values():
    small, large = tiny_pair("qwen2", "disagree", seed=2)
    with pytest.raises(ValueError, match="compile must be True, False, 'small' or 'large'"):
        BiLDGenerator(small, large, compile="both")


def test_compiled_fixed_width_steps_on_a_batch(monkeypatch):
    """compile=True on a decoder-only batch (torch.compile replaced by an eager stand-in): padded fixed-width
    steps, one mask shape over the whole static cache, the dynamic path's tokens."""
    import bild.hf

    small, large = tiny_pair("qwen2", "disagree", seed=2)
    inputs = batch_inputs(prompts(3, seed=4, min_len=1, max_len=6), False)
    expected = BiLDGenerator(small, large, 0.4, 1.0, 4).generate(**inputs, max_new_tokens=16)
    monkeypatch.setattr(bild.hf.torch, "compile", lambda fn, **kwargs: fn)
    got = BiLDGenerator(small, large, 0.4, 1.0, 4, compile=True).generate(**inputs, max_new_tokens=16)
    assert torch.equal(got, expected)

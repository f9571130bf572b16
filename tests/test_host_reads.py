"""Host reads of device values (each one drains a GPU) stay at one per draft step plus a few per round,
whatever the batch size: the round is tensor operations, lengths are mirrored on the host, and the masks that
transformers would check on every forward are passed to it prepared (bild.adapters.prepared_mask_implementation)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import MistralConfig, MistralForCausalLM
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask

import bild
from bild import BiLDGenerator
from bild.adapters import DecoderOnlyAdapter, EncoderDecoderAdapter, ModelAdapter, prepared_mask_implementation
from bild.host_reads import HostReads
from tiny_models import batch_inputs, prompts, tiny_model, tiny_pair


def _run_counting(arch, batch, fb, rb, n=6, max_new=40, cost_ratio=None, attn=None, static_cache=False, **kwargs):
    small, large = tiny_pair(arch, "agree", seed=0)
    if attn is not None:
        for m in (small, large):
            m.set_attn_implementation(attn)
    inputs = batch_inputs(prompts(batch, seed=3, min_len=2), arch == "t5")
    # The guard off: this same-size pair's drafting never pays in weights read, and the bound wants drafting work.
    gen = BiLDGenerator(small, large, fb, rb, n, drafting_guard=False, cost_ratio=cost_ratio, static_cache=static_cache)
    with HostReads() as reads:
        out = gen.generate(**inputs, max_new_tokens=max_new, return_dict_in_generate=True, **kwargs)
    return reads, out, large, inputs


def _generate_counting(*args, **kwargs):
    reads, out, _, _ = _run_counting(*args, **kwargs)
    return reads, out.stats


BILD_DIR = str(Path(bild.__file__).parent)


def _own(reads):
    """bild's own reads (the rest: transformers' generate set-up, the encoder's mask check, and any mask check
    on a path that passes the 2-D mask)."""
    return reads.count_in(BILD_DIR)


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("fb, rb", [(0.0, 0.0), (0.5, 1.0)])
def test_at_most_one_read_per_draft_step_and_four_per_round(batch, fb, rb):
    reads, stats = _generate_counting("gpt2", batch, fb, rb)
    steps, rounds = stats.batch_small_calls, stats.batch_large_calls
    assert rounds > 3 and steps > rounds  # the bound is checked on real work
    assert _own(reads) <= steps + 4 * rounds, (_own(reads), steps, rounds, reads.by_caller.most_common(8))
    assert reads.count <= _own(reads) + 2 * (steps + rounds)  # the models' own: at most a couple per forward


@pytest.mark.parametrize("batch", [1, 8])
def test_auto_keeps_the_bound(batch):
    """fallback_threshold="auto": the drafts' confidence bins ride on each step's one read."""
    reads, stats = _generate_counting("gpt2", batch, bild.AUTO, 1.0, cost_ratio=0.2)
    steps, rounds = stats.batch_small_calls, stats.batch_large_calls
    assert rounds > 3 and steps > rounds
    assert _own(reads) <= steps + 4 * rounds, (_own(reads), steps, rounds, reads.by_caller.most_common(8))


def test_reads_do_not_grow_with_the_batch():
    one, stats_one = _generate_counting("gpt2", 1, 0.0, 0.0)
    eight, stats_eight = _generate_counting("gpt2", 8, 0.0, 0.0)
    per_call = lambda reads, st: _own(reads) / (st.batch_small_calls + st.batch_large_calls)
    assert per_call(eight, stats_eight) <= per_call(one, stats_one) + 0.5, (_own(one), _own(eight))


def test_sampling_keeps_the_bound():
    reads, stats = _generate_counting("gpt2", 4, 0.5, 0.0, do_sample=True, temperature=0.8, top_p=0.9)
    assert _own(reads) <= stats.batch_small_calls + 4 * stats.batch_large_calls, reads.by_caller.most_common(8)


def test_the_counter_counts_what_waits_for_the_device():
    t = torch.arange(6)
    with HostReads() as reads:
        t.sum().item(), t.tolist(), bool(t.any()), int(t[0]), t[t > 2], t.nonzero(), t + 1, t.unique()
    assert reads.count == 7  # everything but `t + 1`


@pytest.mark.parametrize("arch, attn, static_cache", [
    ("gpt2", None, False), ("llama", None, False), ("t5", None, False),
    ("gpt2", "eager", False), ("llama", "eager", True),
])
@pytest.mark.parametrize("fb", [0.0, 0.5])
def test_all_reads_at_batch_8_within_the_bound_and_exact(arch, attn, static_cache, fb):
    """Every read, transformers' included: the masks that transformers would check for all ones on each forward
    (one read per forward) go in prepared, so a batch keeps one read per draft step plus at most four per round.
    The same run is lossless: identical to the large model's greedy generate."""
    reads, out, large, inputs = _run_counting(arch, 8, fb, 0.0, attn=attn, static_cache=static_cache)
    steps, rounds = out.stats.batch_small_calls, out.stats.batch_large_calls
    assert rounds > 3 and steps > rounds
    assert reads.count <= steps + 4 * rounds, (reads.count, steps, rounds, reads.by_caller.most_common(8))
    assert not [caller for caller in reads.by_caller if "_ignore_causal_mask" in caller], reads.by_caller
    expected = large.generate(**inputs, do_sample=False, max_new_tokens=40)
    assert torch.equal(out.sequences, expected)


def _spy(monkeypatch, cls, name, reference):
    """Wrap cls.name (an adapter's mask builder) to collect (built, transformers' own) for every prepared mask."""
    seen = []
    original = getattr(cls, name)

    def spy(self, *args):
        got = original(self, *args)
        if self.mask_impl is not None and got is not None:
            seen.append((got, reference(self, *args)))
        return got

    monkeypatch.setattr(cls, name, spy)
    return seen


def _embeds(adapter, batch, q_length, dtype=None):
    return torch.zeros(batch, q_length, 1, dtype=dtype or adapter.mask_dtype, device=adapter.device)


def _causal_reference(adapter, mask, q_length):
    """The mask the model builds itself from the 2-D mask (cache passed positionally: renamed between 5.17 and 5.24)."""
    cache = adapter.cache.self_attention_cache if hasattr(adapter.cache, "self_attention_cache") else adapter.cache
    padding = torch.from_numpy(mask).long()
    return create_causal_mask(adapter.mask_config, _embeds(adapter, mask.shape[0], q_length), padding, cache)


def _cross_reference(adapter, q_length):
    states = adapter.encoder_outputs.last_hidden_state
    return create_bidirectional_mask(adapter.mask_config, _embeds(adapter, states.shape[0], q_length, states.dtype),
                                     adapter.encoder_mask, encoder_hidden_states=states)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "t5"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("static_cache", [False, True])
def test_prepared_masks_are_transformers_own(arch, attn, static_cache, monkeypatch):
    """Every prepared mask equals, dtype and all, the one the model's own create_causal_mask /
    create_bidirectional_mask builds from the 2-D mask at that cache state (dynamic and static caches)."""
    causal = _spy(monkeypatch, ModelAdapter, "_self_attention_mask", _causal_reference)
    cross = _spy(monkeypatch, EncoderDecoderAdapter, "_cross_attention_mask", _cross_reference)
    small, large = tiny_pair(arch, "agree", seed=0)
    for m in (small, large):
        m.set_attn_implementation(attn)
    inputs = batch_inputs(prompts(8, seed=3, min_len=1), arch == "t5")
    BiLDGenerator(small, large, 0.5, 0.0, 6, drafting_guard=False, static_cache=static_cache).generate(
        **inputs, max_new_tokens=40)
    row_by_row = arch == "t5" and static_cache  # the static path runs these rows one by one: no holes, padded sources
    assert (row_by_row or len(causal) > 5) and (arch != "t5" or len(cross) > 5)
    for got, want in causal + cross:
        assert want is not None and want.dtype == got.dtype and want.dim() == 4
        assert torch.equal(got, want)


def test_masks_stay_two_dimensional_where_not_provably_the_same():
    """A sliding window (its layers get masks of their own), an unlisted module, flash attention: 2-D masks."""
    assert prepared_mask_implementation(tiny_model("gpt2", 0)) == "sdpa"
    assert prepared_mask_implementation(tiny_model("t5", 0)) == "sdpa"
    windowed = MistralForCausalLM(MistralConfig(vocab_size=48, hidden_size=32, intermediate_size=64,
                                                num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                                sliding_window=4))
    assert prepared_mask_implementation(windowed) is None

    class Own(type(tiny_model("llama", 0))):  # a subclass defined outside transformers: not read, not prepared
        pass

    assert prepared_mask_implementation(Own(tiny_model("llama", 0).config)) is None
    flash = tiny_model("llama", 0)
    flash.config._attn_implementation_internal = "flash_attention_2"
    assert prepared_mask_implementation(flash) is None
    adapter = DecoderOnlyAdapter(flash, 2, torch.device("cpu"))
    mask = np.array([[True, False, True], [True, True, True]])
    assert adapter._self_attention_mask(mask, 1).dim() == 2  # the 2-D mask, as before

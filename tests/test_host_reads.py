"""Host reads of device values (each one drains a GPU) stay at one per draft step plus a few per round,
whatever the batch size: the round is tensor operations, lengths are mirrored on the host."""

from pathlib import Path

import pytest
import torch

import bild
from bild import BiLDGenerator
from bild.host_reads import HostReads
from tiny_models import batch_inputs, prompts, tiny_pair


def _generate_counting(arch, batch, fb, rb, n=6, max_new=40, cost_ratio=None, **kwargs):
    small, large = tiny_pair(arch, "agree", seed=0)
    inputs = batch_inputs(prompts(batch, seed=3, min_len=2), arch == "t5")
    # The guard off: this same-size pair's drafting never pays in weights read, and the bound wants drafting work.
    gen = BiLDGenerator(small, large, fb, rb, n, drafting_guard=False, cost_ratio=cost_ratio)
    with HostReads() as reads:
        out = gen.generate(**inputs, max_new_tokens=max_new, return_dict_in_generate=True, **kwargs)
    return reads, out.stats


BILD_DIR = str(Path(bild.__file__).parent)


def _own(reads):
    """bild's own reads; transformers adds one per forward given a mask (its is-the-mask-all-ones check)."""
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

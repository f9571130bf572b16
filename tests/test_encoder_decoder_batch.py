"""T5-family encoder-decoder batches run as one batched decoder pass (rows right-aligned in one cache), and
every row still equals the row generated alone; other encoder-decoder models run row by row."""

import pytest
import torch

from bild import BiLDGenerator
from tiny_models import PAD, batch_inputs, prompts, tiny_pair


def _rows_alone(gen, rows, **kwargs):
    return [gen.generate(**batch_inputs([row], True), **kwargs)[0] for row in rows]


@pytest.mark.parametrize("arch, seed", [("t5", 3), ("mt5", 1)])  # pairs whose rows drift apart
@pytest.mark.parametrize("fb, rb, n", [(0.0, 0.0, 6), (0.5, 1.5, 4), (0.3, 0.0, 10)])
def test_a_t5_batch_is_one_batched_pass_and_equals_its_rows_alone(arch, seed, fb, rb, n):
    small, large = tiny_pair(arch, "disagree", seed=seed)
    rows = prompts(5, seed=4, min_len=1, max_len=7)
    gen = BiLDGenerator(small, large, fb, rb, n)
    out = gen.generate(**batch_inputs(rows, True), max_new_tokens=14, return_dict_in_generate=True)
    stats = out.stats
    # One batched pass: the batch's large calls are the rounds of its slowest row, not their sum.
    assert stats.batch_large_calls == max(stats.large_forward_calls) < sum(stats.large_forward_calls)
    assert len(set(stats.committed_tokens)) > 1 or len(set(stats.large_forward_calls)) > 1  # rows realigned
    for i, alone in enumerate(_rows_alone(gen, rows, max_new_tokens=14)):
        got = out.sequences[i]
        assert torch.equal(got[: len(alone)], alone) and (got[len(alone):] == PAD).all()
    if rb == 0.0:
        inputs = batch_inputs(rows, True)
        assert torch.equal(out.sequences, large.generate(**inputs, do_sample=False, max_new_tokens=14))


def test_bart_batches_still_run_row_by_row():
    small, large = tiny_pair("bart", "disagree", seed=1)
    out = BiLDGenerator(small, large, 0.5, 0.0, 4).generate(**batch_inputs(prompts(3, seed=4), True), max_new_tokens=8,
                                                              return_dict_in_generate=True)
    assert out.stats.batch_large_calls == sum(out.stats.large_forward_calls)


def test_t5_sampling_batch_with_several_sequences_per_prompt():
    small, large = tiny_pair("t5", "agree", seed=2)
    inputs = batch_inputs(prompts(2, seed=5, min_len=2), True)
    torch.manual_seed(0)
    out = BiLDGenerator(small, large, 0.5, 0.0, 4).generate(**inputs, do_sample=True, num_return_sequences=3,
                                                              max_new_tokens=10, return_dict_in_generate=True)
    assert out.sequences.shape[0] == 6 and out.stats.batch_large_calls == max(out.stats.large_forward_calls)
    assert len({tuple(r.tolist()) for r in out.sequences}) > 2  # independent draws per row

"""Generation settings reach both models through the logits processors and stopping criteria,
each verified position with its own prefix: lossless BiLD still equals the large model."""

import pytest
import torch

from bild import BiLDGenerator
from tiny_models import ENCODER_DECODER, PAD, batch_inputs, prompts, tiny_pair

SETTINGS = [
    dict(repetition_penalty=1.8),
    dict(no_repeat_ngram_size=2),
    dict(bad_words_ids=[[5], [7, 8]]),
    dict(suppress_tokens=[3, 4, 9]),
    dict(min_new_tokens=12, eos_token_id=[2, 11, 17]),
    dict(eos_token_id=[11, 17, 23]),
    dict(max_length=14),
]


@pytest.mark.parametrize("arch", ["qwen2", "t5"])
@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: ",".join(s))
def test_lossless_with_generation_settings(arch, settings):
    small, large = tiny_pair(arch, "disagree", seed=3)
    inputs = batch_inputs(prompts(1, seed=6, min_len=4), arch in ENCODER_DECODER)
    kwargs = dict(settings)
    kwargs.setdefault("max_new_tokens", 20) if "max_length" not in kwargs else None
    expected = large.generate(**inputs, do_sample=False, **kwargs)
    for fb, n in ((0.0, 10), (0.4, 3)):
        got = BiLDGenerator(small, large, fb, 0.0, n).generate(**inputs, **kwargs)
        assert torch.equal(got, expected), (fb, n)


def test_forced_bos_and_eos_for_bart():
    small, large = tiny_pair("bart", "agree", seed=1)
    inputs = batch_inputs(prompts(1, seed=7, min_len=4), True)
    kwargs = dict(forced_bos_token_id=13, forced_eos_token_id=2, max_new_tokens=9)
    expected = large.generate(**inputs, do_sample=False, **kwargs)
    assert expected[0, 1].item() == 13 and expected[0, -1].item() == 2
    got = BiLDGenerator(small, large, 0.0, 0.0, 10).generate(**inputs, **kwargs)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("settings", [dict(no_repeat_ngram_size=2), dict(bad_words_ids=[[5]], min_new_tokens=6)],
                         ids=["no_repeat_ngram", "bad_words+min_new"])
def test_batch_equals_alone_with_processors(settings):
    small, large = tiny_pair("llama", "agree", seed=2)
    rows = prompts(3, seed=8)
    gen = BiLDGenerator(small, large, 0.3, 1.5, 5)
    batched = gen.generate(**batch_inputs(rows, False), max_new_tokens=16, **settings)
    P = max(map(len, rows))
    for i, row in enumerate(rows):
        alone = gen.generate(**batch_inputs([row], False), max_new_tokens=16, **settings)[0]
        got = batched[i, P - len(row):]
        assert torch.equal(got[: len(alone)], alone) and (got[len(alone):] == PAD).all()


@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
def test_repetition_penalty_on_a_left_padded_batch_equals_large_greedy(arch):
    """transformers 5.24 gives repetition_penalty one prompt_ignore_length per row; bild calls the processors on
    a few rows at a time, so they must get those rows' lengths (this raised inside transformers before)."""
    small, large = tiny_pair(arch, "disagree", seed=0)
    inputs = batch_inputs(prompts(3, seed=1), False)
    expected = large.generate(**inputs, do_sample=False, max_new_tokens=12, repetition_penalty=1.3)
    got = BiLDGenerator(small, large, 0.5, 0.0, 4).generate(**inputs, max_new_tokens=12, repetition_penalty=1.3)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("arch", ["qwen2", "t5"])
def test_prefix_allowed_tokens_fn_gets_each_rows_own_batch_id(arch):
    """The user's function is called with the row's index in the request, also when bild processes a subset
    of the rows (rows sharing a prefix length, or one row of a batch run row by row)."""
    small, large = tiny_pair(arch, "disagree", seed=2)
    inputs = batch_inputs(prompts(3, seed=8, min_len=2, max_len=6), arch in ENCODER_DECODER)
    allowed = {0: list(range(3, 16)), 1: list(range(16, 30)), 2: list(range(30, 44))}
    fn = lambda batch_id, ids: allowed[batch_id] + [2]
    kwargs = dict(prefix_allowed_tokens_fn=fn, max_new_tokens=12)
    expected = large.generate(**inputs, do_sample=False, **kwargs)
    got = BiLDGenerator(small, large, 0.4, 0.0, 4).generate(**inputs, **kwargs)
    assert torch.equal(got, expected)


def test_prefix_constrained_processor_for_a_subset_of_rows_uses_their_batch_ids():
    from transformers import LogitsProcessorList
    from transformers.generation.logits_process import PrefixConstrainedLogitsProcessor

    from bild.row_processors import for_rows

    allowed = {0: [3], 1: [4], 2: [5]}
    processors = LogitsProcessorList([PrefixConstrainedLogitsProcessor(lambda b, ids: allowed[b], num_beams=1)])
    scores = for_rows(processors, [2, 0])(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 8))
    assert scores.argmax(-1).tolist() == [5, 3] and torch.isinf(scores).sum() == 2 * 7

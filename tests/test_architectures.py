"""Every text architecture of the installed transformers: lossless BiLD is exact, or refused before generation.

The sweep (tests/arch_sweep.py, which also writes docs/support.md) runs once per architecture; the named
tests below pin each family that once failed: sliding windows, positions that are not position ids,
recurrent and cache-less models, models with a cache class of their own, and encoder-side processors.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from transformers import LogitsProcessorList
from transformers.generation.logits_process import (
    EncoderNoRepeatNGramLogitsProcessor, EncoderRepetitionPenaltyLogitsProcessor,
)

import arch_sweep
from arch_sweep import MAX_NEW, PROMPTS, batch, build
from bild import BiLDGenerator
from bild.adapters import DecoderOnlyAdapter
from bild.architecture import needs_row_by_row, sliding_window
from bild.row_processors import for_rows

# transformers itself cannot build or run these from scaled-down defaults (see docs/support.md for why);
# a new entry here is a sweep regression, not a pass.
NOT_TESTABLE = {
    "bailing_hybrid", "blt", "cohere_compass_text", "dbrx", "dory", "dots3_note_text", "gemma4_assistant",
    "gemma4_unified_assistant", "hrm_text", "qwen4_exp_text", "xlstm", "t5gemma",
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and leave the other core to the rest of the suite)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.parametrize("arch, kind", arch_sweep.architectures(), ids=lambda v: v)
def test_sweep_exact_or_refused(arch, kind):
    outcome = arch_sweep.run_one(arch, kind)
    assert outcome.status != "FAIL", outcome.detail
    if outcome.status == "not testable":
        assert arch in NOT_TESTABLE, outcome.detail
    # The README's support table says what the sweep finds (regenerate it with `python tests/arch_sweep.py`).
    assert _readme_groups().get(arch) == arch_sweep.readme_group(outcome), arch


@functools.lru_cache(maxsize=1)
def _readme_groups() -> dict[str, str]:
    return arch_sweep.readme_groups(Path(__file__).resolve().parent.parent / "README.md")


def _lossless(small, large, inputs):
    return BiLDGenerator(small, large, 0.5, 0.0, 4).generate(**inputs, max_new_tokens=MAX_NEW)


def _eos_emitted(large, small, inputs):
    """Set an EOS that the large model emits (its 5th new token on row 0), so rows stop early."""
    free = large.generate(**inputs, do_sample=False, max_new_tokens=MAX_NEW)
    eos = int(free[0, -MAX_NEW + 4])
    for m in (large, small):
        m.generation_config.eos_token_id = eos


@pytest.mark.parametrize("arch", ["mistral", "gemma3_text", "gpt_oss"])
def test_sliding_window_exact_past_the_window(arch):
    large, small = build(arch, "decoder-only", 2, 1), build(arch, "decoder-only", 2, 2)
    assert sliding_window(large) == arch_sweep.WINDOW  # prompts of 3-7 tokens + 12 new ones go past it
    three = batch(PROMPTS, False)
    _eos_emitted(large, small, three)
    for inputs in (batch(PROMPTS[2:], False), three):
        assert torch.equal(_lossless(small, large, inputs), large.generate(**inputs, do_sample=False, max_new_tokens=MAX_NEW))


def test_sliding_window_static_cache_exact():
    large, small = build("mistral", "decoder-only", 2, 1), build("mistral", "decoder-only", 2, 2)
    inputs = batch(PROMPTS[2:], False)
    out = BiLDGenerator(small, large, 0.5, 0.0, 4, static_cache=True).generate(**inputs, max_new_tokens=MAX_NEW)
    assert torch.equal(out, large.generate(**inputs, do_sample=False, max_new_tokens=MAX_NEW))


def test_sliding_layers_keep_every_slot():
    large = build("mistral", "decoder-only", 2, 1)
    adapter = DecoderOnlyAdapter(large, 1, torch.device("cpu"))
    assert not any(adapter.cache.is_sliding)  # so a crop past the window never raises


@pytest.mark.parametrize("arch", ["mpt", "gpt_neo"])
def test_positions_not_from_position_ids(arch):
    """MPT (ALiBi from the key length), GPT-Neo (local attention counted in slots): a batch runs row by row."""
    large, small = build(arch, "decoder-only", 2, 1), build(arch, "decoder-only", 2, 2)
    assert needs_row_by_row(large)
    three = batch(PROMPTS, False)
    _eos_emitted(large, small, three)
    assert torch.equal(_lossless(small, large, three), large.generate(**three, do_sample=False, max_new_tokens=MAX_NEW))


@pytest.mark.parametrize("arch", ["mamba", "mamba2", "falcon_mamba", "jamba", "bamba", "zamba2", "falcon_h1",
                                  "granitemoehybrid", "qwen3_next", "recurrent_gemma", "lfm2"])
def test_recurrent_models_refused(arch):
    large, small = build(arch, "decoder-only", 2, 1), build(arch, "decoder-only", 2, 2)
    with pytest.raises(ValueError, match="keeps a recurrent state .* cannot be rolled back; BiLD needs models with a key/value cache"):
        BiLDGenerator(small, large)


def test_rwkv_without_cache_argument_refused():
    large, small = build("rwkv", "decoder-only", 2, 1), build("rwkv", "decoder-only", 2, 2)
    with pytest.raises(ValueError, match="takes no key/value cache in its forward"):
        BiLDGenerator(small, large)


def test_minimax_own_cache_class_refused():
    large, small = build("minimax", "decoder-only", 2, 1), build("minimax", "decoder-only", 2, 2)
    with pytest.raises(ValueError, match="cache class of its own \\(MiniMaxCache\\)"):
        BiLDGenerator(small, large)


def test_xlstm_refused():
    import transformers

    config = arch_sweep.tiny_config("xlstm", 2)
    models = [transformers.xLSTMForCausalLM(config).eval() for _ in range(2)]  # transformers cannot run it tiny
    with pytest.raises(ValueError, match="takes no attention mask"):
        BiLDGenerator(*models)


@pytest.mark.parametrize("arch", ["prophetnet", "xlm", "cpmant"])
def test_attention_models_with_unusable_caches_refused(arch):
    large, small = build(arch, "decoder-only", 2, 1), build(arch, "decoder-only", 2, 2)
    with pytest.raises(ValueError, match="BiLD cannot run the small model .* exactly"):
        BiLDGenerator(small, large)


def test_fsmt_refused_its_decoder_sees_later_tokens():
    """Found by the sweep once kept fallback drafts made verify passes several tokens wide: FSMT's logits at
    a position depend on the decoder tokens after it, so a verify pass disagrees with step-by-step greedy."""
    large = build("fsmt", "encoder-decoder", 2, 1)
    inputs = batch(PROMPTS[:1], True)
    dec = torch.tensor([[large.generation_config.decoder_start_token_id, 5, 6]])
    with torch.no_grad():
        wide = large(**inputs, decoder_input_ids=dec, use_cache=False).logits[0, 0]
        one = large(**inputs, decoder_input_ids=dec[:, :1], use_cache=False).logits[0, 0]
    assert not torch.allclose(wide, one)  # if transformers fixes this, the refusal can go
    with pytest.raises(ValueError, match="BiLD cannot run the small model .* exactly"):
        BiLDGenerator(build("fsmt", "encoder-decoder", 2, 2), large)


def test_blenderbot_stock_encoder_no_repeat_ngram():
    """Blenderbot's checkpoints ship encoder_no_repeat_ngram_size=3: honoured per row, as transformers does."""
    large, small = build("blenderbot", "encoder-decoder", 2, 1), build("blenderbot", "encoder-decoder", 2, 2)
    for m in (large, small):
        m.generation_config.encoder_no_repeat_ngram_size = 3
    rows = [PROMPTS[0], PROMPTS[1] + PROMPTS[1], PROMPTS[2]]
    for inputs in (batch(rows[:1], True), batch(rows, True)):
        expected = large.generate(**inputs, do_sample=False, max_new_tokens=MAX_NEW)
        assert torch.equal(_lossless(small, large, inputs), expected)


@pytest.mark.parametrize("make", [
    lambda ids: EncoderNoRepeatNGramLogitsProcessor(2, ids),
    lambda ids: EncoderRepetitionPenaltyLogitsProcessor(1.7, ids),
])
def test_encoder_processors_for_rows_equal_the_batch_rows(make):
    gen = torch.Generator().manual_seed(0)
    encoder_ids = torch.randint(0, 12, (3, 6), generator=gen)
    prefix = torch.cat([torch.randint(0, 12, (3, 2), generator=gen), encoder_ids[:, :1]], dim=1)  # ends a source bigram
    scores = torch.randn(3, 12, generator=gen)
    processors = LogitsProcessorList([make(encoder_ids)])
    full = processors(prefix, scores.clone())
    for rows in ([2], [0, 2], [1]):
        assert torch.equal(for_rows(processors, rows)(prefix[rows], scores[rows].clone()), full[rows])
    assert not torch.equal(full, scores)  # the processor changes something here


class _CountingTok:
    def __init__(self, n):
        self.vocab, self.calls = {f"t{i}": i for i in range(n)}, 0

    def get_vocab(self):
        self.calls += 1
        return dict(self.vocab)

    def __len__(self):
        return len(self.vocab)


def test_vocabulary_compared_once_per_tokenizer_pair():
    large, small = build("llama", "decoder-only", 2, 1), build("llama", "decoder-only", 2, 2)
    a, b = _CountingTok(arch_sweep.VOCAB), _CountingTok(arch_sweep.VOCAB)
    gen = BiLDGenerator(small, large, 0.5, 0.0, 4, small_tokenizer=a, large_tokenizer=b, cross_tokenizer=False)
    inputs = batch(PROMPTS[:1], False)
    first = gen.generate(**inputs, max_new_tokens=4)
    assert torch.equal(gen.generate(**inputs, max_new_tokens=4), first)
    assert (a.calls, b.calls) == (1, 1)  # at construction only, not on each generate
    b.vocab["extra"] = arch_sweep.VOCAB  # a tokenizer that gained a token is compared again (and disagrees now)
    with pytest.raises(ValueError, match="disagree on 1 token ids"):
        gen.generate(**inputs, max_new_tokens=4)

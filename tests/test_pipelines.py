"""transformers' text-generation pipeline with BiLD: generate arguments given to the pipeline call reach
`large.generate`, so `custom_generate=bild_generate, small_model=small` (or the Hub folder) makes it BiLD.
Reference: the same pipeline call without BiLD (large greedy), text for text. transformers 5 has no
translation or summarization pipeline; encoder-decoder pairs go through `generate` (see the README)."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import pipeline

import bild
from tiny_models import char_tokenizer, tiny_pair

FOLDER = Path(__file__).resolve().parents[1] / "hub" / "bild-generate"
PROMPTS = ["abc", "q", "hello9", "zzde", "x"]


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


def _texts(results):
    return [r[0]["generated_text"] if isinstance(r, list) else r["generated_text"] for r in results]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_text_generation_pipeline_gives_large_greedy_text(arch, batch_size, tok):
    small, large = tiny_pair(arch, "disagree")
    pipe = pipeline("text-generation", model=large, tokenizer=tok)
    kw = dict(max_new_tokens=12, do_sample=False, batch_size=batch_size)
    ref = _texts(pipe(PROMPTS, **kw))
    got = _texts(pipe(PROMPTS, **kw, custom_generate=bild.bild_generate, small_model=small, rollback_threshold=0.0))
    assert got == ref
    assert any(len(r) > len(p) for r, p in zip(ref, PROMPTS))  # something was generated
    hub = _texts(pipe(PROMPTS, **kw, custom_generate=str(FOLDER), trust_remote_code=True, small_model=small,
                      rollback_threshold=0.0))
    assert hub == ref


def test_pipeline_stop_sequence(tok):
    small, large = tiny_pair("llama", "disagree")
    pipe = pipeline("text-generation", model=large, tokenizer=tok)
    kw = dict(max_new_tokens=20, do_sample=False, stop_sequence="a", return_full_text=False)
    ref = _texts(pipe(PROMPTS, **kw))
    unstopped = _texts(pipe(PROMPTS, max_new_tokens=20, do_sample=False, return_full_text=False))
    assert ref != unstopped  # the stop does fire
    # The callable: transformers does not hand the pipeline's tokenizer to it, so it is given as large_tokenizer.
    got = _texts(pipe(PROMPTS, **kw, custom_generate=bild.bild_generate, small_model=small, rollback_threshold=0.0,
                      large_tokenizer=pipe.tokenizer))
    assert got == ref
    # The Hub folder receives the tokenizer the pipeline passes and needs nothing more.
    hub = _texts(pipe(PROMPTS, **kw, custom_generate=str(FOLDER), trust_remote_code=True, small_model=small,
                      rollback_threshold=0.0))
    assert hub == ref


def test_pipeline_stop_sequence_without_a_tokenizer_for_bild_is_bilds_error(tok):
    small, large = tiny_pair("llama", "disagree")
    pipe = pipeline("text-generation", model=large, tokenizer=tok)
    with pytest.raises(ValueError, match="large_tokenizer"):
        pipe(PROMPTS[:1], max_new_tokens=5, stop_sequence="a", custom_generate=bild.bild_generate, small_model=small)


def test_pipeline_sampling_at_always_fallback_draws_what_large_draws(tok):
    import torch

    small, large = tiny_pair("llama", "disagree")
    pipe = pipeline("text-generation", model=large, tokenizer=tok)
    kw = dict(max_new_tokens=12, do_sample=True, batch_size=1)
    torch.manual_seed(5)
    ref = _texts(pipe(PROMPTS[:2], **kw))
    torch.manual_seed(5)
    got = _texts(pipe(PROMPTS[:2], **kw, custom_generate=bild.bild_generate, small_model=small,
                      fallback_threshold=bild.ALWAYS_FALLBACK))
    assert got == ref

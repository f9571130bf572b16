"""generate options a drop-in must honour: stop strings, scores and logits, and the refusal of guidance.

References: `large.generate` with the same options (greedy), and, for sampling and the small model's scores,
the models' logits recomputed by one teacher-forced forward over BiLD's own output.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper

import bild
from tiny_models import EOS, PAD, batch_inputs, char_tokenizer, prompts, tiny_pair

ARCHS = ("llama", "gpt2", "t5", "bart")  # batched decoder-only, batched T5 family, BART row by row


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


def _inputs(arch, batch=3, seed=1):
    return batch_inputs(prompts(batch, seed=seed), arch in ("t5", "bart"))


# ---- stop strings ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["llama", "gpt2", "t5"])
@pytest.mark.parametrize("stops", [["a"], ["ab"], ["e", "q"], ["xyx"]])
def test_stop_strings_stop_where_large_greedy_stops(arch, stops, tok):
    small, large = tiny_pair(arch, "disagree")
    inputs = _inputs(arch)
    kw = dict(max_new_tokens=30, do_sample=False)
    plain = large.generate(**inputs, **kw)
    ref = large.generate(**inputs, **kw, stop_strings=stops, tokenizer=tok)
    out = bild.BiLDGenerator(small, large, rollback_threshold=0.0, tokenizer=tok).generate(**inputs, **kw, stop_strings=stops)
    assert torch.equal(out, ref)
    # The same through transformers' own generate: its `tokenizer=` never reaches a custom_generate function.
    hf = large.generate(**inputs, **kw, stop_strings=stops, custom_generate=bild.bild_generate, small_model=small,
                        rollback_threshold=0.0, large_tokenizer=tok)
    assert torch.equal(hf, ref)


def test_a_stop_string_does_fire_in_these_tests(tok):
    small, large = tiny_pair("llama", "disagree")
    inputs = _inputs("llama")
    plain = large.generate(**inputs, max_new_tokens=30, do_sample=False)
    stopped = large.generate(**inputs, max_new_tokens=30, do_sample=False, stop_strings=["a"], tokenizer=tok)
    assert (stopped != PAD).sum() < (plain != PAD).sum()


def test_stop_strings_with_the_tokenizer_given_to_generate_and_from_a_generation_config(tok):
    small, large = tiny_pair("llama", "agree")
    inputs = _inputs("llama")
    ref = large.generate(**inputs, max_new_tokens=30, do_sample=False, stop_strings=["ca", "9"], tokenizer=tok)
    generator = bild.BiLDGenerator(small, large, rollback_threshold=0.0)  # no tokenizer of its own
    assert torch.equal(generator.generate(**inputs, max_new_tokens=30, stop_strings=["ca", "9"], tokenizer=tok), ref)
    config = large.generation_config.__class__(**large.generation_config.to_dict())
    config.update(stop_strings=["ca", "9"], max_new_tokens=30, do_sample=False)
    assert torch.equal(generator.generate(**inputs, generation_config=config, tokenizer=tok), ref)
    assert config.stop_strings == ["ca", "9"]  # the caller's config is not changed


def test_stop_strings_without_a_tokenizer_get_bilds_error():
    small, large = tiny_pair("llama")
    with pytest.raises(ValueError, match="large_tokenizer"):
        large.generate(**_inputs("llama"), max_new_tokens=5, stop_strings=["a"], custom_generate=bild.bild_generate,
                       small_model=small)


def test_stop_strings_with_lossy_bild_judge_verified_tokens_only(tok):
    """Rollback > 0: the output is BiLD's own, but no committed prefix but a row's last ends with a stop string."""
    small, large = tiny_pair("gpt2", "disagree")
    inputs = _inputs("gpt2", batch=4)
    out = bild.BiLDGenerator(small, large, rollback_threshold=3.0, tokenizer=tok).generate(
        **inputs, max_new_tokens=30, stop_strings=["a", "7"])
    P = inputs["input_ids"].shape[1]
    stopped = 0
    for row in out[:, P:].tolist():
        row = [t for t in row if t != PAD]
        assert not any(tok.decode(row[:t]).endswith(("a", "7")) for t in range(1, len(row)))
        stopped += tok.decode(row).endswith(("a", "7"))
    assert stopped  # some row did stop on it


# ---- classifier-free guidance ---------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["llama", "t5"])
def test_guidance_is_refused_before_any_forward(arch):
    small, large = tiny_pair(arch)
    calls = []
    hooks = [m.register_forward_hook(lambda *a: calls.append(1)) for m in (small, large)]
    try:
        with pytest.raises(ValueError, match="classifier-free guidance"):
            bild.BiLDGenerator(small, large).generate(**_inputs(arch), max_new_tokens=5, guidance_scale=1.5)
        with pytest.raises(ValueError, match="classifier-free guidance"):
            large.generate(**_inputs(arch), max_new_tokens=5, guidance_scale=1.5, custom_generate=bild.bild_generate,
                           small_model=small)
    finally:
        for h in hooks:
            h.remove()
    assert not calls
    # guidance_scale=1 is no guidance: allowed.
    bild.BiLDGenerator(small, large).generate(**_inputs(arch), max_new_tokens=3, guidance_scale=1.0)


# ---- scores and logits ----------------------------------------------------------------------------------------

def _alive(generated: torch.Tensor) -> torch.Tensor:
    """(B, T) True at positions generated while the row was unfinished (before and at its EOS)."""
    alive = torch.ones_like(generated, dtype=torch.bool)
    for t in range(1, generated.shape[1]):
        alive[:, t] = alive[:, t - 1] & (generated[:, t - 1] != EOS)
    return alive


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("mode", ["disagree", "agree"])
def test_scores_and_logits_equal_large_greedys(arch, mode):
    small, large = tiny_pair(arch, mode)
    inputs = _inputs(arch)
    kw = dict(max_new_tokens=20, do_sample=False, return_dict_in_generate=True, output_scores=True, output_logits=True,
              repetition_penalty=1.3, min_new_tokens=6)
    ref = large.generate(**inputs, **kw)
    # a number, not "auto": tiny models' costs can make "auto" the large model's own loop, not BiLD's rounds
    out = bild.BiLDGenerator(small, large, 0.6, rollback_threshold=0.0).generate(**inputs, **kw)
    assert torch.equal(out.sequences, ref.sequences)
    assert len(out.scores) == len(ref.scores) == len(out.logits) == len(ref.logits)
    alive = _alive(ref.sequences[:, -len(ref.scores):])
    for name in ("scores", "logits"):
        got, want = torch.stack(getattr(out, name), 1), torch.stack(getattr(ref, name), 1)
        assert got.shape == want.shape and got.dtype == want.dtype == torch.float32
        torch.testing.assert_close(got[alive], want[alive], atol=1e-4, rtol=1e-4)
        assert not got[~alive].any()  # finished rows: zeros
    transition = large.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
    expected = large.compute_transition_scores(ref.sequences, ref.scores, normalize_logits=True)
    torch.testing.assert_close(transition[alive], expected[alive], atol=1e-4, rtol=1e-4)


def test_scores_through_custom_generate_and_either_flag_alone():
    small, large = tiny_pair("llama", "agree")
    inputs = _inputs("llama")
    base = dict(max_new_tokens=12, do_sample=False, return_dict_in_generate=True)
    ref = large.generate(**inputs, **base, output_logits=True)
    out = large.generate(**inputs, **base, output_logits=True, custom_generate=bild.bild_generate, small_model=small,
                         rollback_threshold=0.0)
    assert out.scores is None and out.small_scores is None and len(out.logits) == len(ref.logits)
    alive = _alive(ref.sequences[:, -len(ref.logits):])
    torch.testing.assert_close(torch.stack(out.logits, 1)[alive], torch.stack(ref.logits, 1)[alive], atol=1e-4, rtol=1e-4)
    only = large.generate(**inputs, **base, output_scores=True, custom_generate=bild.bild_generate, small_model=small,
                          rollback_threshold=0.0)
    assert only.logits is None and len(only.scores) == len(ref.logits)
    plain = large.generate(**inputs, max_new_tokens=12, output_scores=True, custom_generate=bild.bild_generate,
                           small_model=small, rollback_threshold=0.0)
    assert torch.equal(plain, ref.sequences)  # no return_dict_in_generate: the sequences, as transformers


def _teacher_forced_logits(model, sequences, mask):
    """(B, L, V) next-token logits of a decoder-only model over whole sequences, no cache."""
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return model(input_ids=sequences, attention_mask=mask, position_ids=positions).logits.float()


@pytest.mark.parametrize("mode", ["disagree", "agree"])
def test_sampling_scores_are_the_large_models_warped_logits(mode):
    small, large = tiny_pair("llama", mode)
    inputs = _inputs("llama")
    P = inputs["input_ids"].shape[1]
    torch.manual_seed(0)
    out = bild.BiLDGenerator(small, large, rollback_threshold=0.0).generate(
        **inputs, max_new_tokens=16, do_sample=True, temperature=0.8, top_k=12, return_dict_in_generate=True,
        output_scores=True, output_logits=True)
    seq = out.sequences
    mask = torch.cat([inputs["attention_mask"], torch.ones(seq.shape[0], seq.shape[1] - P, dtype=torch.long)], 1)
    logits = _teacher_forced_logits(large, seq, mask)[:, P - 1 : -1]  # (B, T, V): the logits each new token was drawn from
    warp = LogitsProcessorList([TemperatureLogitsWarper(0.8), TopKLogitsWarper(12)])
    alive = _alive(seq[:, P:])
    torch.testing.assert_close(torch.stack(out.logits, 1)[alive], logits[alive], atol=1e-4, rtol=1e-4)
    want = torch.stack([warp(seq[:, : P + t], logits[:, t]) for t in range(logits.shape[1])], 1)
    got = torch.stack(out.scores, 1)
    assert torch.equal(torch.isinf(got[alive]), torch.isinf(want[alive]))
    finite = alive.unsqueeze(-1) & ~torch.isinf(want)
    torch.testing.assert_close(got[finite], want[finite], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("mode", ["disagree", "agree"])
def test_small_scores_are_the_small_models_where_it_drafted(mode):
    small, large = tiny_pair("llama", mode)
    inputs = _inputs("llama")
    P = inputs["input_ids"].shape[1]
    out = bild.BiLDGenerator(small, large, rollback_threshold=0.0, fallback_threshold=0.3).generate(
        **inputs, max_new_tokens=20, do_sample=False, return_dict_in_generate=True, output_scores=True)
    seq = out.sequences
    mask = torch.cat([inputs["attention_mask"], torch.ones(seq.shape[0], seq.shape[1] - P, dtype=torch.long)], 1)
    want = _teacher_forced_logits(small, seq, mask)[:, P - 1 : -1]
    got = torch.stack(out.small_scores, 1)
    scored = ~got.isnan().any(-1) & _alive(seq[:, P:])
    assert scored.float().mean() > 0.5  # the small model scored most positions
    assert got.isnan().any()  # and not the ones the large model wrote without a draft
    torch.testing.assert_close(got[scored], want[scored], atol=1e-4, rtol=1e-4)


# ---- every option alone: large greedy's answer, or bild's own refusal before generation ----------------------

class _EveryOtherToken:
    """A user's own logits processor: bans the token after the last one (reads the prefix)."""

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        scores[torch.arange(len(scores)), (input_ids[:, -1] + 1) % scores.shape[-1]] = float("-inf")
        return scores


OPTIONS = {
    "repetition_penalty": dict(repetition_penalty=1.5),
    "no_repeat_ngram_size": dict(no_repeat_ngram_size=2),
    "bad_words_ids": dict(bad_words_ids=[[5], [7, 8]]),
    "min_new_tokens": dict(min_new_tokens=10),
    "min_length": dict(min_length=12),
    "suppress_tokens": dict(suppress_tokens=[3, 4, 5]),
    "begin_suppress_tokens": dict(begin_suppress_tokens=[3, 4]),
    "forced_bos_token_id": dict(forced_bos_token_id=9),
    "forced_eos_token_id": dict(forced_eos_token_id=EOS),
    "sequence_bias": dict(sequence_bias={(6,): 4.0, (7, 8): -3.0}),
    "exponential_decay_length_penalty": dict(exponential_decay_length_penalty=(4, 1.5)),
    "renormalize_logits": dict(renormalize_logits=True),
    "eos_token_id list": dict(eos_token_id=[EOS, 11]),
    "max_length": dict(max_length=14, max_new_tokens=None),
    "encoder_repetition_penalty": dict(encoder_repetition_penalty=1.4),
    "encoder_no_repeat_ngram_size": dict(encoder_no_repeat_ngram_size=2),
    "logits_processor": dict(logits_processor=LogitsProcessorList([_EveryOtherToken()])),
    "stop_strings": dict(stop_strings=["ca", "7"]),
    "output_scores+logits": dict(return_dict_in_generate=True, output_scores=True, output_logits=True),
    "guidance_scale": dict(guidance_scale=2.0),
    "output_attentions": dict(return_dict_in_generate=True, output_attentions=True),
    "output_hidden_states": dict(return_dict_in_generate=True, output_hidden_states=True),
    "num_beams": dict(num_beams=2),
    "penalty_alpha (contrastive)": dict(penalty_alpha=0.5, top_k=4),
    "prompt_lookup_num_tokens": dict(prompt_lookup_num_tokens=3),
    "greedy num_return_sequences": dict(num_return_sequences=2),
    "cache_implementation static": dict(cache_implementation="static"),
}
#: Options bild refuses with its own error (the reason is in the message); greedy num_return_sequences > 1 is refused by
#: transformers itself, as it is for large.generate.
REFUSED = {"guidance_scale", "output_attentions", "output_hidden_states", "num_beams", "penalty_alpha (contrastive)",
           "prompt_lookup_num_tokens", "greedy num_return_sequences", "cache_implementation static"}
ENCODER_ONLY_OPTIONS = {"encoder_repetition_penalty", "encoder_no_repeat_ngram_size"}


@pytest.mark.parametrize("option, arch", [(o, a) for o in sorted(OPTIONS) for a in ARCHS
                                          if o not in ENCODER_ONLY_OPTIONS or a in ("t5", "bart")])
def test_each_generate_option_is_exact_or_refused(arch, option, tok):
    small, large = tiny_pair(arch, "agree" if arch in ("gpt2", "t5") else "disagree")
    inputs = _inputs(arch, batch=2, seed=4)
    kw = dict(max_new_tokens=16, do_sample=False)
    kw.update(OPTIONS[option])
    kw = {k: v for k, v in kw.items() if v is not None}
    extra = dict(tokenizer=tok) if option == "stop_strings" else {}
    generator = bild.BiLDGenerator(small, large, rollback_threshold=0.0, tokenizer=tok)
    if option in REFUSED:
        with pytest.raises(ValueError, match="BiLD|bild|num_return_sequences"):
            generator.generate(**inputs, **kw)
        return
    ref = large.generate(**inputs, **kw, **extra)
    out = generator.generate(**inputs, **kw)
    if isinstance(ref, torch.Tensor):
        assert torch.equal(out, ref)
    else:
        assert torch.equal(out.sequences, ref.sequences)

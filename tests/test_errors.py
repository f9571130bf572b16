"""Every bad input fails before generation with a message that says what to do."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from bild import BiLDGenerator, bild_generate
from tiny_models import batch_inputs, injected_costs, prompts, tiny_model, tiny_pair


@pytest.fixture(scope="module")
def pair():
    return tiny_pair("qwen2", "disagree")


@pytest.fixture(scope="module")
def inputs():
    return batch_inputs(prompts(2, seed=0), False)


def test_different_vocabulary_sizes(pair):
    small, _ = pair
    other = GPT2LMHeadModel(GPT2Config(vocab_size=100, n_embd=16, n_layer=1, n_head=2))
    with pytest.raises(ValueError, match="output vocabulary has 48 entries and the large model's 100.*pass the tokenizers"):
        BiLDGenerator(small, other)


class _Tok:
    def __init__(self, vocab):
        self.vocab = vocab

    def get_vocab(self):
        return dict(self.vocab)

    def __len__(self):
        return len(self.vocab)


def test_tokenizers_that_disagree(pair):
    small, large = pair
    a = {f"t{i}": i for i in range(48)}
    b = dict(a, x5=5)
    del b["t5"]
    with pytest.raises(ValueError, match="disagree on 1 token ids \\(first: id 5 is 't5' for small, 'x5' for large\\)"):
        BiLDGenerator(small, large, small_tokenizer=_Tok(a), large_tokenizer=_Tok(b), cross_tokenizer=False)
    BiLDGenerator(small, large, tokenizer=_Tok(a), cross_tokenizer=False)  # the same tokenizer is fine
    # By default two tokenizers that disagree are bridged (tests/test_cross_tokenizer.py).
    BiLDGenerator(small, large, small_tokenizer=_Tok(a), large_tokenizer=_Tok(b))


def test_padded_embeddings_with_one_tokenizer_are_fine(pair, inputs):
    small, large = pair
    bigger = tiny_model("qwen2", 5)
    bigger.resize_token_embeddings(64)  # padded to a multiple of 64, same 48 real tokens
    tok = _Tok({f"t{i}": i for i in range(48)})
    gen = BiLDGenerator(small, bigger, 0.5, 0.0, tokenizer=tok)
    out = gen.generate(**inputs, max_new_tokens=8)
    assert torch.equal(out, bigger.generate(**inputs, do_sample=False, max_new_tokens=8))


def test_encoder_decoder_with_decoder_only(pair):
    small, _ = pair
    t5 = tiny_model("t5", 0)
    with pytest.raises(ValueError, match="small model is decoder-only .* large model is encoder-decoder"):
        BiLDGenerator(small, t5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_beams=2), "does not support beam search"),
        (dict(num_beams=2, do_sample=True), "does not support beam search"),
        (dict(output_hidden_states=True, return_dict_in_generate=True), "output_hidden_states"),
        (dict(guidance_scale=3.0), "classifier-free guidance"),
    ],
)
def test_unsupported_generation_modes(pair, inputs, kwargs, message):
    small, large = pair
    with pytest.raises(ValueError, match=message):
        BiLDGenerator(small, large).generate(**inputs, max_new_tokens=4, **kwargs)
    with pytest.raises(ValueError, match=message):
        large.generate(**inputs, custom_generate=bild_generate, small_model=small, max_new_tokens=4, **kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(fallback_threshold=2.0), "fallback_threshold must be in"),
        (dict(rollback_threshold=-1), "rollback_threshold must be"),
        (dict(max_small_steps=0), "max_small_steps must be"),
    ],
)
def test_thresholds_out_of_range(pair, kwargs, message):
    with pytest.raises(ValueError, match=message):
        BiLDGenerator(*pair, **kwargs)


def test_prompt_longer_than_positions(pair):
    small, large = pair
    ids = torch.randint(3, 48, (1, 130))
    with pytest.raises(ValueError, match="prompt has 130 tokens but the small model accepts at most 128 positions"):
        BiLDGenerator(small, large).generate(input_ids=ids, max_new_tokens=4)
    with pytest.raises(ValueError, match="Lower max_new_tokens"):
        BiLDGenerator(small, large).generate(input_ids=ids[:, :100], max_new_tokens=40)
    # Refused before "auto" decides anything: the same where the cost model sends the call to the large model alone.
    with pytest.raises(ValueError, match="the small model accepts at most 128 positions"):
        BiLDGenerator(small, large, cost_model=injected_costs(4.0)).generate(input_ids=ids, max_new_tokens=4)


def test_right_padded_prompts(pair):
    small, large = pair
    batch = batch_inputs([[5, 6, 7, 8], [9, 10]], encoder_decoder=True)  # right padding
    with pytest.raises(ValueError, match="must be left-padded.*padding_side = 'left'"):
        BiLDGenerator(small, large).generate(**batch, max_new_tokens=4)


def test_empty_prompt_and_empty_batch(pair):
    small, large = pair
    with pytest.raises(ValueError, match="prompt is empty"):
        BiLDGenerator(small, large).generate(input_ids=torch.zeros(1, 0, dtype=torch.long), max_new_tokens=4)
    empty = torch.zeros(0, 3, dtype=torch.long)
    assert BiLDGenerator(small, large).generate(input_ids=empty, max_new_tokens=4).shape == (0, 3)


def test_max_new_tokens_zero_is_refused_like_transformers(pair, inputs):
    small, large = pair
    with pytest.raises(ValueError, match="max_new_tokens"):
        BiLDGenerator(small, large).generate(**inputs, max_new_tokens=0)


def test_missing_small_model(pair, inputs):
    _, large = pair
    with pytest.raises(ValueError, match="needs a small model"):
        large.generate(**inputs, custom_generate=bild_generate, max_new_tokens=4, do_sample=False)


def test_models_in_different_dtypes_work(inputs):
    small, large = tiny_pair("llama", "agree")
    small = small.to(torch.bfloat16)
    out = BiLDGenerator(small, large, 0.3, 0.0, 4).generate(**inputs, max_new_tokens=10)
    assert torch.equal(out, large.generate(**inputs, do_sample=False, max_new_tokens=10))


def test_from_pretrained_loads_the_right_auto_class(tmp_path):
    for arch in ("qwen2", "bart"):
        small, large = tiny_pair(arch, "agree")
        small.save_pretrained(tmp_path / f"{arch}-small")
        large.save_pretrained(tmp_path / f"{arch}-large")
        gen = BiLDGenerator.from_pretrained(str(tmp_path / f"{arch}-small"), str(tmp_path / f"{arch}-large"),
                                            fallback_threshold=0.0, rollback_threshold=0.0, dtype=torch.float32)
        assert type(gen.small) is type(small) and type(gen.large) is type(large)
        assert gen.config.fallback_threshold == 0.0 and gen.config.rollback_threshold == 0.0
        inputs = batch_inputs(prompts(1, seed=1), arch == "bart")
        assert torch.equal(gen.generate(**inputs, max_new_tokens=6), large.generate(**inputs, do_sample=False, max_new_tokens=6))

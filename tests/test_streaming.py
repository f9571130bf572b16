"""Streaming: a streamer gets the prompt, then only verified tokens, round by round, then end();
and several sampled sequences per prompt (num_return_sequences) come back as independent rows."""

import math

import pytest
import torch
from transformers import TextIteratorStreamer, TextStreamer
from transformers.generation.streamers import BaseStreamer

from _example_fixtures import tiny_tokenizer
from bild import BiLDGenerator, bild_generate
from tiny_models import ENCODER_DECODER, batch_inputs, prompts, tiny_pair


class Recorder(BaseStreamer):
    def __init__(self):
        self.puts, self.ended = [], 0

    def put(self, value):
        assert not self.ended, "put after end()"
        self.puts.append(value.flatten().tolist())

    def end(self):
        self.ended += 1


@pytest.mark.parametrize("arch", ["qwen2", "t5"])
@pytest.mark.parametrize("sampling", [False, True], ids=["greedy", "sampling"])
def test_streamer_gets_exactly_the_returned_tokens(arch, sampling):
    small, large = tiny_pair(arch, "disagree", seed=0)  # many rejected drafts
    inputs = batch_inputs(prompts(1, seed=2, min_len=4), arch in ENCODER_DECODER)
    kwargs = dict(max_new_tokens=24, return_dict_in_generate=True, do_sample=sampling)
    rec = Recorder()
    out = BiLDGenerator(small, large, 0.0, 0.0, 4).generate(**inputs, streamer=rec, **kwargs)
    total = out.stats.total()
    assert total["rollbacks"] > 0  # rejected drafts existed, and never reached the streamer:
    prompt_len = 1 if arch in ENCODER_DECODER else inputs["input_ids"].shape[1]
    assert rec.puts[0] == out.sequences[0, :prompt_len].tolist()
    assert sum(rec.puts[1:], []) == out.sequences[0, prompt_len:].tolist()
    assert len(rec.puts) - 1 == total["batch_large_calls"]  # one put per verified round
    assert rec.ended == 1


def test_custom_generate_streams_through_bild_streamer():
    small, large = tiny_pair("llama", "agree", seed=2)
    inputs = batch_inputs(prompts(1, seed=3, min_len=4), False)
    rec = Recorder()
    out = large.generate(**inputs, custom_generate=bild_generate, small_model=small, bild_streamer=rec,
                         do_sample=True, max_new_tokens=16)
    P = inputs["input_ids"].shape[1]
    assert rec.puts[0] == out[0, :P].tolist() and sum(rec.puts[1:], []) == out[0, P:].tolist() and rec.ended == 1


def test_text_streamer_prints_what_transformers_prints(capsys):
    tok = tiny_tokenizer(chat=False)
    small, large = tiny_pair("qwen2", "disagree", seed=3)
    inputs = batch_inputs(prompts(1, seed=4, min_len=4), False)
    expected = large.generate(**inputs, do_sample=False, max_new_tokens=20, streamer=TextStreamer(tok, skip_prompt=True))
    printed_by_large = capsys.readouterr().out
    got = BiLDGenerator(small, large, 0.3, 0.0, 4).generate(**inputs, max_new_tokens=20,
                                                            streamer=TextStreamer(tok, skip_prompt=True))
    assert torch.equal(got, expected)
    assert capsys.readouterr().out == printed_by_large and printed_by_large.strip()


def test_text_iterator_streamer_yields_the_returned_text():
    tok = tiny_tokenizer(chat=False)
    small, large = tiny_pair("gpt2", "agree", seed=1)
    inputs = batch_inputs(prompts(1, seed=5, min_len=4), False)
    streamer = TextIteratorStreamer(tok, skip_prompt=True, timeout=5)
    out = BiLDGenerator(small, large, 0.3, 2.0, 4).generate(**inputs, max_new_tokens=20, do_sample=True, streamer=streamer)
    assert "".join(streamer) == tok.decode(out[0, inputs["input_ids"].shape[1]:])


@pytest.mark.parametrize("rows, copies", [(2, 1), (1, 2)])
def test_streaming_several_sequences_is_refused_before_generation(rows, copies):
    small, large = tiny_pair("qwen2", "agree")
    inputs = batch_inputs(prompts(rows, seed=6), False)
    rec = Recorder()
    kwargs = dict(max_new_tokens=4, do_sample=True, num_return_sequences=copies)
    with pytest.raises(ValueError, match="Streaming supports one sequence"):
        BiLDGenerator(small, large).generate(**inputs, streamer=rec, **kwargs)
    with pytest.raises(ValueError, match="Streaming supports one sequence"):
        large.generate(**inputs, custom_generate=bild_generate, small_model=small, bild_streamer=rec, **kwargs)
    assert rec.puts == []


@pytest.mark.parametrize("arch", ["llama", "bart"])
def test_num_return_sequences_rows_follow_their_prompt(arch):
    """Sampling with top_k=1 is greedy, so each of the copies of a prompt must equal greedy BiLD of that
    prompt: the rows are expanded in transformers' order and each small model sees its row's source."""
    small, large = tiny_pair(arch, "agree", seed=2)
    inputs = batch_inputs(prompts(2, seed=7, min_len=3), arch in ENCODER_DECODER)
    greedy = BiLDGenerator(small, large, 0.0, math.inf, 4).generate(**inputs, max_new_tokens=12)
    sampled = BiLDGenerator(small, large, 0.5, math.inf, 4).generate(**inputs, max_new_tokens=12, do_sample=True,
                                                                     top_k=1, num_return_sequences=3)
    assert sampled.shape == (6, greedy.shape[1])
    assert torch.equal(sampled, greedy.repeat_interleave(3, dim=0))


def test_num_return_sequences_rows_are_different_samples():
    small, large = tiny_pair("qwen2", "agree", seed=2)
    inputs = batch_inputs(prompts(2, seed=8, min_len=3), False)
    torch.manual_seed(0)
    out = BiLDGenerator(small, large, 0.3, 1.0, 4).generate(**inputs, max_new_tokens=16, do_sample=True,
                                                            temperature=1.5, num_return_sequences=4)
    assert out.shape[0] == 8
    P = inputs["input_ids"].shape[1]
    assert torch.equal(out[:, :P], inputs["input_ids"].repeat_interleave(4, dim=0))
    for copies in out[:, P:].view(2, 4, -1):
        assert len({tuple(row.tolist()) for row in copies}) > 1


def test_greedy_num_return_sequences_is_refused_as_in_transformers():
    small, large = tiny_pair("qwen2", "agree")
    inputs = batch_inputs(prompts(1), False)
    with pytest.raises(ValueError, match="num_return_sequences"):
        BiLDGenerator(small, large).generate(**inputs, max_new_tokens=4, num_return_sequences=2)
    with pytest.raises(ValueError, match="num_return_sequences"):
        large.generate(**inputs, custom_generate=bild_generate, small_model=small, max_new_tokens=4, num_return_sequences=2)

"""The Hub `custom_generate` folder shipped in hub/bild-generate, loaded from the local directory as transformers
loads it from the Hub (`custom_generate="<dir>", trust_remote_code=True`), against large greedy and the direct call."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import bild
from tiny_models import PAD, batch_inputs, char_tokenizer, prompts, tiny_pair

FOLDER = Path(__file__).resolve().parents[1] / "hub" / "bild-generate"


def test_the_folder_has_what_the_hub_needs():
    readme = (FOLDER / "README.md").read_text()
    front = readme.split("---")[1]
    assert "custom_generate" in front and "library_name: transformers" in front
    reqs = (FOLDER / "custom_generate" / "requirements.txt").read_text().split()
    assert any(r.startswith("bild") for r in reqs) and any(r.startswith("transformers") for r in reqs)


@pytest.mark.parametrize("arch", ["llama", "t5"])
def test_folder_loaded_from_a_local_directory_gives_large_greedy(arch):
    small, large = tiny_pair(arch, "disagree")
    inputs = batch_inputs(prompts(3, seed=2), arch == "t5")
    kw = dict(max_new_tokens=20, do_sample=False)
    ref = large.generate(**inputs, **kw)
    out = large.generate(**inputs, **kw, custom_generate=str(FOLDER), trust_remote_code=True,
                         small_model=small, rollback_threshold=0.0)
    assert torch.equal(out, ref)
    # The BiLD statistics come back through the folder too: it is bild's own loop.
    full = large.generate(**inputs, **kw, custom_generate=str(FOLDER), trust_remote_code=True,
                          small_model=small, rollback_threshold=0.0, return_dict_in_generate=True)
    assert torch.equal(full.sequences, ref) and full.stats.batch_large_calls > 0


def test_folder_takes_the_tokenizer_for_stop_strings():
    tok = char_tokenizer()
    small, large = tiny_pair("llama", "disagree")
    inputs = batch_inputs(prompts(3, seed=1), False)
    kw = dict(max_new_tokens=30, do_sample=False, stop_strings=["a"], tokenizer=tok)
    ref = large.generate(**inputs, **kw)
    plain = large.generate(**inputs, max_new_tokens=30, do_sample=False)
    assert (ref != PAD).sum() < (plain != PAD).sum()  # the stop does fire
    out = large.generate(**inputs, **kw, custom_generate=str(FOLDER), trust_remote_code=True,
                         small_model=small, rollback_threshold=0.0)
    assert torch.equal(out, ref)


def test_folder_refuses_what_bild_refuses_with_bilds_error():
    small, large = tiny_pair("llama", "agree")
    inputs = batch_inputs(prompts(2, seed=0), False)
    with pytest.raises(ValueError, match="beam"):
        large.generate(**inputs, max_new_tokens=5, num_beams=2, custom_generate=str(FOLDER),
                       trust_remote_code=True, small_model=small)


def test_folder_without_trust_remote_code_is_refused_by_transformers():
    small, large = tiny_pair("llama", "agree")
    inputs = batch_inputs(prompts(2, seed=0), False)
    with pytest.raises(ValueError, match="trust_remote_code"):
        large.generate(**inputs, max_new_tokens=5, custom_generate=str(FOLDER), small_model=small)


def test_folder_takes_the_streamer():
    from transformers.generation.streamers import BaseStreamer

    class Recorder(BaseStreamer):
        def __init__(self):
            self.ids, self.ended = [], 0

        def put(self, value):
            self.ids += value.flatten().tolist()

        def end(self):
            self.ended += 1

    small, large = tiny_pair("llama", "disagree")
    inputs = batch_inputs(prompts(1, seed=3, min_len=4), False)
    ref_rec, rec = Recorder(), Recorder()
    ref = large.generate(**inputs, max_new_tokens=16, do_sample=False, streamer=ref_rec)
    out = large.generate(**inputs, max_new_tokens=16, do_sample=False, streamer=rec, custom_generate=str(FOLDER),
                         trust_remote_code=True, small_model=small, rollback_threshold=0.0)
    assert torch.equal(out, ref) and rec.ids == ref_rec.ids == out[0].tolist() and rec.ended == ref_rec.ended == 1

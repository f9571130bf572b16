"""Property-based checks of the identities over seeds, thresholds, draft lengths, batch sizes and lengths."""

import functools
import math
import os

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bild import BiLDGenerator
from reference import reference_bild
from tiny_models import EOS, PAD, batch_inputs, prompts, tiny_pair

# Derandomized so that CI runs the same examples every time; BILD_HYPOTHESIS_EXAMPLES=500 explores further.
SETTINGS = settings(max_examples=int(os.environ.get("BILD_HYPOTHESIS_EXAMPLES", 12)), deadline=None,
                    derandomize="BILD_HYPOTHESIS_EXAMPLES" not in os.environ,
                    suppress_health_check=[HealthCheck.too_slow])
pair = functools.lru_cache(maxsize=None)(tiny_pair)

thresholds = st.tuples(
    st.sampled_from([0.0, 0.2, 0.5, 0.8, 1.0]),
    st.sampled_from([0.0, 0.5, 1.5, 3.0, math.inf]),
)


@SETTINGS
@given(arch=st.sampled_from(["gpt2", "t5"]), mode=st.sampled_from(["agree", "disagree"]), seed=st.integers(0, 3),
       th=thresholds, n=st.integers(1, 8), batch=st.integers(1, 4), max_new=st.integers(1, 16))
def test_batch_rows_equal_rows_alone(arch, mode, seed, th, n, batch, max_new):
    small, large = pair(arch, mode, seed)
    enc_dec = arch == "t5"
    rows = prompts(batch, seed=seed, min_len=1, max_len=6)
    gen = BiLDGenerator(small, large, th[0], th[1], n)
    batched = gen.generate(**batch_inputs(rows, enc_dec), max_new_tokens=max_new, return_dict_in_generate=True)
    batched.stats.check()
    P = 0 if enc_dec else max(map(len, rows))
    for i, row in enumerate(rows):
        alone = gen.generate(**batch_inputs([row], enc_dec), max_new_tokens=max_new)[0]
        got = batched.sequences[i, P - len(row) if P else 0:]
        assert torch.equal(got[: len(alone)], alone) and (got[len(alone):] == PAD).all()


@SETTINGS
@given(arch=st.sampled_from(["qwen2", "bart"]), seed=st.integers(0, 3), fb=st.sampled_from([0.0, 0.3, 0.6, 0.9]),
       n=st.integers(1, 10), batch=st.integers(1, 3), max_new=st.integers(1, 20))
def test_rollback_zero_is_lossless(arch, seed, fb, n, batch, max_new):
    small, large = pair(arch, "disagree", seed)
    inputs = batch_inputs(prompts(batch, seed=seed + 10), arch == "bart")
    got = BiLDGenerator(small, large, fb, 0.0, n).generate(**inputs, max_new_tokens=max_new)
    assert torch.equal(got, large.generate(**inputs, do_sample=False, max_new_tokens=max_new))


@SETTINGS
@given(arch=st.sampled_from(["llama", "mt5"]), mode=st.sampled_from(["agree", "disagree"]), seed=st.integers(0, 3),
       th=thresholds, n=st.integers(1, 8), max_new=st.integers(1, 16), keep=st.sampled_from([None, False, True]))
def test_cached_equals_reference(arch, mode, seed, th, n, max_new, keep):
    small, large = pair(arch, mode, seed)
    row = prompts(1, seed=seed + 20, min_len=2)[0]
    gen = BiLDGenerator(small, large, th[0], th[1], n, keep_fallback_draft=keep)
    out = gen.generate(**batch_inputs([row], arch == "mt5"), max_new_tokens=max_new, return_dict_in_generate=True)
    # keep=None resolves to keeping the fallback draft exactly when the rollback threshold is 0 (lossless).
    expected, counts = reference_bild(small, large, row, th[0], th[1], n, max_new, EOS,
                                      keep_fallback=gen.config.keeps_fallback_draft)
    assert out.sequences[0].tolist() == expected
    assert out.stats.total()["large_forward_calls"] == counts["rounds"]

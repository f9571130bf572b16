"""dtype "auto" (bild.hardware): the rule where bfloat16 is native, a measured choice elsewhere, per model."""

from __future__ import annotations

import pytest
import torch

from bild import BiLDGenerator
from bild.costs import ModelCosts
from bild.env import environment
from bild.hardware import (MATTERING_FLAGS, bild_job_seconds, choose_dtype, choose_pair_dtypes,
                           fastest_dtype, native_bfloat16, pair_dtypes, rule_dtype)
from tiny_models import tiny_model

AMX = frozenset({"avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"})
ZEN5 = frozenset({"avx2", "avx512f", "avx512_bf16"})
AVX2 = frozenset({"avx2", "fma"})


def test_the_rule_by_cpu_flags():
    assert native_bfloat16("cpu", AMX, True) and native_bfloat16("cpu", ZEN5, True)
    assert not native_bfloat16("cpu", AVX2, True)
    assert rule_dtype("cpu", AMX, True) == rule_dtype("cpu", ZEN5, True) == torch.bfloat16
    assert rule_dtype("cpu", AVX2, True) is None  # measured


def test_bf16_units_torch_does_not_use_are_not_native():
    """With torch's kernels capped below the CPU's (ONEDNN_MAX_CPU_ISA=AVX2), bfloat16 is emulated: measured."""
    assert not native_bfloat16("cpu", ZEN5, torch_kernels=False) and rule_dtype("cpu", AMX, False) is None


def test_onednn_capped_at_avx2_reads_as_not_native():
    """The real check, in a fresh process (oneDNN reads its cap once): capped kernels make the rule measure."""
    import os
    import subprocess
    import sys

    code = ("from bild.hardware import hardware_summary as h; s = h('cpu'); "
            "print(s['bf16_native'], s['torch_cpu_capability'], s['isa_cap'])")
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    native, capability, cap = out.stdout.split(maxsplit=2)
    assert native == "False" and capability in ("AVX2", "DEFAULT")
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in cap


def test_the_choice_follows_the_job():
    """The issue's AVX2 numbers: bfloat16 is 2.5x faster per step but slower per wide pass and per prompt token,
    so a drafting small model wants bfloat16 and a long-prompt verifying large model may want float32."""
    step_bf16 = {"float32": ModelCosts({1: 0.195}, 0.004), "bfloat16": ModelCosts({1: 0.085}, 0.02)}
    assert choose_dtype(step_bf16, prompt_tokens=20, new_tokens=50) == "bfloat16"
    assert choose_dtype(step_bf16, prompt_tokens=2000, new_tokens=10) == "float32"
    wide = {"float32": ModelCosts({1: 0.477, 5: 1.118}, 0.004), "bfloat16": ModelCosts({1: 0.190, 5: 0.747}, 0.03)}
    assert choose_dtype(wide, 100, 50, width=5) == "bfloat16"
    assert choose_dtype(wide, 400, 50, width=5) == "float32"


def test_fastest_dtype_measures_and_leaves_the_model_in_it():
    model = tiny_model("llama", seed=0)
    best, measured = fastest_dtype(model, width=3)
    assert set(measured) == {"float32", "bfloat16"} and sorted(measured["float32"].passes) == [1, 3]
    assert next(model.parameters()).dtype == best
    assert best == getattr(torch, choose_dtype(measured, width=3))


def test_environment_names_the_flags_and_the_rule():
    env = environment()
    assert set(env["cpu_flags"]) <= set(MATTERING_FLAGS) and isinstance(env["bf16_native"], bool)


# The real pair measured under ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 (RESULTS.md A20): bfloat16 steps are
# 3x faster than float32 ones, but its passes over several tokens and its prefills are slow (emulated bfloat16).
EMULATED_AVX2 = {
    "small": {"float32": ModelCosts({1: 0.146}, 0.0088), "bfloat16": ModelCosts({1: 0.052}, 0.0264)},
    "large": {"float32": ModelCosts({1: 0.379, 2: 0.249, 3: 0.441, 5: 0.582, 11: 0.937}, 0.0259),
              "bfloat16": ModelCosts({1: 0.1275, 2: 0.2105, 3: 0.278, 5: 0.462, 11: 0.892}, 0.0726)},
}
# The same pair with native bfloat16 (RESULTS.md A16): a pass over a few tokens costs about a step.
NATIVE = {
    "small": {"float32": ModelCosts({1: 0.141}, 0.010), "bfloat16": ModelCosts({1: 0.0516}, 0.002)},
    "large": {"float32": ModelCosts({1: 0.355, 2: 0.69, 3: 1.0, 5: 0.70, 11: 1.0}, 0.025),
              "bfloat16": ModelCosts({1: 0.1295, 2: 0.139, 3: 0.152, 5: 0.144, 11: 0.166}, 0.0051)},
}


def test_pair_choice_where_bfloat16_is_emulated_keeps_the_large_model_in_its_fastest_dtype():
    """Per model, the large one would go to float32 (cheaper wide passes and prefill) and drafting would then beat
    a float32 large model; but the large model alone in bfloat16 is as fast, so auto leaves it there, alone."""
    small, large = EMULATED_AVX2["small"], EMULATED_AVX2["large"]
    assert choose_dtype(large, width=5) == "float32"  # what a per-model choice did
    choice = choose_pair_dtypes(small, large, max_drafts=10)
    assert (choice.small, choice.large, choice.drafts) == ("bfloat16", "bfloat16", False)
    alone = choice.seconds["large alone bfloat16"]
    assert alone == pytest.approx(100 * 0.0726 + 50 * 0.1275)
    assert min(v for k, v in choice.seconds.items() if k.startswith("bild")) * 1.1 > alone
    # A numeric fallback threshold drafts whatever the costs: the best drafting combination then.
    always = choose_pair_dtypes(small, large, max_drafts=10, drafting="always")
    assert always.drafts and (always.small, always.large) == ("bfloat16", "float32")
    assert not any(k.startswith("large alone") for k in always.seconds)


def test_pair_choice_where_bfloat16_is_native_drafts_in_bfloat16():
    choice = choose_pair_dtypes(NATIVE["small"], NATIVE["large"], max_drafts=10)
    assert (choice.small, choice.large, choice.drafts) == ("bfloat16", "bfloat16", True)
    assert choice.seconds["bild bfloat16/bfloat16"] * 1.1 <= choice.seconds["large alone bfloat16"]


def test_pair_choice_margin_and_the_job():
    """Drafting must beat the large model alone by the margin; the job's shape moves the answer."""
    small = {"bfloat16": ModelCosts({1: 0.05}, 0.0)}
    large = {"bfloat16": ModelCosts({1: 0.1, 2: 0.1, 11: 0.1}, 0.0)}
    assert choose_pair_dtypes(small, large, 10).drafts
    pricey = {"bfloat16": ModelCosts({1: 0.1, 2: 0.121, 3: 0.2, 11: 0.9}, 0.0)}  # a bit faster, not by 1.1x
    per_token = min((n * 0.05 + pricey["bfloat16"].pass_seconds(n + 1)) / sum(0.8 ** k for k in range(n + 1))
                    for n in range(1, 11))
    assert 0.1 / 1.1 < per_token < 0.1
    assert not choose_pair_dtypes(small, pricey, 10).drafts
    assert bild_job_seconds(small["bfloat16"], pricey["bfloat16"], 10, 0, 50, 0.8) == pytest.approx(50 * per_token)
    # Long prompts favour the dtype with the cheap prefill, short ones the cheap step.
    both = {"float32": ModelCosts({1: 0.3}, 0.01), "bfloat16": ModelCosts({1: 0.1}, 0.05)}
    assert choose_pair_dtypes(small, both, 10, prompt_tokens=10).large == "bfloat16"
    assert choose_pair_dtypes(small, both, 10, prompt_tokens=2000, new_tokens=10).large == "float32"


def test_pair_dtypes_measures_both_and_leaves_each_in_its_choice(monkeypatch):
    small, large = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    choice = pair_dtypes(small, large, max_drafts=4)
    # "auto" decides from the same measurement: the pair's cost model is the one taken in the chosen dtypes.
    import bild.costs

    monkeypatch.setattr(bild.costs, "measure_model", lambda *a, **k: pytest.fail("measured again"))
    kept = bild.costs.measure_pair_costs(small, large, max_width=5)
    assert kept.large.dtype == choice.large and kept.small.dtype == choice.small
    assert kept.note["dtypes"] == "measured"  # the large-alone warning then does not suggest another dtype
    assert sorted(kept.large.passes) == [1, 2, 3, 5]
    assert {"large alone float32", "large alone bfloat16", "bild bfloat16/float32"} <= set(choice.seconds)
    assert next(small.parameters()).dtype == getattr(torch, choice.small)
    assert next(large.parameters()).dtype == getattr(torch, choice.large)
    assert choice.summary().startswith(f"small {choice.small}, large {choice.large}")


def test_from_pretrained_dtype_auto(tmp_path):
    for role, seed in (("small", 0), ("large", 1)):
        tiny_model("llama", seed=seed).save_pretrained(tmp_path / role)
    gen = BiLDGenerator.from_pretrained(str(tmp_path / "small"), str(tmp_path / "large"), 0.5, 0.0,
                                        load_tokenizers=False, dtype="auto")
    for model in (gen.small, gen.large):
        dtype = next(model.parameters()).dtype
        assert dtype in (torch.float32, torch.bfloat16)
        if rule_dtype("cpu") is not None:
            assert dtype == torch.bfloat16
    if rule_dtype("cpu") is None:  # measured for the pair, drafting always (a numeric fallback threshold)
        assert gen.dtype_choice.drafts and next(gen.large.parameters()).dtype == getattr(torch, gen.dtype_choice.large)
    else:
        assert gen.dtype_choice is None
    explicit = BiLDGenerator.from_pretrained(str(tmp_path / "small"), str(tmp_path / "large"), load_tokenizers=False,
                                             dtype=torch.float32)
    assert next(explicit.large.parameters()).dtype == torch.float32  # an explicit dtype wins

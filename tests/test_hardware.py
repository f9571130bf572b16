"""dtype "auto" (bild.hardware): the rule where bfloat16 is native, a measured choice elsewhere, per model."""

from __future__ import annotations

import pytest
import torch

from bild import BiLDGenerator
from bild.costs import ModelCosts
from bild.env import environment
from bild.hardware import MATTERING_FLAGS, choose_dtype, fastest_dtype, native_bfloat16, rule_dtype
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
    explicit = BiLDGenerator.from_pretrained(str(tmp_path / "small"), str(tmp_path / "large"), load_tokenizers=False,
                                             dtype=torch.float32)
    assert next(explicit.large.parameters()).dtype == torch.float32  # an explicit dtype wins

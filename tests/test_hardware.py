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
    assert native_bfloat16("cpu", AMX) and native_bfloat16("cpu", ZEN5) and not native_bfloat16("cpu", AVX2)
    assert rule_dtype("cpu", AMX) == rule_dtype("cpu", ZEN5) == torch.bfloat16
    assert rule_dtype("cpu", AVX2) is None  # measured


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

"""`dtype="auto"` that means fast on this machine: bfloat16 where the device computes it natively, elsewhere the
dtype a few measured forwards find faster for the job (per model: the two models of a pair may differ).

Native bfloat16: CUDA devices that support it, and CPUs with AVX-512 BF16 or AMX (`avx512_bf16` / `amx_bf16` in
/proc/cpuinfo's flags) whose bfloat16 matmuls torch runs on those units (oneDNN's bfloat16 path). On a CPU without
them (AVX2 only) bfloat16 is emulated: one-token steps get faster (half the bytes read) but prefill and multi-token
passes get slower, so which dtype wins depends on the mix of work.

What torch runs is what counts, not what the chip has: `ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2` makes
torch run the kernels an AVX2-only CPU runs (bfloat16 emulated), and then bfloat16 is not native here either. That
is how this project measures the AVX2 case on a machine with AVX-512 BF16 (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import os

import torch

from .costs import ModelCosts, measure_model

#: The CPU flags that decide matrix-unit speed for these dtypes (recorded with every run).
MATTERING_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")


def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def torch_bf16_matmuls() -> bool:
    """Whether this process's torch runs bfloat16 matmuls through oneDNN's bfloat16 path, which honours
    ONEDNN_MAX_CPU_ISA (capped at AVX2 it does not, and torch falls back to emulated bfloat16). True where torch
    cannot say (then the CPU flags decide alone)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return True


def native_bfloat16(device: torch.device | str, flags: frozenset[str] | None = None,
                    torch_kernels: bool | None = None) -> bool:
    """Pure given `flags` and `torch_kernels` (whether torch's bfloat16 matmuls use the CPU's bf16 units); each is
    read off this process where not given."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        flags = cpu_flags() if flags is None else flags
        if not {"avx512_bf16", "amx_bf16"} & flags:
            return False
        return torch_bf16_matmuls() if torch_kernels is None else torch_kernels
    return False


def hardware_summary(device: torch.device | str = "cpu") -> dict:
    """The CPU flags that matter, the instruction set torch's kernels use, and whether bfloat16 is native: for
    environment() and run headers. `isa_cap` is set where the environment caps the kernels (an emulated CPU kind)."""
    flags = cpu_flags()
    caps = {k: os.environ[k] for k in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")
            if os.environ.get(k)}
    return {"cpu_flags": [f for f in MATTERING_FLAGS if f in flags], "bf16_native": native_bfloat16(device, flags),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "isa_cap": " ".join(f"{k}={v}" for k, v in caps.items()) or None}


def rule_dtype(device: torch.device | str, flags: frozenset[str] | None = None,
               torch_kernels: bool | None = None) -> torch.dtype | None:
    """Pure rule: bfloat16 where native, float16 on a CUDA device without bfloat16, None where it must be measured
    (a CPU without native bfloat16)."""
    device = torch.device(device)
    if native_bfloat16(device, flags, torch_kernels):
        return torch.bfloat16
    if device.type == "cuda":
        return torch.float16
    return None


def choose_dtype(by_dtype: dict[str, ModelCosts], prompt_tokens: int = 100, new_tokens: int = 50,
                 width: int = 1) -> str:
    """Pure: the dtype whose measured costs give the shortest job (prefill of `prompt_tokens`, then `new_tokens` at
    `width` tokens per pass: 1 for a small model's drafting, the verify width for a large model)."""
    return min(by_dtype, key=lambda d: by_dtype[d].job_seconds(prompt_tokens, new_tokens, width))


def fastest_dtype(model, width: int = 1, candidates=(torch.float32, torch.bfloat16), prompt_tokens: int = 100,
                  new_tokens: int = 50) -> tuple[torch.dtype, dict[str, ModelCosts]]:
    """Measure `model` in each candidate dtype (converting it in place) and leave it in the fastest for the job;
    returns that dtype and the measurements."""
    by_dtype: dict[str, ModelCosts] = {}
    for dtype in candidates:
        model.to(dtype)
        by_dtype[str(dtype).replace("torch.", "")] = measure_model(model, tuple(sorted({1, width})), context=32,
                                                                    repeats=2)
    best = getattr(torch, choose_dtype(by_dtype, prompt_tokens, new_tokens, width))
    model.to(best)
    return best, by_dtype


def auto_dtype_for(model, device: torch.device | str, width: int = 1) -> torch.dtype:
    """What `dtype="auto"` loads `model` as on `device`: the rule, else measured (the model is converted)."""
    dtype = rule_dtype(device)
    if dtype is None:
        dtype, _ = fastest_dtype(model, width)
    return dtype

"""`dtype="auto"` that means fast on this machine: bfloat16 where the device computes it natively, elsewhere the
dtypes a few measured forwards find fastest for the job. A pair is chosen together (`pair_dtypes`): the two models
may differ, and the large model decoding alone in the dtype it steps fastest in is one of the options weighed, so
that "auto" never picks dtypes in which drafting only beats a large model slowed by the same choice.

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

from dataclasses import dataclass, field, replace

from .costs import (PAYS_MARGIN, ModelCosts, PairCosts, default_widths, measure_model, pair_context,
                    remember_pair_costs)

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
    by_dtype = measure_by_dtype(model, tuple(sorted({1, width})), candidates, context=32)
    best = getattr(torch, choose_dtype(by_dtype, prompt_tokens, new_tokens, width))
    model.to(best)
    return best, by_dtype


#: The job a pair's dtypes are chosen for when the caller says nothing: prompt tokens, new tokens, and the per-draft
#: acceptance drafting is assumed to reach (the real pair measured 0.76-0.85 on this project's data).
DEFAULT_JOB = {"prompt_tokens": 100, "new_tokens": 50, "acceptance": 0.8}


@dataclass(frozen=True)
class PairChoice:
    """The dtypes chosen for a pair, whether the choice expects drafting to pay, and the estimated seconds of the job
    for every option weighed ("large alone <dtype>", "bild <small dtype>/<large dtype>")."""

    small: str
    large: str
    drafts: bool
    seconds: dict[str, float]
    job: dict = field(default_factory=dict)

    def summary(self) -> str:
        options = ", ".join(f"{k} {v:.2f}s" for k, v in sorted(self.seconds.items(), key=lambda kv: kv[1]))
        plan = "drafting" if self.drafts else "the large model alone"
        shape = (f" of {self.job['prompt_tokens']} prompt and {self.job['new_tokens']} new tokens at acceptance "
                 f"{self.job['acceptance']}" if self.job else "")
        return f"small {self.small}, large {self.large} ({plan}; estimated job{shape}, fastest first: {options})"


def bild_job_seconds(small: ModelCosts, large: ModelCosts, max_drafts: int, prompt_tokens: int, new_tokens: int,
                     acceptance: float) -> float:
    """Pure: both prefills, then drafting rounds of the length fastest at `acceptance` (at least one draft)."""
    pair = PairCosts(small, large)
    per_token = large.step / max(pair.speedup(n, acceptance) for n in range(1, max_drafts + 1))
    return (small.prefill_per_token + large.prefill_per_token) * prompt_tokens + new_tokens * per_token


def choose_pair_dtypes(small_by_dtype: dict[str, ModelCosts], large_by_dtype: dict[str, ModelCosts],
                       max_drafts: int, drafting: str = "auto", prompt_tokens: int = DEFAULT_JOB["prompt_tokens"],
                       new_tokens: int = DEFAULT_JOB["new_tokens"],
                       acceptance: float = DEFAULT_JOB["acceptance"]) -> PairChoice:
    """Pure: the pair's dtypes that make the job shortest.

    With `drafting="auto"` (fallback_threshold="auto": BiLD may decode with the large model alone) the options are
    the large model alone in each dtype and drafting in each (small, large) combination; drafting is chosen only if
    its estimate beats the best large-alone one by `bild.costs.PAYS_MARGIN`, so that where it is close the large
    model is left in the dtype it decodes fastest alone in (and "auto" then finds that drafting cannot pay). With
    `drafting="always"` (a numeric fallback threshold) only the drafting combinations are weighed. Where the large
    model runs alone, the small model takes the dtype that drafts best beside it."""
    job = {"prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "acceptance": acceptance}
    bild = {(ds, dl): bild_job_seconds(sc, lc, max_drafts, prompt_tokens, new_tokens, acceptance)
            for ds, sc in small_by_dtype.items() for dl, lc in large_by_dtype.items()}
    seconds = {f"bild {ds}/{dl}": t for (ds, dl), t in bild.items()}
    ds, dl = min(bild, key=bild.get)
    if drafting == "always":
        return PairChoice(ds, dl, True, seconds, job)
    alone = {dl_: lc.job_seconds(prompt_tokens, new_tokens) for dl_, lc in large_by_dtype.items()}
    seconds.update({f"large alone {d}": t for d, t in alone.items()})
    best_alone = min(alone, key=alone.get)
    if bild[(ds, dl)] * PAYS_MARGIN <= alone[best_alone]:
        return PairChoice(ds, dl, True, seconds, job)
    ds = min(small_by_dtype, key=lambda d: bild[(d, best_alone)])
    return PairChoice(ds, best_alone, False, seconds, job)


def measure_by_dtype(model, widths: tuple[int, ...], candidates=(torch.float32, torch.bfloat16),
                     context: int = 64, repeats: int = 2) -> dict[str, ModelCosts]:
    """`model`'s costs in each candidate dtype (it is converted in place; left in the last one)."""
    out: dict[str, ModelCosts] = {}
    for dtype in candidates:
        model.to(dtype)
        out[str(dtype).replace("torch.", "")] = measure_model(model, widths, context=context, repeats=repeats)
    return out


def pair_dtypes(small, large, max_drafts: int = 10, drafting: str = "auto",
                candidates=(torch.float32, torch.bfloat16), **job) -> PairChoice:
    """Measure both models in each candidate dtype (a few forwards each: the small model's step, the large model's
    passes over 1 .. max_drafts + 1 tokens, both prefills), choose with `choose_pair_dtypes`, and leave each model
    in its chosen dtype (the measurements `bild calibrate` saved for these models on this machine, where there are
    any, instead of measuring). What `dtype="auto"` does for a pair on a device without native bfloat16. The measurement in
    the chosen dtypes is kept as the pair's cost model (`bild.costs.remember_pair_costs`), so "auto" decides whether
    to draft from the same numbers the choice was made from."""
    from .cost_file import load_costs, load_costs_by_dtype  # it reads this module's flags

    widths = default_widths(max_drafts + 1)
    context = pair_context(small, large, max(widths))
    names = tuple(str(d).replace("torch.", "") for d in candidates)
    saved = load_costs_by_dtype(small, large, max_drafts + 1, names)  # `bild calibrate` measured them here
    if saved is not None:
        small_by, large_by = saved
    else:
        small_by, large_by = (measure_by_dtype(small, (1,), candidates, context),
                              measure_by_dtype(large, widths, candidates, context))
    choice = choose_pair_dtypes(small_by, large_by, max_drafts, drafting, **job)
    small.to(getattr(torch, choice.small))
    large.to(getattr(torch, choice.large))
    # One measurement for both decisions: "auto" decides whether to draft from the costs the choice was made from.
    # (`bild calibrate`'s cost model in the chosen dtypes, where it saved one: more repeats than the choice's.)
    costs = (load_costs(small, large, max_drafts + 1)
             or PairCosts(small_by[choice.small], large_by[choice.large], device=str(large.device)))
    remember_pair_costs(small, large, max_drafts + 1, replace(costs, note={**costs.note, "dtypes": "measured"}))
    return choice

"""Whether a call drafts at all: with fallback_threshold="auto", the pair's measured cost model (`bild.costs`) says
if even all-accepted drafting can beat the large model alone on this device, and if the per-round rule would
draft at the cost per draft it starts from; where not, the call is the large model's own cached loop (transformers' sampling/greedy loop, nothing of BiLD's), and a warning says so once
per pair and device, with the numbers."""

from __future__ import annotations

import dataclasses

import time
import warnings

import numpy as np
import torch

from .config import AUTO, BiLDConfig
from .costs import PAYS_MARGIN, PairCosts, measure_pair_costs
from .kernels import few_token_matmuls, kernel_rows
from .policy import PRIOR_ACCEPTANCE, drafts_in_first_round
from .stats import BiLDStats

_WARNED: set[tuple] = set()


def costs_for(cfg: BiLDConfig, small, large, given: PairCosts | None, draft_int8: bool | None = None
              ) -> PairCosts | None:
    """The cost model a call decides from: the one given, else measured (once per process) under "auto" when no
    cost_ratio fixes the costs; None otherwise (fixed thresholds never consult costs). With draft_int8=False the
    small step is the one without bild.kernels' int8 form, whatever the measurement chose."""
    costs = given if given is not None else _measured(cfg, small, large)
    if costs is not None and draft_int8 is False:
        return dataclasses.replace(costs, small=costs.small.without_int8())
    return costs


def _measured(cfg: BiLDConfig, small, large) -> PairCosts | None:
    if cfg.fallback_threshold == AUTO and cfg.cost_ratio is None:
        try:
            return measure_pair_costs(small, large, max_width=cfg.max_small_steps + 1)
        except Exception as error:  # a speed decision only: "auto" then starts from the pair's ratio of weights read
            warnings.warn(f"BiLD: could not measure the pair's cost model ({type(error).__name__}: {error}); "
                          'fallback_threshold="auto" starts from the ratio of weights read per step instead. Pass '
                          "cost_model= or cost_ratio= to decide from other costs.", RuntimeWarning, stacklevel=3)
    return None


def drafts_at_all(cfg: BiLDConfig, costs: PairCosts | None) -> bool:
    """Pure: False only under "auto" with a cost model, where the ceiling (every draft accepted) stays below the
    margin, or where the per-round rule would never draft (`policy.drafts_in_first_round` at the cost per draft it
    starts from): in both the large model's own loop is the same output without BiLD's per-round work."""
    if cfg.fallback_threshold != AUTO or costs is None:
        return True
    return costs.drafting_can_pay(cfg.max_small_steps) and drafts_in_first_round(first_draft_cost(cfg, costs))


def first_draft_cost(cfg: BiLDConfig, costs: PairCosts) -> float:
    """The cost per draft, in large steps, "auto" starts a call from: the fixed cost_ratio, else the cost model's."""
    return cfg.cost_ratio if cfg.cost_ratio is not None else costs.draft_cost_ratio(cfg.max_small_steps)


def large_alone_reason(cfg: BiLDConfig, costs: PairCosts) -> str:
    """Pure: why `drafts_at_all` said no, in a few words with the numbers."""
    ceiling = costs.ceiling(cfg.max_small_steps)
    if ceiling < PAYS_MARGIN:
        return f"ceiling {ceiling:.2f}x < {PAYS_MARGIN}x"
    return (f"a draft costs {first_draft_cost(cfg, costs):.2f} large steps, more than the acceptance a draft starts "
            f"from ({float(np.mean(PRIOR_ACCEPTANCE)):.2f}), so no round would draft (ceiling {ceiling:.2f}x)")


def warn_large_alone(costs: PairCosts, cfg: BiLDConfig, small, large) -> None:
    """Once per pair of models and cost model in a process."""
    key = (id(small), id(large), costs.device, costs.small.dtype, costs.large.dtype, costs.large.step)
    if key in _WARNED:
        return
    _WARNED.add(key)
    warnings.warn(
        f"BiLD: drafting cannot pay for this pair on this device ({costs.summary(cfg.max_small_steps)}; "
        f"{large_alone_reason(cfg, costs)}), so fallback_threshold=\"auto\" decodes with the large model alone. "
        f"{why_not(costs)} Pass a number as "
        "fallback_threshold to draft anyway.", RuntimeWarning, stacklevel=3)


def why_not(costs: PairCosts) -> str:
    """Pure: the one-sentence reason a cost model's ceiling is low."""
    small = costs.small.step / costs.large.step
    two = costs.large.pass_seconds(2) / costs.large.step
    if small >= 0.5:
        return f"The small model's step costs {small:.2f} of the large model's."
    if two >= 1.5:
        hint = ("the dtypes were measured for this job (bild.hardware.pair_dtypes): drafting was slower in every one"
                if costs.note.get("dtypes") == "measured" else "try another dtype, or dtype=\"auto\" to measure them")
        return (f"A large pass over 2 tokens costs {two:.2f}x a one-token step (on a CPU, usually a dtype it has no "
                f"native matrix units for: {hint}).")
    return f"A small step costs {small:.2f} of a large one and a pass over 2 tokens {two:.2f}x a step."


class ForwardClock:
    """Seconds spent inside `module`'s forward calls while the `with` block runs (torch forward hooks, removed
    on exit; host time, as the adapters' own clocks measure without profiling)."""

    def __init__(self, module: torch.nn.Module):
        self.module, self.seconds, self._start, self._hooks = module, 0.0, 0.0, []

    def __enter__(self) -> "ForwardClock":
        def before(*_):
            self._start = time.perf_counter()

        def after(*_):
            self.seconds += time.perf_counter() - self._start

        self._hooks = [self.module.register_forward_pre_hook(before), self.module.register_forward_hook(after)]
        return self

    def __exit__(self, *exc) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []


def draft_int8_rows(forced: bool | None, costs: PairCosts | None) -> tuple[int, ...]:
    """Pure: the row counts whose draft-model passes take `bild.kernels`' int8 weight-only form (forced True / False,
    or None: what the small model's measured costs found; none without a cost model). The large model never takes it."""
    return kernel_rows(forced, costs.small.int8_rows if costs is not None else None)


def pair_kernel_rows(forced: bool | None, costs: PairCosts | None) -> dict[str, tuple[int, ...]]:
    """Pure: role -> the row counts whose passes take `bild.kernels`' weight-stationary form (forced True / False, or
    None: what each model's measured costs found; none without a cost model)."""
    return {role: kernel_rows(forced, getattr(costs, role).weight_stationary if costs is not None else None)
            for role in ("small", "large")}


def large_alone(model, input_ids, logits_processor, stopping_criteria, generation_config, streamer, model_kwargs,
                pad_token_id: int, costs: PairCosts, cfg: BiLDConfig, rows: tuple[int, ...] = ()):
    """transformers' own cached decoding loop for `model` (what `model.generate` runs), with BiLD's output type; its
    passes over `rows` row counts in `bild.kernels`' weight-stationary form (measured faster on this machine)."""
    from .decode import BiLDOutput

    if streamer is not None:
        streamer.put(input_ids.cpu())
    kwargs = {k: v for k, v in model_kwargs.items() if k != "inputs_tensor"}
    start = time.perf_counter()
    with ForwardClock(model) as clock, few_token_matmuls(model, rows, input_ids.shape[0]):  # its steps' row count
        out = model._sample(input_ids, logits_processor=logits_processor, stopping_criteria=stopping_criteria,
                            generation_config=generation_config, synced_gpus=False, streamer=streamer, **kwargs)
    loop_seconds = time.perf_counter() - start
    sequences = out if isinstance(out, torch.Tensor) else out.sequences
    steps = sequences.shape[1] - input_ids.shape[1]
    stats = BiLDStats.zeros(sequences.shape[0])
    new = (sequences[:, input_ids.shape[1]:] != pad_token_id).sum(1).tolist()
    stats.bonus_tokens = list(new)
    stats.large_forward_calls = list(new)
    stats.batch_large_calls = steps
    stats.loop_seconds = loop_seconds
    stats.forward_seconds = stats.large_forward_seconds = clock.seconds
    stats.drafting = f"off: {large_alone_reason(cfg, costs)} (bild.costs)"
    stats.costs = costs.to_dict()
    if not generation_config.return_dict_in_generate:
        return sequences
    return BiLDOutput(sequences=sequences, stats=stats, scores=getattr(out, "scores", None),
                      logits=getattr(out, "logits", None))

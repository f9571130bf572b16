"""Cheaper passes over a few tokens on a CPU (issue #19, item 3): the weight-stationary matmul form, used for the row
counts where the pair's measured cost model found it faster on this machine.

A pass over k = 1 .. 16 tokens is mostly matrix products of k rows with each weight matrix. How the CPU's kernels
handle so few rows differs by machine and dtype (`benchmarks/few_token_matmul.py`, RESULTS.md A18, A22, A23):

- float32 on a Zen 5: `F.linear(x, W)` costs about k one-row products; the weight-stationary form `(W @ x.T).T`
  little more than one (whole 1.5B passes over 2-11 tokens several times cheaper);
- float32 on an AMX Xeon: `F.linear` over 2-3 rows costs what one row costs and the weight-stationary form is 1.5x
  slower there; from about 5 rows it wins (1.8x over 11 rows);
- bfloat16 on the AMX Xeon: a one-row `F.linear` costs more than `torch.mv` of the same weight (whole step 1.1x).

So no fixed rule is right everywhere: `bild.costs.measure_model` times each measured pass width in both forms, and
`weight_stationary_rows` (a pure function of those times) gives the row counts where the weight-stationary form is
faster by a margin. `few_token_matmuls(model, rows)` applies it: within the block every plain `nn.Linear` of the
model computes a product over one of `rows` row counts in that form (`torch.mv` for one row), any other (a prefill)
as before; the model is as it was afterwards. Both forms compute the same products summed in another order: they
agree to rounding, as a verify pass and a one-token step already do, so lossless BiLD stays the large model's greedy
output exactly where no near-tie is decided by the last bit (the contract's "greedy ties aside").
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Mapping

import torch
from torch import nn

#: Row counts (tokens times rows of the batch) of one product that may take the weight-stationary form.
FEW_ROWS = range(1, 17)

#: The weight-stationary form is used only where its measured pass is at least this much cheaper (timing noise must
#: not flip a choice that gains nothing).
MARGIN = 0.05


def interpolate(points: Mapping[int, float], x: int) -> float:
    """The value at `x` of the piecewise-linear curve through `points` (width -> seconds), extended past the last
    point by its last slope; never negative."""
    if x in points:
        return points[x]
    ws = sorted(points)
    lo = max((w for w in ws if w < x), default=ws[0])
    hi = min((w for w in ws if w > x), default=None)
    if hi is None:  # past the widest: the last slope
        lo, hi = (ws[-2], ws[-1]) if len(ws) > 1 else (ws[0], ws[0])
    if hi == lo:
        return points[lo]
    slope = (points[hi] - points[lo]) / (hi - lo)
    return max(points[lo] + slope * (x - lo), 0.0)


def weight_stationary_rows(linear: Mapping[int, float], stationary: Mapping[int, float],
                           margin: float = MARGIN) -> tuple[int, ...]:
    """Pure rule: the row counts in FEW_ROWS whose pass is cheaper in the weight-stationary form by `margin`, from
    the measured seconds of passes in each form (width -> seconds; between and past measured widths interpolated).
    Nothing measured in the weight-stationary form: none; one width measured (a small model's step): that width only,
    since nothing says how the forms scale with rows."""
    if not linear or not stationary:
        return ()
    rows = FEW_ROWS if len(stationary) > 1 else [r for r in FEW_ROWS if r in stationary]
    return tuple(r for r in rows if interpolate(stationary, r) < (1 - margin) * interpolate(linear, r))


def weight_stationary_linear(module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """`module(x)` computed as (W @ x.T).T (one row: W @ x): the weight streams once for all rows."""
    flat = x.reshape(-1, x.shape[-1])
    if flat.shape[0] == 1:
        out = torch.mv(module.weight, flat[0]).unsqueeze(0)
    else:
        out = (module.weight @ flat.T).T.contiguous()
    if module.bias is not None:
        out += module.bias
    return out.view(*x.shape[:-1], module.weight.shape[0])


def _dispatch(module: nn.Linear, rows: frozenset[int], own):
    def forward(x: torch.Tensor) -> torch.Tensor:
        n = x.numel() // x.shape[-1] if x.shape[-1] else 0
        return weight_stationary_linear(module, x) if n in rows else own(x)
    return forward


@contextlib.contextmanager
def few_token_matmuls(model: nn.Module, rows: Collection[int] = (), pass_rows: int | None = None):
    """Within the block, the model's plain nn.Linear layers (not subclasses, floating-point weights) compute a product
    over a row count in `rows` in the weight-stationary form; nothing changes when `rows` is empty, or when
    `pass_rows` (the row count of the block's steps, where known) is not among them. The model is as it was
    afterwards."""
    use = frozenset(rows) & frozenset(FEW_ROWS)
    if not use or (pass_rows is not None and pass_rows not in use):
        yield
        return
    linears = [m for m in model.modules() if type(m) is nn.Linear and m.weight.is_floating_point()]
    before = {m: vars(m).get("forward") for m in linears}  # an instance's own forward (accelerate's hooks) stays
    for m in linears:
        m.forward = _dispatch(m, use, m.forward)
    try:
        yield
    finally:
        for m, own in before.items():
            if own is None:
                del m.forward
            else:
                m.forward = own


def kernel_rows(forced: bool | None, measured: Collection[int] | None) -> tuple[int, ...]:
    """The row counts a model's passes take the weight-stationary form for: `forced` True every few-row count, False
    none, None what its measured cost model found (`ModelCosts.weight_stationary`; none where nothing was measured)."""
    if forced is not None:
        return tuple(FEW_ROWS) if forced else ()
    return tuple(sorted(measured or ()))

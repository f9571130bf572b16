"""Cheaper passes over a few tokens on a CPU (issue #19, item 3): the weight-stationary matmul form, used for the row
counts where the pair's measured cost model found it faster on this machine.

A pass over k = 1 .. 16 tokens is mostly matrix products of k rows with each weight matrix. How the CPU's kernels
handle so few rows differs by machine and dtype (`benchmarks/few_token_matmul.py`, RESULTS.md A18, A22, A23):

- float32 on a Zen 5: `F.linear(x, W)` costs about k one-row products; the weight-stationary form `(W @ x.T).T`
  little more than one (whole 1.5B passes over 2-11 tokens several times cheaper);
- float32 on an AMX Xeon: `F.linear` over 2-3 rows costs what one row costs and the weight-stationary form is 1.5x
  slower there; from about 5 rows it wins (1.8x over 11 rows);
- bfloat16 on the AMX Xeon: a one-row `F.linear` costs more than `torch.mv` of the same weight (whole step 1.1x).

The draft model may also take an **int8 weight-only** form (`int8_weight_linear`): its weights rounded per output
channel to int8 (a copy made once per weight and kept for the process), products through torch's
`_weight_int8pack_mm`. It reads half the bytes of bfloat16; on the AMX Xeon a 0.5B step is about 1.6x faster. It
changes the small model's logits slightly (its argmax rarely), so it is only ever offered for the draft model: the
large model's passes, and so lossless BiLD's output, are never touched by it. The cost model times it for the small
model too, and it is used where measured faster (`ModelCosts.int8_rows`), or when forced (`draft_int8=True`).

So no fixed rule is right everywhere: `bild.costs.measure_model` times each measured pass width in both forms, and
`faster_rows` (a pure function of those times) gives the row counts where the weight-stationary form is
faster by a margin. `few_token_matmuls(model, rows)` applies it: within the block every plain `nn.Linear` of the
model computes a product over one of `rows` row counts in that form (`torch.mv` for one row), any other (a prefill)
as before; the model is as it was afterwards. Both forms compute the same products summed in another order: they
agree to rounding, as a verify pass and a one-token step already do, so lossless BiLD stays the large model's greedy
output exactly where no near-tie is decided by the last bit (the contract's "greedy ties aside").
"""

from __future__ import annotations

import contextlib
import weakref
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


def faster_rows(base: Mapping[int, float], other: Mapping[int, float], margin: float = MARGIN) -> tuple[int, ...]:
    """Pure rule: the row counts in FEW_ROWS whose pass is cheaper in the `other` form (the weight-stationary one, or
    the draft's int8 one) than in the `base` form by `margin`, from the measured seconds of passes in each form
    (width -> seconds; between and past measured widths interpolated). Nothing measured in the other form: none; one
    width measured (a small model's step): that width only, since nothing says how the forms scale with rows."""
    if not base or not other:
        return ()
    rows = FEW_ROWS if len(other) > 1 else [r for r in FEW_ROWS if r in other]
    return tuple(r for r in rows if interpolate(other, r) < (1 - margin) * interpolate(base, r))


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


#: the int8 copies of weights: module -> (the weight's identity and version when copied, int8 weight, scales)
_INT8: "weakref.WeakKeyDictionary[nn.Linear, tuple]" = weakref.WeakKeyDictionary()
#: (dtype, device type) -> whether torch's int8 weight-only kernel computes a known product correctly there
_INT8_WORKS: dict[tuple, bool] = {}


def _int8_kernel_works(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether `_weight_int8pack_mm` exists and is right for this dtype and device (a product checked once against
    float32 arithmetic: some builds compute some shapes wrongly)."""
    key = (dtype, device.type)
    if key not in _INT8_WORKS:
        ok = hasattr(torch, "_weight_int8pack_mm")
        if ok:
            g = torch.Generator().manual_seed(0)
            x = torch.randn(3, 64, generator=g)
            q = torch.randint(-127, 128, (48, 64), generator=g, dtype=torch.int8)
            s = torch.rand(48, generator=g) / 64 + 1e-3
            want = x @ (q.float() * s[:, None]).T
            try:
                got = torch._weight_int8pack_mm(x.to(device, dtype), q.to(device), s.to(device, dtype)).float().cpu()
                ok = bool(torch.allclose(got, want, rtol=3e-2, atol=3e-2 * want.abs().max().item()))
            except (RuntimeError, NotImplementedError):
                ok = False
        _INT8_WORKS[key] = ok
    return _INT8_WORKS[key]


def int8_weight_usable(module: nn.Linear) -> bool:
    """Whether `module` can take the int8 weight-only form: a plain floating-point nn.Linear whose input width is a
    multiple of 32 (torch's kernel computes other widths wrongly in bfloat16) on a device and dtype whose kernel
    checks out."""
    w = module.weight
    return (type(module) is nn.Linear and w.is_floating_point() and w.dim() == 2 and w.shape[1] % 32 == 0
            and _int8_kernel_works(w.dtype, w.device))


def int8_weights(module: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """The module's weight rounded to int8 per output channel (symmetric, scale = max |w| / 127) and the scales in the
    weight's dtype; made once and kept while the weight is the same tensor at the same version (an in-place update, a
    new tensor or a move makes a new copy)."""
    w = module.weight
    stamp = (id(w), w.data_ptr(), w._version, w.dtype, w.device)
    kept = _INT8.get(module)
    if kept is None or kept[0] != stamp:
        with torch.no_grad():
            scales = w.detach().float().abs().amax(dim=1).clamp(min=1e-12) / 127
            q = torch.round(w.detach().float() / scales[:, None]).clamp(-127, 127).to(torch.int8).contiguous()
        kept = _INT8[module] = (stamp, q, scales.to(w.dtype))
    return kept[1], kept[2]


def int8_weight_linear(module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """`module(x)` with the weight rounded to int8 per output channel (`int8_weights`): an approximation, for the
    draft model only."""
    q, scales = int8_weights(module)
    out = torch._weight_int8pack_mm(x.reshape(-1, x.shape[-1]).contiguous(), q, scales)
    if module.bias is not None:
        out += module.bias
    return out.view(*x.shape[:-1], q.shape[0])


def _dispatch(module: nn.Linear, rows: frozenset[int], int8_rows: frozenset[int], own):
    int8_rows = int8_rows if int8_rows and int8_weight_usable(module) else frozenset()

    def forward(x: torch.Tensor) -> torch.Tensor:
        n = x.numel() // x.shape[-1] if x.shape[-1] else 0
        if n in int8_rows:
            return int8_weight_linear(module, x)
        return weight_stationary_linear(module, x) if n in rows else own(x)
    return forward


@contextlib.contextmanager
def few_token_matmuls(model: nn.Module, rows: Collection[int] = (), pass_rows: int | None = None,
                      int8_rows: Collection[int] = ()):
    """Within the block, the model's plain nn.Linear layers (not subclasses, floating-point weights) compute a product
    over a row count in `int8_rows` in the int8 weight-only form (layers that can take it; the draft model only),
    over one in `rows` in the weight-stationary form; nothing changes when both are empty, or when `pass_rows` (the
    row count of the block's steps, where known) is in neither. The model is as it was afterwards."""
    use = frozenset(rows) & frozenset(FEW_ROWS)
    int8 = frozenset(int8_rows) & frozenset(FEW_ROWS)
    if not (use | int8) or (pass_rows is not None and pass_rows not in use | int8):
        yield
        return
    linears = [m for m in model.modules() if type(m) is nn.Linear and m.weight.is_floating_point()]
    before = {m: vars(m).get("forward") for m in linears}  # an instance's own forward (accelerate's hooks) stays
    for m in linears:
        m.forward = _dispatch(m, use, int8, m.forward)
    try:
        yield
    finally:
        for m, own in before.items():
            if own is None:
                del m.forward
            else:
                m.forward = own


def kernel_rows(forced: bool | None, measured: Collection[int] | None) -> tuple[int, ...]:
    """The row counts a model's passes take a form for (the weight-stationary form, or the draft's int8 one):
    `forced` True every few-row count, False none, None what its measured cost model found
    (`ModelCosts.weight_stationary`, `ModelCosts.int8_rows`; none where nothing was measured)."""
    if forced is not None:
        return tuple(FEW_ROWS) if forced else ()
    return tuple(sorted(measured or ()))

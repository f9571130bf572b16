"""Cheaper passes over a few tokens on a CPU in float32 (issue #19, item 3).

A large-model pass over k = 2 .. 16 tokens is mostly matrix products of k rows with each weight matrix. On the
CPUs measured (`benchmarks/few_token_matmul.py`, RESULTS.md A18), `F.linear(x, W)` in float32 costs about k times
a one-row product there, while the weight-stationary form `(W @ x.T).T` costs little more than one row: for the
1.5B's MLP matrices 1.4-3.7x less at 2-11 rows, for its 151,936-row output layer 1.5-2.7x less. In bfloat16 on a
CPU with native bfloat16 (avx512_bf16), `F.linear` is the faster one, so the rule applies to float32 only.

`few_token_matmuls(model, rows)` swaps every `nn.Linear` of the model to the weight-stationary form for one
forward, where `prefers_weight_stationary` says so. Both forms compute the same products, summed in another order:
they agree to float32 rounding, as a verify pass and a one-token step already do, so lossless BiLD stays the large
model's greedy output exactly where no near-tie is decided by the last bit (the contract's "greedy ties aside").
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

#: Row counts (tokens times rows of the batch) of one forward that take the weight-stationary form.
FEW_ROWS = range(2, 17)


def prefers_weight_stationary(model: nn.Module, rows: int) -> bool:
    """Pure rule: a forward over `rows` rows (2 .. 16) of a float32 model on a CPU."""
    if rows not in FEW_ROWS:
        return False
    weight = model.get_input_embeddings().weight if hasattr(model, "get_input_embeddings") else None
    return weight is not None and weight.device.type == "cpu" and weight.dtype == torch.float32


def weight_stationary_linear(module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """`module(x)` computed as (W @ x.T).T: the weight streams once for all rows."""
    flat = x.reshape(-1, x.shape[-1])
    out = (module.weight @ flat.T).T.contiguous()
    if module.bias is not None:
        out += module.bias
    return out.view(*x.shape[:-1], module.weight.shape[0])


@contextlib.contextmanager
def few_token_matmuls(model: nn.Module, rows: int, enabled: bool | None = None):
    """Within the block, the model's float32 nn.Linear layers (plain ones, not subclasses) use the weight-stationary
    form when `enabled` (None: when `prefers_weight_stationary(model, rows)`; True: for any 2-16 rows); the model is
    as it was afterwards."""
    use = prefers_weight_stationary(model, rows) if enabled is None else bool(enabled) and rows in FEW_ROWS
    if not use:
        yield
        return
    linears = [m for m in model.modules() if type(m) is nn.Linear and m.weight.dtype == torch.float32]
    for m in linears:
        m.forward = lambda x, m=m: weight_stationary_linear(m, x)
    try:
        yield
    finally:
        for m in linears:
            del m.forward

"""The kernel path of a pass over a few tokens on this CPU (issue #19, item 3): `F.linear(x, W)` against the
weight-stationary `(W @ x.T).T` for 1 .. 11 rows, at the large model's shapes, per dtype.

    python benchmarks/few_token_matmul.py            # Qwen2.5-1.5B shapes, float32 and bfloat16

Each (shape, dtype, rows, form) is timed `--repeats` times in rotated order after a warm-up; the table gives the
median in ms and the ratio linear / weight-stationary (above 1: the weight-stationary form is faster). Both forms
compute the same sums in a different order, so they agree to rounding, not bit for bit (max |difference| shown).
Writes JSON (machine included).

Read it as a kernel-path probe, not as the cost of a pass: one matrix timed again and again can stay in the CPU's
cache, while a model's pass streams every weight from memory once. On the AMX Xeon (A22, A23) this table showed the
weight-stationary form 1.2-1.6x faster in bfloat16 over 2-11 rows, and whole passes of the 1.5B model were not (0.90-
1.07x). What bild decides from is the whole-pass timing of both forms in `bild.costs.measure_model`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bild.env import environment

SHAPES = {"mlp up/gate 1536->8960": (8960, 1536), "mlp down 8960->1536": (1536, 8960),
          "attention q 1536->1536": (1536, 1536), "lm head 1536->151936": (151936, 1536)}


def forms(x, w):
    return {"linear": lambda: F.linear(x, w), "weight_stationary": lambda: (w @ x.T).T}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default="1,2,3,5,11")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--output", default="benchmarks/results/few_token_matmul.json")
    args = p.parse_args(argv)
    rows = [int(r) for r in args.rows.split(",")]
    out = {"command": "python benchmarks/few_token_matmul.py", "environment": environment(), "results": []}
    print(f"{'shape':26} {'dtype':9} {'rows':>4} {'linear ms':>10} {'W@x.T ms':>9} {'ratio':>6} {'max diff':>9}")
    torch.manual_seed(0)
    for name, (n_out, n_in) in SHAPES.items():
        for dtype in args.dtypes.split(","):
            dt = getattr(torch, dtype)
            w = (torch.randn(n_out, n_in) / n_in ** 0.5).to(dt)
            for r in rows:
                x = torch.randn(r, n_in).to(dt)
                fs = forms(x, w)
                diff = (fs["linear"]().float() - fs["weight_stationary"]().float()).abs().max().item()
                times = {k: [] for k in fs}
                for f in fs.values():
                    f()
                for i in range(args.repeats):
                    for k in (list(fs) if i % 2 == 0 else list(fs)[::-1]):
                        t = time.perf_counter()
                        fs[k]()
                        times[k].append(time.perf_counter() - t)
                med = {k: 1000 * statistics.median(v) for k, v in times.items()}
                ratio = med["linear"] / med["weight_stationary"]
                out["results"].append({"shape": name, "dtype": dtype, "rows": r, "ms": med, "ratio": ratio,
                                       "max_abs_diff": diff})
                print(f"{name:26} {dtype:9} {r:4d} {med['linear']:10.2f} {med['weight_stationary']:9.2f} "
                      f"{ratio:6.2f} {diff:9.2e}", flush=True)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

"""Measure the step costs that bound BiLD's speed for a model pair, and the ceiling they imply.

    python benchmarks/step_costs.py --small PATH --large PATH [--compile]

Costs (ms, median of --repeats, after warm-up) of: one small-model step (1 new token, cache of
--context tokens), one large-model step, and one large-model pass over k new tokens (verification)
for k = 1 .. max_small_steps + 1. The ceiling of BiLD with n drafts all accepted is
(n * small_step + verify(n + 1)) / (n + 1) ms per token; the script prints it for every n and the
speed-up over large greedy it would give. With --compile, also the small step through torch.compile.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, DynamicCache

from bild.env import environment


def step_ms(model, context: int, new: int, repeats: int, forward=None) -> float:
    forward = forward or model.forward
    ids = torch.randint(100, 1000, (1, context + new))
    times = []
    for _ in range(repeats + 2):
        cache = DynamicCache(config=model.config)
        model(input_ids=ids[:, :context], cache=cache, use_cache=True, logits_to_keep=1)
        start = time.perf_counter()
        forward(input_ids=ids[:, context:], cache=cache, use_cache=True, logits_to_keep=new)
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times[2:])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", required=True), p.add_argument("--large", required=True)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--context", type=int, default=100)
    p.add_argument("--max_small_steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--output", default="benchmarks/results/step_costs.json")
    args = p.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    small = AutoModelForCausalLM.from_pretrained(args.small, dtype=dtype).eval()
    large = AutoModelForCausalLM.from_pretrained(args.large, dtype=dtype).eval()
    with torch.no_grad():
        costs = {"small_step": step_ms(small, args.context, 1, args.repeats),
                 "large_step": step_ms(large, args.context, 1, args.repeats)}
        costs["verify"] = {k: step_ms(large, args.context, k, args.repeats) for k in range(1, args.max_small_steps + 2)}
        if args.compile:
            compiled = torch.compile(small.forward, dynamic=False)
            costs["small_step_compiled"] = step_ms(small, args.context, 1, args.repeats, compiled)
    ceiling = {}
    for n in range(1, args.max_small_steps + 1):
        per_token = (n * costs["small_step"] + costs["verify"][n + 1]) / (n + 1)
        ceiling[n] = {"ms_per_token": per_token, "speedup_vs_large": costs["large_step"] / per_token}
    print(f"small step {costs['small_step']:.1f} ms, large step {costs['large_step']:.1f} ms"
          + (f", small step compiled {costs['small_step_compiled']:.1f} ms" if args.compile else ""))
    print("verify k tokens: " + ", ".join(f"{k}:{v:.0f}" for k, v in costs["verify"].items()) + " ms")
    print("ceiling with n drafts all accepted: " + ", ".join(f"n={n}: {c['speedup_vs_large']:.2f}x" for n, c in ceiling.items()))
    report = {"command": " ".join(sys.argv), "environment": environment(), "args": vars(args), "costs_ms": costs,
              "ceiling_all_accepted": ceiling}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

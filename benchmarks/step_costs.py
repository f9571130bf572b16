"""Measure the step costs that bound BiLD's speed for a model pair, and the ceiling they imply.

    python benchmarks/step_costs.py --small PATH --large PATH [--compile]

Costs (ms, median over --repeats rounds, after warm-up) of: one small-model step (1 new token, cache of
--context tokens), one large-model step, and one large-model pass over k new tokens (verification)
for k = 1 .. max_small_steps + 1. The measurements are interleaved: every round times each of them once,
in an order rotated from round to round, so a stall or drift of the machine lands on all of them alike;
the small/large ratio is also reported per round (median and range). The ceiling of BiLD with n drafts all accepted is
(n * small_step + verify(n + 1)) / (n + 1) ms per token; the script prints it for every n and the
speed-up over large greedy it would give. With --compile, also the small step through torch.compile.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, DynamicCache

from bild.env import environment
from bild.hardware import pair_dtypes, rule_dtype
from bild.eval.timing import rotated


def step_ms(model, context: int, new: int, forward=None) -> float:
    """One timed forward of `new` tokens after a (not timed) prefill of `context` tokens."""
    forward = forward or model.forward
    ids = torch.randint(100, 1000, (1, context + new))
    cache = DynamicCache(config=model.config)
    model(input_ids=ids[:, :context], cache=cache, use_cache=True, logits_to_keep=1)
    start = time.perf_counter()
    forward(input_ids=ids[:, context:], cache=cache, use_cache=True, logits_to_keep=new)
    return 1000 * (time.perf_counter() - start)


def interleaved(measures: dict, repeats: int, warm_up: int = 2) -> dict[str, list[float]]:
    """name -> ms of each round; each round runs every measure once, the order rotated by the round."""
    names = list(measures)
    times = {name: [] for name in names}
    for r in range(warm_up + repeats):
        for name in rotated(names, r):
            ms = measures[name]()
            if r >= warm_up:
                times[name].append(ms)
    return times


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", required=True), p.add_argument("--large", required=True)
    p.add_argument("--dtype", default="auto", help="auto: bfloat16 where native, else measured for the pair (bild.hardware)")
    p.add_argument("--context", type=int, default=100)
    p.add_argument("--max_small_steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--output", default="benchmarks/results/step_costs.json")
    args = p.parse_args(argv)
    auto = args.dtype == "auto"
    dtype = (rule_dtype("cpu") or torch.float32) if auto else getattr(torch, args.dtype)
    small = AutoModelForCausalLM.from_pretrained(args.small, dtype=dtype).eval()
    large = AutoModelForCausalLM.from_pretrained(args.large, dtype=dtype).eval()
    if auto and rule_dtype("cpu") is None:
        args.dtype_choice = dataclasses.asdict(pair_dtypes(small, large, args.max_small_steps))
    args.model_dtypes = {r: str(next(m.parameters()).dtype).replace("torch.", "") for r, m in (("small", small), ("large", large))}
    measures = {"small_step": lambda: step_ms(small, args.context, 1), "large_step": lambda: step_ms(large, args.context, 1)}
    measures.update({f"verify_{k}": lambda k=k: step_ms(large, args.context, k) for k in range(2, args.max_small_steps + 2)})
    if args.compile:
        compiled = torch.compile(small.forward, dynamic=False)
        measures["small_step_compiled"] = lambda: step_ms(small, args.context, 1, compiled)
    with torch.no_grad():
        times = interleaved(measures, args.repeats)
    med = {name: statistics.median(t) for name, t in times.items()}
    costs = {"small_step": med["small_step"], "large_step": med["large_step"],
             # a pass over one new token is the large step itself
             "verify": {1: med["large_step"], **{k: med[f"verify_{k}"] for k in range(2, args.max_small_steps + 2)}}}
    if args.compile:
        costs["small_step_compiled"] = med["small_step_compiled"]
    ratios = [s / l for s, l in zip(times["small_step"], times["large_step"])]
    costs["small_over_large"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
    ceiling = {}
    for n in range(1, args.max_small_steps + 1):
        per_token = (n * costs["small_step"] + costs["verify"][n + 1]) / (n + 1)
        ceiling[n] = {"ms_per_token": per_token, "speedup_vs_large": costs["large_step"] / per_token}
    print(f"small/large per round: median {costs['small_over_large']['median']:.2f} "
          f"(range {costs['small_over_large']['min']:.2f}-{costs['small_over_large']['max']:.2f})")
    print(f"small step {costs['small_step']:.1f} ms, large step {costs['large_step']:.1f} ms"
          + (f", small step compiled {costs['small_step_compiled']:.1f} ms" if args.compile else ""))
    print("verify k tokens: " + ", ".join(f"{k}:{v:.0f}" for k, v in costs["verify"].items()) + " ms")
    print("ceiling with n drafts all accepted: " + ", ".join(f"n={n}: {c['speedup_vs_large']:.2f}x" for n, c in ceiling.items()))
    report = {"command": " ".join(sys.argv), "environment": environment(), "args": vars(args), "costs_ms": costs,
              "timing": {"order": "interleaved", "rounds": args.repeats, "per_round_ms": times},
              "ceiling_all_accepted": ceiling}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

"""The pair's cost model (bild.costs) on this machine, in each dtype, and what it implies.

    python benchmarks/cost_model.py --small S --large L --dtypes float32,bfloat16 \
        --output benchmarks/results/cost_model_<machine>.json

For each dtype: both models loaded in it, `measure_pair_costs` (a prefill of --context random tokens, then cached
passes over 1, 2, 3, 5 and max_drafts + 1 tokens; medians of --repeats, widths rotated), repeated --rounds times
with the dtypes interleaved round by round (the median of rounds kept). Printed: each model's step, the large
pass by width in steps, prefill per token, the ceiling (every draft accepted) and the best round length at
acceptance 0.6 / 0.8 / 0.9, and whether "auto" would draft at all. Also `bild.hardware`'s rule and, where there is
none, its measured per-model choice. Writes JSON with the machine (`bild env`) and the command.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from bild.costs import ModelCosts, PairCosts, default_widths, measure_model
from bild.env import environment
from bild.eval.rundir import atomic_write_json
from bild.hardware import choose_dtype, rule_dtype


def median_costs(runs: list[ModelCosts]) -> ModelCosts:
    """Per width and matmul form, the median over rounds; the form of each width chosen from those medians."""
    def med(attr):
        return {w: statistics.median(getattr(r, attr)[w] for r in runs) for w in getattr(runs[0], attr)}
    linear = med("linear_passes") or med("passes")
    return ModelCosts.from_forms(linear, med("stationary_passes"), statistics.median(r.prefill_per_token for r in runs),
                                 runs[0].dtype, runs[0].context, med("int8_passes"))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", required=True)
    p.add_argument("--large", required=True)
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--max_drafts", type=int, default=10)
    p.add_argument("--context", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--output", required=True)
    args = p.parse_args(argv)
    dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]
    models = {role: AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
              for role, path in (("small", args.small), ("large", args.large))}
    widths = default_widths(args.max_drafts + 1)
    runs = {str(d).replace("torch.", ""): {"small": [], "large": []} for d in dtypes}
    for r in range(args.rounds):
        for dtype in (dtypes if r % 2 == 0 else dtypes[::-1]):
            name = str(dtype).replace("torch.", "")
            for role, model in models.items():
                model.to(dtype)
                runs[name][role].append(measure_model(model, widths if role == "large" else (1, 2), args.context,
                                                      args.repeats, seed=r))
            print(f"round {r + 1}/{args.rounds} {name} done", file=sys.stderr, flush=True)
    result = {"command": " ".join(sys.argv), "environment": environment(), "args": vars(args), "dtypes": {}}
    print(f"{'dtype':<10}{'small ms':>10}{'large ms':>10}{'S/L':>6}  large pass / step at width "
          f"{' '.join(str(w) for w in widths):<16}{'prefill ms/tok L':>17}{'ceiling':>9}  best n @0.6/0.8/0.9  auto drafts")
    for name, by_role in runs.items():
        small, large = median_costs(by_role["small"]), median_costs(by_role["large"])
        costs = PairCosts(small, large, device="cpu")
        best = {a: costs.best_round(a, args.max_drafts) for a in (0.6, 0.8, 0.9)}
        result["dtypes"][name] = {"costs": costs.to_dict(), "ceiling": costs.ceiling(args.max_drafts),
                                  "best_round": {str(a): b for a, b in best.items()},
                                  "auto_drafts": costs.drafting_can_pay(args.max_drafts)}
        ratios = " ".join(f"{large.pass_seconds(w) / large.step:.2f}" for w in widths)
        print(f"{name:<10}{1000 * small.step:>10.1f}{1000 * large.step:>10.1f}{small.step / large.step:>6.2f}  "
              f"{ratios:<44}{1000 * large.prefill_per_token:>17.2f}{costs.ceiling(args.max_drafts):>8.2f}x  "
              f"{' / '.join(f'{n} ({s:.2f}x)' for n, s in best.values())}  {costs.drafting_can_pay(args.max_drafts)}")
        for role, m in (("small", small), ("large", large)):
            if m.stationary_passes:
                print(f"  {role} weight-stationary rows {list(m.weight_stationary)}; ms by width, F.linear / "
                      "weight-stationary: " + ", ".join(f"{w}: {1000 * m.linear_passes[w]:.1f} / "
                                                        f"{1000 * m.stationary_passes[w]:.1f}" for w in m.linear_passes))
    rule = rule_dtype("cpu")
    if len(runs) > 1:
        per_role = {role: choose_dtype({d: median_costs(runs[d][role]) for d in runs}, width=5 if role == "large" else 1)
                    for role in ("small", "large")}
    else:
        per_role = None
    result["rule_dtype"] = None if rule is None else str(rule).replace("torch.", "")
    result["measured_choice"] = per_role
    print(f"dtype auto: rule {result['rule_dtype']} (bfloat16 native: {environment()['bf16_native']}); "
          f"measured choice for a 100-token prompt and 50 new tokens: {per_role}")
    atomic_write_json(Path(args.output), result)
    print(f"wrote {args.output}")
    return result


if __name__ == "__main__":
    main()

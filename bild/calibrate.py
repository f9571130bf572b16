"""`bild calibrate`: measure a pair's cost model once, with more repeats than a process start affords, and save it
(`bild.cost_file`), so that later processes on this machine read it instead of measuring for 10-20 s.

    bild calibrate --small SMALL --large LARGE [--dtype auto] [--max_small_steps 10] [--repeats 8]
"""

from __future__ import annotations

import argparse

import torch

from .config import BiLDConfig


def calibrate_command_parser(subparsers=None) -> argparse.ArgumentParser:
    description = ("Measure the pair's cost model on this machine (small step, large passes over 1 .. N+1 tokens, "
                   "prefill, the matmul forms) and save it, so that BiLD's \"auto\" decisions start from it in later "
                   "processes instead of measuring at every start.")
    parser = (subparsers.add_parser("calibrate", help="measure and save the pair's cost model", description=description)
              if subparsers else argparse.ArgumentParser("bild calibrate", description=description))
    parser.add_argument("--small", required=True, help="small model (folder or hub name)")
    parser.add_argument("--large", required=True, help="large model (folder or hub name)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                        help="the dtype the models will generate in (auto: as BiLD's other commands choose it)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda if present, else cpu)")
    parser.add_argument("--max_small_steps", type=int, default=BiLDConfig.max_small_steps,
                        help="the max_small_steps the pair will run with (the widest pass measured is one more)")
    parser.add_argument("--repeats", type=int, default=8, help="timed repeats of each pass (a process start takes 4)")
    parser.set_defaults(func=calibrate_command)
    return parser


def calibrate_command(args: argparse.Namespace) -> int:
    from .cost_file import save_costs
    from .costs import measure_pair_costs
    from .eval.systems import ModelSpec, load_models

    if args.max_small_steps < 1 or args.repeats < 1:
        raise SystemExit("--max_small_steps and --repeats must be >= 1.")
    device = torch.device(args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    loaded = load_models({"small": args.small, "large": args.large}, ModelSpec(args.dtype, str(device)), device,
                         args.max_small_steps)
    small, large = loaded.models["small"], loaded.models["large"]
    max_width = args.max_small_steps + 1
    with torch.no_grad():
        costs = measure_pair_costs(small, large, max_width, repeats=args.repeats, cached=False)
    path = save_costs(small, large, max_width, costs)
    print(f"cost model: {costs.summary(args.max_small_steps)}")
    print(f"saved to {path}; BiLD reads it for this pair, dtype and machine (BILD_COSTS=measure: measure anyway)")
    return 0

"""`bild calibrate`: measure a pair's cost model once, with more repeats than a process start affords, and save it
(`bild.cost_file`), so that later processes on this machine read it instead of measuring for 10-20 s. On a device
without native bfloat16, with `--dtype auto`, it also saves what `dtype="auto"` weighs there (each model's costs in
float32 and in bfloat16, `bild.hardware.pair_dtypes`), so that the dtype choice is not measured at every start either.

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
    from .cost_file import save_costs, save_costs_by_dtype
    from .costs import default_widths, measure_pair_costs, pair_context
    from .eval.systems import ModelSpec, load_models
    from .hardware import measure_by_dtype, pair_dtypes, rule_dtype

    if args.max_small_steps < 1 or args.repeats < 1:
        raise SystemExit("--max_small_steps and --repeats must be >= 1.")
    device = torch.device(args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    max_width = args.max_small_steps + 1
    measured_dtypes = args.dtype == "auto" and rule_dtype(device) is None
    if measured_dtypes:  # what dtype="auto" weighs here: both models in each dtype, saved for the models as loaded
        loaded = load_models({"small": args.small, "large": args.large}, ModelSpec("float32", str(device)), device)
        small, large = loaded.models["small"], loaded.models["large"]
        widths = default_widths(max_width)
        context = pair_context(small, large, max(widths))
        with torch.no_grad():
            small_by = measure_by_dtype(small, (1,), context=context, repeats=args.repeats)
            large_by = measure_by_dtype(large, widths, context=context, repeats=args.repeats)
        small.float()
        large.float()
        path = save_costs_by_dtype(small, large, max_width, small_by, large_by)
        print(f"each model in float32 and bfloat16, saved to {path}")
        choice = pair_dtypes(small, large, args.max_small_steps)  # reads what was just saved
        print(f"dtype auto would choose: {choice.summary()}")
    else:
        loaded = load_models({"small": args.small, "large": args.large}, ModelSpec(args.dtype, str(device)), device,
                             args.max_small_steps)
        small, large = loaded.models["small"], loaded.models["large"]
    with torch.no_grad():
        costs = measure_pair_costs(small, large, max_width, repeats=args.repeats, cached=False)
    path = save_costs(small, large, max_width, costs)
    print(f"cost model: {costs.summary(args.max_small_steps)}")
    print(f"saved to {path}; BiLD reads it for this pair, dtype and machine (BILD_COSTS=measure: measure anyway)")
    return 0

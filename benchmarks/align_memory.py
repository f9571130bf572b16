"""Peak memory and time of `bild align`'s training step: the model's own loss (logits at every position) vs
the output positions only (`distill.output_loss`), on real (prompt, large output) pairs.

    python benchmarks/align_memory.py --small S --teacher_dir ALIGNED/align --train_file DATA/debian-de-en.train.jsonl

Each variant runs in its own process (peak resident memory only ever rises within one), doing
`--steps` forward/backward passes with LoRA under bfloat16 autocast, as `ACCELERATE_MIXED_PRECISION=bf16
bild align --lora_r 16` does. The batches are the teacher outputs' first examples, in order. Prints a table,
writes JSON.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = ("all positions (model's loss)", "output positions only")


def current_rss_gb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**30


def one_variant(args: argparse.Namespace) -> dict:
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM

    from bild import distill
    from bild.eval.data import DataSpec, load_examples
    from bild.eval.prompts import PromptBuilder
    from bild.eval.rundir import read_records
    from bild.eval.systems import load_tokenizer
    from bild.eval.tasks import TRANSLATION

    torch.manual_seed(0)
    records = read_records(Path(args.teacher_dir) / "predictions_large.jsonl")
    outputs = {r["id"]: r["output_ids"] for r in records}
    columns = ("de", "en")
    loaded = load_examples(TRANSLATION, DataSpec(files={"train": args.train_file}, split="train",
                                                 max_samples=args.batch_size * args.steps, columns=columns))
    prompts = PromptBuilder(load_tokenizer(args.small, False), "chat", TRANSLATION.instruction(columns), 1024)
    features = distill.build_features(loaded, outputs, prompts, encoder_decoder=False)
    model = AutoModelForCausalLM.from_pretrained(args.small, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=16, lora_alpha=32,
                                             target_modules="all-linear"))
    model.train()
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    started, resident = time.perf_counter(), []
    for step in range(args.steps):
        batch = distill.collate(features[step * args.batch_size: (step + 1) * args.batch_size],
                              prompts.tokenizer.pad_token_id)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if args.variant == 0:
                loss = model(**batch).loss
            else:
                loss = distill.output_loss(model, batch, encoder_decoder=False, slice_head=True)
        loss.backward()
        model.zero_grad(set_to_none=True)
        resident.append(current_rss_gb())
    seconds = time.perf_counter() - started
    return {"variant": VARIANTS[args.variant], "batch_size": args.batch_size, "steps": args.steps,
            "tokens_per_batch": [int(distill.collate(features[i: i + args.batch_size], 0)["input_ids"].numel())
                                 for i in range(0, len(features), args.batch_size)],
            "peak_rss_gb_after_loading": rss_loaded,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "rss_gb_after_each_step": resident, "seconds_per_step": seconds / args.steps, "last_loss": float(loss)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", required=True)
    parser.add_argument("--teacher_dir", required=True, help="a `bild align` output's align/ folder")
    parser.add_argument("--train_file", required=True)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--variant", type=int, choices=(0, 1), help=argparse.SUPPRESS)
    parser.add_argument("--output", default="benchmarks/results/align_memory.json")
    args = parser.parse_args(argv)
    if args.variant is not None:
        print(json.dumps(one_variant(args)))
        return 0
    rows = []
    for variant in (0, 1):
        out = subprocess.run([sys.executable, __file__, *(argv or sys.argv[1:]), "--variant", str(variant)],
                             check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    import platform

    import torch
    print("| loss over | peak RSS (GB) | after loading (GB) | RSS after each step (GB) | s/step | loss |\n"
          "|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['peak_rss_gb']:.2f} | {r['peak_rss_gb_after_loading']:.2f} | "
              f"{' '.join(f'{x:.1f}' for x in r['rss_gb_after_each_step'])} | "
              f"{r['seconds_per_step']:.1f} | {r['last_loss']:.4f} |")
    result = {"rows": rows, "machine": {"cpu": platform.processor() or platform.machine(),
                                        "threads": torch.get_num_threads(), "torch": torch.__version__}}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

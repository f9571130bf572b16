"""Encoder-decoder throughput: a batch as one batched decoder pass vs the same rows generated one by one.

    python benchmarks/encdec_batch.py --batches 8,32 --output benchmarks/results/encdec_batch_cpu.json

A random T5 pair built in code (small: 2 layers, d_model 256; large: 6 layers, d_model 512; vocab 8192),
float32, sources of 12-24 tokens (padded), 32 new tokens per row (no EOS). Two settings: `best` (FB 0, RB inf:
every draft accepted) and `lossless` (FB 0.5, RB 0: random weights disagree, so most rounds roll back).
For each batch size: the batched call and the row-by-row loop (batch 1 per row), interleaved `--repeats`
times after a warm-up, medians kept; their outputs must be identical row for row. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from transformers import T5Config, T5ForConditionalGeneration

from bild import BiLDGenerator
from bild.env import environment
from bild.eval.rundir import atomic_write_json

SETTINGS = {"best": (0.0, float("inf")), "lossless": (0.5, 0.0)}


def build(d, ff, layers, seed):
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=8192, d_model=d, d_ff=ff, num_layers=layers, num_heads=8, d_kv=d // 8,
                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    model = T5ForConditionalGeneration(cfg).eval()
    model.generation_config.eos_token_id = None  # fixed-length rows
    return model


def sources(batch):
    gen = torch.Generator().manual_seed(batch)
    lengths = torch.randint(12, 25, (batch,), generator=gen).tolist()
    ids = torch.zeros(batch, max(lengths), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, n in enumerate(lengths):
        ids[r, :n] = torch.randint(2, 8192, (n,), generator=gen)
        mask[r, :n] = 1
    return {"input_ids": ids, "attention_mask": mask}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", default="8,32")
    p.add_argument("--new_tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--output", default="benchmarks/results/encdec_batch_cpu.json")
    args = p.parse_args(argv)
    small, large = build(256, 1024, 2, 0), build(512, 2048, 6, 1)
    kwargs = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)
    rows = []
    print(f"{'setting':<10}{'B':>4}{'batched s':>11}{'row by row s':>14}{'speed-up':>10}{'tok/s batched':>15}{'identical':>11}")
    with torch.no_grad():
        for name, (fb, rb) in SETTINGS.items():
            gen = BiLDGenerator(small, large, fb, rb, 6)
            for batch in map(int, args.batches.split(",")):
                x = sources(batch)
                batched = lambda: gen.generate(**x, **kwargs)
                one_by_one = lambda: [gen.generate(input_ids=x["input_ids"][r:r + 1],
                                                   attention_mask=x["attention_mask"][r:r + 1], **kwargs)[0]
                                      for r in range(batch)]
                out_b, out_r = batched(), one_by_one()  # warm-up, and the identity
                identical = all(torch.equal(out_b[r, :len(o)], o) for r, o in enumerate(out_r))
                times = {"batched": [], "row_by_row": []}
                for i in range(args.repeats):  # alternating which goes first
                    order = [("batched", batched), ("row_by_row", one_by_one)]
                    for label, fn in order if i % 2 == 0 else order[::-1]:
                        start = time.perf_counter()
                        fn()
                        times[label].append(time.perf_counter() - start)
                tb, tr = statistics.median(times["batched"]), statistics.median(times["row_by_row"])
                rows.append({"setting": name, "batch": batch, "batched_s": tb, "row_by_row_s": tr, "speedup": tr / tb,
                             "tokens_per_s_batched": batch * args.new_tokens / tb,
                             "tokens_per_s_row_by_row": batch * args.new_tokens / tr, "identical": identical,
                             "times": times})
                print(f"{name:<10}{batch:>4}{tb:>11.2f}{tr:>14.2f}{tr / tb:>10.2f}{batch * args.new_tokens / tb:>15.0f}"
                      f"{str(identical):>11}", flush=True)
    report = {"environment": environment(), "args": vars(args), "results": rows}
    atomic_write_json(Path(args.output), report)
    print(f"wrote {args.output}")
    return report


if __name__ == "__main__":
    main()

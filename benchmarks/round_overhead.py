"""Per-round overhead of the decode loop (the loop minus its forwards) and host reads per round, by batch size.

    python benchmarks/round_overhead.py --batches 1,8,32 --output benchmarks/results/round_overhead_cpu.json

Random decoder-only pairs built in code (no download): `tiny` (the tests' proportions) and `mid` (a 2-layer
512-wide small model, an 8-layer 1024-wide large one; real-sized widths, few layers, so CPU runs finish).
FB 0 (never falls back), RB 0 / RB 1, N 6, 40 new tokens, greedy; the same prompts for every batch size.
For each: seconds of the whole call, of forwards, of the loop minus forwards, rounds, draft steps and host
reads (bild.host_reads.HostReads, counted in a second, untimed call), per round. Each setting is timed
`--repeats` times after a warm-up, the median kept. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from bild import BiLDGenerator
from bild.env import environment
from bild.host_reads import HostReads

SHAPES = {"tiny": ((64, 2), (128, 2), 512), "mid": ((512, 2), (1024, 8), 8192)}


def build(hidden, layers, vocab, seed):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512, eos_token_id=None,
                      pad_token_id=0)
    return LlamaForCausalLM(cfg).eval()


def inputs(batch, vocab):
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(4, 17, (batch,), generator=gen)
    ids = torch.zeros(batch, int(lengths.max()), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, n in enumerate(lengths.tolist()):  # left padding
        ids[r, ids.shape[1] - n:] = torch.randint(2, vocab, (n,), generator=gen)
        mask[r, ids.shape[1] - n:] = 1
    return {"input_ids": ids, "attention_mask": mask}


def measure(gen, x, repeats):
    kwargs = dict(max_new_tokens=40, return_dict_in_generate=True, bild_profile=True)  # no EOS: 40 tokens each
    gen.generate(**x, **kwargs)  # warm-up
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = gen.generate(**x, **kwargs)
        total = time.perf_counter() - start
        st = out.stats
        runs.append((total, st.forward_seconds, st.loop_seconds - st.forward_seconds, st.batch_large_calls,
                     st.batch_small_calls))
    total, fwd, overhead, rounds, steps = (statistics.median(v) for v in zip(*runs))
    with HostReads() as reads:
        gen.generate(**x, **kwargs)
    return {"seconds": total, "forward_s": fwd, "loop_overhead_s": overhead, "rounds": rounds, "draft_steps": steps,
            "overhead_ms_per_round": 1000 * overhead / rounds, "host_reads": reads.count,
            "host_reads_per_round": reads.count / rounds, "top_readers": reads.by_caller.most_common(6)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--shapes", default="tiny,mid")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--label", default="", help="a name for this code version (e.g. its commit)")
    p.add_argument("--output", default="benchmarks/results/round_overhead_cpu.json")
    args = p.parse_args(argv)
    rows = []
    print(f"{'shape':<6}{'B':>4}{'RB':>4}{'s':>8}{'fwd s':>8}{'ovh ms/round':>14}{'rounds':>8}{'steps':>7}{'reads/round':>13}")
    with torch.no_grad():
        for shape in args.shapes.split(","):
            (hs, ls), (hl, ll), vocab = SHAPES[shape]
            small, large = build(hs, ls, vocab, 0), build(hl, ll, vocab, 1)
            for batch in map(int, args.batches.split(",")):
                for rb in (0.0, 1.0):
                    r = measure(BiLDGenerator(small, large, 0.0, rb, 6), inputs(batch, vocab), args.repeats)
                    rows.append({"shape": shape, "batch": batch, "rollback": rb, **r})
                    print(f"{shape:<6}{batch:>4}{rb:>4.0f}{r['seconds']:>8.2f}{r['forward_s']:>8.2f}"
                          f"{r['overhead_ms_per_round']:>14.2f}{r['rounds']:>8.0f}{r['draft_steps']:>7.0f}"
                          f"{r['host_reads_per_round']:>13.1f}", flush=True)
    report = {"label": args.label, "environment": environment(), "args": vars(args), "results": rows}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.output}")
    return report


if __name__ == "__main__":
    main()

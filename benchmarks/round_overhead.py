"""Per-round overhead of the decode loop (the loop minus its forwards) and host reads per round, by batch size.

    python benchmarks/round_overhead.py --batches 1,8,32 --output benchmarks/results/round_overhead_cpu.json
    git worktree add /tmp/before COMMIT && python benchmarks/round_overhead.py --baseline_package /tmp/before/bild

Random decoder-only pairs built in code (no download): `tiny` (the tests' proportions) and `mid` (a 2-layer
512-wide small model, an 8-layer 1024-wide large one; real-sized widths, few layers, so CPU runs finish).
FB 0 (never falls back), RB 0 / RB 1, N 6, 40 new tokens, greedy; the same prompts for every batch size.
For each: seconds of the whole call, of forwards, of the loop minus forwards, rounds, draft steps and host
reads (bild.host_reads.HostReads, counted in a separate, untimed call), per round. Each setting is timed
`--repeats` times after a warm-up, the median kept. With --baseline_package (another checkout's `bild/`,
imported as `bild_baseline`) both versions run on the same models, interleaved call by call in alternating
order, and the table gives both. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from bild import BiLDGenerator
from bild.env import environment
from bild.eval.rundir import atomic_write_json
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


def load_package(path: str, name: str = "bild_baseline"):
    """Another checkout's bild package, importable beside this one (its imports are relative)."""
    spec = importlib.util.spec_from_file_location(name, Path(path) / "__init__.py", submodule_search_locations=[path])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def no_guard(cls) -> dict:
    """Every round drafts: the drafting guard (where a version has it) would stop these random pairs' drafting."""
    return {"drafting_guard": False} if "drafting_guard" in inspect.signature(cls).parameters else {}


KWARGS = dict(max_new_tokens=40, return_dict_in_generate=True, bild_profile=True)  # no EOS: 40 tokens each


def timed(gen, x):
    start = time.perf_counter()
    st = gen.generate(**x, **KWARGS).stats
    return (time.perf_counter() - start, st.forward_seconds, st.loop_seconds - st.forward_seconds, st.batch_large_calls,
            st.batch_small_calls)


def measure(gens: dict, x, repeats) -> dict:
    """version -> medians over `repeats` calls, the versions interleaved in alternating order."""
    runs = {v: [] for v in gens}
    for g in gens.values():
        g.generate(**x, **KWARGS)  # warm-up
    for i in range(repeats):
        for v in list(gens)[:: 1 if i % 2 == 0 else -1]:
            runs[v].append(timed(gens[v], x))
    out = {}
    for v, g in gens.items():
        total, fwd, overhead, rounds, steps = (statistics.median(c) for c in zip(*runs[v]))
        with HostReads() as reads:
            g.generate(**x, **KWARGS)
        out[v] = {"seconds": total, "forward_s": fwd, "loop_overhead_s": overhead, "rounds": rounds,
                  "draft_steps": steps, "overhead_ms_per_round": 1000 * overhead / rounds, "host_reads": reads.count,
                  "host_reads_per_round": reads.count / rounds, "top_readers": reads.by_caller.most_common(6)}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--shapes", default="tiny,mid")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--label", default="", help="a name for this code version (e.g. its commit)")
    p.add_argument("--output", default="benchmarks/results/round_overhead_cpu.json")
    p.add_argument("--baseline_package", help="another checkout's bild/ folder, timed interleaved with this one")
    args = p.parse_args(argv)
    versions = {"current": BiLDGenerator}
    if args.baseline_package:
        versions = {"baseline": load_package(args.baseline_package).BiLDGenerator, **versions}
    rows = []
    print(f"{'shape':<6}{'B':>4}{'RB':>4}{'version':>10}{'s':>8}{'fwd s':>8}{'ovh ms/round':>14}{'rounds':>8}"
          f"{'steps':>7}{'reads/round':>13}")
    with torch.no_grad():
        for shape in args.shapes.split(","):
            (hs, ls), (hl, ll), vocab = SHAPES[shape]
            small, large = build(hs, ls, vocab, 0), build(hl, ll, vocab, 1)
            for batch in map(int, args.batches.split(",")):
                for rb in (0.0, 1.0):
                    gens = {v: cls(small, large, 0.0, rb, 6, **no_guard(cls)) for v, cls in versions.items()}
                    for v, r in measure(gens, inputs(batch, vocab), args.repeats).items():
                        rows.append({"shape": shape, "batch": batch, "rollback": rb, "version": v, **r})
                        print(f"{shape:<6}{batch:>4}{rb:>4.0f}{v:>10}{r['seconds']:>8.2f}{r['forward_s']:>8.2f}"
                              f"{r['overhead_ms_per_round']:>14.2f}{r['rounds']:>8.0f}{r['draft_steps']:>7.0f}"
                              f"{r['host_reads_per_round']:>13.1f}", flush=True)
    report = {"label": args.label, "environment": environment(), "args": vars(args), "results": rows}
    atomic_write_json(Path(args.output), report)
    print(f"wrote {args.output}")
    return report


if __name__ == "__main__":
    main()

"""GPU benchmark of BiLD against transformers' own decoding, on real-sized shapes with random weights.

    python benchmarks/gpu_bench.py                    # T5-small/T5-large and Qwen2.5 0.5B/1.5B shapes,
                                                      # batch 1, 8, 32, on CUDA if present
    python benchmarks/gpu_bench.py --tiny --device cpu   # the same logic at toy sizes (what the tests run)

Random weights have no meaningful agreement, so acceptance is controlled instead (see the README of
benchmarks/): `bild_best` never falls back and never rolls back (every draft accepted: the best case),
`bild_worst` always falls back (every token from the large model: the worst case). Together they bracket
BiLD's speed on this GPU; `estimate` combines the measured step costs with acceptance statistics measured
elsewhere (--mean_tokens_per_large_call, --mean_drafts_per_round) and is labelled as an estimate.
Systems: HF large greedy with the dynamic cache, HF large greedy with cache_implementation="static"
(transformers compiles it), HF assisted generation (batch 1 only, as transformers allows), and BiLD eager
and fast (static cache + compiled steps; for T5 at batch 1 only, since at larger batches the fast path runs
T5 rows one by one). BiLD's eager T5 batch is one batched decoder
pass (rows right-aligned in one cache). Prints a table per (family, batch) and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM, T5Config, T5ForConditionalGeneration

from bild import ALWAYS_FALLBACK, BiLDGenerator
from bild.env import environment

SHAPES = {  # T5: (d_model, d_ff, layers, heads, d_kv); Qwen2: (hidden, ffn, layers, heads, kv heads)
    "t5-small": (512, 2048, 6, 8, 64),
    "t5-large": (1024, 4096, 24, 16, 64),
    "tiny-small": (32, 64, 1, 2, 16),
    "tiny-large": (64, 128, 2, 4, 16),
    "qwen2.5-0.5b": (896, 4864, 24, 14, 2),
    "qwen2.5-1.5b": (1536, 8960, 28, 12, 2),
    "tiny-qwen-small": (64, 128, 1, 4, 2),
    "tiny-qwen-large": (128, 256, 2, 4, 2),
}
FAMILIES = {"t5": (("t5-small", "t5-large"), ("tiny-small", "tiny-large")),
            "qwen2": (("qwen2.5-0.5b", "qwen2.5-1.5b"), ("tiny-qwen-small", "tiny-qwen-large"))}


def build(shape: str, device, dtype, seed: int):
    if "qwen" in shape:
        return build_qwen(shape, device, dtype, seed)
    d, ff, layers, heads, kv = SHAPES[shape]
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=32128, d_model=d, d_ff=ff, num_layers=layers, num_heads=heads, d_kv=kv,
                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    model = T5ForConditionalGeneration(cfg).to(device, dtype).eval()
    model.generation_config.eos_token_id = None  # random weights: fixed-length outputs, comparable across systems
    return model


def build_qwen(shape: str, device, dtype, seed: int):
    hidden, ffn, layers, heads, kv_heads = SHAPES[shape]
    torch.manual_seed(seed)
    vocab = 151936 if hidden > 256 else 32128
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=4096,
                      tie_word_embeddings=True, eos_token_id=None, pad_token_id=0)
    model = Qwen2ForCausalLM(cfg).to(device, dtype).eval()
    model.generation_config.eos_token_id = None
    return model


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, inputs, repeats, device):
    fn(inputs)  # warm-up (and compilation)
    fn(inputs)
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn(inputs)
    sync(device)
    return (time.perf_counter() - start) / repeats, out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--families", default="t5,qwen2", help="comma-separated: t5, qwen2")
    p.add_argument("--batches", default="1,8,32", help="comma-separated batch sizes")
    p.add_argument("--new_tokens", type=int, default=64)
    p.add_argument("--source_length", type=int, default=64, help="source (T5) or prompt (Qwen2) tokens")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max_small_steps", type=int, default=10)
    p.add_argument("--skip", default="", help="comma-separated systems to skip")
    p.add_argument("--mean_tokens_per_large_call", type=float, default=None,
                   help="acceptance measured elsewhere (e.g. the real pair on the CPU), for the estimate")
    p.add_argument("--mean_drafts_per_round", type=float, default=None)
    p.add_argument("--output", default="benchmarks/results/gpu_bench.json")
    args = p.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    runs = []
    for family in args.families.split(","):
        real, tiny = FAMILIES[family]
        small_shape, large_shape = tiny if args.tiny else real
        small, large = build(small_shape, args.device, dtype, 0), build(large_shape, args.device, dtype, 1)
        for batch in map(int, args.batches.split(",")):
            results = run_shape(small, large, batch, args)
            runs.append({"family": family, "shapes": [small_shape, large_shape], "batch": batch, "results": results,
                         "estimate": estimate(results, args) if batch == 1 else None})
            print_table(f"{family} batch {batch}", runs[-1])
        del small, large
    report = {"command": " ".join(sys.argv), "environment": environment(), "args": vars(args), "runs": runs}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2))
    return report


def run_shape(small, large, batch: int, args) -> dict:
    vocab = min(small.config.vocab_size, 32000)
    gen = torch.Generator().manual_seed(batch)
    inputs = {"input_ids": torch.randint(2, vocab, (batch, args.source_length), generator=gen).to(args.device)}
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    common = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                  pad_token_id=0)
    n = args.max_small_steps
    systems = {
        "hf_large_dynamic": lambda x: large.generate(**x, **common),
        "hf_large_static_compiled": lambda x: large.generate(**x, **common, cache_implementation="static"),
        "hf_small_dynamic": lambda x: small.generate(**x, **common),
    }
    if batch == 1:
        systems["hf_assisted"] = lambda x: large.generate(**x, **common, assistant_model=small)
    # At batch > 1 the fast path batches decoder-only rows; encoder-decoder rows it runs one by one (left out).
    for fast in (False, True) if batch == 1 or not large.config.is_encoder_decoder else (False,):
        tag = "fast" if fast else "eager"
        best = BiLDGenerator(small, large, 0.0, float("inf"), n, compile=fast)
        worst = BiLDGenerator(small, large, ALWAYS_FALLBACK, 0.0, n, compile=fast)
        systems[f"bild_{tag}_best"] = lambda x, g=best: g.generate(**x, **common, return_dict_in_generate=True)
        systems[f"bild_{tag}_worst"] = lambda x, g=worst: g.generate(**x, **common, return_dict_in_generate=True)
    skip = set(filter(None, args.skip.split(",")))
    results = {}
    tokens = batch * args.new_tokens
    for name, fn in systems.items():
        if name in skip:
            continue
        seconds, out = timed(fn, inputs, args.repeats, args.device)
        r = {"seconds": seconds, "ms_per_token": 1000 * seconds / args.new_tokens,
             "tokens_per_s": tokens / seconds}
        if getattr(out, "stats", None) is not None:
            r["stats"] = out.stats.total()
        results[name] = r
        print(f"batch {batch} {name}: {r['ms_per_token']:.2f} ms/step", file=sys.stderr, flush=True)
    base = results["hf_large_dynamic"]["seconds"]
    static = results.get("hf_large_static_compiled", {}).get("seconds")
    for r in results.values():
        r["speedup_vs_large_dynamic"] = base / r["seconds"]
        if static:
            r["speedup_vs_large_static"] = static / r["seconds"]
    return results


def estimate(results: dict, args) -> dict | None:
    """Per round: d small steps + one large pass (a large pass costs about one all-fallback step)."""
    worst = results.get("bild_fast_worst") or results.get("bild_eager_worst")
    if not (args.mean_tokens_per_large_call and args.mean_drafts_per_round and worst and "hf_small_dynamic" in results):
        return None
    small_step = results["hf_small_dynamic"]["ms_per_token"]
    per_token = (args.mean_drafts_per_round * small_step + worst["ms_per_token"]) / args.mean_tokens_per_large_call
    return {"label": "ESTIMATE from measured step costs and acceptance measured elsewhere",
            "ms_per_token": per_token, "speedup_vs_large_dynamic": results["hf_large_dynamic"]["ms_per_token"] / per_token}


def print_table(title: str, run: dict) -> None:
    print(f"{title}\n{'system':<28}{'ms/step':>10}{'tok/s':>10}{'x dynamic':>11}{'x static':>10}")
    for name, r in run["results"].items():
        print(f"{name:<28}{r['ms_per_token']:>10.2f}{r['tokens_per_s']:>10.0f}{r['speedup_vs_large_dynamic']:>11.2f}"
              f"{r.get('speedup_vs_large_static', float('nan')):>10.2f}")
    if run["estimate"]:
        e = run["estimate"]
        print(f"estimate (not measured): {e['ms_per_token']:.2f} ms/token, {e['speedup_vs_large_dynamic']:.2f}x")


if __name__ == "__main__":
    main()

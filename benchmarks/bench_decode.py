"""Time HF large greedy, HF small greedy, HF assisted generation and BiLD on the same prompts, in one process.

    python benchmarks/bench_decode.py --small PATH --large PATH --prompts FILE.jsonl [--max_samples 20]
    python benchmarks/bench_decode.py            # tiny random models built on the fly (a smoke run)

Prompts: JSON lines with a "prompt" field, or the translation layout of examples/data
({"translation": {"de": ..., "en": ...}}), which is prompted through the chat template.
Every system gets one warm-up generation, then the same prompts at batch size 1; the clock is
read after synchronising the device. Prints a table and writes JSON (machine and versions included).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from bild import BiLDGenerator
from bild.env import environment

TRANSLATE = "Translate the following German text to English. Reply with the translation only.\n\n{text}"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small"), p.add_argument("--large")
    p.add_argument("--prompts", help="JSON lines file; default: tiny random prompts")
    p.add_argument("--max_samples", type=int, default=10)
    p.add_argument("--max_new_tokens", type=int, default=64)
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--lossy", default="0.6,2.0", help="fallback,rollback of the lossy BiLD setting; repeat with ';'")
    p.add_argument("--lossless_fallback", type=float, default=0.6,
                   help="fallback threshold of lossless BiLD (rollback 0): output is large greedy's whatever it is")
    p.add_argument("--max_small_steps", type=int, default=10)
    p.add_argument("--systems", default="large,small,assisted,bild_lossless,bild_lossy")
    p.add_argument("--num_assistant_tokens", type=int, default=None,
                   help="also run assisted generation with this fixed draft length (system assisted_tuned)")
    p.add_argument("--fast_variants", default="",
                   help="comma-separated fast-path variants of the first lossy setting, each its own system: static "
                        "(static caches, eager), compile (both models' steps compiled), compile_small, compile_large")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--output", default="benchmarks/results/bench_decode.json")
    return p.parse_args(argv)


def tiny_pair(device, dtype):
    """A random decoder-only pair of real-ish proportions: a smoke test of the timing code, not a result."""
    def build(seed, hidden, layers):
        torch.manual_seed(seed)
        cfg = LlamaConfig(vocab_size=2048, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                          num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512, eos_token_id=1, pad_token_id=0)
        return LlamaForCausalLM(cfg).to(device, dtype).eval()
    return build(0, 128, 2), build(1, 512, 8), None


def load(path, device, dtype):
    from transformers import AutoConfig

    auto = AutoModelForSeq2SeqLM if AutoConfig.from_pretrained(path).is_encoder_decoder else AutoModelForCausalLM
    return auto.from_pretrained(path, dtype=dtype).to(device).eval()


def load_prompts(args, tokenizer, device):
    """Tokenized prompts, and the English references when the file has them (else None)."""
    if args.prompts is None:
        gen = torch.Generator().manual_seed(0)
        return [{"input_ids": torch.randint(2, 2048, (1, 16), generator=gen).to(device)} for _ in range(args.max_samples)], None
    rows = [json.loads(line) for line in open(args.prompts) if line.strip()][: args.max_samples]
    references = [row["translation"]["en"] for row in rows] if all("translation" in row for row in rows) else None
    out = []
    for row in rows:
        text = row["prompt"] if "prompt" in row else TRANSLATE.format(text=row["translation"]["de"])
        if tokenizer.chat_template:
            enc = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                return_tensors="pt", return_dict=True)
        else:
            enc = tokenizer(text, return_tensors="pt")
        out.append({k: v.to(device) for k, v in enc.items()})
    return out, references


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def systems(args, small, large, tokenizer):
    common = dict(max_new_tokens=args.max_new_tokens, do_sample=False)
    if large.generation_config.pad_token_id is None:
        common["pad_token_id"] = large.generation_config.eos_token_id
    table = {
        "large": lambda x: large.generate(**x, **common),
        "small": lambda x: small.generate(**x, **common),
    }
    table["assisted"] = lambda x: large.generate(**x, assistant_model=small, **common)
    if args.num_assistant_tokens is not None:
        table["assisted_tuned"] = lambda x: _assisted_constant(large, small, x, args.num_assistant_tokens, common)
    lossless = BiLDGenerator(small, large, args.lossless_fallback, 0.0, args.max_small_steps, tokenizer=tokenizer)
    table["bild_lossless"] = lambda x: lossless.generate(**x, **common, return_dict_in_generate=True, bild_profile=True)
    for i, setting in enumerate(args.lossy.split(";")):
        fb, rb = (float(v) for v in setting.split(","))
        gen = BiLDGenerator(small, large, fb, rb, args.max_small_steps, tokenizer=tokenizer)
        name = "bild_lossy" if i == 0 else f"bild_lossy_{fb}_{rb}"
        table[name] = lambda x, gen=gen: gen.generate(**x, **common, return_dict_in_generate=True, bild_profile=True)
    fb, rb = (float(v) for v in args.lossy.split(";")[0].split(","))
    for variant in filter(None, args.fast_variants.split(",")):
        options = {"static": {"static_cache": True}, "compile": {"compile": True},
                   "compile_small": {"compile": "small"}, "compile_large": {"compile": "large"}}[variant]
        gen = BiLDGenerator(small, large, fb, rb, args.max_small_steps, tokenizer=tokenizer, **options)
        table[f"bild_lossy+{variant}"] = lambda x, gen=gen: gen.generate(**x, **common, return_dict_in_generate=True,
                                                                         bild_profile=True)
    wanted = args.systems.split(",")
    return {k: v for k, v in table.items()
            if k in wanted or k == "assisted_tuned" or (k.startswith("bild_lossy") and "bild_lossy" in wanted)
            or "+" in k}


def _assisted_constant(large, small, inputs, n, common):
    """Assisted generation with a fixed draft length n (transformers reads it from the assistant's config)."""
    config = small.generation_config
    saved = config.num_assistant_tokens, config.num_assistant_tokens_schedule
    config.num_assistant_tokens, config.num_assistant_tokens_schedule = n, "constant"
    try:
        return large.generate(**inputs, assistant_model=small, **common)
    finally:
        config.num_assistant_tokens, config.num_assistant_tokens_schedule = saved


def run_system(fn, prompts, device):
    fn(prompts[0])  # warm-up
    seconds, tokens, outputs, stats = 0.0, 0, [], []
    for x in prompts:
        sync(device)
        start = time.perf_counter()
        out = fn(x)
        sync(device)
        seconds += time.perf_counter() - start
        seq = out.sequences if hasattr(out, "sequences") else out
        new = seq[0, x["input_ids"].shape[1]:].tolist()
        tokens += len(new)
        outputs.append(new)
        if getattr(out, "stats", None) is not None:
            stats.append(out.stats.total())
    result = {"seconds": seconds, "new_tokens": tokens, "ms_per_token": 1000 * seconds / max(tokens, 1)}
    if stats:
        keys = [k for k in stats[0] if isinstance(stats[0][k], (int, float))]
        total = {k: sum(s[k] for s in stats) for k in keys}
        total["mean_tokens_per_large_call"] = total["committed_tokens"] / max(total["large_forward_calls"], 1)
        total["acceptance_rate"] = total["accepted_drafts"] / max(total["drafted_tokens"], 1)
        total["share_outside_forwards"] = 1 - total["forward_seconds"] / max(total["loop_seconds"], 1e-9)
        result["stats"] = total
    return result, outputs


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    if args.small and args.large:
        small, large = load(args.small, args.device, dtype), load(args.large, args.device, dtype)
        tokenizer = AutoTokenizer.from_pretrained(args.large)
    else:
        small, large, tokenizer = tiny_pair(args.device, dtype)
    prompts, references = load_prompts(args, tokenizer, args.device)
    results, outputs = {}, {}
    for name, fn in systems(args, small, large, tokenizer).items():
        results[name], outputs[name] = run_system(fn, prompts, args.device)
        print(f"{name}: {results[name]['seconds']:.1f}s", file=sys.stderr, flush=True)
    if references is not None:
        from bild.metrics import translation_metrics

        for name, r in results.items():
            texts = [tokenizer.decode(t, skip_special_tokens=True).strip() for t in outputs[name]]
            r["bleu"] = translation_metrics(texts, references)["bleu"]
    base = results.get("large")
    for name, r in results.items():
        if base:
            r["speedup_vs_large"] = base["seconds"] / r["seconds"]
            r["identical_to_large"] = outputs[name] == outputs["large"]
            r["examples_identical_to_large"] = sum(a == b for a, b in zip(outputs[name], outputs["large"]))
        if "+" in name and "bild_lossy" in outputs:  # a fast-path variant against the eager path
            r["identical_to_eager"] = outputs[name] == outputs["bild_lossy"]
            r["speedup_vs_eager"] = results["bild_lossy"]["seconds"] / r["seconds"]
    print_table(results)
    report = {"command": " ".join(sys.argv), "environment": environment(), "args": vars(args), "device": args.device,
              "results": results}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.output}")
    return report


def print_table(results):
    header = f"{'system':<22}{'s':>8}{'BLEU':>7}{'ms/tok':>9}{'x large':>9}{'=large':>7}{'tok/large call':>15}{'accept':>8}{'fallb':>7}{'rollb':>7}{'outside fwd':>12}"
    print(header)
    for name, r in results.items():
        s = r.get("stats", {})
        fmt = lambda k, f: format(s[k], f) if k in s else "-"
        print(f"{name:<22}{r['seconds']:>8.1f}{r.get('bleu', math.nan):>7.2f}{r['ms_per_token']:>9.1f}{r.get('speedup_vs_large', math.nan):>9.2f}"
              f"{str(r.get('identical_to_large', '-')):>7}{fmt('mean_tokens_per_large_call', '.2f'):>15}"
              f"{fmt('acceptance_rate', '.2f'):>8}{fmt('fallbacks', 'd'):>7}{fmt('rollbacks', 'd'):>7}"
              f"{(format(100 * s['share_outside_forwards'], '.1f') + '%') if s else '-':>12}")


if __name__ == "__main__":
    main()

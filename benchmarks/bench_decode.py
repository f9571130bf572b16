"""Time large greedy, small greedy, HF assisted generation and BiLD settings on the same prompts, interleaved.

    python benchmarks/bench_decode.py --small PATH --large PATH --prompts FILE.jsonl --max_samples 100 \
        --systems large,assisted,assisted:5,bild:0.6:0,bild:0.6:2:20:0.3
    python benchmarks/bench_decode.py            # tiny random models built on the fly (a smoke run)

Systems: `large`, `small`, `assisted` (transformers' defaults), `assisted:N` (a constant N drafts per round),
`bild:FB:RB[:N][:keep|:nokeep][:round]` (fallback, rollback, max small steps, keep_fallback_draft True / False;
absent: the default; `:round`: fallback_rule="round"), optionally `+static`, `+compile`,
`+compile_small` or `+compile_large` after a BiLD setting (its fast-path variant), and `+vocab`: the small model
drafts from the --draft_vocab_size tokens used most in --draft_vocab_file (`bild.frequent_tokens`; with the tiny
models, the first ids); `+bridge`: the same setting through the two-tokenizer path (`cross_tokenizer=True`, the large
model's tokenizer on both sides), which measures that path's overhead; `+linear`: bild's few-row passes through plain
`F.linear` (`weight_stationary=False`, see bild.kernels), `+ws`: through the weight-stationary form for every 1-16 rows
(`weight_stationary=True`); the default is the rows the pair's cost model measured faster; `+noint8`: the small
model's steps without bild.kernels' int8 weight-only draft form (`draft_int8=False`), `+int8`: with it wherever the
kernel can take it (`draft_int8=True`). A `+` variant is also
compared with its plain setting (speed-up, identical outputs). `large+kernels`: `large.generate` with the large model's
few-row products in the form where its measured cost model chose it (what "auto" runs when it decodes with the large
model alone): the kernels' share of a speed-up, apart from drafting's.

Prompts: JSON lines with a "prompt" field, the translation layout of the Debian data
({"translation": {"de": ..., "en": ...}}, scored by BLEU) or its summarization layout ({"document": ..., "summary":
...}, scored by ROUGE-L), prompted through the chat template.
Sampling (--do_sample --temperature T --top_p P --seeds 0,1,2): every system samples with the same settings;
each prompt runs once per seed (torch.manual_seed set to the same value before every system's call), BLEU is
the mean over seeds and the intervals resample prompts (a prompt's seeds summed).
Timing: one untimed warm-up per system, then for every prompt (and seed) every system once, in an order rotated
from one to the next, at batch size 1, the clock read after synchronising the device. Each speed-up is the ratio
of summed times with a paired bootstrap 90% interval over prompts; the CPU time other processes used during
the run is recorded and a shared run is flagged. BiLD's time is split into small-model forwards, large-model
forwards, loop overhead (the decode loop minus its forwards) and per-call setup (the call minus the loop:
checks, the encoder, output assembly); a call that "auto" sends to the large model's own loop is split the same
way (its loop and forwards timed by `bild.plan.ForwardClock`). Prints a table and writes JSON (machine and versions included).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from bild import AUTO, BiLDGenerator
from bild.config import BiLDConfig
from bild.costs import measure_pair_costs
from bild.env import environment
from bild.eval.rundir import atomic_write_json
from bild.eval.systems import DraftVocabSpec
from bild.hardware import pair_dtypes, rule_dtype
from bild.kernels import few_token_matmuls
from bild.eval.tasks import SUMMARIZATION, TRANSLATION
from bild.eval.timing import ContentionMonitor, contention_warning, paired_bootstrap_ci, rotated

TRANSLATE = "Translate the following German text to English. Reply with the translation only.\n\n{text}"
FAST_VARIANTS = {"static": {"static_cache": True}, "compile": {"compile": True},
                 "compile_small": {"compile": "small"}, "compile_large": {"compile": "large"},
                 "linear": {"weight_stationary": False}, "ws": {"weight_stationary": True},
                 "int8": {"draft_int8": True}, "noint8": {"draft_int8": False}}
BASELINES = ("large", "assisted")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", help="small model folder or hub name (default: tiny random models)")
    p.add_argument("--large", help="large model folder or hub name")
    p.add_argument("--prompts", help="JSON lines file; default: tiny random prompts")
    p.add_argument("--max_samples", type=int, default=10, help="first N prompts")
    p.add_argument("--max_new_tokens", type=int, default=64, help="new tokens per prompt at most")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="weights' dtype (auto: bfloat16 where the device computes it natively, else measured for the pair: bild.hardware.pair_dtypes)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    p.add_argument("--systems", default="large,small,assisted,bild:0.6:0,bild:0.6:2",
                   help="comma-separated systems (see above)")
    p.add_argument("--do_sample", action="store_true",
                   help="sample (every system with the same settings); each prompt runs once per seed")
    p.add_argument("--temperature", type=float, default=1.0, help="with --do_sample")
    p.add_argument("--top_p", type=float, default=1.0, help="with --do_sample")
    p.add_argument("--top_k", type=int, default=0, help="with --do_sample (0: off, unlike transformers' 50)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds, with --do_sample: BLEU is their mean")
    p.add_argument("--draft_vocab_file",
                   help="JSON lines (translation or summarization layout) whose references choose +vocab's tokens")
    p.add_argument("--draft_vocab_size", type=int, default=16384, help="tokens a +vocab drafter scores")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--report_partial", metavar="PARTIAL_JSON",
                   help="only report an interrupted run from its OUTPUT.partial.json (other options are read from it)")
    p.add_argument("--output", default="benchmarks/results/bench_decode.json",
                   help="JSON report; every 10 prompts the runs so far go to OUTPUT.partial.json, which "
                        "`bench_decode.py --report_partial OUTPUT.partial.json` turns into a report")
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


def read_references(rows: list[dict]):
    """(metric, references) of the prompts' rows: BLEU against the English side of the translation layout, ROUGE-L
    against the "summary" of the summarization layout, else (None, None)."""
    if rows and all("translation" in row for row in rows):
        return "bleu", [row["translation"]["en"] for row in rows]
    if rows and all("document" in row and "summary" in row for row in rows):
        return "rougeL", [row["summary"] for row in rows]
    return None, None


def quality(metric: str, texts: list[str], references: list[str]) -> float:
    from bild.metrics import rouge, translation_metrics

    return translation_metrics(texts, references)["bleu"] if metric == "bleu" else rouge(texts, references)["rougeL"]


def load_prompts(args, tokenizer, device):
    """Tokenized prompts, and (metric, references) where the file has references (else (None, None))."""
    if args.prompts is None:
        gen = torch.Generator().manual_seed(0)
        prompts = [{"input_ids": torch.randint(2, 2048, (1, 16), generator=gen).to(device)} for _ in range(args.max_samples)]
        return prompts, (None, None)
    rows = [json.loads(line) for line in open(args.prompts) if line.strip()][: args.max_samples]
    references = read_references(rows)
    out = []
    for row in rows:
        if "prompt" in row:
            text = row["prompt"]
        elif "document" in row:  # the summarization layout, prompted as the summarization example script does
            text = SUMMARIZATION.instruction(SUMMARIZATION.default_columns) + row["document"]
        else:
            text = TRANSLATE.format(text=row["translation"]["de"])
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


def parse_bild(spec: str, draft_vocab=None) -> tuple[dict, dict]:
    """'bild:FB:RB[:N][:keep|:nokeep][+variant...]' (FB a number or auto) -> BiLDGenerator threshold kwargs, other kwargs (fast path,
    draft_vocab)."""
    spec, *variants = spec.split("+")
    parts = spec.split(":")[1:]
    rule = "round" if parts and parts[-1] == "round" else "token"
    parts = parts[:-1] if rule == "round" else parts
    keep = {"keep": True, "nokeep": False}.get(parts[-1]) if parts else None
    parts = parts[:-1] if keep is not None else parts
    if not 2 <= len(parts) <= 3 or any(v not in FAST_VARIANTS and v not in ("vocab", "bridge") for v in variants):
        raise SystemExit(f"bad BiLD system {spec!r}: write "
                         f"bild:FB:RB[:N][:keep|:nokeep][:round][+{'|'.join(FAST_VARIANTS)}|+vocab|+bridge]")
    thresholds = {"fallback_threshold": parts[0] if parts[0] == AUTO else float(parts[0]), "rollback_threshold": float(parts[1]), "keep_fallback_draft": keep,
                  "fallback_rule": rule}
    if len(parts) > 2:
        thresholds["max_small_steps"] = int(parts[2])
    other = {k: v for variant in variants if variant in FAST_VARIANTS for k, v in FAST_VARIANTS[variant].items()}
    if "vocab" in variants:
        other["draft_vocab"] = draft_vocab
    if "bridge" in variants:
        other["cross_tokenizer"] = True
    return thresholds, other


def draft_vocab(args, tokenizer, vocab_size: int):
    """+vocab's token ids: the most used tokens of --draft_vocab_file's references (the example scripts'
    DraftVocabSpec; the English side of the translation layout, the "summary" of the summarization layout), or the
    tiny models' first ids."""
    if tokenizer is None or not args.draft_vocab_file:
        if tokenizer is not None:
            raise SystemExit("+vocab needs --draft_vocab_file (e.g. the task's training file)")
        return list(range(min(args.draft_vocab_size, vocab_size)))
    with open(args.draft_vocab_file) as f:
        first = json.loads(f.readline())
    task, columns = (TRANSLATION, ("de", "en")) if "translation" in first else (SUMMARIZATION, ("document", "summary"))
    return DraftVocabSpec(args.draft_vocab_size, args.draft_vocab_file).token_ids(task, columns, tokenizer)


def decoding_kwargs(args) -> dict:
    """What every system gets: greedy, or sampling with the same warpers."""
    if not args.do_sample:
        return dict(max_new_tokens=args.max_new_tokens, do_sample=False)
    return dict(max_new_tokens=args.max_new_tokens, do_sample=True, temperature=args.temperature, top_p=args.top_p,
                top_k=args.top_k)


def seeds(args) -> list[int]:
    return [int(s) for s in args.seeds.split(",")] if getattr(args, "do_sample", False) else [0]


def systems(names: list[str], small, large, common: dict, vocab=None, tokenizer=None) -> dict:
    """name -> generate(inputs) for every requested system; `common` holds the decoding kwargs; tokenizer: the large
    model's, for +bridge (both sides)."""
    common = dict(common)
    if large.generation_config.pad_token_id is None:
        common["pad_token_id"] = large.generation_config.eos_token_id
    table = {}
    for name in names:
        if name == "large":
            table[name] = lambda x: large.generate(**x, **common)
        elif name == "large+kernels":
            rows = measure_pair_costs(small, large, max_width=BiLDConfig().max_small_steps + 1).large.weight_stationary
            table[name] = lambda x, rows=rows: _with_kernels(large, rows, x, common)
        elif name == "small":
            table[name] = lambda x: small.generate(**x, **common)
        elif name == "assisted":
            table[name] = lambda x: large.generate(**x, assistant_model=small, **common)
        elif name.startswith("assisted:"):
            table[name] = lambda x, n=int(name.split(":")[1]): _assisted_constant(large, small, x, n, common)
        elif name.startswith("bild:"):
            thresholds, fast = parse_bild(name, vocab() if "+vocab" in name else None)
            # No tokenizers: the pair is checked by vocabulary size only, so no call pays the Python comparison of
            # two vocabularies that checking tokenizers costs (the product does it once per generator).
            if fast.get("cross_tokenizer") and tokenizer is None:
                raise SystemExit("+bridge needs real models' tokenizers (--small and --large)")
            tokenizers = {"tokenizer": tokenizer} if fast.get("cross_tokenizer") else {}
            gen = BiLDGenerator(small, large, **thresholds, **fast, **tokenizers)
            table[name] = lambda x, gen=gen: gen.generate(**x, **common, return_dict_in_generate=True,
                                                         bild_profile=True)
        else:
            raise SystemExit(f"unknown system {name!r}: large, large+kernels, small, assisted, assisted:N or bild:FB:RB[:N][:keep|:nokeep]")
    return table


def _with_kernels(large, rows, inputs, common):
    """As "auto" runs the large model alone (bild.plan.large_alone): the form for its one-token steps, if chosen."""
    with few_token_matmuls(large, rows, inputs["input_ids"].shape[0]):
        return large.generate(**inputs, **common)


def _assisted_constant(large, small, inputs, n, common):
    """Assisted generation with a fixed draft length n (transformers reads it from the assistant's config)."""
    config = small.generation_config
    saved = config.num_assistant_tokens, config.num_assistant_tokens_schedule
    config.num_assistant_tokens, config.num_assistant_tokens_schedule = n, "constant"
    try:
        return large.generate(**inputs, assistant_model=small, **common)
    finally:
        config.num_assistant_tokens, config.num_assistant_tokens_schedule = saved


def time_one(fn, x, device) -> tuple[float, list[int], object]:
    sync(device)
    start = time.perf_counter()
    out = fn(x)
    sync(device)
    seconds = time.perf_counter() - start
    seq = out.sequences if hasattr(out, "sequences") else out
    return seconds, seq[0, x["input_ids"].shape[1]:].tolist(), getattr(out, "stats", None)


def run_interleaved(table: dict, prompts: list, device, progress=None, seed_list=(0,)) -> dict:
    """Per system: seconds and new tokens of every (prompt, seed), prompt-major, and BiLD's stats; systems
    rotated from one (prompt, seed) to the next, each call after torch.manual_seed of the same value."""
    names = list(table)
    for name in names:  # warm-up: one-off costs (allocations, kernel selection) are not timed
        table[name](prompts[0])
    runs = {name: {"seconds": [], "outputs": [], "stats": []} for name in names}
    units = [(i, x, seed) for i, x in enumerate(prompts) for seed in seed_list]
    for u, (i, x, seed) in enumerate(units):
        for name in rotated(names, u):
            torch.manual_seed(1_000_003 * seed + i)
            seconds, tokens, stats = time_one(table[name], x, device)
            runs[name]["seconds"].append(seconds)
            runs[name]["outputs"].append(tokens)
            if stats is not None:
                runs[name]["stats"].append({**stats.total(), "small_forward_seconds": stats.small_forward_seconds,
                                            "large_forward_seconds": stats.large_forward_seconds,
                                            "costs": getattr(stats, "costs", None) if not runs[name]["stats"] else None})
        if progress and seed == seed_list[-1]:
            progress(i, runs)
    return runs


def summarize(name: str, run: dict) -> dict:
    seconds = sum(run["seconds"])
    tokens = sum(len(o) for o in run["outputs"])
    out = {"seconds": seconds, "new_tokens": tokens, "ms_per_token": 1000 * seconds / max(tokens, 1),
           "per_example_s": run["seconds"]}
    if run["stats"]:
        totals = run["stats"]
        keys = [k for k in totals[0] if isinstance(totals[0][k], (int, float))]
        total = {k: sum(t[k] for t in totals) for k in keys}
        total["mean_tokens_per_large_call"] = total["committed_tokens"] / max(total["large_forward_calls"], 1)
        total["acceptance_rate"] = total["accepted_drafts"] / max(total["drafted_tokens"], 1)
        small_fwd, large_fwd = total.pop("small_forward_seconds"), total.pop("large_forward_seconds")
        loop = total["loop_seconds"]
        out["split_s"] = {"small_forwards": small_fwd, "large_forwards": large_fwd,
                          "loop_overhead": loop - small_fwd - large_fwd, "per_call_setup": seconds - loop}
        total["share_outside_forwards"] = 1 - (small_fwd + large_fwd) / max(seconds, 1e-9)
        out["stats"] = total
        costs = [t.get("costs") for t in totals if isinstance(t.get("costs"), dict)]
        if costs:  # the cost model the calls decided from (with the rows the matmul form was measured faster for)
            out["cost_model"] = costs[0]
    return out


def per_prompt(seconds: list[float], n_seeds: int) -> list[float]:
    """A prompt's seeds summed (runs are prompt-major), so that the interval resamples prompts."""
    return [sum(seconds[k:k + n_seeds]) for k in range(0, len(seconds), n_seeds)]


def compare(results: dict, runs: dict, n_seeds: int = 1) -> None:
    """speedup_vs_<baseline> and its paired 90% interval (over prompts) for every system against every baseline."""
    for base in BASELINES:
        if base not in runs:
            continue
        for name, r in results.items():
            if name == base:
                continue
            r[f"speedup_vs_{base}"] = results[base]["seconds"] / r["seconds"]
            r[f"speedup_vs_{base}_ci90"] = list(paired_bootstrap_ci(per_prompt(runs[base]["seconds"], n_seeds),
                                                                    per_prompt(runs[name]["seconds"], n_seeds)))


def report_partial(path: str, argv=None) -> dict:
    """The report of an interrupted run, from the prompts its partial file holds."""
    data = json.loads(Path(path).read_text())
    args = argparse.Namespace(**data["args"])
    tokenizer = AutoTokenizer.from_pretrained(args.large) if args.large else None
    references = (None, None)
    if args.prompts:
        references = read_references([json.loads(line) for line in open(args.prompts) if line.strip()][: args.max_samples])
    args.output = str(Path(path).with_name(Path(path).name.replace(".partial.json", f".first{data['prompts_done']}.json")))
    print(f"partial run: {data['prompts_done']} prompts")
    return build_report(args, data["runs"], references, tokenizer, data["contention"], argv)


def main(argv=None):
    args = parse_args(argv)
    if args.report_partial:
        return report_partial(args.report_partial, argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    auto = args.dtype == "auto"
    dtype = (rule_dtype(args.device) or torch.float32) if auto else getattr(torch, args.dtype)
    if args.small and args.large:
        small, large = load(args.small, args.device, dtype), load(args.large, args.device, dtype)
        if auto and rule_dtype(args.device) is None:  # no rule here: the pair's dtypes measured together
            drafting = "auto" if any(n.split(":")[1] == "auto" for n in args.systems.split(",") if n.startswith("bild:")) \
                else "always"
            choice = pair_dtypes(small, large, BiLDConfig.max_small_steps, drafting)
            args.dtype_choice = dataclasses.asdict(choice)
            print(f"dtype auto, measured for the pair: {choice.summary()}", file=sys.stderr, flush=True)
        tokenizer = AutoTokenizer.from_pretrained(args.large)
    else:
        small, large, tokenizer = tiny_pair(args.device, dtype)
    args.model_dtypes = {r: str(next(m.parameters()).dtype).replace("torch.", "") for r, m in (("small", small), ("large", large))}
    prompts, references = load_prompts(args, tokenizer, args.device)
    names = args.systems.split(",")
    table = systems(names, small, large, decoding_kwargs(args),
                    vocab=functools.cache(lambda: draft_vocab(args, tokenizer, large.config.get_text_config().vocab_size)),
                    tokenizer=tokenizer if args.small and args.large else None)

    partial = Path(args.output).with_suffix(".partial.json")
    monitor = ContentionMonitor().start()

    def progress(i, runs):
        line = ", ".join(f"{n} {sum(r['seconds']):.0f}s" for n, r in runs.items())
        print(f"[{i + 1}/{len(prompts)}] {line}", file=sys.stderr, flush=True)
        if (i + 1) % 10 == 0:  # an interrupted run keeps what it timed
            partial.parent.mkdir(parents=True, exist_ok=True)
            partial.write_text(json.dumps({"args": vars(args), "prompts_done": i + 1, "contention": monitor.stop(), "runs": {
                n: {"seconds": r["seconds"], "outputs": r["outputs"], "stats": r["stats"]} for n, r in runs.items()}}))

    with torch.no_grad():
        runs = run_interleaved(table, prompts, args.device, progress, seeds(args))
    contention = monitor.stop()
    report = build_report(args, runs, references, tokenizer, contention, argv)
    partial.unlink(missing_ok=True)
    return report


def build_report(args, runs: dict, references, tokenizer, contention: dict, argv=None) -> dict:
    """Tables and JSON from the per-prompt runs (of a finished run, or of a partial file)."""
    seed_list = seeds(args)
    n_prompts = len(next(iter(runs.values()))["seconds"]) // len(seed_list)
    metric, references = references
    references = references[:n_prompts] if references is not None else None
    results = {name: summarize(name, run) for name, run in runs.items()}
    compare(results, runs, len(seed_list))
    if references is not None:
        for name, r in results.items():
            texts = [tokenizer.decode(t, skip_special_tokens=True).strip() for t in runs[name]["outputs"]]
            per_seed = [quality(metric, texts[j::len(seed_list)], references) for j in range(len(seed_list))]
            r[metric] = sum(per_seed) / len(per_seed)
            if len(seed_list) > 1:
                r[f"{metric}_per_seed"] = dict(zip(map(str, seed_list), per_seed))
    if "large" in runs and not getattr(args, "do_sample", False):  # sampled outputs differ from large's by design
        for name, r in results.items():
            r["examples_identical_to_large"] = sum(a == b for a, b in zip(runs[name]["outputs"], runs["large"]["outputs"]))
            r["identical_to_large"] = r["examples_identical_to_large"] == n_prompts
    for name, r in results.items():  # a fast-path variant against its eager setting
        eager = name.partition("+")[0]
        if "+" in name and eager in runs:
            r["identical_to_eager"] = runs[name]["outputs"] == runs[eager]["outputs"]
            r["speedup_vs_eager"] = results[eager]["seconds"] / r["seconds"]
            r["speedup_vs_eager_ci90"] = list(paired_bootstrap_ci(runs[eager]["seconds"], runs[name]["seconds"]))
    print_table(results, metric or "bleu")
    warning = contention_warning(contention)
    if warning:
        print(warning, file=sys.stderr)
    report = {"command": " ".join(["benchmarks/bench_decode.py", *(argv if argv is not None else sys.argv[1:])]),
              "environment": environment(), "args": vars(args), "device": args.device,
              "timing": {"order": "interleaved", "warm_up": "one generation per system", "contention": contention},
              "prompts": n_prompts, "quality_metric": metric, "results": results}
    atomic_write_json(Path(args.output), report)
    print(f"wrote {args.output}")
    return report


def _x(r: dict, base: str) -> str:
    if f"speedup_vs_{base}" not in r:
        return "-"
    lo, hi = r[f"speedup_vs_{base}_ci90"]
    return f"{r[f'speedup_vs_{base}']:.2f} [{lo:.2f}-{hi:.2f}]"


def print_table(results, metric: str = "bleu"):
    print(f"{'system':<26}{'s':>8}{'BLEU' if metric == 'bleu' else 'ROUGE-L':>8}{'ms/tok':>8}{'x large [90%]':>19}{'x assisted [90%]':>19}{'=large':>7}"
          f"{'tok/large':>10}{'accept':>7}{'small fwd':>10}{'large fwd':>10}{'loop':>7}{'setup':>7}")
    for name, r in results.items():
        s, split = r.get("stats", {}), r.get("split_s")
        fmt = lambda k, f: format(s[k], f) if k in s else "-"
        sp = (lambda k: f"{split[k]:.1f}") if split else (lambda k: "-")
        print(f"{name:<26}{r['seconds']:>8.1f}{r.get(metric, math.nan):>8.2f}{r['ms_per_token']:>8.1f}"
              f"{_x(r, 'large'):>19}{_x(r, 'assisted'):>19}{str(r.get('examples_identical_to_large', '-')):>7}"
              f"{fmt('mean_tokens_per_large_call', '.2f'):>10}{fmt('acceptance_rate', '.2f'):>7}"
              f"{sp('small_forwards'):>10}{sp('large_forwards'):>10}{sp('loop_overhead'):>7}{sp('per_call_setup'):>7}")


if __name__ == "__main__":
    main()

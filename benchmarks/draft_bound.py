"""How fast can any lossless drafting policy be for this pair? A bound from measured costs and real agreement.

    python benchmarks/draft_bound.py --run_dir RUN --costs benchmarks/results/step_costs_qwen_cpu.json \
        --output benchmarks/results/draft_bound.json

RUN is an example-script output folder that holds the large model's predictions
(``--compare large``). For each example the script rebuilds the prompt as the run did, re-tokenises
the large model's output, and checks it: one teacher-forced large pass must give back every token
(examples where it does not are left out and counted). One teacher-forced small pass then gives,
at every position of the large model's output, the small model's argmax and its max probability.

In lossless mode the committed prefix is always the large model's greedy output, so these two
vectors decide everything a lossless policy does: which drafts are accepted, and where the
fallback rule stops drafting. Replaying the policies over them with the measured step costs
(``benchmarks/step_costs.py``: one small step, one large pass over k new tokens) predicts each
policy's time per token, with no generation at all:

* ``oracle``: drafts exactly the tokens the large model will accept, never one more, never a
  small step that finds nothing. No lossless drafting policy with this small model can be faster.
* ``bild fb=F n=N``: BiLD's rule (draft while max probability >= F, at most N drafts, rollback 0).
* ``assisted t=T n=N``: transformers' assisted generation with a constant draft length N and its
  confidence stop at T (it keeps the token that fell below T; its defaults are N=20, T=0.4).
* ``cumulative fb=F n=N``: a round-level rule: draft while the product of the round's max probabilities so
  far is >= F (the small model's own estimate that every draft of the round is accepted), keeping the draft
  that falls below; at most N drafts.

``--vectors FILE`` keeps the agreement vectors: written after they are computed, read instead of loading
the models when the file exists (so the policies can be replayed again without the models).

The model leaves out what is the same for every policy or favours the policies: prompt prefills
(the large one is paid by all; the small one only by the drafting policies) and Python overhead.
So the predicted speed-ups are upper bounds of the measured ones; the table puts the run's
measured numbers beside them where the run has the system.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from bild.env import environment
from bild.eval.data import DataSpec, load_examples
from bild.eval.prompts import PromptSpec, prompt_builder
from bild.eval.rundir import RunDir
from bild.eval.systems import eos_token_ids, load_model, load_tokenizer
from bild.eval.tasks import TASKS


# ---------------------------------------------------------------------------------------------
# Pure replay of the policies over one sequence (tested in tests/test_draft_bound.py)


def verify_ms(costs: dict, new_tokens: int) -> float:
    """One large pass over `new_tokens` unseen tokens: the cheapest measured pass at least that wide (a
    wider pass costs at least as much; this irons out timing noise in the policies' favour), linear past
    the widest measured one."""
    table = {int(k): v for k, v in costs["verify"].items()}
    top = max(table)
    if new_tokens <= top:
        return min(v for k, v in table.items() if k >= new_tokens)
    slope = (table[top] - table[1]) / (top - 1)
    return table[top] + slope * (new_tokens - top)


def replay(match: list[bool], probs: list[float], policy: str, threshold: float, n: int, costs: dict) -> dict:
    """Rounds of one lossless policy over a sequence whose every position the small model gets right
    (`match`) or not, with its max probability there (`probs`). Returns time and call counts.

    bild: a small step at the next position; below `threshold` it stops without drafting there.
    assisted / keep: the small step drafts its token anyway and stops after it when below `threshold`
    (transformers' confidence stop, and BiLD with keep_fallback_draft, its default when lossless).
    cumulative: as keep, with the product of the round's max probabilities in place of the last one.
    Each round ends with one large pass over the drafts plus the token before them, which commits
    the accepted drafts and one token of its own (correction, or bonus when all were accepted).

    Exact up to the first wrong draft of a round: until then the small model's context is the large
    model's output, which is what `match` and `probs` were measured on. After it, the real policy
    may draft on (from its own wrong token) until its rule stops it; those drafts are all rejected
    and change nothing but time, and the replay stops instead. So the replayed rounds are the real
    ones, and the replayed small steps a lower bound: predictions favour the policies.
    """
    t, pos, small, large, ms, chain = len(match), 0, 0, 0, 0.0, 1.0
    while pos < t:
        drafted = 0
        while drafted < n and pos + drafted < t:
            small += 1
            ms += costs["small_step"]
            if policy == "cumulative":
                chain = chain * probs[pos + drafted] if drafted else probs[pos]
                confident = chain >= threshold
            else:
                confident = probs[pos + drafted] >= threshold
            if policy == "bild" and not confident:
                break
            drafted += 1
            if (policy in ("assisted", "keep", "cumulative") and not confident) or not match[pos + drafted - 1]:
                break
        accepted = 0
        while accepted < drafted and match[pos + accepted]:
            accepted += 1
        large += 1
        ms += verify_ms(costs, drafted + 1)
        # All drafts accepted up to the end of the sequence: nothing more to commit.
        pos += accepted + (0 if pos + accepted == t else 1)
    return {"ms": ms, "small_steps": small, "large_calls": large}


def oracle(match: list[bool], costs: dict) -> dict:
    """The fastest lossless schedule, found by dynamic programming over the rounds.

    A round drafts d tokens the small model gets right (d small steps) and checks them in one large
    pass over d + 1 tokens, which also supplies the token after them. So a round ending at the end of
    the sequence can leave its last token to the large pass instead of drafting it. Every schedule
    the replay models is one of these, so this bounds them all.
    """
    t = len(match)
    best = [(0.0, 0, 0)] * (t + 1)  # from position i to the end: (ms, small steps, large calls)
    for pos in range(t - 1, -1, -1):
        options, d = [], 0
        while True:
            ms, small, large = best[min(pos + d + 1, t)]
            options.append((d * costs["small_step"] + verify_ms(costs, d + 1) + ms, small + d, large + 1))
            if pos + d >= t or not match[pos + d]:
                break
            d += 1
        best[pos] = min(options)
    ms, small, large = best[0]
    return {"ms": ms, "small_steps": small, "large_calls": large}


def summarize(sequences: list[tuple[list[bool], list[float]]], costs: dict, policies: list[tuple]) -> dict:
    """Predicted ms/token and speed-up over large greedy (one large step per token) of each policy."""
    tokens = sum(len(m) for m, _ in sequences)
    large_ms = tokens * costs["large_step"]
    out = {}
    for name, policy, threshold, n in policies:
        runs = [oracle(m, costs) if policy == "oracle" else replay(m, p, policy, threshold, n, costs)
                for m, p in sequences]
        ms = sum(r["ms"] for r in runs)
        out[name] = {"ms_per_token": ms / tokens, "speedup_vs_large": large_ms / ms,
                     "tokens_per_large_call": tokens / sum(r["large_calls"] for r in runs),
                     "small_steps": sum(r["small_steps"] for r in runs)}
    return out


def default_policies() -> list[tuple]:
    policies = [("oracle", "oracle", None, None)]
    for fb in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
        for n in (3, 4, 5, 6, 8, 10, 15, 20):
            policies.append((f"bild fb={fb} n={n}", "bild", fb, n))
            policies.append((f"bild-keep fb={fb} n={n}", "keep", fb, n))
    for fb in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7):
        for n in (5, 10, 20):
            policies.append((f"cumulative fb={fb} n={n}", "cumulative", fb, n))
    for n in (3, 4, 5, 6, 8, 10, 20):
        policies.append((f"assisted t=0.4 n={n}", "assisted", 0.4, n))
    return policies


# ---------------------------------------------------------------------------------------------
# Agreement of the real pair along the large model's outputs


def load_run(run_dir: Path):
    config = json.loads((run_dir / "config.json").read_text())
    settings, data = config["settings"], config["settings"]["data"]
    task = TASKS[settings["task"]]
    spec = DataSpec(data["dataset_name"], data["dataset_config"], data["files"], data["split"],
                    config["args"]["max_samples"], tuple(data["columns"]))
    examples = load_examples(task, spec)
    records = RunDir(run_dir).ordered("large", examples)
    if len(records) != len(examples):
        raise SystemExit(f"{run_dir} has {len(records)} large-model predictions for {len(examples)} examples; "
                         "run the example script with --compare large to the end first.")
    return config, spec, task, examples, records


@torch.no_grad()
def along(small, prompt: list[int], target: list[int]) -> tuple[list[bool], list[float]]:
    """Teacher-forced on prompt + target (decoder-only models), at each target position: whether the
    small model's argmax is the target token, and its max probability."""
    ids = torch.tensor([[*prompt, *target]])
    start = len(prompt) - 1
    probs = small(input_ids=ids).logits[0, start: start + len(target)].float().softmax(-1)
    max_p, small_next = probs.max(-1)
    return (small_next == torch.tensor(target)).tolist(), max_p.tolist()


@torch.no_grad()
def agreement_vectors(small, large, prompts, examples, records, eos_ids: set[int]):
    """(match, max prob) along each re-tokenised large output the large model reproduces teacher-forced."""
    sequences, left_out = [], 0
    for example, record in zip(examples, records):
        prompt = prompts.batch([example.source])["input_ids"][0]
        target = prompts.tokenizer(record["prediction"], add_special_tokens=False)["input_ids"]
        ended = record["new_tokens"] == len(target) + 1  # the large model stopped at an EOS token
        ids = torch.tensor([[*prompt.tolist(), *target, 0]])
        start = len(prompt) - 1
        large_next = large(input_ids=ids).logits[0, start:].argmax(-1)
        if ended and int(large_next[len(target)]) in eos_ids:
            target.append(int(large_next[len(target)]))
        if large_next[: len(target)].tolist() != target or (ended and len(target) != record["new_tokens"]):
            left_out += 1
            continue
        sequences.append(along(small, prompt.tolist(), target))
    return sequences, left_out


def compute_vectors(config, task, data, examples, records, paths):
    dtype = config["settings"]["dtype"]
    small = load_model(paths["small"], dtype, torch.device("cpu"), None)
    large = load_model(paths["large"], dtype, torch.device("cpu"), None)
    tokenizer = load_tokenizer(paths["large"], False)
    prompt = config["settings"]["prompt"]
    prompts = prompt_builder(task, PromptSpec(prompt["template"], prompt["source_prefix"], prompt["max_source_length"]),
                             data.columns, tokenizer, False)
    return agreement_vectors(small, large, prompts, examples, records, eos_token_ids(large, tokenizer))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run_dir", required=True, help="example-script output folder with predictions_large.jsonl")
    p.add_argument("--costs", required=True, help="JSON written by benchmarks/step_costs.py")
    p.add_argument("--small", help="another small model to replay (e.g. one from `bild align`); default: the run's")
    p.add_argument("--vectors", help="JSON file of the agreement vectors: read if it exists, else written")
    p.add_argument("--output", default="benchmarks/results/draft_bound.json")
    args = p.parse_args(argv)
    run_dir = Path(args.run_dir)
    config, data, task, examples, records = load_run(run_dir)
    costs = json.loads(Path(args.costs).read_text())["costs_ms"]
    paths = dict(config["settings"]["models"], **({"small": args.small} if args.small else {}))
    if args.vectors and Path(args.vectors).exists():
        saved = json.loads(Path(args.vectors).read_text())
        sequences, left_out = [tuple(s) for s in saved["sequences"]], saved["left_out"]
    else:
        sequences, left_out = compute_vectors(config, task, data, examples, records, paths)
        if args.vectors:
            Path(args.vectors).write_text(json.dumps({"models": paths, "left_out": left_out, "sequences": sequences}))
    tokens = sum(len(m) for m, _ in sequences)
    agree = sum(sum(m) for m, _ in sequences) / tokens
    predicted = summarize(sequences, costs, default_policies())
    measured = {}
    metrics_path = run_dir / "metrics.json"
    if metrics_path.exists() and not args.small:  # the run timed its own small model
        metrics = json.loads(metrics_path.read_text())
        base = metrics["systems"]["large"]["total_latency_s"]
        measured = {name: base / m["total_latency_s"] for name, m in metrics["systems"].items()}

    best_bild = max((k for k in predicted if k.startswith("bild")), key=lambda k: predicted[k]["speedup_vs_large"])
    best_assisted = max((k for k in predicted if k.startswith("assisted")),
                        key=lambda k: predicted[k]["speedup_vs_large"])
    print(f"{len(sequences)} examples ({left_out} left out: not reproduced teacher-forced), {tokens} tokens; "
          f"the small model's argmax equals the large model's output at {100 * agree:.1f}% of positions")
    print(f"{'policy':<24}{'ms/token':>10}{'speedup':>10}{'tok/large':>11}")
    best_cumulative = max((k for k in predicted if k.startswith("cumulative")),
                          key=lambda k: predicted[k]["speedup_vs_large"])
    for name in dict.fromkeys(("oracle", best_bild, "bild-keep fb=0.6 n=10", best_cumulative, "bild fb=0.6 n=10",
                               "bild fb=0.4 n=5", best_assisted,
                               "assisted t=0.4 n=20", "assisted t=0.4 n=5")):
        r = predicted[name]
        print(f"{name:<24}{r['ms_per_token']:>10.1f}{r['speedup_vs_large']:>9.2f}x{r['tokens_per_large_call']:>11.2f}")
    if measured:
        print("measured in the run (speed-up vs large, prefills and overheads included): "
              + ", ".join(f"{k} {v:.2f}x" for k, v in measured.items()))
    result = {"command": " ".join(["benchmarks/draft_bound.py", *(argv if argv is not None else sys.argv[1:])]),
              "environment": environment(), "run_dir": str(run_dir), "models": paths, "examples": len(sequences),
              "left_out": left_out, "tokens": tokens, "agreement": agree, "costs_ms": costs,
              "best_bild": best_bild, "best_cumulative": best_cumulative, "best_assisted": best_assisted, "predicted": predicted,
              "measured_speedup_vs_large": measured}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")
    return result


if __name__ == "__main__":
    main()

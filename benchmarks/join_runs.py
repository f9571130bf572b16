"""One table from several runs of an example script over consecutive parts of a data set (e.g. test lines 1-50 and
51-100 run in two sessions): each system's per-example times and predictions are joined in order, and the
speed-ups are ratios of summed times with a paired bootstrap interval over the joined examples.

    python benchmarks/join_runs.py RUN_DIR [RUN_DIR ...] [--output joined.json]

A system that only some runs have is compared on those runs' examples only (each comparison says how many). Quality is
computed on the joined predictions (BLEU/chrF for translation, ROUGE for summarization).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bild.eval.rundir import read_records
from bild.eval.timing import paired_bootstrap_ci
from bild.metrics import rouge, translation_metrics


def joined(run_dirs: list[Path]) -> tuple[str, dict[str, list[list[dict]]]]:
    """(task, system -> per run its records, or None where the run lacks the system)."""
    tasks = {json.loads((d / "metrics.json").read_text())["task"] for d in run_dirs}
    if len(tasks) != 1:
        raise SystemExit(f"runs of different tasks: {sorted(tasks)}")
    systems: dict[str, list] = {}
    for i, d in enumerate(run_dirs):
        for path in sorted(d.glob("predictions_*.jsonl")):
            name = path.stem.removeprefix("predictions_")
            systems.setdefault(name, [None] * len(run_dirs))[i] = read_records(path)
    return tasks.pop(), systems


def compare(task: str, systems: dict[str, list], baselines=("large", "assisted")) -> list[dict]:
    quality = translation_metrics if task == "translation" else rouge
    rows = []
    for name, per_run in systems.items():
        have = [i for i, r in enumerate(per_run) if r is not None]
        records = [x for i in have for x in per_run[i]]
        row = {"system": name, "examples": len(records), "runs": have,
               "seconds": sum(x["latency_s"] for x in records),
               "new_tokens": sum(x["new_tokens"] for x in records),
               "quality": quality([x["prediction"] for x in records], [x["reference"] for x in records])}
        for base in baselines:
            both = [i for i in have if base in systems and systems[base][i] is not None]
            if base == name or not both:
                continue
            theirs = [x for i in both for x in systems[base][i]]
            mine = [x for i in both for x in per_run[i]]
            base_s, ours = np.array([x["latency_s"] for x in theirs]), np.array([x["latency_s"] for x in mine])
            row[f"x {base}"] = {"ratio": float(base_s.sum() / ours.sum()), "ci90": paired_bootstrap_ci(base_s, ours),
                                "examples": len(mine),
                                "same_output": sum(a["prediction"] == b["prediction"] for a, b in zip(theirs, mine))}
        rows.append(row)
    return rows


def table(task: str, rows: list[dict]) -> str:
    keys = ("bleu", "chrf") if task == "translation" else ("rouge1", "rouge2", "rougeL")
    bases = [b for b in ("large", "assisted") if any(f"x {b}" in r for r in rows)]
    head = ["system", "examples", *keys, "s", "ms/token", *(f"x {b} [90%]" for b in bases),
            *(f"= {b}" for b in bases)]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["system"], str(r["examples"]), *(f"{r['quality'][k]:.2f}" for k in keys), f"{r['seconds']:.1f}",
                 f"{1000 * r['seconds'] / max(r['new_tokens'], 1):.1f}"]
        cells += [f"{r[f'x {b}']['ratio']:.2f} [{r[f'x {b}']['ci90'][0]:.2f}-{r[f'x {b}']['ci90'][1]:.2f}]"
                  + (f" ({r[f'x {b}']['examples']})" if r[f"x {b}"]["examples"] != r["examples"] else "")
                  if f"x {b}" in r else "-" for b in bases]
        cells += [str(r[f"x {b}"]["same_output"]) if f"x {b}" in r else "-" for b in bases]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--output", type=Path)
    args = p.parse_args(argv)
    task, systems = joined(args.runs)
    rows = compare(task, systems)
    print(table(task, rows))
    if args.output:
        args.output.write_text(json.dumps({"command": "python benchmarks/join_runs.py " + " ".join(map(str, args.runs)),
                                           "task": task, "rows": rows}, indent=1))
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

"""Markdown tables from an example script's metrics.json (what benchmarks/RESULTS.md quotes).

    python benchmarks/metrics_table.py benchmarks/results/runs/translation-.../metrics.json

One row per system: quality, total seconds, ms/token, speed-up vs large and vs assisted (when the run has
them); then BiLD's counters, one column per BiLD setting.
"""

from __future__ import annotations

import json
import sys

from bild.eval.report import STATS_COUNTERS


def tables(metrics: dict) -> str:
    systems = metrics["systems"]
    keys = {"translation": ("bleu", "chrf"), "summarization": ("rouge1", "rouge2", "rougeL", "rougeLsum")}[
        metrics["task"]]
    bases = [b for b in ("large", "assisted") if b in systems]
    head = ["system", *keys, "seconds", "ms/token", *(f"speed-up vs {b}" for b in bases)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in systems.items():
        cells = [name, *(f"{m['quality'][k]:.2f}" for k in keys), f"{m['total_latency_s']:.1f}",
                 f"{m['ms_per_token']:.1f}",
                 *(f"{systems[b]['total_latency_s'] / m['total_latency_s']:.2f}x" for b in bases)]
        lines.append("| " + " | ".join(cells) + " |")
    bild = {name: m["bild_stats"] for name, m in systems.items() if "bild_stats" in m}
    if bild:
        lines += ["", "| counter | " + " | ".join(bild) + " |", "|---|" + "---|" * len(bild)]
        for counter in STATS_COUNTERS:
            values = [s[counter] for s in bild.values()]
            lines.append(f"| {counter} | " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v)
                                                          for v in values) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    for path in sys.argv[1:]:
        with open(path) as f:
            print(tables(json.load(f)))

"""Quality and speed of each system, BiLD against its baselines, and the tables a run prints."""

from __future__ import annotations

import sys

from ..stats import PER_ROW, BiLDStats
from .systems import is_bild_system
from .timing import contention_warning, paired_bootstrap_ci
from .tasks import Task

# BiLDStats.total() fields that count whole-batch events; per-example records cannot sum them.
BATCH_LEVEL_STATS = ("batch_small_calls", "batch_large_calls", "forward_seconds", "loop_seconds")
# BiLD's counters in the order the reports show them (also benchmarks/metrics_table.py).
STATS_COUNTERS = ("committed_tokens", "tokens_from_small", "tokens_from_large", "drafted_tokens", "accepted_drafts",
                  "acceptance_rate", "fallbacks", "rollbacks", "corrections", "bonus_tokens", "large_forward_calls",
                  "mean_tokens_per_large_call")


def bild_stats_total(records: list[dict]) -> dict:
    """BiLD's counters summed over examples, with the ratios `BiLDStats.total` derives."""
    stats = BiLDStats(**{name: [r["bild_stats"][name] for r in records] for name in PER_ROW})
    total = stats.total()
    for name in BATCH_LEVEL_STATS:
        total.pop(name)
    return total


def system_metrics(task: Task, records: list[dict], references: list[str]) -> dict:
    """Quality and speed of one system over `records` (in the order of `references`)."""
    seconds = sum(r["latency_s"] for r in records)
    tokens = sum(r["new_tokens"] for r in records)
    out = {
        "examples": len(records),
        "quality": task.score([r["prediction"] for r in records], references),
        "total_latency_s": seconds,
        "mean_latency_s": seconds / len(records),
        "new_tokens": tokens,
        "tokens_per_s": tokens / seconds if seconds else None,
        "ms_per_token": 1000 * seconds / tokens if tokens else None,
    }
    if "bild_stats" in records[0]:
        out["bild_stats"] = bild_stats_total(records)
    return out


def comparison(task: Task, systems: dict[str, dict], bild: str = "bild",
               latencies: dict[str, list[float]] | None = None) -> dict:
    """BiLD system `bild` against each baseline (every system that is not BiLD): speed-up (baseline
    latency / BiLD latency) and quality difference; with `latencies` (system -> seconds per example, in
    one order), also the speed-up's paired bootstrap 90% interval over examples (`speedup_ci90`)."""
    if bild not in systems:
        return {}
    out = {}
    ours = systems[bild]
    for name, base in systems.items():
        if is_bild_system(name):
            continue
        out[name] = {
            "speedup": base["total_latency_s"] / ours["total_latency_s"],
            "quality_delta": {k: ours["quality"][k] - base["quality"][k] for k in task.quality_keys},
        }
        if latencies is not None:
            out[name]["speedup_ci90"] = list(paired_bootstrap_ci(latencies[name], latencies[bild]))
    return out


def speedup_cell(c: dict) -> str:
    """'1.31x [1.22-1.40]': a speed-up with its 90% interval where there is one."""
    ci = c.get("speedup_ci90")
    return f"{c['speedup']:.2f}x" + (f" [{ci[0]:.2f}-{ci[1]:.2f}]" if ci else "")


def fmt(value, spec: str) -> str:
    """`value` formatted, or "-" where there is none."""
    return "-" if value is None else format(value, spec)


def console_for(width: int):
    """A rich console: logs and pipes get `width` columns, not rich's 80, which would squeeze the numbers."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else width)


def print_report(task: Task, result: dict, console=None) -> None:
    """Rich tables: every system's quality and speed, BiLD against the baselines, BiLD's counters."""
    from rich.table import Table

    console = console or console_for(120)
    systems = result["systems"]
    reference = "large" if "large" in systems else None
    table = Table(title=f"{task.name}: {result['examples']} examples")
    for column in ("system", *task.quality_keys, "total s", "ms/token", "tokens/s"):
        table.add_column(column, justify="left" if column == "system" else "right")
    if reference:
        table.add_column("speedup vs large", justify="right")
    for name, m in systems.items():
        cells = [name, *(f"{m['quality'][k]:.2f}" for k in task.quality_keys), f"{m['total_latency_s']:.2f}",
                 fmt(m["ms_per_token"], ".1f"), fmt(m["tokens_per_s"], ".1f")]
        if reference:
            cells.append(f"{systems[reference]['total_latency_s'] / m['total_latency_s']:.2f}x")
        table.add_row(*cells)
    console.print(table)
    compared = {name: s["comparison"] for name, s in result.get("bild_settings", {}).items() if s["comparison"]}
    if compared:
        console.print(comparison_table(task, compared))
    bild = {name: m["bild_stats"] for name, m in systems.items() if is_bild_system(name)}
    if bild:
        console.print(stats_table(bild))
    model = result.get("cost_model")
    for name, ceiling in (model or {}).get("ceiling", {}).items():
        at = model["at_measured_acceptance"].get(name)
        line = f"Cost model, {name}: ceiling {ceiling:.2f}x with every draft accepted"
        if at:
            line += (f"; {at['speedup']:.2f}x at its measured acceptance {at['acceptance']:.2f} "
                     f"(rounds of {at['drafts']} drafts)")
        console.print(line)
    warning = contention_warning(result.get("timing", {}).get("contention") or {})
    if warning:
        console.print(f"[bold red]{warning}[/]")
    console.print(f"Results in {result['output_dir']}")


def comparison_table(task: Task, compared: dict[str, dict]):
    """One row per (BiLD setting, baseline)."""
    from rich.table import Table

    table = Table(title="BiLD against each baseline")
    table.add_column("BiLD")
    table.add_column("baseline")
    table.add_column("BiLD speedup [90% interval]", justify="right")
    for key in task.quality_keys:
        table.add_column(f"Δ {key}", justify="right")
    for bild, against in compared.items():
        for name, c in against.items():
            table.add_row(bild, name, speedup_cell(c),
                          *(f"{c['quality_delta'][k]:+.2f}" for k in task.quality_keys))
    return table


def stats_table(stats: dict[str, dict]):
    """BiLD's counters, one column per BiLD setting."""
    from rich.table import Table

    table = Table(title="BiLD counters (summed over examples)")
    table.add_column("counter")
    for name in stats:
        table.add_column(name, justify="right")
    for counter in STATS_COUNTERS:
        values = [s[counter] for s in stats.values()]
        table.add_row(counter, *(f"{v:.3f}" if isinstance(v, float) else str(v) for v in values))
    return table

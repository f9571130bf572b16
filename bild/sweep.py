"""`bild sweep`: BiLD at every point of a threshold grid, against the large and the small model alone.

    bild sweep --small SMALL --large LARGE --task translation --validation_file debian-de-en.validation.jsonl \\
        --fallback 0.3,0.5,0.7,0.9 --rollback 1,2,3,5,inf --max_samples 200

One loaded pair of models generates the same examples greedily with the large model (the reference
for speed and quality), with the small model, and with BiLD at every (fallback, rollback) point.
Each point is reported with its quality, its speed-up over the large model, the tokens committed
per large-model call and its fallback and rollback rates; the Pareto frontier of speed-up against
quality is drawn, and the fastest point within `--max_quality_drop` of the large model's quality is
recommended, as the command line that uses it.

Files under --output_dir (rerun with the same folder to resume; a finished point is never redone):
    config.json                             settings, grid, versions; its fingerprint guards resuming
    predictions_large.jsonl                 the large model alone (the reference)
    predictions_small.jsonl                 the small model alone
    points/<fb>_<rb>/predictions_bild.jsonl BiLD at fallback <fb>, rollback <rb> (e.g. points/0.5_inf/)
    timing.json                             which run of the command timed each system
    sweep.json, sweep.csv                   one row per system (large, small, every point)
    sweep.png                               speed-up against quality, frontier and references

What the frontier needs to be honest, and how it gets it:
* the same inputs: every system generates the same examples with the same prompts, batches and
  generation settings (`bild.evaluation`'s `run_system`, as the example scripts measure);
* the same warm-up: each system, each point included, gets one untimed generation first;
* the clock is read with the device synchronised, around `generate` only;
* every point timed in the same process as the large model: a resumed sweep can break this, so
  each row says whether it was (`timed_with_large`), and the plot draws those that were not hollow;
* one process: totals are summed latencies, so the sweep refuses `accelerate launch` (several
  processes would add compute time, not wall time);
* nothing clipped: a point slower than large greedy keeps its speed-up below 1 (the shaded region of
  the plot) and is never recommended.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import os
import shlex
import shutil
import sys
import time
import uuid
from pathlib import Path

from . import evaluation
from .config import BiLDConfig
from .evaluation import Example, Task
from .options import (add_data_arguments, add_model_arguments, add_prompt_arguments, add_task_argument, choose_split,
                      resolve_task)

DEFAULT_METRIC = {"translation": "bleu", "summarization": "rougeL"}
# Quality columns of both tasks; each row has those of its task.
QUALITY_KEYS = ("bleu", "chrf", "rouge1", "rouge2", "rougeL", "rougeLsum")
CSV_COLUMNS = ("point", "system", "fallback_threshold", "rollback_threshold", "quality", "quality_delta", "speedup",
               "slower_than_large", "on_frontier", "recommended", "timed_with_large", "total_latency_s",
               "ms_per_token", "tokens_per_s", "new_tokens", "mean_tokens_per_large_call", "fallback_rate",
               "rollback_rate", "acceptance_rate", "small_token_share", *QUALITY_KEYS)
# Quality differences smaller than this are float noise, not a loss.
_QUALITY_EPS = 1e-9


# ---------------------------------------------------------------------------------------------
# Pure functions: grid, frontier, recommendation


def threshold_list(text: str) -> list[float]:
    """'0.3,0.5,inf' -> [0.3, 0.5, inf]: 'inf' is math.inf, 0 stays 0.0, repeats are dropped."""
    values: list[float] = []
    for item in text.split(","):
        try:
            value = float(item)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item.strip()!r} is not a number (use inf for infinity)") from None
        if math.isnan(value):
            raise argparse.ArgumentTypeError("nan is not a threshold")
        if value not in values:
            values.append(value)
    return values


def threshold_grid(fallbacks: list[float], rollbacks: list[float], max_small_steps: int) -> list[BiLDConfig]:
    """Every (fallback, rollback) pair, fallback-major, validated by BiLDConfig."""
    try:
        return [BiLDConfig(fb, rb, max_small_steps) for fb in fallbacks for rb in rollbacks]
    except ValueError as err:
        raise SystemExit(f"bild sweep: {err}") from None


def format_threshold(value: float) -> str:
    """3.0 -> '3', 0.5 -> '0.5', math.inf -> 'inf': short, and read back by the command line as the same float."""
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


def point_name(config: BiLDConfig) -> str:
    return f"{format_threshold(config.fallback_threshold)}_{format_threshold(config.rollback_threshold)}"


def pareto_frontier(points: list[dict]) -> list[dict]:
    """The points that no other point beats on both "speedup" and "quality", by rising speed-up.

    A point is dominated by another that is at least as fast and at least as good, and strictly
    better on one of the two. Equal points do not dominate each other, so both stay.
    """

    def dominates(a: dict, b: dict) -> bool:
        at_least = a["speedup"] >= b["speedup"] and a["quality"] >= b["quality"]
        return at_least and (a["speedup"] > b["speedup"] or a["quality"] > b["quality"])

    front = [p for p in points if not any(dominates(q, p) for q in points)]
    return sorted(front, key=lambda p: (p["speedup"], p["quality"]))


def recommend(points: list[dict], reference_quality: float, max_drop: float) -> dict | None:
    """The fastest point that loses at most `max_drop` quality against the reference and is faster than it.

    Ties in speed-up go to the better quality. None when no point qualifies: then the reference
    (the large model alone) is at least as fast as every setting that keeps its quality.
    """
    within = [p for p in points
              if p["speedup"] > 1.0 and reference_quality - p["quality"] <= max_drop + _QUALITY_EPS]
    return max(within, key=lambda p: (p["speedup"], p["quality"]), default=None)


# ---------------------------------------------------------------------------------------------
# The systems of a sweep and their files


@dataclasses.dataclass(frozen=True)
class Job:
    """One system to generate: the large or small model alone, or BiLD at one grid point."""

    key: str  # "large", "small" or the point's name
    system: str  # evaluation's system name: "large", "small" or "bild"
    folder: Path  # where its predictions_<system>.jsonl lives
    config: BiLDConfig | None = None  # thresholds of a BiLD point

    @property
    def label(self) -> str:
        if self.config is None:
            return self.key
        fb, rb = self.config.fallback_threshold, self.config.rollback_threshold
        return f"fb {format_threshold(fb)} / rb {format_threshold(rb)}"


def sweep_jobs(output_dir: Path, grid: list[BiLDConfig]) -> list[Job]:
    """Large first (the reference), then small, then the grid in order."""
    references = [Job(name, name, output_dir) for name in ("large", "small")]
    return references + [Job(point_name(c), "bild", output_dir / "points" / point_name(c), c) for c in grid]


def is_finished(job: Job, examples: list[Example]) -> bool:
    done = evaluation.finished_records(job.folder, job.system)
    return all(e.id in done for e in examples)


def read_timing(output_dir: Path) -> dict[str, list[str]]:
    """Job key -> the runs (ids) that timed its examples."""
    path = output_dir / "timing.json"
    return json.loads(path.read_text()) if path.exists() else {}


def record_run(output_dir: Path, key: str, run_id: str) -> None:
    """Note that run `run_id` times examples of `key`: two runs in one list mean a resumed system."""
    timing = read_timing(output_dir)
    runs = timing.setdefault(key, [])
    if run_id not in runs:
        runs.append(run_id)
    evaluation.atomic_write_json(output_dir / "timing.json", timing)


def generate_pending(jobs: list[Job], total: int, task: Task, args: argparse.Namespace, examples: list[Example],
                     output_dir: Path, state, run_id: str) -> None:
    """Load the pair once and generate every unfinished job, each resumed where it stopped."""
    from tqdm.auto import tqdm

    device = evaluation.resolve_device(args.device, state)
    paths = {"small": args.small, "large": args.large}
    models, tokenizers, encoder_decoder = evaluation._load_models(paths, args, device)
    ctx = evaluation._run_context(task, args, models, tokenizers, encoder_decoder, output_dir, state)
    with tqdm(total=total, initial=total - len(jobs), desc="sweep", unit="system") as bar:
        for job in jobs:
            bar.set_postfix_str(job.label)
            job.folder.mkdir(parents=True, exist_ok=True)
            roles = {r: models[r] for r in evaluation.SYSTEM_ROLES[job.system]}
            generate = evaluation.make_system(job.system, roles, job.config or BiLDConfig(), tokenizers)
            # Noted before generating, so that a run interrupted half-way still counts as one of the job's runs.
            record_run(output_dir, job.key, run_id)
            evaluation.run_system(job.system, generate, examples, dataclasses.replace(ctx, output_dir=job.folder))
            bar.update()


# ---------------------------------------------------------------------------------------------
# The table


def job_row(task: Task, job: Job, metrics: dict, large: dict, metric: str, timed_with_large: bool) -> dict:
    """One row of the table: quality, speed against the large model, BiLD's rates (None where they do not apply)."""
    quality = metrics["quality"]
    config = job.config
    row = {
        "point": job.key,
        "system": job.system,
        "fallback_threshold": config.fallback_threshold if config else None,
        "rollback_threshold": config.rollback_threshold if config else None,
        "quality": quality[metric],
        "quality_delta": quality[metric] - large["quality"][metric],
        "speedup": large["total_latency_s"] / metrics["total_latency_s"],
        "timed_with_large": timed_with_large,
        **{k: metrics[k] for k in ("total_latency_s", "ms_per_token", "tokens_per_s", "new_tokens")},
        **{k: quality[k] for k in task.quality_keys},
        # Large greedy commits one token per large-model call; the small model makes none.
        "mean_tokens_per_large_call": 1.0 if job.system == "large" else None,
        "fallback_rate": None, "rollback_rate": None, "acceptance_rate": None, "small_token_share": None,
    }
    row["slower_than_large"] = row["speedup"] < 1.0
    if "bild_stats" in metrics:
        row.update(bild_rates(metrics["bild_stats"]))
    return row


def bild_rates(stats: dict) -> dict:
    """Rates that explain a point's speed.

    fallback_rate / rollback_rate: the share of rounds (= large-model calls) that ended because the
    small model was unsure / in which the large model rejected a draft. small_token_share: the
    share of committed tokens that were the small model's accepted drafts.
    """
    rounds = max(stats["large_forward_calls"], 1)
    return {
        "mean_tokens_per_large_call": stats["mean_tokens_per_large_call"],
        "fallback_rate": stats["fallbacks"] / rounds,
        "rollback_rate": stats["rollbacks"] / rounds,
        "acceptance_rate": stats["acceptance_rate"],
        "small_token_share": stats["tokens_from_small"] / max(stats["committed_tokens"], 1),
    }


def sweep_table(task: Task, jobs: list[Job], examples: list[Example], output_dir: Path, metric: str) -> list[dict]:
    """Rows of every job, from its finished predictions over `examples`."""
    references = [e.reference for e in examples]
    metrics = {}
    for job in jobs:
        records = evaluation.ordered_records(job.folder, job.system, examples)
        if len(records) != len(examples):
            raise RuntimeError(f"{job.key}: {len(records)} predictions for {len(examples)} examples in {job.folder}.")
        metrics[job.key] = evaluation.system_metrics(task, records, references)
    timing = read_timing(output_dir)
    large_runs = timing.get("large", [])
    return [job_row(task, job, metrics[job.key], metrics["large"], metric,
                    len(large_runs) == 1 and timing.get(job.key) == large_runs) for job in jobs]


def mark(rows: list[dict], reference_quality: float, max_drop: float) -> tuple[list[dict], dict | None]:
    """Flag the frontier (over every row, references included) and the recommended BiLD point."""
    frontier = pareto_frontier(rows)
    recommended = recommend([r for r in rows if r["system"] == "bild"], reference_quality, max_drop)
    for row in rows:
        row["on_frontier"] = any(row is f for f in frontier)
        row["recommended"] = row is recommended
    return frontier, recommended


def _csv_value(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return format_threshold(value) if math.isinf(value) else repr(value)
    return str(value)


def write_csv(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([_csv_value(row.get(column)) for column in CSV_COLUMNS])
    evaluation.atomic_write_text(path, buffer.getvalue())


def json_safe(value):
    """JSON has no infinity: an infinite float (a threshold) becomes the string "inf", at any depth."""
    if isinstance(value, float) and math.isinf(value):
        return format_threshold(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# The plot


def plot_sweep(rows: list[dict], frontier: list[dict], recommended: dict | None, path: Path, title: str,
               metric: str, budget: float) -> None:
    """Speed-up (x) against quality (y): every point, the frontier, large as a star, small as a diamond.

    Drawn on a bare `Figure` (the Agg canvas, no pyplot), so no display and no global state are needed.
    Points not timed in the large model's run are hollow; left of 1x is shaded: slower than large.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5.5), dpi=120)
    ax = fig.add_subplot()
    points = [r for r in rows if r["system"] == "bild"]
    for same_run in (True, False):
        group = [p for p in points if p["timed_with_large"] == same_run]
        if group:
            ax.scatter([p["speedup"] for p in group], [p["quality"] for p in group], s=36, zorder=3,
                       facecolors="tab:blue" if same_run else "none", edgecolors="tab:blue",
                       label="BiLD grid point" if same_run else "BiLD point timed in another run")
    # Ringed as well as joined, so that a frontier of one point still shows.
    ax.plot([p["speedup"] for p in frontier], [p["quality"] for p in frontier], color="tab:red", lw=1.5, zorder=2,
            marker="o", ms=11, mfc="none", mec="tab:red", label="Pareto frontier")
    for p in frontier:
        if p["system"] == "bild":
            fb, rb = p["point"].split("_")
            ax.annotate(f"fb {fb}, rb {rb}", (p["speedup"], p["quality"]), xytext=(6, 5),
                        textcoords="offset points", fontsize=7)
    references = {r["system"]: r for r in rows if r["system"] != "bild"}
    ax.scatter([1.0], [references["large"]["quality"]], marker="*", s=220, color="gold", edgecolors="black",
               zorder=4, label="large alone (greedy)")
    ax.scatter([references["small"]["speedup"]], [references["small"]["quality"]], marker="D", s=60,
               color="tab:green", edgecolors="black", zorder=4, label="small alone (greedy)")
    if recommended is not None:
        ax.scatter([recommended["speedup"]], [recommended["quality"]], s=240, facecolors="none",
                   edgecolors="tab:purple", lw=2, zorder=5, label="recommended")
    ax.axhline(budget, color="0.4", ls=":", lw=1, label="quality budget")
    speedups = [r["speedup"] for r in rows] + [1.0]
    pad = 0.05 * (max(speedups) - min(speedups) or 1.0)
    left, right = min(speedups) - pad, max(speedups) + pad
    ax.axvspan(left, 1.0, color="0.9", zorder=0, label="slower than large greedy")
    ax.axvline(1.0, color="0.5", ls="--", lw=1)
    ax.set_xlim(left, right)
    ax.set_xlabel("speed-up over large greedy (total latency, same examples)")
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    save_png(fig, path)


def save_png(fig, path: Path) -> None:
    """Lay out `fig` and write it to `path` as PNG, atomically (a reader never sees half a file)."""
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# Settings, output folder, recommendation as a command


def sweep_settings(task: Task, args: argparse.Namespace, device) -> dict:
    """The example scripts' generation settings, without the thresholds: those vary by point."""
    fixed = argparse.Namespace(**vars(args), fallback_threshold=None, rollback_threshold=None)
    settings = evaluation.generation_settings(task, fixed, {"small": args.small, "large": args.large}, device, 1)
    settings["thresholds"] = {"max_small_steps": args.max_small_steps}
    return settings


def prepare_output_dir(output_dir: Path, settings: dict, args: argparse.Namespace, grid: list[BiLDConfig],
                       device) -> None:
    """Clear it (--overwrite_output_dir) or check that it is resumable, then write config.json."""
    output_dir.mkdir(parents=True, exist_ok=True)
    expected = evaluation.fingerprint(settings)
    if args.overwrite_output_dir:
        for name in ("config.json", "timing.json", "sweep.json", "sweep.csv", "sweep.png"):
            (output_dir / name).unlink(missing_ok=True)
        for path in output_dir.glob("predictions_*.jsonl"):
            path.unlink()
        shutil.rmtree(output_dir / "points", ignore_errors=True)
    elif (output_dir / "config.json").exists() and any(output_dir.rglob("predictions_*.jsonl")):
        previous = json.loads((output_dir / "config.json").read_text()).get("fingerprint")
        if previous != expected:
            raise SystemExit(
                f"{output_dir} holds a sweep made with other settings (fingerprint {previous}, now {expected}; "
                "see its config.json). Use another --output_dir, or --overwrite_output_dir to start over.")
    config = {"fingerprint": expected, "settings": settings, "grid": [point_name(c) for c in grid],
              "args": {k: v for k, v in vars(args).items() if k != "func"}, "argv": sys.argv[1:],
              "environment": evaluation.environment(device, 1), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    evaluation.atomic_write_json(output_dir / "config.json", json_safe(config))


def usage_command(task: Task, args: argparse.Namespace, config: BiLDConfig) -> str:
    """The example script's command line that runs BiLD at `config` with the sweep's models, data and prompts."""
    parts = ["python", f"examples/run_bild_{task.name}.py", "--small", args.small, "--large", args.large,
             "--bild_fallback", format_threshold(config.fallback_threshold),
             "--bild_rollback", format_threshold(config.rollback_threshold),
             "--max_small_steps", str(config.max_small_steps)]
    columns = ("source_lang", "target_lang") if task.name == "translation" else ("text_column", "summary_column")
    options = ("dataset_name", "dataset_config", "train_file", "validation_file", "test_file", "split", *columns,
               "source_prefix", "prompt_template", "max_source_length", "max_new_tokens", "batch_size", "dtype",
               "device", "device_map")
    for option in options:
        value = getattr(args, option)
        if value is not None and value != "auto":
            parts += [f"--{option}", str(value)]
    return shlex.join([*parts, "--compare", "large"])


# ---------------------------------------------------------------------------------------------
# The command


def run_sweep(args: argparse.Namespace) -> dict:
    """Generate what is missing, then tabulate, plot, recommend and report; returns sweep.json's content."""
    from accelerate import PartialState

    task = resolve_task(args)
    choose_split(args, ("validation", "test", "train"))
    metric = args.metric or DEFAULT_METRIC[task.name]
    if metric not in task.quality_keys:
        raise SystemExit(f"--metric for {task.name} is one of {', '.join(task.quality_keys)}; got {metric}.")
    grid = threshold_grid(args.fallback, args.rollback, args.max_small_steps)
    state = PartialState(cpu=evaluation.cpu_only(args.device))
    if state.num_processes > 1:
        raise SystemExit("bild sweep times every point in one process; run it without accelerate launch.")
    device = evaluation.resolve_device(args.device, state)
    settings = sweep_settings(task, args, device)
    output_dir = Path(args.output_dir or f"runs/sweep-{task.name}-{evaluation.fingerprint(settings)}")
    prepare_output_dir(output_dir, settings, args, grid, device)
    examples = evaluation.load_examples(task, args)
    if not examples:
        raise SystemExit("No examples to sweep over: the split is empty or --max_samples is 0.")

    jobs = sweep_jobs(output_dir, grid)
    pending = [job for job in jobs if not is_finished(job, examples)]
    if pending:  # a finished sweep is re-tabulated without loading the models
        generate_pending(pending, len(jobs), task, args, examples, output_dir, state, uuid.uuid4().hex[:12])

    rows = sweep_table(task, jobs, examples, output_dir, metric)
    reference = rows[0]["quality"]
    frontier, recommended = mark(rows, reference, args.max_quality_drop)
    title = (f"BiLD sweep: {Path(args.small).name} + {Path(args.large).name}, {task.name}, "
             f"{len(examples)} examples")
    plot_sweep(rows, frontier, recommended, output_dir / "sweep.png", title, metric, reference - args.max_quality_drop)
    write_csv(output_dir / "sweep.csv", rows)
    result = {
        "task": task.name, "metric": metric, "examples": len(examples), "output_dir": str(output_dir),
        "fingerprint": evaluation.fingerprint(settings), "models": {"small": args.small, "large": args.large},
        "max_quality_drop": args.max_quality_drop,
        "rows": rows,
        "frontier": [f["point"] for f in frontier],
        "recommended": recommended["point"] if recommended else None,
        "command": None if recommended is None else usage_command(task, args, BiLDConfig(
            recommended["fallback_threshold"], recommended["rollback_threshold"], args.max_small_steps)),
    }
    result = json_safe(result)
    evaluation.atomic_write_json(output_dir / "sweep.json", result)
    print_report(result)
    return result


def print_report(result: dict, console=None) -> None:
    """The table (frontier rows starred, the recommendation arrowed) and the command to use."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=None if sys.stdout.isatty() else 140)
    metric = result["metric"]
    table = Table(title=f"BiLD sweep, {result['task']}: {result['examples']} examples")
    for column in ("", "point", metric, f"Δ {metric}", "speedup", "tok/large call", "fallback", "rollback", "note"):
        table.add_column(column, justify="left" if column in ("", "point", "note") else "right")
    for row in result["rows"]:
        flag = "→" if row["recommended"] else "*" if row["on_frontier"] else ""
        notes = [text for cond, text in ((row["slower_than_large"], "slower than large"),
                                         (not row["timed_with_large"], "timed in another run")) if cond]
        table.add_row(flag, row["point"], f"{row['quality']:.2f}", f"{row['quality_delta']:+.2f}",
                      f"{row['speedup']:.2f}x", evaluation._fmt(row["mean_tokens_per_large_call"], ".2f"),
                      evaluation._fmt(row["fallback_rate"], ".2f"), evaluation._fmt(row["rollback_rate"], ".2f"),
                      ", ".join(notes))
    console.print(table)
    console.print("* on the Pareto frontier; → recommended. Rates are per large-model call (= round).")
    if result["recommended"] is None:
        console.print(f"No BiLD point is faster than the large model within {result['max_quality_drop']} {metric} "
                      "of its quality: use the large model alone, or allow a larger --max_quality_drop.")
    else:
        console.print(f"Recommended (fastest within {result['max_quality_drop']} {metric} of the large model): "
                      f"{result['recommended']}")
        # Plain and unwrapped, so that it can be copied; brackets in paths are not markup.
        console.print(f"  {result['command']}", soft_wrap=True, markup=False, highlight=False)
    console.print(f"Table, plot and predictions in {result['output_dir']}")


def sweep_command_parser(subparsers=None) -> argparse.ArgumentParser:
    description = ("Run BiLD at every point of a fallback x rollback grid on the same examples, against the large "
                   "and small models alone; write a table and a speed-up/quality plot with the Pareto frontier, and "
                   "recommend the fastest setting within a quality budget. Resumable.")
    if subparsers is not None:
        parser = subparsers.add_parser("sweep", help="tune BiLD's thresholds on a grid", description=description)
    else:
        parser = argparse.ArgumentParser("bild sweep", description=description)
    add_task_argument(parser)
    add_model_arguments(parser)
    grid = parser.add_argument_group("grid and recommendation")
    grid.add_argument("--fallback", type=threshold_list, default=threshold_list("0.3,0.5,0.7,0.9"),
                      help="comma-separated fallback thresholds (default 0.3,0.5,0.7,0.9; inf = always fall back)")
    grid.add_argument("--rollback", type=threshold_list, default=threshold_list("1,2,3,5,inf"),
                      help="comma-separated rollback thresholds in nats (default 1,2,3,5,inf; 0 = lossless, "
                           "inf = never roll back)")
    grid.add_argument("--max_small_steps", type=int, default=BiLDConfig.max_small_steps,
                      help="at most this many small-model drafts per round, at every point")
    grid.add_argument("--metric", choices=QUALITY_KEYS, default=None,
                      help="quality on the plot and for the recommendation (default: bleu for translation, "
                           "rougeL for summarization)")
    grid.add_argument("--max_quality_drop", type=float, default=0.5,
                      help="recommend the fastest point at most this many metric points below the large model")
    add_data_arguments(parser, split_help="split to sweep over (default: validation, else test, else train)")
    add_prompt_arguments(parser, batch_help="generation batch size of every system")
    out = parser.add_argument_group("output")
    out.add_argument("--output_dir", help="where everything goes; rerun with the same folder to resume "
                                          "(default: runs/sweep-<task>-<fingerprint of the settings>)")
    out.add_argument("--overwrite_output_dir", action="store_true", help="discard an earlier sweep in --output_dir")
    if subparsers is not None:
        parser.set_defaults(func=sweep_command)
    return parser


def sweep_command(args: argparse.Namespace) -> int:
    run_sweep(args)
    return 0


def main(argv=None) -> int:
    return sweep_command(sweep_command_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

"""`bild sweep`: BiLD at every point of a threshold grid, against the large and the small model alone.

    bild sweep --small SMALL --large LARGE --task translation --validation_file debian-de-en.validation.jsonl \\
        --fallback 0.3,0.5,0.7,0.9 --rollback 1,2,3,5,inf --max_samples 200
    bild sweep ... --fallback auto --rollback 0,2 --draft_vocab 0,16384 --train_file debian-de-en.train.jsonl

One loaded pair of models generates the same examples greedily with the large model (the reference
for speed and quality), with the small model, and with BiLD at every (fallback, rollback) point.
Each point is reported with its quality, its speed-up over the large model, the tokens committed
per large-model call and its fallback and rollback rates; the Pareto frontier of speed-up against
quality is drawn, and the fastest point within `--max_quality_drop` of the large model's quality is
recommended, as the command line that uses it. `--draft_vocab` adds a third axis: each point drafting from the
whole vocabulary (0) and from the N tokens used most in the training references (`bild.draft_vocab`; a cheaper
small step, exactness unchanged).

Files under --output_dir (rerun with the same folder to resume; a finished point is never redone):
    config.json                             settings, grid, versions; its fingerprint guards resuming
    predictions_large.jsonl                 the large model alone (the reference)
    predictions_small.jsonl                 the small model alone
    points/<fb>_<rb>/predictions_bild.jsonl BiLD at fallback <fb>, rollback <rb> (e.g. points/0.5_inf/;
                                            points/<fb>_<rb>_v<N>/ with a draft vocabulary of N tokens)
    timing.json                             which run of the command timed each system
    sweep.json, sweep.csv                   one row per system (large, small, every point)
    sweep.png                               speed-up against quality, frontier and references

What the frontier needs to be honest, and how it gets it:
* the same inputs: every system generates the same examples with the same prompts, batches and
  generation settings (`bild.eval.runner.run_systems`, as the example scripts measure);
* the same conditions: the systems are interleaved per batch (batch i runs them in their order
  rotated by i), after one untimed warm-up generation each, each point included;
* the clock is read with the device synchronised, around `generate` only;
* every point timed in the same process as the large model: a resumed sweep can break this, so
  each row says whether it was (`timed_with_large`), and the plot draws those that were not hollow;
* one process: totals are summed latencies, so the sweep refuses `accelerate launch` (several
  processes would add compute time, not wall time);
* nothing clipped: a point slower than large greedy keeps its speed-up below 1 (the shaded region of
  the plot) and is never recommended.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys
import uuid
from pathlib import Path

from .config import BiLDConfig
from .eval.data import SPLITS, DataSpec, Example, load_examples
from .eval.evaluate import GenerationSpec, environment, generation_settings, run_context
from .eval.prompts import PromptSpec
from .eval.report import console_for, fmt, speedup_cell, system_metrics
from .eval.rundir import RunDir, atomic_write_json
from .eval.rundir import fingerprint as fingerprint_of
from .eval.runner import TIMING, System, run_systems
from .eval.timing import ContentionMonitor, contention_warning, paired_bootstrap_ci
from .eval.systems import DraftVocabSpec, ModelSpec, cpu_only, load_models, resolve_device
from .eval.tasks import Task
from .frontier import bild_rates, format_threshold, json_safe, mark, point_name, threshold_grid, write_csv
from .sweep_plot import plot_sweep

DEFAULT_METRIC = {"translation": "bleu", "summarization": "rougeL"}


# ---------------------------------------------------------------------------------------------
# The systems of a sweep and their files


@dataclasses.dataclass(frozen=True)
class Job:
    """One system to generate: the large or small model alone, or BiLD at one grid point."""

    key: str  # "large", "small" or the point's name
    system: str  # the system's (and file's) name: "large", "small" or "bild"
    run_dir: RunDir  # where its predictions_<system>.jsonl lives
    config: BiLDConfig | None = None  # thresholds of a BiLD point
    draft_vocab: int = 0  # a BiLD point's draft vocabulary: its N most used tokens (0: the whole vocabulary)

    @property
    def folder(self) -> Path:
        return self.run_dir.path

    @property
    def label(self) -> str:
        if self.config is None:
            return self.key
        fb, rb = self.config.fallback_threshold, self.config.rollback_threshold
        vocab = f" / vocab {self.draft_vocab}" if self.draft_vocab else ""
        return f"fb {format_threshold(fb)} / rb {format_threshold(rb)}{vocab}"


def job_name(config: BiLDConfig, draft_vocab: int = 0) -> str:
    """A point's name: fallback_rollback, and _v<N> with a draft vocabulary of N tokens (0: none, the plain name)."""
    return point_name(config) + (f"_v{draft_vocab}" if draft_vocab else "")


def sweep_jobs(run_dir: RunDir, grid: list[BiLDConfig], draft_vocabs: tuple[int, ...] = (0,)) -> list[Job]:
    """Large first (the reference), then small, then the grid in order (each point at each draft vocabulary size)."""
    references = [Job(name, name, run_dir) for name in ("large", "small")]
    return references + [Job(job_name(c, v), "bild", run_dir.child("points", job_name(c, v)), c, v)
                         for c in grid for v in draft_vocabs]


def is_finished(job: Job, examples: list[Example]) -> bool:
    return job.run_dir.is_finished(job.system, examples)


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
    atomic_write_json(output_dir / "timing.json", timing)


def generate_pending(jobs: list[Job], spec: "SweepSpec", examples: list[Example], output_dir: Path, state,
                     run_id: str) -> None:
    """Load the pair once and generate every unfinished job, interleaved per batch, each resumed where it stopped."""
    device = resolve_device(spec.models.device, state)
    loaded = load_models({"small": spec.small, "large": spec.large}, spec.models, device)
    ctx = run_context(spec.task, loaded, spec.data, spec.prompt, spec.generation, state)
    vocabs = {size: DraftVocabSpec(size, spec.draft_vocab_file).token_ids(spec.task, spec.data.columns,
                                                                          loaded.reference_tokenizer(), ctx.eos_ids)
              for size in sorted({job.draft_vocab for job in jobs} - {0})}
    for job in jobs:
        # Noted before generating, so that a run interrupted half-way still counts as one of the job's runs.
        record_run(output_dir, job.key, run_id)
    systems = [System(job.system, loaded.system(job.system, job.config or BiLDConfig(), vocabs.get(job.draft_vocab)),
                      job.run_dir) for job in jobs]
    run_systems(systems, examples, ctx, desc=f"sweep ({len(jobs)} systems)")


# ---------------------------------------------------------------------------------------------
# The table


def job_row(task: Task, job: Job, metrics: dict, large: dict, metric: str, timed_with_large: bool,
            latencies: tuple[list[float], list[float]] | None = None) -> dict:
    """One row of the table: quality, speed against the large model, BiLD's rates (None where they do not apply)."""
    quality = metrics["quality"]
    config = job.config
    row = {
        "point": job.key,
        "system": job.system,
        "fallback_threshold": config.fallback_threshold if config else None,
        "rollback_threshold": config.rollback_threshold if config else None,
        "draft_vocab": job.draft_vocab or None,
        "quality": quality[metric],
        "quality_delta": quality[metric] - large["quality"][metric],
        "speedup": large["total_latency_s"] / metrics["total_latency_s"],
        # paired bootstrap 90% interval over examples (large's seconds, this job's seconds)
        "speedup_ci90": None if latencies is None else list(paired_bootstrap_ci(*latencies)),
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


def sweep_table(task: Task, jobs: list[Job], examples: list[Example], output_dir: Path, metric: str) -> list[dict]:
    """Rows of every job, from its finished predictions over `examples`."""
    references = [e.reference for e in examples]
    metrics, seconds = {}, {}
    for job in jobs:
        records = job.run_dir.ordered(job.system, examples)
        if len(records) != len(examples):
            raise RuntimeError(f"{job.key}: {len(records)} predictions for {len(examples)} examples in {job.folder}.")
        metrics[job.key] = system_metrics(task, records, references)
        seconds[job.key] = [r["latency_s"] for r in records]
    timing = read_timing(output_dir)
    large_runs = timing.get("large", [])
    return [job_row(task, job, metrics[job.key], metrics["large"], metric,
                    len(large_runs) == 1 and timing.get(job.key) == large_runs, (seconds["large"], seconds[job.key]))
            for job in jobs]


# ---------------------------------------------------------------------------------------------
# Settings, output folder, recommendation as a command


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    """One sweep, as typed settings: the pair, the grid, and the example scripts' data/prompt/generation options."""

    task: Task
    small: str
    large: str
    fallbacks: tuple[float | str, ...]  # "auto" among them for fallback_threshold="auto"
    rollbacks: tuple[float, ...]
    max_small_steps: int
    metric: str
    max_quality_drop: float
    data: DataSpec
    prompt: PromptSpec
    generation: GenerationSpec
    models: ModelSpec = ModelSpec()
    output_dir: str | None = None
    overwrite: bool = False
    options: dict = dataclasses.field(default_factory=dict)  # the command line's options, for config.json
    draft_vocabs: tuple[int, ...] = (0,)  # draft vocabulary sizes every point runs at (0: the whole vocabulary)
    draft_vocab_file: str | None = None  # whose references choose a draft vocabulary's tokens (training data)


def sweep_settings(spec: SweepSpec, device) -> dict:
    """The example scripts' generation settings, without the thresholds: those vary by point (and the file that
    chooses draft vocabularies, where the grid has any: it changes their points' drafts)."""
    settings = generation_settings(spec.task, {"small": spec.small, "large": spec.large},
                                   {"max_small_steps": spec.max_small_steps}, spec.data, spec.prompt, spec.generation,
                                   spec.models, device, 1)
    if any(spec.draft_vocabs):
        settings["draft_vocab_file"] = spec.draft_vocab_file
    return settings


def sweep_run_dir(path: Path) -> RunDir:
    return RunDir(path, products=("timing.json", "sweep.json", "sweep.csv", "sweep.png"), subfolders=("points",),
                  what="a sweep")


def usage_command(spec: SweepSpec, config: BiLDConfig, draft_vocab: int = 0) -> str:
    """The example script's command line that runs BiLD at `config` (and `draft_vocab`) with the sweep's models, data
    and prompts."""
    parts = ["python", f"examples/run_bild_{spec.task.name}.py", "--small", spec.small, "--large", spec.large,
             "--bild_fallback", format_threshold(config.fallback_threshold),
             "--bild_rollback", format_threshold(config.rollback_threshold),
             "--max_small_steps", str(config.max_small_steps)]
    if draft_vocab:
        parts += ["--bild_draft_vocab", str(draft_vocab), "--bild_draft_vocab_file", str(spec.draft_vocab_file)]
    data, prompt = spec.data, spec.prompt
    options = {"dataset_name": data.dataset_name, "dataset_config": data.dataset_config,
               **{f"{split}_file": data.files.get(split) for split in SPLITS}, "split": data.split,
               **{c.option: value for c, value in zip(spec.task.columns, data.columns)},
               "source_prefix": prompt.source_prefix, "prompt_template": prompt.template,
               "max_source_length": prompt.max_source_length, "max_new_tokens": spec.generation.max_new_tokens,
               "batch_size": spec.generation.batch_size, "dtype": spec.models.dtype, "device": spec.models.device,
               "device_map": spec.models.device_map}
    for option, value in options.items():
        if value is not None and value != "auto":
            parts += [f"--{option}", str(value)]
    return shlex.join([*parts, "--compare", "large"])


# ---------------------------------------------------------------------------------------------
# The command


def run_sweep(spec: SweepSpec) -> dict:
    """Generate what is missing, then tabulate, plot, recommend and report; returns sweep.json's content."""
    from accelerate import PartialState

    task, metric = spec.task, spec.metric
    grid = threshold_grid(list(spec.fallbacks), list(spec.rollbacks), spec.max_small_steps)
    state = PartialState(cpu=cpu_only(spec.models.device))
    if state.num_processes > 1:
        raise SystemExit("bild sweep times every point in one process; run it without accelerate launch.")
    device = resolve_device(spec.models.device, state)
    settings = sweep_settings(spec, device)
    run_dir = sweep_run_dir(Path(spec.output_dir or f"runs/sweep-{task.name}-{fingerprint_of(settings)}"))
    output_dir = run_dir.path
    if any(spec.draft_vocabs) and not spec.draft_vocab_file:
        raise SystemExit("bild sweep --draft_vocab N needs a --draft_vocab_file (or --train_file) whose references "
                         "choose the tokens.")
    if any(spec.draft_vocabs) and spec.data.files.get(spec.data.resolved_split) == spec.draft_vocab_file:
        raise SystemExit("--draft_vocab_file is the file swept on: choose the tokens on training data.")
    run_dir.start(settings, spec.overwrite, grid=[job_name(c, v) for c in grid for v in spec.draft_vocabs],
                  args=json_safe(spec.options),
                  argv=sys.argv[1:], environment=environment(device, 1), timing=TIMING)
    examples = load_examples(task, spec.data)
    if not examples:
        raise SystemExit("No examples to sweep over: the split is empty or --max_samples is 0.")

    jobs = sweep_jobs(run_dir, grid, spec.draft_vocabs)
    pending = [job for job in jobs if not is_finished(job, examples)]
    contention = None  # nothing generated by this invocation
    if pending:  # a finished sweep is re-tabulated without loading the models
        monitor = ContentionMonitor().start()
        generate_pending(pending, spec, examples, output_dir, state, uuid.uuid4().hex[:12])
        contention = monitor.stop()

    rows = sweep_table(task, jobs, examples, output_dir, metric)
    reference = rows[0]["quality"]
    frontier, recommended = mark(rows, reference, spec.max_quality_drop)
    title = (f"BiLD sweep: {Path(spec.small).name} + {Path(spec.large).name}, {task.name}, "
             f"{len(examples)} examples")
    plot_sweep(rows, frontier, recommended, output_dir / "sweep.png", title, metric,
               reference - spec.max_quality_drop)
    write_csv(output_dir / "sweep.csv", rows)
    result = {
        "task": task.name, "metric": metric, "examples": len(examples), "output_dir": str(output_dir),
        "fingerprint": fingerprint_of(settings), "models": {"small": spec.small, "large": spec.large},
        "max_quality_drop": spec.max_quality_drop,
        "timing": {**TIMING, "contention": contention},
        "rows": rows,
        "frontier": [f["point"] for f in frontier],
        "recommended": recommended["point"] if recommended else None,
        "command": None if recommended is None else usage_command(spec, BiLDConfig(
            recommended["fallback_threshold"], recommended["rollback_threshold"], spec.max_small_steps),
            recommended["draft_vocab"] or 0),
    }
    result = json_safe(result)
    atomic_write_json(output_dir / "sweep.json", result)
    print_report(result)
    warning = contention_warning(contention or {})
    if warning:
        print(warning, file=sys.stderr)
    return result


def print_report(result: dict, console=None) -> None:
    """The table (frontier rows starred, the recommendation arrowed) and the command to use."""
    from rich.table import Table

    console = console or console_for(140)
    metric = result["metric"]
    table = Table(title=f"BiLD sweep, {result['task']}: {result['examples']} examples")
    for column in ("", "point", metric, f"Δ {metric}", "speedup", "tok/large call", "fallback", "rollback", "note"):
        table.add_column(column, justify="left" if column in ("", "point", "note") else "right")
    for row in result["rows"]:
        flag = "→" if row["recommended"] else "*" if row["on_frontier"] else ""
        notes = [text for cond, text in ((row["slower_than_large"], "slower than large"),
                                         (not row["timed_with_large"], "timed in another run")) if cond]
        table.add_row(flag, row["point"], f"{row['quality']:.2f}", f"{row['quality_delta']:+.2f}",
                      speedup_cell(row), fmt(row["mean_tokens_per_large_call"], ".2f"),
                      fmt(row["fallback_rate"], ".2f"), fmt(row["rollback_rate"], ".2f"),
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

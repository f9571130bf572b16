"""The example scripts' job: BiLD against its baselines on a text-to-text task, resumably and with honest timing.

`evaluate(spec)` loads the models once, runs every system of the run over the same examples
(interleaved per batch, see `runner`), merges the prediction files, scores and reports. ``--compare``
also takes more BiLD settings (``bild:0.4:5`` or ``bild:0.4:5:6`` for fallback:rollback[:max_small_steps]);
each runs as its own system (``bild-fb0.4-rb5-n6``) on the same inputs in the same process.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import env, fetch
from ..config import AUTO, BiLDConfig
from ..costs import PairCosts, measure_pair_costs
from ..hardware import hardware_summary
from .data import DataSpec, Example, load_examples
from .prompts import PromptBuilder, PromptSpec, prompt_builder
from .report import comparison, print_report, system_metrics
from .timing import ContentionMonitor
from .rundir import DTYPES, RunDir, atomic_write_json, fingerprint
from .runner import TIMING, RunContext, System, run_systems
from .systems import (BASELINES, DraftVocabSpec, LoadedModels, ModelSpec, bild_system_name, cpu_only, eos_token_ids,
                      load_models, model_dtypes, resolve_device, roles_of)
from .tasks import Task

DEFAULT_PAIR = "qwen2.5-coder"


@dataclass(frozen=True)
class GenerationSpec:
    """Generation settings every system of a run shares (greedy)."""

    max_new_tokens: int
    batch_size: int = 1
    seed: int = 42


@dataclass(frozen=True)
class EvalSpec:
    """One run of the example scripts, as typed settings (bild.eval.cli builds it from the command line)."""

    task: Task
    data: DataSpec
    prompt: PromptSpec
    generation: GenerationSpec
    models: ModelSpec = ModelSpec()
    model: str = "bild"  # "bild", or one model's path to run alone
    small: str | None = None
    large: str | None = None
    # (fallback, rollback, max_small_steps) as given; validated into a BiLDConfig only where BiLD runs.
    thresholds: tuple[float, float, int] = (BiLDConfig.fallback_threshold, BiLDConfig.rollback_threshold,
                                            BiLDConfig.max_small_steps)
    compare: str | None = None  # comma-separated systems; None: the default job's choice
    output_dir: str | None = None
    overwrite: bool = False
    options: dict = field(default_factory=dict)  # the command line's options, as recorded in config.json
    draft_vocab: DraftVocabSpec | None = None  # BiLD's small model drafts from part of the vocabulary


def resolve_defaults(spec: EvalSpec, default_data: str | None) -> EvalSpec:
    """The default job filled in: the fetched real pair, the shipped sample, and the large baseline."""
    changes = {}
    if spec.model == "bild":
        if bool(spec.small) != bool(spec.large):
            raise SystemExit("--model bild needs both --small and --large (or neither, for the default pair).")
        if not spec.small:
            changes["small"], changes["large"] = (str(p) for p in fetch.fetch_pair(DEFAULT_PAIR))
        if spec.compare is None:
            changes["compare"] = "" if spec.small or spec.data.given else "large"
    elif spec.small or spec.large or spec.compare:
        raise SystemExit("--small, --large and --compare go with --model bild; --model PATH runs that model alone.")
    if not spec.data.given:
        if default_data is None:
            raise SystemExit("Give --dataset_name or a --train_file/--validation_file/--test_file.")
        changes["data"] = dataclasses.replace(spec.data, files={"test": default_data})
    options = {**spec.options, **{k: v for k, v in changes.items() if k != "data"}}
    if "data" in changes:
        options["test_file"] = default_data
    return dataclasses.replace(spec, **changes, options=options)


def fallback_value(text: str) -> float | str:
    """A fallback threshold from the command line: a number, or ``auto``."""
    return AUTO if text == AUTO else float(text)


def parse_bild_setting(item: str, default_steps: int) -> BiLDConfig:
    """``bild:FALLBACK:ROLLBACK[:MAX_SMALL_STEPS][:keep|:nokeep]`` (FALLBACK a number or auto) -> its config (max_small_steps from the command
    line if left out; keep / nokeep set keep_fallback_draft, else its default)."""
    parts = item.split(":")[1:]
    keep = {"keep": True, "nokeep": False}.get(parts[-1]) if parts else None
    parts = parts[:-1] if keep is not None else parts
    try:
        if len(parts) not in (2, 3):
            raise ValueError("expected two or three numbers")
        steps = int(parts[2]) if len(parts) == 3 else default_steps
        return BiLDConfig(fallback_value(parts[0]), float(parts[1]), steps, keep)
    except ValueError as e:
        raise SystemExit(f"--compare: {item!r} is not a BiLD setting bild:FALLBACK:ROLLBACK[:MAX_SMALL_STEPS][:keep|:nokeep], "
                         f"e.g. bild:0.4:5 or bild:0.6:0:5 ({e}).") from None


def compare_items(spec: EvalSpec) -> list[str]:
    return [c.strip() for c in (spec.compare or "").split(",") if c.strip()]


def bild_settings(spec: EvalSpec) -> dict[str, BiLDConfig]:
    """Every BiLD system of the run and its thresholds: ``bild`` first, then --compare's ``bild:...`` items."""
    primary = BiLDConfig(*spec.thresholds)
    settings = {"bild": primary}
    for item in compare_items(spec):
        if item.startswith("bild:"):
            config = parse_bild_setting(item, primary.max_small_steps)
            if config != primary:
                settings.setdefault(bild_system_name(config), config)
    return settings


def systems_of(spec: EvalSpec) -> list[str]:
    """The systems in their order: BiLD settings first, then the baselines as given."""
    if spec.model != "bild":
        return ["model"]
    compare = compare_items(spec)
    unknown = sorted(c for c in set(compare) - set(BASELINES) if not c.startswith("bild:"))
    if unknown:
        raise SystemExit(f"--compare takes {', '.join(BASELINES)} and BiLD settings bild:FALLBACK:ROLLBACK"
                         f"[:MAX_SMALL_STEPS]; got {', '.join(unknown)}.")
    return [*bild_settings(spec), *dict.fromkeys(c for c in compare if c in BASELINES)]


def model_paths(spec: EvalSpec, systems: list[str]) -> dict[str, str]:
    """Role -> path of every model the systems need."""
    available = {"small": spec.small, "large": spec.large, "model": None if spec.model == "bild" else spec.model}
    roles = dict.fromkeys(role for s in systems for role in roles_of(s))
    return {role: available[role] for role in roles}


def environment(device: torch.device, num_processes: int) -> dict:
    """Versions and hardware (`bild env`'s), plus where this run generated."""
    return {**env.environment(), "device": str(device), "num_processes": num_processes}


def generation_settings(task: Task, paths: dict, thresholds: dict | None, data: DataSpec, prompt: PromptSpec,
                        generation: GenerationSpec, models: ModelSpec, device: torch.device,
                        num_processes: int | None) -> dict:
    """Everything that changes the predictions; a run resumes only into a folder with the same.

    `thresholds` or `num_processes` None: left out (a setting the predictions do not depend on).
    """
    settings = {
        "task": task.name,
        "models": paths,
        "thresholds": thresholds,
        "data": {"dataset_name": data.dataset_name, "dataset_config": data.dataset_config, "files": data.files,
                 "split": data.resolved_split, "columns": list(data.columns)},
        "prompt": {"template": prompt.template, "source_prefix": prompt.source_prefix,
                   "max_source_length": prompt.max_source_length},
        "max_new_tokens": generation.max_new_tokens,
        "batch_size": generation.batch_size,
        "dtype": models.dtype,
        "device_type": device.type,
        "device_map": models.device_map,
        # Each process batches its own share of the examples.
        "num_processes": num_processes,
    }
    return {k: v for k, v in settings.items() if v is not None or k not in ("thresholds", "num_processes")}


def run_context(task: Task, loaded: LoadedModels, data: DataSpec, prompt: PromptSpec, generation: GenerationSpec,
                state) -> RunContext:
    """Prompts and generation settings from the reference model (large, else the only one)."""
    tokenizer = loaded.reference_tokenizer()
    model = loaded.models[loaded.reference_role]
    return RunContext(
        prompts=prompt_builder(task, prompt, data.columns, tokenizer, loaded.encoder_decoder),
        # Explicit greedy: instruct models' generation configs often sample, seq2seq ones often beam-search.
        generate_kwargs={"max_new_tokens": generation.max_new_tokens, "do_sample": False, "num_beams": 1,
                         "pad_token_id": tokenizer.pad_token_id},
        batch_size=generation.batch_size,
        device=model.device,
        eos_ids=eos_token_ids(model, tokenizer),
        rank=state.process_index if state.num_processes > 1 else None,
        show_progress=state.is_main_process,
        seed=generation.seed,
    )


def calibrate_command(spec: EvalSpec, steps: int) -> str:
    """The `bild calibrate` command that saves this run's cost model (same models, dtype, device, max_small_steps)."""
    words = ["bild", "calibrate", "--small", spec.small, "--large", spec.large]
    if spec.models.dtype != "auto":
        words += ["--dtype", spec.models.dtype]
    if spec.models.device != "auto":
        words += ["--device", spec.models.device]
    if steps != BiLDConfig.max_small_steps:
        words += ["--max_small_steps", str(steps)]
    return shlex.join(words)


def job_shape(task: Task, spec: EvalSpec, examples: list[Example], loaded: LoadedModels, sample: int = 32) -> dict:
    """What a measured dtype "auto" is chosen for: the median prompt length of the first `sample` examples (as the
    run prompts them) and the median length of their references (at most --max_new_tokens), in large-model tokens."""
    import statistics

    tokenizer = loaded.reference_tokenizer()
    prompts = prompt_builder(task, spec.prompt, spec.data.columns, tokenizer, loaded.encoder_decoder)
    chosen = examples[:sample]
    if not chosen:
        return {}
    prompt = statistics.median(prompts.batch([e.source])["input_ids"].shape[1] for e in chosen)
    new = statistics.median(len(tokenizer(e.reference, add_special_tokens=False)["input_ids"]) + 1 for e in chosen)
    return {"prompt_tokens": int(prompt), "new_tokens": int(min(new, spec.generation.max_new_tokens))}


def report_reuse(run_dir: RunDir, systems: list[str], examples: list[Example]) -> None:
    """Say what an earlier run in the folder already finished, and how to recompute it."""
    reused = {s: sum(e.id in run_dir.finished(s) for e in examples) for s in systems}
    if any(reused.values()):
        counts = ", ".join(f"{s} {n}/{len(examples)}" for s, n in reused.items() if n)
        print(f"Reusing finished examples from {run_dir.path} ({counts}); "
              "rerun with --overwrite_output_dir to recompute them.")


def evaluate(spec: EvalSpec, argv: list[str], default_data: str | None = None) -> dict | None:
    """Load, run every system, merge, score, report. Safe to rerun: finished examples are skipped.

    Returns the metrics on the main process (None on the others).
    """
    from accelerate import PartialState

    state = PartialState(cpu=cpu_only(spec.models.device))
    # One process fetches (and prints) while the others wait and then find the cache complete.
    with state.main_process_first():
        spec = resolve_defaults(spec, default_data)
    task = spec.task
    systems = systems_of(spec)
    paths = model_paths(spec, systems)
    device = resolve_device(spec.models.device, state)
    thresholds = bild_settings(spec) if spec.model == "bild" else {}
    fb, rb, steps = spec.thresholds
    settings = generation_settings(task, paths, {"fallback_threshold": fb, "rollback_threshold": rb,
                                                 "max_small_steps": steps}, spec.data, spec.prompt, spec.generation,
                                   spec.models, device, state.num_processes)
    if spec.draft_vocab is not None and spec.data.files.get(spec.data.resolved_split) == spec.draft_vocab.file:
        raise SystemExit("--bild_draft_vocab_file is the file evaluated on: choose the tokens on training data.")
    if spec.draft_vocab is not None and spec.model == "bild":  # it changes which drafts are made (and their speed)
        settings["draft_vocab"] = {"size": spec.draft_vocab.size, "file": spec.draft_vocab.file}
    run_dir = RunDir(Path(spec.output_dir or f"runs/{task.name}-{fingerprint(settings)}"))
    if state.is_main_process:
        # Should the check fail, the launcher (torch.distributed.run) stops the waiting processes too.
        run_dir.start(settings, spec.overwrite, systems=systems, args=spec.options, argv=argv,
                      environment=environment(device, state.num_processes), timing=TIMING)
    # The other processes must not look at the folder before it is cleared or found resumable.
    state.wait_for_everyone()

    with state.main_process_first():
        examples = load_examples(task, spec.data)
    if not examples:
        raise SystemExit("No examples to evaluate: the split is empty or --max_samples is 0.")
    if state.is_main_process:
        report_reuse(run_dir, systems, examples)
    loaded = load_models(paths, spec.models, device, max_drafts=steps,
                         drafting="auto" if any(c.fallback_threshold == AUTO for c in thresholds.values()) else "always",
                         job=lambda loaded: job_shape(task, spec, examples, loaded))
    if loaded.dtype_choice is not None:  # measured: a resumed run keeps the dtypes it started with
        with state.main_process_first():
            pinned = run_dir.pinned_dtypes(model_dtypes(loaded.models)) if state.is_main_process else \
                json.loads((run_dir.path / DTYPES).read_text())
        for role, dtype in pinned.items():
            loaded.models[role].to(getattr(torch, dtype))
    dtypes = model_dtypes(loaded.models)
    hw = hardware_summary(device)
    print(f"Models: {', '.join(f'{r} {d}' for r, d in dtypes.items())} (--dtype {spec.models.dtype}) on {device}, "
          f"{env.cpu_model()} [{' '.join(hw['cpu_flags'])}], bfloat16 native: {hw['bf16_native']}"
          + (f", kernels capped: {hw['isa_cap']}" if hw["isa_cap"] else ""), flush=True)
    if loaded.dtype_choice is not None:
        print(f"dtype auto, measured for the pair: {loaded.dtype_choice.summary()}", flush=True)
        hw = {**hw, "dtype_choice": dataclasses.asdict(loaded.dtype_choice)}
    costs = None
    if spec.model == "bild" and {"small", "large"} <= set(loaded.models):
        # The pair's cost model on this machine (measured once per process; "auto" decides from the same one).
        start = time.perf_counter()
        costs = measure_pair_costs(loaded.models["small"], loaded.models["large"], max_width=steps + 1)
        print(f"Cost model: {costs.summary(steps)}", flush=True)
        if "saved" not in costs.note:
            print(f"  (measured in {time.perf_counter() - start:.1f} s; {calibrate_command(spec, steps)} saves it, and "
                  "later runs read it instead)", flush=True)
    ctx = run_context(task, loaded, spec.data, spec.prompt, spec.generation, state)
    draft_vocab = None
    if spec.draft_vocab is not None and spec.model == "bild":
        draft_vocab = spec.draft_vocab.token_ids(task, spec.data.columns, loaded.reference_tokenizer(), ctx.eos_ids)
    runs = [System(s, loaded.system(s, thresholds.get(s), draft_vocab), run_dir) for s in systems]
    monitor = ContentionMonitor().start()
    with state.split_between_processes(examples) as mine:
        run_systems(runs, mine, ctx, desc=",".join(systems))
    contention = monitor.stop()
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    for system in systems:
        run_dir.merge(system, examples)
    return finish(task, systems, examples, run_dir, settings, ctx.prompts, thresholds, contention,
                  {"dtypes": dtypes, **hw, "cpu": env.cpu_model()}, costs)


def finish(task: Task, systems: list[str], examples: list[Example], run_dir: RunDir, settings: dict,
           prompts: PromptBuilder, bild_thresholds: dict[str, BiLDConfig], contention: dict | None = None,
           hardware: dict | None = None, costs: PairCosts | None = None) -> dict:
    """metrics.json from the merged predictions, and the report.

    contention: what `ContentionMonitor` saw while this invocation generated (a resumed run only
    timed the examples it generated itself). costs: the pair's cost model, whose ceilings (every draft accepted,
    and each BiLD setting's measured acceptance) go into metrics.json and the report."""
    references = [e.reference for e in examples]
    per_system, latencies = {}, {}
    for system in systems:
        records = run_dir.ordered(system, examples)
        if len(records) != len(examples):
            raise RuntimeError(f"{system}: {len(records)} predictions for {len(examples)} examples in {run_dir.path}.")
        per_system[system] = system_metrics(task, records, references)
        latencies[system] = [r["latency_s"] for r in records]
    result = {
        "task": task.name,
        "examples": len(examples),
        "output_dir": str(run_dir.path),
        "fingerprint": fingerprint(settings),
        "models": settings["models"],
        # What the models generated in and on what (dtype "auto" resolves per machine).
        "hardware": hardware,
        "thresholds": settings["thresholds"],
        # As resolved for the tokenizer, where config.json has the options as given.
        "prompt": {"template": prompts.template, "prefix": prompts.prefix},
        "timing": {**TIMING, "contention": contention},
        "systems": per_system,
        # The --bild_fallback/--bild_rollback setting against each baseline, with 90% intervals.
        "comparison": comparison(task, per_system, latencies=latencies),
        # Every BiLD setting of the run (that one included) with its thresholds and comparison.
        "bild_settings": {name: {"thresholds": thresholds.to_dict(),
                                 "comparison": comparison(task, per_system, name, latencies)}
                          for name, thresholds in bild_thresholds.items()},
    }
    if costs is not None:
        result["cost_model"] = cost_model_report(costs, per_system, bild_thresholds)
    atomic_write_json(run_dir.path / "metrics.json", result)
    print_report(task, result)
    return result


def cost_model_report(costs: PairCosts, per_system: dict, bild_thresholds: dict[str, BiLDConfig]) -> dict:
    """The cost model and the speed-ups it implies: every draft accepted, and at each BiLD setting's measured
    acceptance (its accepted / drafted tokens, taken as the chance that each draft is accepted), at the best round
    length up to that setting's max_small_steps."""
    out = {"costs": costs.to_dict(), "at_measured_acceptance": {}}
    for name, cfg in bild_thresholds.items():
        stats = per_system.get(name, {}).get("bild_stats")
        n = cfg.max_small_steps
        out.setdefault("ceiling", {})[name] = costs.ceiling(n)
        if stats and stats.get("drafted_tokens"):
            acceptance = stats["accepted_drafts"] / stats["drafted_tokens"]
            drafts, speedup = costs.best_round(acceptance, n)
            out["at_measured_acceptance"][name] = {"acceptance": acceptance, "drafts": drafts, "speedup": speedup}
    return out

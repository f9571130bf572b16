"""Evaluate BiLD against its baselines on a text-to-text task, resumably and with honest timing.

This is the shared logic of ``examples/run_bild_translation.py`` and
``examples/run_bild_summarization.py`` (and of anything else that runs "systems" over a data set):

* ``Task``: what is scored and how (``TRANSLATION``: sacreBLEU BLEU + chrF; ``SUMMARIZATION``:
  ROUGE-1/2/L/Lsum with stemming), where the source and reference of a row are.
* ``load_examples``: a hub data set or local JSON Lines files, through ``datasets``.
* ``PromptBuilder``: the model inputs: chat template, plain text with a prefix, or a format string.
* ``load_model`` / ``load_tokenizer`` / ``make_system``: the systems ``bild`` (``BiLDGenerator``),
  ``large`` and ``small`` (greedy ``generate``), ``assisted`` (transformers' assisted generation
  with the small model as assistant) and ``model`` (one model given with ``--model PATH``).
* ``run_system``: one system over the examples, timed, one JSON line per example appended as it is
  produced (flushed and fsynced), skipping what an earlier run already finished.
* ``system_metrics`` / ``comparison`` / ``print_report``: quality, latency, tokens/s, speed-ups,
  BiLD's counters; ``metrics.json`` and a table.
* ``--compare`` also takes more BiLD settings (``bild:0.4:5`` or ``bild:0.4:5:6`` for
  fallback:rollback[:max_small_steps]); each runs as its own system (``bild-fb0.4-rb5-n6``) on the
  same inputs in the same process, so one run times several settings against one set of baselines.
* ``build_parser`` / ``main``: the command line both example scripts share.

Files under the output folder:
    config.json                          settings, versions, device; its fingerprint guards resuming
    predictions_<system>.jsonl           one line per example, in data order
    predictions_<system>.rank<k>.jsonl   one shard per process while running under ``accelerate launch``
    metrics.json                         written once all systems are done

Timing: the clock is read right before and after ``generate`` with the device synchronised, so it
excludes data loading, tokenisation, detokenisation and metrics; one warm-up generation precedes
the timed ones. A batch's time is split evenly over its rows. Totals sum the rows' times, so with
several processes they are compute time, not wall time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from . import env, fetch, metrics
from .config import BiLDConfig
from .generator import BiLDGenerator
from .stats import PER_ROW, BiLDStats

DEFAULT_PAIR = "qwen2.5-coder"
BASELINES = ("large", "small", "assisted")
# Which loaded models each system needs.
SYSTEM_ROLES = {
    "bild": ("small", "large"),
    "large": ("large",),
    "small": ("small",),
    "assisted": ("small", "large"),
    "model": ("model",),
}
# BiLDStats.total() fields that count whole-batch events; per-example records cannot sum them.
_BATCH_LEVEL_STATS = ("batch_small_calls", "batch_large_calls", "forward_seconds", "loop_seconds")
_LANGUAGES = {"de": "German", "en": "English", "fr": "French", "es": "Spanish", "it": "Italian", "nl": "Dutch",
              "pt": "Portuguese", "ro": "Romanian", "ru": "Russian", "zh": "Chinese", "ja": "Japanese", "ko": "Korean"}


# ---------------------------------------------------------------------------------------------
# Tasks and data


@dataclass(frozen=True)
class Task:
    """A text-to-text task: how to score it and its defaults."""

    name: str
    score: Callable[[list[str], list[str]], dict]
    quality_keys: tuple[str, ...]  # the headline numbers, primary first
    default_max_new_tokens: int
    description: str


TRANSLATION = Task("translation", metrics.translation_metrics, ("bleu", "chrf"), 128,
                   "Translate with Big Little Decoder and compare it with its baselines (sacreBLEU BLEU and chrF).")
SUMMARIZATION = Task("summarization", metrics.rouge, metrics.ROUGE_TYPES, 64,
                     "Summarize with Big Little Decoder and compare it with its baselines (ROUGE with stemming).")


@dataclass(frozen=True)
class Example:
    """One row to generate for: `id` is unique within the run and keys resumption."""

    id: str
    source: str
    reference: str


def source_and_reference(task: Task, args: argparse.Namespace, row: dict) -> tuple[str, str]:
    """The input text and the reference of one data set row."""
    if task is TRANSLATION:
        pair = row["translation"]
        return pair[args.source_lang], pair[args.target_lang]
    return row[args.text_column], row[args.summary_column]


def default_instruction(task: Task, args: argparse.Namespace) -> str:
    """What an instruct model is asked before the text when no --source_prefix is given."""
    if task is TRANSLATION:
        source = _LANGUAGES.get(args.source_lang, args.source_lang)
        target = _LANGUAGES.get(args.target_lang, args.target_lang)
        return f"Translate the following {source} text to {target}. Reply with the translation only.\n\n"
    return "Summarize the following package description in one short line.\n\n"


def data_files(args: argparse.Namespace) -> dict[str, str]:
    files = {"train": args.train_file, "validation": args.validation_file, "test": args.test_file}
    return {split: path for split, path in files.items() if path}


def resolve_split(split: str | None, files: dict[str, str]) -> str:
    """--split, else the first of test, validation, train that exists (hub data sets: test)."""
    if split:
        return split
    return next((name for name in ("test", "validation", "train") if name in files), "test")


def load_examples(task: Task, args: argparse.Namespace) -> list[Example]:
    """The first --max_samples rows of the split, with ids ("id" column when unique, else row index)."""
    from datasets import load_dataset

    files = data_files(args)
    split = resolve_split(args.split, files)
    if args.dataset_name:
        dataset = load_dataset(args.dataset_name, args.dataset_config, split=split)
    else:
        dataset = load_dataset("json", data_files=files, split=split)
    if args.max_samples is not None:
        dataset = dataset.select(range(min(args.max_samples, len(dataset))))
    rows = list(dataset)
    ids = [str(row["id"]) for row in rows] if rows and "id" in rows[0] else []
    # Resuming matches finished work by id, so ids must be unique.
    if len(set(ids)) != len(rows):
        ids = [str(i) for i in range(len(rows))]
    return [Example(i, *source_and_reference(task, args, row)) for i, row in zip(ids, rows)]


# ---------------------------------------------------------------------------------------------
# Models and prompts


def load_tokenizer(path: str, encoder_decoder: bool):
    """The tokenizer of a model folder, padded on the side generation needs."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "right" if encoder_decoder else "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def is_encoder_decoder(path: str) -> bool:
    from transformers import AutoConfig

    return bool(AutoConfig.from_pretrained(path).is_encoder_decoder)


def load_model(path: str, dtype: str, device: torch.device, device_map: str | None):
    """A causal or seq2seq LM in eval mode, on `device` (or spread by `device_map`)."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    auto = AutoModelForSeq2SeqLM if is_encoder_decoder(path) else AutoModelForCausalLM
    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    if device_map:
        return auto.from_pretrained(path, dtype=torch_dtype, device_map=device_map).eval()
    return auto.from_pretrained(path, dtype=torch_dtype).to(device).eval()


@dataclass
class PromptBuilder:
    """Turns source texts into a padded batch of model inputs.

    template: "chat" (the tokenizer's chat template, one user message: prefix + text, then the
    assistant turn), "plain" (prefix + text, as T5 expects), or a format string with "{text}"
    (filled with prefix + text). The source is first cut to `max_source_length` tokens, so that the
    template itself is never truncated.
    """

    tokenizer: object
    template: str
    prefix: str = ""
    max_source_length: int | None = None

    def truncate(self, source: str) -> str:
        if not self.max_source_length:
            return source
        ids = self.tokenizer(source, add_special_tokens=False)["input_ids"]
        # Decode only when cutting: a round trip could change text that needs no cut.
        return source if len(ids) <= self.max_source_length else self.tokenizer.decode(ids[: self.max_source_length])

    def text(self, source: str) -> str:
        content = self.prefix + self.truncate(source)
        if self.template == "chat":
            messages = [{"role": "user", "content": content}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if self.template == "plain":
            return content
        return self.template.format(text=content)

    def batch(self, sources: Sequence[str]) -> dict[str, torch.Tensor]:
        texts = [self.text(s) for s in sources]
        # A chat template already writes the special tokens the model expects.
        special = self.template != "chat"
        return dict(self.tokenizer(texts, padding=True, add_special_tokens=special, return_tensors="pt"))


def resolve_template(template: str | None, tokenizer, encoder_decoder: bool) -> str:
    """--prompt_template, else "chat" for a decoder-only model whose tokenizer has a chat template."""
    if template is None:
        return "chat" if not encoder_decoder and getattr(tokenizer, "chat_template", None) else "plain"
    if template == "chat" and (encoder_decoder or not getattr(tokenizer, "chat_template", None)):
        raise SystemExit("--prompt_template chat needs a decoder-only model whose tokenizer has a chat template.")
    if template not in ("chat", "plain") and "{text}" not in template:
        raise SystemExit(
            f"--prompt_template must be chat, plain, or a format string containing {{text}}; got {template!r}."
        )
    # Shells pass "\n" through literally; a template almost always means a line break.
    return template.replace("\\n", "\n")


# ---------------------------------------------------------------------------------------------
# Systems

# A system's generate: (inputs, generate kwargs) -> (new tokens per row, BiLDStats or None).
GenerateFn = Callable[[dict, dict], tuple[list[torch.Tensor], "BiLDStats | None"]]


def new_tokens(sequences: torch.Tensor, inputs: dict, encoder_decoder: bool) -> list[torch.Tensor]:
    """The generated part of each row: after the (padded) prompt, or after the decoder start token."""
    start = 1 if encoder_decoder else inputs["input_ids"].shape[1]
    return list(sequences[:, start:])


def make_system(name: str, models: dict, thresholds: BiLDConfig | None, tokenizers: dict) -> GenerateFn:
    """The generate function of system `name` over the loaded `models` (keyed by role).

    `thresholds` are those of a BiLD system (``bild`` or ``bild-fb...``); other systems ignore them.
    """
    encoder_decoder = next(iter(models.values())).config.is_encoder_decoder
    if is_bild_system(name):
        generator = BiLDGenerator(
            models["small"], models["large"], thresholds.fallback_threshold, thresholds.rollback_threshold,
            thresholds.max_small_steps, small_tokenizer=tokenizers["small"], large_tokenizer=tokenizers["large"],
        )

        def generate(inputs, kwargs):
            out = generator.generate(**inputs, **kwargs, return_dict_in_generate=True)
            return new_tokens(out.sequences, inputs, encoder_decoder), out.stats

        return generate
    if name == "assisted":
        return _assisted(models["large"], models["small"], encoder_decoder)
    model = models[name]

    def generate(inputs, kwargs):
        return new_tokens(model.generate(**inputs, **kwargs), inputs, encoder_decoder), None

    return generate


def _assisted(large, small, encoder_decoder: bool) -> GenerateFn:
    """transformers' assisted generation, one row at a time: it does not take batches."""

    def generate(inputs, kwargs):
        rows = []
        for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"]):
            row = {"input_ids": ids[mask.bool()][None], "attention_mask": mask[mask.bool()][None]}
            out = large.generate(**row, **kwargs, assistant_model=small)
            rows.extend(new_tokens(out, row, encoder_decoder))
        return rows, None

    return generate


def generated_length(tokens: torch.Tensor, eos_ids: set[int]) -> int:
    """Tokens up to and including the first eos; what follows is padding."""
    for i, token in enumerate(tokens.tolist()):
        if token in eos_ids:
            return i + 1
    return len(tokens)


def eos_token_ids(model, tokenizer) -> set[int]:
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    return set(eos if isinstance(eos, list) else [eos]) - {None}


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so that the clock measures the generation itself."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


# ---------------------------------------------------------------------------------------------
# Prediction files: append-only, crash-safe, resumable


def prediction_path(output_dir: Path, system: str, rank: int | None = None) -> Path:
    suffix = "" if rank is None else f".rank{rank}"
    return output_dir / f"predictions_{system}{suffix}.jsonl"


def prediction_files(output_dir: Path, system: str) -> list[Path]:
    """The merged file and every shard of `system`, merged file first."""
    return [p for p in [prediction_path(output_dir, system)] if p.exists()] + sorted(
        output_dir.glob(f"predictions_{system}.rank*.jsonl")
    )


def read_records(path: Path) -> list[dict]:
    """The complete lines of a JSON Lines file; a trailing line without newline is an interrupted write."""
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")[:-1]
    return [json.loads(line) for line in lines if line.strip()]


def drop_partial_line(path: Path) -> None:
    """Truncate `path` after its last newline, removing what an interrupted write left."""
    if not path.exists():
        return
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1
    if keep != len(data):
        with open(path, "r+b") as handle:
            handle.truncate(keep)


def finished_records(output_dir: Path, system: str) -> dict[str, dict]:
    """id -> record of every example of `system` already done, in any of its files (first wins)."""
    done: dict[str, dict] = {}
    for path in prediction_files(output_dir, system):
        for record in read_records(path):
            done.setdefault(record["id"], record)
    return done


class PredictionWriter:
    """Appends records to one file; each batch is flushed and fsynced before generation goes on."""

    def __init__(self, path: Path):
        drop_partial_line(path)
        self.handle = open(path, "a", encoding="utf-8")

    def write(self, records: list[dict]) -> None:
        # One write per batch: an interrupt lands between batches, or at worst leaves one partial
        # last line, which the next run's drop_partial_line removes.
        self.handle.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        self.handle.close()


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file and a rename, so `path` is always either old or new, never half."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def ordered_records(output_dir: Path, system: str, examples: list[Example]) -> list[dict]:
    """The finished records of `examples`, in their order."""
    done = finished_records(output_dir, system)
    return [done[e.id] for e in examples if e.id in done]


def merge_predictions(output_dir: Path, system: str, examples: list[Example]) -> None:
    """Write predictions_<system>.jsonl in data order from all its files, then drop the shards.

    Records of examples outside this run (an earlier run with a larger --max_samples) are kept
    after the others, so no finished work is ever thrown away.
    """
    done = finished_records(output_dir, system)
    wanted = {e.id for e in examples}
    records = ordered_records(output_dir, system, examples) + [r for i, r in done.items() if i not in wanted]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    atomic_write_text(prediction_path(output_dir, system), text)
    for shard in output_dir.glob(f"predictions_{system}.rank*.jsonl"):
        shard.unlink()


# ---------------------------------------------------------------------------------------------
# Running one system


@dataclass
class RunContext:
    """What every system of one run shares."""

    prompts: PromptBuilder
    generate_kwargs: dict
    batch_size: int
    device: torch.device  # where inputs go and what is synchronised
    eos_ids: set[int]
    output_dir: Path
    rank: int | None  # None in a single process
    show_progress: bool
    seed: int

    def own_path(self, system: str) -> Path:
        return prediction_path(self.output_dir, system, self.rank)


def batches(examples: list[Example], size: int) -> list[list[Example]]:
    """Fixed batches by position, so a resumed run pads exactly as an uninterrupted one did."""
    return [examples[i: i + size] for i in range(0, len(examples), size)]


def run_system(system: str, generate: GenerateFn, examples: list[Example], ctx: RunContext) -> int:
    """Generate `examples` (this process's share) with `system`, appending records; return how many were new.

    A batch with any unfinished example is generated whole (its padding then matches an
    uninterrupted run) and only its unfinished examples are written.
    """
    from tqdm.auto import tqdm
    from transformers import set_seed

    done = finished_records(ctx.output_dir, system)
    pending = [b for b in batches(examples, ctx.batch_size) if any(e.id not in done for e in b)]
    todo = sum(e.id not in done for b in pending for e in b)
    if not pending:
        return 0
    set_seed(ctx.seed)
    _warm_up(generate, pending[0], ctx)
    writer = PredictionWriter(ctx.own_path(system))
    try:
        with tqdm(total=todo, desc=system, unit="ex", disable=not ctx.show_progress) as bar:
            for batch in pending:
                records = _generate_batch(generate, batch, ctx)
                writer.write([r for r in records if r["id"] not in done])
                bar.update(sum(e.id not in done for e in batch))
    finally:
        writer.close()
    return todo


def _inputs(batch: list[Example], ctx: RunContext) -> dict[str, torch.Tensor]:
    return {k: v.to(ctx.device) for k, v in ctx.prompts.batch([e.source for e in batch]).items()}


def _warm_up(generate: GenerateFn, batch: list[Example], ctx: RunContext) -> None:
    """One untimed generation, so that one-off costs (allocations, kernel selection) are not timed."""
    inputs = _inputs(batch, ctx)
    kwargs = {**ctx.generate_kwargs, "max_new_tokens": min(16, ctx.generate_kwargs["max_new_tokens"])}
    generate(inputs, kwargs)
    synchronize(ctx.device)


def _generate_batch(generate: GenerateFn, batch: list[Example], ctx: RunContext) -> list[dict]:
    """Records of one timed batch: prediction, reference, generated tokens, latency, BiLD counters."""
    inputs = _inputs(batch, ctx)
    synchronize(ctx.device)
    start = time.perf_counter()
    rows, stats = generate(inputs, ctx.generate_kwargs)
    synchronize(ctx.device)
    seconds = time.perf_counter() - start
    records = []
    for i, (example, tokens) in enumerate(zip(batch, rows)):
        length = generated_length(tokens, ctx.eos_ids)
        record = {
            "id": example.id,
            "prediction": ctx.prompts.tokenizer.decode(tokens[:length], skip_special_tokens=True).strip(),
            "reference": example.reference,
            "new_tokens": length,
            "latency_s": seconds / len(batch),
            "batch_size": len(batch),
        }
        if stats is not None:
            record["bild_stats"] = {name: getattr(stats, name)[i] for name in PER_ROW}
        records.append(record)
    return records


# ---------------------------------------------------------------------------------------------
# Metrics and report


def bild_stats_total(records: list[dict]) -> dict:
    """BiLD's counters summed over examples, with the ratios `BiLDStats.total` derives."""
    stats = BiLDStats(**{name: [r["bild_stats"][name] for r in records] for name in PER_ROW})
    total = stats.total()
    for name in _BATCH_LEVEL_STATS:
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


def comparison(task: Task, systems: dict[str, dict], bild: str = "bild") -> dict:
    """BiLD system `bild` against each baseline (every system that is not BiLD): speed-up (baseline
    latency / BiLD latency) and quality difference."""
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
    return out


def print_report(task: Task, result: dict, console=None) -> None:
    """Rich tables: every system's quality and speed, BiLD against the baselines, BiLD's counters."""
    from rich.console import Console
    from rich.table import Table

    # Logs and pipes get rich's 80 columns, which would squeeze the numbers of four ROUGE types.
    console = console or Console(width=None if sys.stdout.isatty() else 120)
    systems = result["systems"]
    reference = "large" if "large" in systems else None
    table = Table(title=f"{task.name}: {result['examples']} examples")
    for column in ("system", *task.quality_keys, "total s", "ms/token", "tokens/s"):
        table.add_column(column, justify="left" if column == "system" else "right")
    if reference:
        table.add_column("speedup vs large", justify="right")
    for name, m in systems.items():
        cells = [name, *(f"{m['quality'][k]:.2f}" for k in task.quality_keys), f"{m['total_latency_s']:.2f}",
                 _fmt(m["ms_per_token"], ".1f"), _fmt(m["tokens_per_s"], ".1f")]
        if reference:
            cells.append(f"{systems[reference]['total_latency_s'] / m['total_latency_s']:.2f}x")
        table.add_row(*cells)
    console.print(table)
    compared = {name: s["comparison"] for name, s in result.get("bild_settings", {}).items() if s["comparison"]}
    if compared:
        console.print(_comparison_table(task, compared))
    bild = {name: m["bild_stats"] for name, m in systems.items() if is_bild_system(name)}
    if bild:
        console.print(_stats_table(bild))
    console.print(f"Results in {result['output_dir']}")


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _comparison_table(task: Task, compared: dict[str, dict]):
    """One row per (BiLD setting, baseline)."""
    from rich.table import Table

    table = Table(title="BiLD against each baseline")
    table.add_column("BiLD")
    table.add_column("baseline")
    table.add_column("BiLD speedup", justify="right")
    for key in task.quality_keys:
        table.add_column(f"Δ {key}", justify="right")
    for bild, against in compared.items():
        for name, c in against.items():
            table.add_row(bild, name, f"{c['speedup']:.2f}x",
                          *(f"{c['quality_delta'][k]:+.2f}" for k in task.quality_keys))
    return table


# BiLD's counters in the order the reports show them (also benchmarks/metrics_table.py).
STATS_COUNTERS = ("committed_tokens", "tokens_from_small", "tokens_from_large", "drafted_tokens", "accepted_drafts",
                  "acceptance_rate", "fallbacks", "rollbacks", "corrections", "bonus_tokens", "large_forward_calls",
                  "mean_tokens_per_large_call")


def _stats_table(stats: dict[str, dict]):
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


# ---------------------------------------------------------------------------------------------
# Configuration, environment, output folder


def environment(device: torch.device, num_processes: int) -> dict:
    """Versions and hardware (`bild env`'s), plus where this run generated."""
    return {**env.environment(), "device": str(device), "num_processes": num_processes}


def generation_settings(task: Task, args: argparse.Namespace, paths: dict, device: torch.device,
                        num_processes: int) -> dict:
    """Everything that changes the predictions; a run resumes only into a folder with the same."""
    return {
        "task": task.name,
        "models": paths,
        "thresholds": {"fallback_threshold": args.fallback_threshold, "rollback_threshold": args.rollback_threshold,
                       "max_small_steps": args.max_small_steps},
        "data": {"dataset_name": args.dataset_name, "dataset_config": args.dataset_config, "files": data_files(args),
                 "split": resolve_split(args.split, data_files(args)), "columns": _columns(task, args)},
        "prompt": {"template": args.prompt_template, "source_prefix": args.source_prefix,
                   "max_source_length": args.max_source_length},
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "dtype": args.dtype,
        "device_type": device.type,
        "device_map": args.device_map,
        # Each process batches its own share of the examples.
        "num_processes": num_processes,
    }


def _columns(task: Task, args: argparse.Namespace) -> list[str]:
    if task is TRANSLATION:
        return [args.source_lang, args.target_lang]
    return [args.text_column, args.summary_column]


def fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


def check_output_dir(output_dir: Path, expected: str) -> None:
    """Refuse to resume into a folder whose predictions were made with other settings."""
    config = output_dir / "config.json"
    if not config.exists() or not list(output_dir.glob("predictions_*.jsonl")):
        return
    previous = json.loads(config.read_text()).get("fingerprint")
    if previous != expected:
        raise SystemExit(
            f"{output_dir} holds predictions made with other settings (fingerprint {previous}, now {expected}; "
            "see its config.json). Use another --output_dir, or --overwrite_output_dir to start over."
        )


def clear_output_dir(output_dir: Path) -> None:
    """Remove the files an earlier run wrote (and nothing else)."""
    for pattern in ("predictions_*.jsonl", "metrics.json", "config.json"):
        for path in output_dir.glob(pattern):
            path.unlink()


# ---------------------------------------------------------------------------------------------
# Command line


def build_parser(task: Task) -> argparse.ArgumentParser:
    """The options both example scripts share, plus the task's own columns."""
    p = argparse.ArgumentParser(description=task.description)
    m = p.add_argument_group("models")
    m.add_argument("--model", default="bild",
                   help="'bild' (default) for Big Little Decoder with --small/--large, or a model path or hub name to "
                        "run alone as a baseline")
    m.add_argument("--small", help="small model (path or hub name); default: the fetched qwen2.5-coder pair")
    m.add_argument("--large", help="large model (path or hub name); default: the fetched qwen2.5-coder pair")
    m.add_argument("--bild_fallback_threshold", "--bild_fallback", dest="fallback_threshold", type=float,
                   default=BiLDConfig.fallback_threshold, help="fall back to the large model below this probability")
    m.add_argument("--bild_rollback_threshold", "--bild_rollback", dest="rollback_threshold", type=float,
                   default=BiLDConfig.rollback_threshold, help="roll back drafts whose large-model loss exceeds this")
    m.add_argument("--max_small_steps", type=int, default=BiLDConfig.max_small_steps,
                   help="at most this many small-model drafts per round")
    m.add_argument("--compare", default=None,
                   help=f"comma-separated systems run on the same inputs: the baselines {','.join(BASELINES)}, and more "
                        "BiLD settings as bild:FALLBACK:ROLLBACK[:MAX_SMALL_STEPS] (e.g. bild:0.4:5); default: large "
                        "for the default job with no models and no data given, otherwise none")
    m.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                   help="model weights' dtype (auto: as stored)")
    m.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps, ... (auto: accelerate's choice)")
    m.add_argument("--device_map", default=None, help="'auto' spreads models too large for one device")
    add_data_arguments(p, task, split_help="split to evaluate (default: test, or the only file given)")
    add_prompt_arguments(p, task, batch_help="examples per generate call")
    o = p.add_argument_group("output")
    o.add_argument("--output_dir", help="where predictions and metrics go; rerun with the same folder to resume "
                                        "(default: runs/<task>-<fingerprint of the settings>)")
    o.add_argument("--overwrite_output_dir", action="store_true", help="discard earlier results in --output_dir")
    return p


def add_data_arguments(p: argparse.ArgumentParser, task: Task | None, split_help: str) -> argparse._ArgumentGroup:
    """Data options: a hub data set or local files, the split, and the columns of `task` (of both when None)."""
    d = p.add_argument_group("data")
    d.add_argument("--dataset_name", help="HuggingFace data set, e.g. " + {
        TRANSLATION: "iwslt2017", SUMMARIZATION: "xsum, cnn_dailymail"}.get(task, "iwslt2017 or xsum"))
    d.add_argument("--dataset_config", help="its configuration, e.g. " + {
        TRANSLATION: "iwslt2017-de-en", SUMMARIZATION: "3.0.0"}.get(task, "iwslt2017-de-en"))
    for split in ("train", "validation", "test"):
        d.add_argument(f"--{split}_file", help=f"local JSON Lines file for the {split} split")
    d.add_argument("--split", help=split_help)
    d.add_argument("--max_samples", type=int, help="use only the first N examples of the split")
    if task in (TRANSLATION, None):
        d.add_argument("--source_lang", default="de", help="translation: the source's key in 'translation'")
        d.add_argument("--target_lang", default="en", help="translation: the reference's key in 'translation'")
    if task in (SUMMARIZATION, None):
        d.add_argument("--text_column", default="document", help="summarization: the source column")
        d.add_argument("--summary_column", default="summary", help="summarization: the reference column")
    return d


def add_prompt_arguments(p: argparse.ArgumentParser, task: Task | None, batch_help: str) -> argparse._ArgumentGroup:
    """Prompt and generation options; --max_new_tokens defaults to `task`'s (None: set from --task later)."""
    g = p.add_argument_group("prompt and generation")
    g.add_argument("--source_prefix", default=None,
                   help="text put before each source, e.g. 'translate German to English: ' or 'summarize: ' for T5 "
                        "(default: an instruction with the chat template, nothing otherwise)")
    g.add_argument("--prompt_template", default=None,
                   help="chat (default for decoder-only models with a chat template), plain, or a format string with "
                        "{text}, e.g. 'German: {text}\\nEnglish:'")
    g.add_argument("--max_source_length", type=int, default=1024, help="cut each source to this many tokens")
    g.add_argument("--max_new_tokens", type=int, default=task.default_max_new_tokens if task else None,
                   help="default: the task's (translation 128, summarization 64)")
    g.add_argument("--batch_size", type=int, default=1, help=batch_help)
    g.add_argument("--seed", type=int, default=42)
    return g


def resolve_defaults(args: argparse.Namespace, default_data: str | None) -> None:
    """Fill in the default job: the fetched real pair, the shipped sample, and the large baseline."""
    data_given = bool(args.dataset_name or data_files(args))
    if args.model == "bild":
        if bool(args.small) != bool(args.large):
            raise SystemExit("--model bild needs both --small and --large (or neither, for the default pair).")
        models_given = bool(args.small)
        if not models_given:
            args.small, args.large = (str(p) for p in fetch.fetch_pair(DEFAULT_PAIR))
        if args.compare is None:
            args.compare = "" if models_given or data_given else "large"
    elif args.small or args.large or args.compare:
        raise SystemExit("--small, --large and --compare go with --model bild; --model PATH runs that model alone.")
    if not data_given:
        if default_data is None:
            raise SystemExit("Give --dataset_name or a --train_file/--validation_file/--test_file.")
        args.test_file = default_data


def is_bild_system(name: str) -> bool:
    """``bild`` (the thresholds of --bild_fallback/--bild_rollback) or a further setting ``bild-fb...``."""
    return name == "bild" or name.startswith("bild-")


def bild_system_name(config: BiLDConfig) -> str:
    """The system (and file) name of a further BiLD setting, e.g. ``bild-fb0.4-rb5-n10``."""
    return f"bild-fb{config.fallback_threshold:g}-rb{config.rollback_threshold:g}-n{config.max_small_steps}"


def parse_bild_setting(item: str, default_steps: int) -> BiLDConfig:
    """``bild:FALLBACK:ROLLBACK[:MAX_SMALL_STEPS]`` -> its config (max_small_steps from the command line if left out)."""
    parts = item.split(":")[1:]
    try:
        if len(parts) not in (2, 3):
            raise ValueError("expected two or three numbers")
        steps = int(parts[2]) if len(parts) == 3 else default_steps
        return BiLDConfig(float(parts[0]), float(parts[1]), steps)
    except ValueError as e:
        raise SystemExit(f"--compare: {item!r} is not a BiLD setting bild:FALLBACK:ROLLBACK[:MAX_SMALL_STEPS], "
                         f"e.g. bild:0.4:5 or bild:0.6:0:5 ({e}).") from None


def bild_settings(args: argparse.Namespace) -> dict[str, BiLDConfig]:
    """Every BiLD system of the run and its thresholds: ``bild`` first, then --compare's ``bild:...`` items."""
    primary = BiLDConfig(args.fallback_threshold, args.rollback_threshold, args.max_small_steps)
    settings = {"bild": primary}
    for item in _compare_items(args):
        if item.startswith("bild:"):
            config = parse_bild_setting(item, args.max_small_steps)
            if config != primary:
                settings.setdefault(bild_system_name(config), config)
    return settings


def _compare_items(args: argparse.Namespace) -> list[str]:
    return [c.strip() for c in (args.compare or "").split(",") if c.strip()]


def systems_of(args: argparse.Namespace) -> list[str]:
    """The systems in the order they run: BiLD settings first, then the baselines as given."""
    if args.model != "bild":
        return ["model"]
    compare = _compare_items(args)
    unknown = sorted(c for c in set(compare) - set(BASELINES) if not c.startswith("bild:"))
    if unknown:
        raise SystemExit(f"--compare takes {', '.join(BASELINES)} and BiLD settings bild:FALLBACK:ROLLBACK"
                         f"[:MAX_SMALL_STEPS]; got {', '.join(unknown)}.")
    return [*bild_settings(args), *dict.fromkeys(c for c in compare if c in BASELINES)]


def roles_of(system: str) -> tuple[str, ...]:
    """The loaded models (by role) that `system` needs."""
    return SYSTEM_ROLES["bild" if is_bild_system(system) else system]


def model_paths(args: argparse.Namespace, systems: list[str]) -> dict[str, str]:
    """Role -> path of every model the systems need."""
    available = {"small": args.small, "large": args.large, "model": None if args.model == "bild" else args.model}
    roles = dict.fromkeys(role for s in systems for role in roles_of(s))
    return {role: available[role] for role in roles}


def resolve_device(name: str, state) -> torch.device:
    return state.device if name == "auto" else torch.device(name)


def cpu_only(device: str) -> bool:
    """Whether the run is CPU-only: asked for, or no accelerator present.

    accelerate treats the processes of a launch as one multi-CPU run only when told it is on CPU;
    otherwise each would believe it is alone and they would all write the same files.
    """
    if device != "auto":
        return torch.device(device).type == "cpu"
    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6
    if accelerator is not None:
        return not accelerator.is_available()
    return not (torch.cuda.is_available() or torch.backends.mps.is_available())


def main(task: Task, argv: Sequence[str] | None = None, default_data: str | None = None) -> dict | None:
    """Run the command line; return the metrics (on the main process; None on the others)."""
    args = build_parser(task).parse_args(argv)
    return evaluate(task, args, list(sys.argv[1:] if argv is None else argv), default_data)


def evaluate(task: Task, args: argparse.Namespace, argv: list[str], default_data: str | None = None) -> dict | None:
    """Load, run every system, merge, score, report. Safe to rerun: finished examples are skipped."""
    from accelerate import PartialState

    state = PartialState(cpu=cpu_only(args.device))
    # One process fetches (and prints) while the others wait and then find the cache complete.
    with state.main_process_first():
        resolve_defaults(args, default_data)
    systems = systems_of(args)
    paths = model_paths(args, systems)
    device = resolve_device(args.device, state)
    thresholds = bild_settings(args) if args.model == "bild" else {}
    settings = generation_settings(task, args, paths, device, state.num_processes)
    output_dir = Path(args.output_dir or f"runs/{task.name}-{fingerprint(settings)}")
    _prepare_output_dir(output_dir, settings, args, argv, systems, device, state)

    with state.main_process_first():
        examples = load_examples(task, args)
    if not examples:
        raise SystemExit("No examples to evaluate: the split is empty or --max_samples is 0.")
    models, tokenizers, encoder_decoder = _load_models(paths, args, device)
    ctx = _run_context(task, args, models, tokenizers, encoder_decoder, output_dir, state)
    with state.split_between_processes(examples) as mine:
        for system in systems:
            generate = make_system(system, {r: models[r] for r in roles_of(system)}, thresholds.get(system),
                                   tokenizers)
            run_system(system, generate, mine, ctx)
            state.wait_for_everyone()
            if state.is_main_process:
                merge_predictions(output_dir, system, examples)
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    return _finish(task, systems, examples, output_dir, settings, ctx.prompts, thresholds)


def _prepare_output_dir(output_dir: Path, settings: dict, args, argv, systems, device, state) -> None:
    """The main process clears the folder or checks that it is resumable, and writes config.json.

    Should the check fail, the launcher (torch.distributed.run) stops the waiting processes too.
    """
    if state.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        if args.overwrite_output_dir:
            clear_output_dir(output_dir)
        else:
            check_output_dir(output_dir, fingerprint(settings))
        config = {"fingerprint": fingerprint(settings), "settings": settings, "systems": systems,
                  "args": vars(args), "argv": argv, "environment": environment(device, state.num_processes),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        atomic_write_json(output_dir / "config.json", config)
    # The other processes must not look at the folder before it is cleared or found resumable.
    state.wait_for_everyone()


def _load_models(paths: dict[str, str], args, device: torch.device):
    """role -> model, role -> tokenizer (None where a folder has none), and whether they are seq2seq."""
    encoder_decoder = is_encoder_decoder(next(iter(paths.values())))
    models = {role: load_model(path, args.dtype, device, args.device_map) for role, path in paths.items()}
    tokenizers = {role: _maybe_tokenizer(path, encoder_decoder) for role, path in paths.items()}
    return models, tokenizers, encoder_decoder


def _maybe_tokenizer(path: str, encoder_decoder: bool):
    try:
        return load_tokenizer(path, encoder_decoder)
    except (OSError, ValueError):
        return None


def prompt_builder(task: Task, args: argparse.Namespace, tokenizer, encoder_decoder: bool) -> PromptBuilder:
    """The prompts of a run: --prompt_template resolved for the tokenizer, and --source_prefix or the task's
    instruction (with the chat template)."""
    template = resolve_template(args.prompt_template, tokenizer, encoder_decoder)
    prefix = args.source_prefix if args.source_prefix is not None else (
        default_instruction(task, args) if template == "chat" else "")
    return PromptBuilder(tokenizer, template, prefix, args.max_source_length)


def _run_context(task, args, models, tokenizers, encoder_decoder, output_dir, state) -> RunContext:
    """Prompts and generation settings from the reference model (large, else the only one)."""
    role = "large" if "large" in models else next(iter(models))
    tokenizer = tokenizers[role] or next((t for t in tokenizers.values() if t is not None), None)
    if tokenizer is None:
        raise SystemExit(f"No tokenizer found beside the models ({', '.join(models)}).")
    model = models[role]
    return RunContext(
        prompts=prompt_builder(task, args, tokenizer, encoder_decoder),
        # Explicit greedy: instruct models' generation configs often sample, seq2seq ones often beam-search.
        generate_kwargs={"max_new_tokens": args.max_new_tokens, "do_sample": False, "num_beams": 1,
                         "pad_token_id": tokenizer.pad_token_id},
        batch_size=args.batch_size,
        device=model.device,
        eos_ids=eos_token_ids(model, tokenizer),
        output_dir=output_dir,
        rank=state.process_index if state.num_processes > 1 else None,
        show_progress=state.is_main_process,
        seed=args.seed,
    )


def _finish(task: Task, systems: list[str], examples: list[Example], output_dir: Path, settings: dict,
            prompts: PromptBuilder, bild_thresholds: dict[str, BiLDConfig]) -> dict:
    """metrics.json from the merged predictions, and the report."""
    references = [e.reference for e in examples]
    per_system = {}
    for system in systems:
        records = ordered_records(output_dir, system, examples)
        if len(records) != len(examples):
            raise RuntimeError(f"{system}: {len(records)} predictions for {len(examples)} examples in {output_dir}.")
        per_system[system] = system_metrics(task, records, references)
    result = {
        "task": task.name,
        "examples": len(examples),
        "output_dir": str(output_dir),
        "fingerprint": fingerprint(settings),
        "models": settings["models"],
        "thresholds": settings["thresholds"],
        # As resolved for the tokenizer, where config.json has the options as given.
        "prompt": {"template": prompts.template, "prefix": prompts.prefix},
        "systems": per_system,
        # The --bild_fallback/--bild_rollback setting against each baseline.
        "comparison": comparison(task, per_system),
        # Every BiLD setting of the run (that one included) with its thresholds and comparison.
        "bild_settings": {name: {"thresholds": thresholds.to_dict(), "comparison": comparison(task, per_system, name)}
                          for name, thresholds in bild_thresholds.items()},
    }
    atomic_write_json(output_dir / "metrics.json", result)
    print_report(task, result)
    return result

"""`bild align`: fine-tune the small model on the large model's greedy outputs, so that it drafts what the large writes.

    bild align --small SMALL --large LARGE --task translation --train_file debian-de-en.train.jsonl \\
        --max_samples 5000 --output_dir aligned-small
    accelerate launch -m bild.cli align ...        # training (and generation) on several processes/GPUs

BiLD is fast when the large model accepts the small model's drafts; a small model that imitates
the large one (sequence-level knowledge distillation, as in the paper's aligned models) drafts
more tokens the large model keeps. Three steps:

1. The large model's greedy output ids for every input (batched, resumable, shown with progress),
   appended to ``<output_dir>/align/predictions_large.jsonl``. With ``--teacher bild`` they come
   from BiLD in lossless mode (rollback threshold 0), which is identical to large greedy and faster.
2. Fine-tuning of the small model on (prompt, large output) pairs: a plain training loop under
   ``accelerate`` (AdamW, a learning-rate schedule, gradient accumulation, gradient clipping), the
   loss on the output tokens only (for decoder-only models the prompt is masked); optionally LoRA
   through ``peft``, merged into the weights before saving.
   The training so far is checkpointed to ``<output_dir>/align/checkpoint.pt`` after every epoch
   (and every ``--save_steps`` updates); a rerun with the same settings resumes from it and ends
   with the weights an uninterrupted run ends with (each epoch's order depends on the seed and the
   epoch alone; the random state is restored for dropout). It is deleted once the model is saved.
3. ``<output_dir>`` becomes an ordinary ``from_pretrained`` folder of the small model (in its own
   dtype, with its tokenizer), plus ``align_report.json``: agreement before and after.

Prompts are built exactly as ``bild sweep`` and the example scripts build them (same template,
prefix and truncation options), so the small model learns the format it will draft in.

Agreement (the same function before and after, on the same examples, in float32): feed the small
model the prompt and the large model's output (teacher forcing); at each output position it agrees
when its argmax next token is the large model's token there. ``token_agreement`` = agreeing
positions / all output positions (the final eos included), pooled over examples;
``sequence_agreement`` = share of examples where every position agrees, i.e. where the small
model's own greedy output (without logits processors) is the large model's. Measured on a held-out
slice (the last ``--eval_samples`` inputs, never trained on) and on as many training inputs.
"""

from __future__ import annotations

import dataclasses
import gc
import sys
from functools import partial
from pathlib import Path

import torch

from .config import BiLDConfig
from .distill import (CHECKPOINT, TrainSpec, agreement, build_features, fine_tune, held_out_split, load_student,
                      save_student, training_settings)
from .eval.data import DataSpec, Example, load_examples
from .eval.evaluate import GenerationSpec, environment, generation_settings, run_context
from .eval.prompts import PromptSpec
from .eval.report import console_for
from .eval.rundir import RunDir, atomic_write_json, fingerprint
from .eval.runner import RunContext, run_system
from .eval.systems import ModelSpec, cpu_only, generated_length, is_encoder_decoder, load_models
from .eval.tasks import Task

TEACHER = "large"  # the system name of the teacher outputs' file: predictions_large.jsonl


# ---------------------------------------------------------------------------------------------
# Step 1: the large model's greedy outputs


def teacher_records(batch: list[Example], rows: list[torch.Tensor], stats, seconds: float,
                    ctx: RunContext) -> list[dict]:
    """The output ids of each row up to and including the first eos (what follows is padding), and their text."""
    records = []
    for example, tokens in zip(batch, rows):
        ids = tokens[: generated_length(tokens, ctx.eos_ids)].tolist()
        records.append({"id": example.id, "output_ids": ids,
                        "output": ctx.prompts.tokenizer.decode(ids, skip_special_tokens=True).strip()})
    return records


def teacher_outputs(spec: "AlignSpec", examples: list[Example], run_dir: RunDir, state):
    """id -> the large model's greedy output ids, for every example; and the prompts.

    Every process generates its share into its own file (`run_system`, as the example scripts run
    a system: fixed batches, resumable); the main process merges them. The models are loaded for
    the prompts (the same `RunContext` the example scripts build) and freed after.
    """
    roles = ("small", "large") if spec.teacher == "bild" else ("large",)
    paths = {"small": spec.small, "large": spec.large}
    loaded = load_models({r: paths[r] for r in roles}, spec.models, state.device)
    ctx = run_context(spec.task, loaded, spec.data, spec.prompt, spec.generation, state)
    # Rollback threshold 0 is lossless: BiLD's output is the large model's greedy output, token for token.
    generate = loaded.system(spec.teacher, BiLDConfig(rollback_threshold=0.0))
    with state.split_between_processes(examples) as mine:
        run_system(TEACHER, generate, mine, ctx, run_dir, records=teacher_records, desc="large outputs", warm=False)
    del generate, loaded
    gc.collect()
    state.wait_for_everyone()
    if state.is_main_process:
        run_dir.merge(TEACHER, examples)
    state.wait_for_everyone()
    done = run_dir.finished(TEACHER)
    return {e.id: done[e.id]["output_ids"] for e in examples}, ctx.prompts


# ---------------------------------------------------------------------------------------------
# Step 3: save and report


@dataclasses.dataclass(frozen=True)
class AlignSpec:
    """One `bild align` run, as typed settings."""

    task: Task
    small: str
    large: str
    teacher: str  # "large" or "bild" (lossless)
    data: DataSpec
    prompt: PromptSpec
    generation: GenerationSpec
    train: TrainSpec
    output_dir: str
    models: ModelSpec = ModelSpec()
    eval_samples: int | None = None
    overwrite: bool = False
    options: dict = dataclasses.field(default_factory=dict)  # the command line's options, for config.json


def teacher_settings(spec: AlignSpec, device) -> dict:
    """What changes the large model's outputs: the example scripts' settings, without thresholds
    (lossless BiLD gives the same outputs) or the number of processes (any split gives the same)."""
    return generation_settings(spec.task, {"large": spec.large}, None, spec.data, spec.prompt, spec.generation,
                               spec.models, device, None)


def run_align(spec: AlignSpec) -> dict | None:
    """Generate, fine-tune, save, report; returns the report on the main process (None on the others)."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    task, train = spec.task, spec.train
    if spec.models.device not in ("auto", "cpu"):
        raise SystemExit("bild align places its processes with accelerate: --device is auto or cpu "
                         "(choose GPUs with CUDA_VISIBLE_DEVICES or accelerate launch).")
    output_dir = Path(spec.output_dir)
    if output_dir.resolve() == Path(spec.small).resolve():
        raise SystemExit("--output_dir must not be the small model's folder: its weights are read before training.")
    accelerator = Accelerator(gradient_accumulation_steps=train.gradient_accumulation_steps,
                              cpu=cpu_only(spec.models.device))
    run_dir = RunDir(output_dir / "align", products=(CHECKPOINT,))
    if accelerator.is_main_process:
        run_dir.start(teacher_settings(spec, accelerator.device), spec.overwrite, args=spec.options,
                      argv=sys.argv[1:], environment=environment(accelerator.device, accelerator.num_processes))
    accelerator.wait_for_everyone()
    with accelerator.main_process_first():
        examples = load_examples(task, spec.data)
    train_examples, held_out = held_out_split(examples, spec.eval_samples)

    outputs, prompts = teacher_outputs(spec, examples, run_dir, accelerator)
    encoder_decoder = is_encoder_decoder(spec.small)
    pad_token_id = prompts.tokenizer.pad_token_id
    features = build_features(train_examples, outputs, prompts, encoder_decoder)
    slices = {"held_out": build_features(held_out, outputs, prompts, encoder_decoder),
              "train": features[: len(held_out)]}

    set_seed(train.seed)
    model = load_student(spec.small, train, encoder_decoder).to(accelerator.device)
    checkpoint = run_dir.path / CHECKPOINT
    settings = {**training_settings(train, accelerator.num_processes), "seed": train.seed, "small": spec.small,
                "teacher_outputs": fingerprint({e.id: outputs[e.id] for e in train_examples})}
    progress = {"fingerprint": fingerprint(settings), "settings": settings, "epoch": 0, "batches": 0,
                "updates": 0, "loss_sum": 0.0, "epoch_losses": [], "seconds": 0.0, "before": None}
    measure = partial(agreement, pad_token_id=pad_token_id, batch_size=train.per_device_eval_batch_size)
    if accelerator.is_main_process and not checkpoint.exists():  # else the checkpoint holds it
        progress["before"] = {name: measure(model, part) for name, part in slices.items()}
    model, progress = fine_tune(model, features, pad_token_id, train, accelerator, checkpoint, progress)
    if not accelerator.is_main_process:
        accelerator.wait_for_everyone()
        return None
    before = progress["before"]
    after = {name: measure(model, part) for name, part in slices.items()}
    save_student(model, spec.small, spec.large, output_dir)
    report = {
        "task": task.name, "small": spec.small, "large": spec.large, "output_dir": str(output_dir),
        "teacher": "large greedy" if spec.teacher == "large" else "BiLD lossless (= large greedy)",
        "examples": {"train": len(train_examples), "held_out": len(held_out)},
        "agreement": {name: {"before": before[name], "after": after[name]} for name in slices},
        "agreement_definition": "teacher-forced: share of the large model's output positions where the small "
                                "model's argmax next token is the large model's token (token_agreement), and "
                                "share of examples where every position agrees (sequence_agreement)",
        "training": {**training_settings(train, accelerator.num_processes), "epoch_losses": progress["epoch_losses"],
                     "seconds": progress["seconds"]},
        "environment": environment(accelerator.device, accelerator.num_processes),
    }
    atomic_write_json(output_dir / "align_report.json", report)
    checkpoint.unlink(missing_ok=True)  # the aligned model is the finished work now
    print_report(report)
    accelerator.wait_for_everyone()
    return report


def print_report(report: dict, console=None) -> None:
    from rich.table import Table

    console = console or console_for(120)
    table = Table(title=f"Agreement with the large model's greedy tokens ({report['teacher']})")
    for column in ("slice", "examples", "token before", "token after", "sequence before", "sequence after"):
        table.add_column(column, justify="left" if column == "slice" else "right")
    for name, a in report["agreement"].items():
        table.add_row(name, str(a["before"]["examples"]),
                      *(f"{a[when][key]:.3f}" for key in ("token_agreement", "sequence_agreement")
                        for when in ("before", "after")))
    console.print(table)
    console.print(f"Aligned small model (from_pretrained) in {report['output_dir']}; report in align_report.json")

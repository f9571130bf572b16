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

import argparse
import dataclasses
import gc
import inspect
import math
import sys
import time
from functools import partial
from pathlib import Path

import torch

from .config import BiLDConfig
from .eval import cli
from .eval.data import DataSpec, Example, load_examples
from .eval.evaluate import GenerationSpec, environment, generation_settings, run_context
from .eval.prompts import PromptSpec
from .eval.report import console_for
from .eval.rundir import RunDir, atomic_write, atomic_write_json, fingerprint
from .eval.runner import RunContext, run_system
from .eval.systems import ModelSpec, cpu_only, generated_length, is_encoder_decoder, load_models
from .eval.tasks import Task

TEACHER = "large"  # the system name of the teacher outputs' file: predictions_large.jsonl
IGNORE = -100  # label of positions without loss (transformers' convention)


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
# Training data and agreement


def example_features(prompt_ids: list[int], output_ids: list[int], encoder_decoder: bool) -> dict[str, list[int]]:
    """Model inputs and labels of one (prompt, large output) pair; loss only on the output.

    Encoder-decoder: the prompt goes to the encoder and the model shifts the labels into decoder
    inputs. Decoder-only: one sequence prompt + output, with the prompt's labels ignored.
    """
    if encoder_decoder:
        return {"input_ids": prompt_ids, "labels": output_ids}
    return {"input_ids": prompt_ids + output_ids, "labels": [IGNORE] * len(prompt_ids) + output_ids}


def build_features(examples: list[Example], outputs: dict[str, list[int]], prompts,
                   encoder_decoder: bool) -> list[dict]:
    """Features of `examples`, their prompts tokenized as the generation batches tokenize them."""
    return [example_features(prompts.batch([e.source])["input_ids"][0].tolist(), outputs[e.id], encoder_decoder)
            for e in examples]


def collate(features: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch: input_ids with the pad token (masked out), labels with IGNORE."""
    rows = len(features)
    inputs = max(len(f["input_ids"]) for f in features)
    labels = max(len(f["labels"]) for f in features)
    batch = {"input_ids": torch.full((rows, inputs), pad_token_id, dtype=torch.long),
             "attention_mask": torch.zeros((rows, inputs), dtype=torch.long),
             "labels": torch.full((rows, labels), IGNORE, dtype=torch.long)}
    for i, f in enumerate(features):
        batch["input_ids"][i, : len(f["input_ids"])] = torch.tensor(f["input_ids"])
        batch["attention_mask"][i, : len(f["input_ids"])] = 1
        batch["labels"][i, : len(f["labels"])] = torch.tensor(f["labels"])
    return batch


def slices_head(model) -> bool:
    """Whether the (decoder-only) model can run its output layer on the last positions only (`logits_to_keep`)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # under a peft wrapper
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def output_logits(model, batch: dict[str, torch.Tensor], encoder_decoder: bool,
                  slice_head: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, targets) at the positions that predict output tokens: (B, K, V) and (B, K), IGNORE where none.

    A decoder-only batch is mostly prompt, and full logits over a 150k-word vocabulary at every
    position dominate training memory; with `slice_head` the output layer runs only from the first
    position that predicts an output token (in any row) on. The logits there are the same either way.
    """
    if encoder_decoder:
        return model(**batch).logits, batch["labels"]  # position t predicts labels[:, t]
    targets = batch["labels"][:, 1:]  # position t predicts token t + 1
    labelled = (targets != IGNORE).any(dim=0).nonzero()
    first = int(labelled[0]) if slice_head and len(labelled) else 0
    keep = batch["input_ids"].shape[1] - first
    extra = {"logits_to_keep": keep} if slice_head else {}
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **extra).logits
    return logits[:, -keep:-1], targets[:, first:]


def output_loss(model, batch: dict[str, torch.Tensor], encoder_decoder: bool, slice_head: bool) -> torch.Tensor:
    """Mean cross-entropy over the output tokens (the models' own loss), in float32 on those positions only."""
    logits, targets = output_logits(model, batch, encoder_decoder, slice_head)
    scored = targets != IGNORE
    return torch.nn.functional.cross_entropy(logits[scored].float(), targets[scored])


@torch.no_grad()
def agreement(model, features: list[dict], pad_token_id: int, batch_size: int) -> dict:
    """Teacher-forced agreement of `model` with the large model's outputs in `features` (module docstring)."""
    was_training = model.training
    model.eval()
    hits = positions = whole = 0
    for start in range(0, len(features), batch_size):
        batch = {k: v.to(model.device) for k, v in collate(features[start: start + batch_size], pad_token_id).items()}
        logits, target = output_logits(model, batch, model.config.is_encoder_decoder, slices_head(model))
        predicted = logits.argmax(-1)
        scored = target != IGNORE
        agree = (predicted == target) & scored
        hits += int(agree.sum())
        positions += int(scored.sum())
        whole += int((agree | ~scored).all(dim=1).sum())
    model.train(was_training)
    return {"token_agreement": hits / max(positions, 1), "sequence_agreement": whole / max(len(features), 1),
            "positions": positions, "examples": len(features)}


def held_out_split(examples: list[Example], eval_samples: int | None) -> tuple[list[Example], list[Example]]:
    """(training inputs, held-out inputs): the last `eval_samples` (default 10%, at most 200) are held out."""
    n = eval_samples if eval_samples is not None else min(200, max(1, len(examples) // 10))
    if not 1 <= n < len(examples):
        raise SystemExit(f"--eval_samples must be between 1 and {len(examples) - 1} for {len(examples)} inputs "
                         f"(one or more must remain to train on); got {n}.")
    return examples[:-n], examples[-n:]


# ---------------------------------------------------------------------------------------------
# Step 2: fine-tuning


def load_student(small: str, train: TrainSpec, encoder_decoder: bool):
    """The small model in float32 (mixed precision, if any, comes from accelerate), LoRA-wrapped if asked."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    auto = AutoModelForSeq2SeqLM if encoder_decoder else AutoModelForCausalLM
    model = auto.from_pretrained(small, dtype=torch.float32)
    if not train.lora_r:
        return model
    try:
        from peft import LoraConfig, TaskType, get_peft_model
    except ImportError:
        raise SystemExit("--lora_r needs peft: pip install 'bild[lora]' (or pip install peft).") from None
    targets = train.lora_target_modules if train.lora_target_modules == "all-linear" else \
        train.lora_target_modules.split(",")
    config = LoraConfig(task_type=TaskType.SEQ_2_SEQ_LM if encoder_decoder else TaskType.CAUSAL_LM, r=train.lora_r,
                        lora_alpha=train.lora_alpha or 2 * train.lora_r, lora_dropout=train.lora_dropout,
                        target_modules=targets)
    return get_peft_model(model, config)


CHECKPOINT = "checkpoint.pt"  # under align/: the training so far, deleted once the aligned model is saved


def epoch_loader(features: list[dict], epoch: int, pad_token_id: int, train: TrainSpec, accelerator):
    """This epoch's batches, shuffled by (seed, epoch) alone, so a resumed run sees the order an uninterrupted one does."""
    from torch.utils.data import DataLoader

    generator = torch.Generator().manual_seed(train.seed + epoch)
    order = torch.randperm(len(features), generator=generator).tolist()
    # Its own generator: a DataLoader draws a seed when iterated, which must not move the global random
    # state that dropout uses (a resumed run iterates a loader that an uninterrupted run had begun earlier).
    loader = DataLoader([features[i] for i in order], batch_size=train.per_device_train_batch_size, shuffle=False,
                        collate_fn=partial(collate, pad_token_id=pad_token_id), generator=generator)
    return accelerator.prepare_data_loader(loader)


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().clone() for name, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(path: Path, model, optimizer, scheduler, progress: dict, accelerator) -> None:
    """The trainable weights, optimizer, scheduler, random state and progress, in one file replaced atomically.

    Written by the main process: the trainable weights and optimizer state are the same on every process.
    """
    if accelerator.is_main_process:
        state = {"trainable": trainable_state(accelerator.unwrap_model(model)), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state(), "progress": progress}
        atomic_write(path, lambda handle: torch.save(state, handle), binary=True)
    accelerator.wait_for_everyone()


def load_checkpoint(path: Path, model, optimizer, scheduler, fingerprint: str, accelerator) -> dict | None:
    """Restore a checkpoint made with the same training settings; its progress, or None if there is none."""
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    progress = state["progress"]
    if progress["fingerprint"] != fingerprint:
        raise SystemExit(f"{path} holds a training run with other settings ({progress['settings']}). Rerun with "
                         "those settings to resume it, or delete the file (or pass --overwrite_output_dir) to train "
                         "afresh.")
    unwrapped = accelerator.unwrap_model(model)
    params = dict(unwrapped.named_parameters())
    with torch.no_grad():
        for name, value in state["trainable"].items():
            params[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])  # dropout draws as an uninterrupted run's (exactly so for one process)
    return progress


def fine_tune(model, features: list[dict], pad_token_id: int, train: TrainSpec, accelerator,
              checkpoint: Path, progress: dict):
    """Train on `features` for --num_train_epochs; return the unwrapped model and the final progress.

    After every epoch (and every --save_steps updates) the training so far goes to `checkpoint`; a
    rerun with the same settings resumes from it (same batches, same schedule) instead of starting
    over. `progress` is the new run's bookkeeping (with the settings' fingerprint); a checkpoint's replaces it.
    """
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    encoder_decoder = model.config.is_encoder_decoder
    slice_head = not encoder_decoder and slices_head(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=train.learning_rate,
                                  weight_decay=train.weight_decay)
    batches = len(epoch_loader(features, 0, pad_token_id, train, accelerator))  # per process and epoch
    per_epoch = math.ceil(batches / train.gradient_accumulation_steps)
    # Counted in single-process updates: accelerate steps a prepared scheduler once per process.
    scheduler = get_scheduler(train.lr_scheduler_type, optimizer, num_warmup_steps=train.warmup_steps,
                              num_training_steps=per_epoch * train.num_train_epochs)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    progress = load_checkpoint(checkpoint, model, optimizer, scheduler, progress["fingerprint"], accelerator) or progress
    if progress["updates"]:
        accelerator.print(f"Resuming the fine-tuning from {checkpoint}: epoch {progress['epoch'] + 1}, "
                          f"{progress['updates']} of {per_epoch * train.num_train_epochs} updates done.")
    model.train()
    mark = time.perf_counter()

    def save(progress: dict) -> None:
        nonlocal mark
        now = time.perf_counter()
        progress["seconds"] += now - mark  # training time, summed over resumed runs
        mark = now
        save_checkpoint(checkpoint, model, optimizer, scheduler, progress, accelerator)

    with tqdm(total=per_epoch * train.num_train_epochs, initial=progress["updates"], desc="fine-tune", unit="step",
              disable=not accelerator.is_main_process) as bar:
        while progress["epoch"] < train.num_train_epochs:
            loader = epoch_loader(features, progress["epoch"], pad_token_id, train, accelerator)
            if progress["batches"]:
                loader = accelerator.skip_first_batches(loader, progress["batches"])
            for batch in loader:
                with accelerator.accumulate(model):
                    loss = output_loss(model, batch, encoder_decoder, slice_head)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and train.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(model.parameters(), train.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                progress["batches"] += 1
                progress["loss_sum"] += loss.item()
                if accelerator.sync_gradients:
                    progress["updates"] += 1
                    bar.update()
                    bar.set_postfix(loss=f"{loss.item():.3f}")
                    if train.save_steps and progress["updates"] % train.save_steps == 0 and progress["batches"] < batches:
                        save(progress)
            mean = accelerator.gather(torch.tensor([progress["loss_sum"] / max(progress["batches"], 1)],
                                                   device=accelerator.device))
            progress.update(epoch=progress["epoch"] + 1, batches=0, loss_sum=0.0,
                            epoch_losses=progress["epoch_losses"] + [float(mean.mean())])
            save(progress)
    accelerator.wait_for_everyone()
    model = accelerator.unwrap_model(model)
    if train.lora_r:
        model = model.merge_and_unload()  # an ordinary model again: from_pretrained needs no peft
    return model, progress


# ---------------------------------------------------------------------------------------------
# Step 3: save and report


def save_student(model, small: str, large: str, output_dir: Path) -> None:
    """The model in the small model's own stored dtype, and the small model's tokenizer (else the large's)."""
    from transformers import AutoConfig, AutoTokenizer

    stored = getattr(AutoConfig.from_pretrained(small), "dtype", None)
    if isinstance(stored, str):
        stored = getattr(torch, stored)
    model.to(stored or torch.float32).save_pretrained(output_dir)
    for path in (small, large):
        try:
            AutoTokenizer.from_pretrained(path).save_pretrained(output_dir)
            return
        except (OSError, ValueError):
            continue


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    """The fine-tuning's settings (see `bild align --help`)."""

    learning_rate: float = 5e-5
    num_train_epochs: int = 3
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_scheduler_type: str = "linear"
    save_steps: int = 0
    max_grad_norm: float = 1.0
    lora_r: int = 0
    lora_alpha: int | None = None
    lora_dropout: float = 0.05
    lora_target_modules: str = "all-linear"
    seed: int = 42


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


def align_spec(args: argparse.Namespace) -> AlignSpec:
    """`bild align`'s options as an AlignSpec (split: train, else validation, else test)."""
    task = cli.task_of(args)
    split = cli.chosen_split(args, ("train", "validation", "test"))
    train = TrainSpec(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainSpec)})
    return AlignSpec(task, args.small, args.large, args.teacher, cli.data_spec(task, args, split),
                     cli.prompt_spec(args), cli.generation_spec(task, args), train, args.output_dir,
                     cli.model_spec(args), args.eval_samples, args.overwrite_output_dir, cli.options(args))


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


def training_settings(train: TrainSpec, num_processes: int) -> dict:
    lora = {"r": train.lora_r, "alpha": train.lora_alpha or 2 * train.lora_r, "dropout": train.lora_dropout,
            "target_modules": train.lora_target_modules}
    return {"learning_rate": train.learning_rate, "num_train_epochs": train.num_train_epochs,
            "per_device_train_batch_size": train.per_device_train_batch_size,
            "gradient_accumulation_steps": train.gradient_accumulation_steps, "num_processes": num_processes,
            "lr_scheduler_type": train.lr_scheduler_type, "warmup_steps": train.warmup_steps,
            "weight_decay": train.weight_decay, "max_grad_norm": train.max_grad_norm,
            "lora": lora if train.lora_r else None}


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


def align_command_parser(subparsers=None) -> argparse.ArgumentParser:
    description = ("Fine-tune the small model on the large model's greedy outputs (sequence-level distillation), so "
                   "that BiLD accepts more of its drafts; report teacher-forced agreement before and after.")
    parser = cli.parser(description, "bild align", subparsers, "align",
                        "fine-tune the small model to agree with the large")
    cli.add_task_argument(parser)
    models = cli.add_model_arguments(parser, device_map=False, device_help="auto (accelerate's choice, one device per "
                                 "process) or cpu; pick GPUs with CUDA_VISIBLE_DEVICES or accelerate launch")
    # Each process holds whole models on its own device: accelerate's data parallelism.
    parser.set_defaults(device_map=None)
    models.add_argument("--teacher", choices=("large", "bild"), default="large",
                        help="produce the large model's greedy outputs with it alone, or with lossless BiLD "
                             "(rollback 0: identical outputs, usually faster)")
    data = cli.add_data_arguments(parser, None, split_help="split of the training inputs (None: train, else "
                                                           "validation, else test)")
    data.add_argument("--eval_samples", type=int, default=None,
                        help="hold out the last N inputs to measure agreement (default: 10%%, at most 200)")
    cli.add_prompt_arguments(parser, None, batch_help="batch size for generating the large model's outputs")
    train = parser.add_argument_group("training")
    train.add_argument("--learning_rate", type=float, default=5e-5)
    train.add_argument("--num_train_epochs", type=int, default=3)
    train.add_argument("--per_device_train_batch_size", type=int, default=8)
    train.add_argument("--per_device_eval_batch_size", type=int, default=8, help="batch size of the agreement")
    train.add_argument("--gradient_accumulation_steps", type=int, default=1)
    train.add_argument("--weight_decay", type=float, default=0.0)
    train.add_argument("--warmup_steps", type=int, default=0)
    train.add_argument("--lr_scheduler_type", default="linear", choices=("linear", "cosine", "constant",
                                                                          "constant_with_warmup"))
    train.add_argument("--save_steps", type=int, default=0,
                       help="also checkpoint the training every N updates (it is checkpointed after every epoch); "
                            "a rerun with the same settings resumes from the checkpoint")
    train.add_argument("--max_grad_norm", type=float, default=1.0, help="clip gradients to this norm (0: no clipping)")
    lora = parser.add_argument_group("LoRA (needs peft)")
    lora.add_argument("--lora_r", type=int, default=0, help="LoRA rank; 0 (default) fine-tunes every weight")
    lora.add_argument("--lora_alpha", type=int, default=None, help="default: 2 x rank")
    lora.add_argument("--lora_dropout", type=float, default=0.05)
    lora.add_argument("--lora_target_modules", default="all-linear",
                      help="comma-separated module names, or all-linear (default)")
    cli.add_output_arguments(parser, "the aligned small model (from_pretrained folder), its report, and align/ with "
                                     "the large model's outputs; rerun with the same folder to reuse them",
                             "discard the large model's outputs in it", required=True)
    if subparsers is not None:
        parser.set_defaults(func=align_command)
    return parser


def align_command(args: argparse.Namespace) -> int:
    run_align(align_spec(args))
    return 0


def main(argv=None) -> int:
    return align_command(align_command_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

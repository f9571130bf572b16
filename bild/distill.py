"""Sequence-level distillation for `bild align`: (prompt, large output) features, teacher-forced agreement,
and the resumable fine-tuning loop under accelerate (checkpointed, optionally LoRA through peft)."""

from __future__ import annotations

import dataclasses
import inspect
import math
import time
from functools import partial
from pathlib import Path

import torch

from .eval.data import Example
from .eval.rundir import atomic_write

IGNORE = -100  # label of positions without loss (transformers' convention)
CHECKPOINT = "checkpoint.pt"  # under align/: the training so far, deleted once the aligned model is saved


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


def training_settings(train: TrainSpec, num_processes: int) -> dict:
    lora = {"r": train.lora_r, "alpha": train.lora_alpha or 2 * train.lora_r, "dropout": train.lora_dropout,
            "target_modules": train.lora_target_modules}
    return {"learning_rate": train.learning_rate, "num_train_epochs": train.num_train_epochs,
            "per_device_train_batch_size": train.per_device_train_batch_size,
            "gradient_accumulation_steps": train.gradient_accumulation_steps, "num_processes": num_processes,
            "lr_scheduler_type": train.lr_scheduler_type, "warmup_steps": train.warmup_steps,
            "weight_decay": train.weight_decay, "max_grad_norm": train.max_grad_norm,
            "lora": lora if train.lora_r else None}


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
# The result


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

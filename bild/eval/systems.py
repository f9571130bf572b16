"""The systems a run compares, over loaded models: ``bild`` (and further settings ``bild-fb...``),
``large`` and ``small`` (greedy ``generate``), ``assisted`` (transformers' assisted generation with the
small model as assistant) and ``model`` (one model given with ``--model PATH``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..config import BiLDConfig
from ..frontier import format_threshold
from ..generator import BiLDGenerator
from ..hardware import fastest_dtype, pair_dtypes, rule_dtype
from ..stats import BiLDStats

BASELINES = ("large", "small", "assisted")
# Which loaded models each system needs.
SYSTEM_ROLES = {
    "bild": ("small", "large"),
    "large": ("large",),
    "small": ("small",),
    "assisted": ("small", "large"),
    "model": ("model",),
}

# A system's generate: (inputs, generate kwargs) -> (new tokens per row, BiLDStats or None).
GenerateFn = Callable[[dict, dict], tuple[list[torch.Tensor], "BiLDStats | None"]]


@dataclass(frozen=True)
class ModelSpec:
    """How models are loaded: weights' dtype ("auto": fast on the device, `bild.hardware`), device ("auto":
    accelerate's), device_map."""

    dtype: str = "auto"
    device: str = "auto"
    device_map: str | None = None


@dataclass(frozen=True)
class DraftVocabSpec:
    """BiLD's small model drafts from the `size` tokens used most in the references of `file` (bild.draft_vocab)."""

    size: int
    file: str

    def token_ids(self, task, columns: tuple[str, str], tokenizer, always=()) -> torch.Tensor:
        from ..draft_vocab import frequent_tokens
        from .data import DataSpec, load_examples

        examples = load_examples(task, DataSpec(None, None, {"train": self.file}, "train", None, columns))
        return frequent_tokens(tokenizer, [e.reference for e in examples], self.size, always)


@dataclass
class LoadedModels:
    """role -> model, role -> tokenizer (None where a folder has none), whether they are seq2seq, and how a pair's
    dtypes were chosen (`bild.hardware.PairChoice`, where dtype "auto" measured them)."""

    models: dict
    tokenizers: dict
    encoder_decoder: bool
    dtype_choice: object = None

    def reference_tokenizer(self):
        """The tokenizer of the reference model (large, else the only one), else any there is."""
        role = self.reference_role
        tokenizer = self.tokenizers[role] or next((t for t in self.tokenizers.values() if t is not None), None)
        if tokenizer is None:
            raise SystemExit(f"No tokenizer found beside the models ({', '.join(self.models)}).")
        return tokenizer

    @property
    def reference_role(self) -> str:
        return "large" if "large" in self.models else next(iter(self.models))

    def system(self, name: str, thresholds: BiLDConfig | None = None, draft_vocab=None) -> GenerateFn:
        """The generate function of system `name` over the models its roles need (draft_vocab: BiLD's, or None)."""
        return make_system(name, {r: self.models[r] for r in roles_of(name)}, thresholds, self.tokenizers, draft_vocab)


def is_bild_system(name: str) -> bool:
    """``bild`` (the thresholds of --bild_fallback/--bild_rollback) or a further setting ``bild-fb...``."""
    return name == "bild" or name.startswith("bild-")


def bild_system_name(config: BiLDConfig) -> str:
    """The system (and file) name of a further BiLD setting, e.g. ``bild-fb0.4-rb5-n10``."""
    keep = {None: "", True: "-keep", False: "-nokeep"}[config.keep_fallback_draft]
    return f"bild-fb{format_threshold(config.fallback_threshold)}-rb{config.rollback_threshold:g}-n{config.max_small_steps}{keep}"


def roles_of(system: str) -> tuple[str, ...]:
    """The loaded models (by role) that `system` needs."""
    return SYSTEM_ROLES["bild" if is_bild_system(system) else system]


def load_tokenizer(path: str, encoder_decoder: bool):
    """The tokenizer of a model folder, padded on the side generation needs."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "right" if encoder_decoder else "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def maybe_tokenizer(path: str, encoder_decoder: bool):
    try:
        return load_tokenizer(path, encoder_decoder)
    except (OSError, ValueError):
        return None


def is_encoder_decoder(path: str) -> bool:
    from transformers import AutoConfig

    return bool(AutoConfig.from_pretrained(path).is_encoder_decoder)


def load_model(path: str, dtype: str, device: torch.device, device_map: str | None, width: int = 1):
    """A causal or seq2seq LM in eval mode, on `device` (or spread by `device_map`).

    dtype "auto": fast on this machine (`bild.hardware`): bfloat16 where the device computes it natively, else the
    dtype that measured forwards find faster for the job (`width`: tokens per pass; 1 decodes step by step), or
    `width=None`: float32 for now, the caller measures (a pair's dtypes are chosen together: `load_models`)."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    auto = AutoModelForSeq2SeqLM if is_encoder_decoder(path) else AutoModelForCausalLM
    measure = dtype == "auto" and rule_dtype(device) is None
    torch_dtype = getattr(torch, dtype) if dtype != "auto" else (rule_dtype(device) or torch.float32)
    if device_map:
        model = auto.from_pretrained(path, dtype=torch_dtype, device_map=device_map).eval()
    else:
        model = auto.from_pretrained(path, dtype=torch_dtype).to(device).eval()
    if measure and width is not None:  # no rule for this device: measure
        fastest_dtype(model, width)
    return model


def load_models(paths: dict[str, str], spec: ModelSpec, device: torch.device, max_drafts: int = 10,
                drafting: str = "auto", job=None) -> LoadedModels:
    """Every model of `paths` (role -> path) and its tokenizer. With dtype "auto" and no rule for the device, a small
    and a large model are measured together and given the dtypes that make BiLD's job shortest
    (`bild.hardware.pair_dtypes`; `drafting`: "auto" where the large model may decode alone, "always" for a numeric
    fallback threshold; `job`: a function of the loaded models and tokenizers giving the job's shape,
    {"prompt_tokens": ..., "new_tokens": ...}, else `bild.hardware.DEFAULT_JOB`'s); `loaded.dtype_choice` says how."""
    encoder_decoder = is_encoder_decoder(next(iter(paths.values())))
    pair = {"small", "large"} <= set(paths)
    models = {role: load_model(path, spec.dtype, device, spec.device_map,
                               None if pair and role in ("small", "large") else 1)
              for role, path in paths.items()}
    tokenizers = {role: maybe_tokenizer(path, encoder_decoder) for role, path in paths.items()}
    loaded = LoadedModels(models, tokenizers, encoder_decoder)
    if pair and spec.dtype == "auto" and rule_dtype(device) is None:
        loaded.dtype_choice = pair_dtypes(models["small"], models["large"], max_drafts, drafting,
                                          **(job(loaded) if job is not None else {}))
    return loaded


def model_dtypes(models: dict) -> dict[str, str]:
    """role -> the dtype each model generates in (for headers and metrics.json)."""
    return {role: str(next(m.parameters()).dtype).replace("torch.", "") for role, m in models.items()}


def new_tokens(sequences: torch.Tensor, inputs: dict, encoder_decoder: bool) -> list[torch.Tensor]:
    """The generated part of each row: after the (padded) prompt, or after the decoder start token."""
    start = 1 if encoder_decoder else inputs["input_ids"].shape[1]
    return list(sequences[:, start:])


def make_system(name: str, models: dict, thresholds: BiLDConfig | None, tokenizers: dict,
                draft_vocab=None) -> GenerateFn:
    """The generate function of system `name` over the loaded `models` (keyed by role).

    `thresholds` and `draft_vocab` (token ids the small model drafts from, or None) are those of a BiLD system
    (``bild`` or ``bild-fb...``); other systems ignore them.
    """
    encoder_decoder = next(iter(models.values())).config.is_encoder_decoder
    if is_bild_system(name):
        generator = BiLDGenerator(
            models["small"], models["large"], thresholds.fallback_threshold, thresholds.rollback_threshold,
            thresholds.max_small_steps, keep_fallback_draft=thresholds.keep_fallback_draft,
            small_tokenizer=tokenizers["small"], large_tokenizer=tokenizers["large"], draft_vocab=draft_vocab,
        )

        def generate(inputs, kwargs):
            out = generator.generate(**inputs, **kwargs, return_dict_in_generate=True)
            return new_tokens(out.sequences, inputs, encoder_decoder), out.stats

        return generate
    if name == "assisted":
        return assisted(models["large"], models["small"], encoder_decoder)
    model = models[name]

    def generate(inputs, kwargs):
        return new_tokens(model.generate(**inputs, **kwargs), inputs, encoder_decoder), None

    return generate


def assisted(large, small, encoder_decoder: bool) -> GenerateFn:
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

"""A GGUF checkpoint -> an ordinary transformers folder (safetensors), with greedy generation defaults."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch


def convert_gguf_to_hf(
    gguf_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    dtype: torch.dtype = torch.bfloat16,
    eos_tokens: Sequence[str] = (),
) -> Path:
    """Dequantize a GGUF checkpoint into a plain transformers folder (safetensors, ``dtype``).

    The folder gets the model, the tokenizer (with its chat template) and a generation config
    whose defaults are greedy decoding and whose eos ids are the GGUF's eos token followed by
    ``eos_tokens``. The returned folder loads with ``AutoModelForCausalLM.from_pretrained``.
    """
    # Imported here so that listing, downloading and the tests do not pay for importing transformers.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path).resolve()
    out_dir = Path(out_dir)
    load_kwargs = {"gguf_file": str(gguf_path)}
    try:
        from transformers import GgufConfig
    except ImportError:  # releases before GgufConfig always dequantize GGUF weights
        pass
    else:
        # Without it, a machine with GGUF matmul kernels would keep the weights packed in blocks.
        load_kwargs["quantization_config"] = GgufConfig(dequantize=True)

    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=dtype, **load_kwargs)
    config = gguf_model.config
    # save_pretrained refuses any model whose config still says it is GGUF-quantized.
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.dtype = dtype
    # The temporary folder the GGUF came from means nothing once the model is cached.
    config.name_or_path = ""

    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    state = {key: value.to(dtype) for key, value in gguf_model.state_dict().items()}
    del gguf_model
    model.load_state_dict(state, strict=True)
    del state

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=str(gguf_path))
    # The GGUF carries no length limit, which would leave the tokenizer's at "unbounded".
    if getattr(config, "max_position_embeddings", None):
        tokenizer.model_max_length = config.max_position_embeddings
    model.generation_config = greedy_generation_config(config, tokenizer, eos_tokens)

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def greedy_generation_config(config, tokenizer, eos_tokens: Sequence[str]):
    """Generation defaults: greedy (no sampling parameters) and every end-of-turn token as eos.

    The upstream instruct models ship sampling defaults (temperature 0.7, top_p 0.8, ...); they are
    left out on purpose, so that ``generate()`` without arguments is greedy and reproducible.
    """
    from transformers import GenerationConfig

    gguf_eos = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    candidates = [*gguf_eos, *(tokenizer.convert_tokens_to_ids(token) for token in eos_tokens)]
    # A token missing from the vocabulary comes back as None or as the unknown token.
    eos_ids = list(dict.fromkeys(i for i in candidates if i is not None and i != tokenizer.unk_token_id))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else config.pad_token_id
    if pad_id is None and eos_ids:
        pad_id = eos_ids[0]
    return GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=eos_ids[0] if len(eos_ids) == 1 else (eos_ids or None),
        pad_token_id=pad_id,
        do_sample=False,
    )

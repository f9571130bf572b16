"""What a model's architecture allows BiLD to do exactly: refuse it, share one cache across rows, or not.

BiLD rolls a model back by cropping its key/value cache, and batches rows of different committed
lengths in one cache by masking the slots of rejected drafts (holes) and giving explicit position
ids. Three things break that, and each is decided here from the model alone, before generation:
- a state that is not a per-token key/value cache (recurrent, state-space, linear attention) cannot
  be cropped: refused;
- a forward without a cache argument recomputes nothing and keeps nothing: refused;
- positions not taken from position ids (ALiBi from the key length, learned positions from the
  cache length) or an attention window counted in cache slots see the holes: such a batch runs
  row by row (exact, not batched). Encoder-decoder models whose decoder has only a relative position
  bias (the T5 family) batch with each row right-aligned in the cache instead of holes.
"""

from __future__ import annotations

import inspect
import sys

from transformers import PreTrainedModel
from transformers.cache_utils import Cache, get_layer_types_and_kwargs

# Attention models whose cache cannot take a block of new tokens, or cannot mask cached slots.
_REFUSED_TYPES = {
    "prophetnet": "its decoder accepts one new token per forward once it has a cache (n-gram streams), so drafts "
    "cannot be verified in one pass",
    "cpmant": "its relative position bias covers only the tokens of one forward, not a cache plus several new tokens",
    "xlm": "its attention mask covers only the new tokens of a forward, so cached slots cannot be masked",
    "fsmt": "its decoder is not causal within one forward in this transformers version (the logits at a position "
    "change with the tokens after it), so several drafts cannot be verified in one pass",
}
_KV_LAYER_TYPES = {"full_attention", "sliding_attention", "chunked_attention", "dummy"}
_RECURRENT_LAYER_TYPES = {"conv", "linear_attention", "hybrid", "hybrid_sliding"}


def _forward_params(model: PreTrainedModel) -> set[str]:
    return set(inspect.signature(model.forward).parameters)


def _decoder_config(model: PreTrainedModel):
    return model.config.get_text_config(decoder=True)


def layer_types(model: PreTrainedModel) -> list[str]:
    try:
        return get_layer_types_and_kwargs(_decoder_config(model))[0]
    except Exception:  # configs without per-layer information: one kind of layer
        return ["full_attention"]


def sliding_window(model: PreTrainedModel) -> int | None:
    """The attention window (in tokens) of the model's windowed layers, or None without one."""
    config = _decoder_config(model)
    for name in ("sliding_window", "attention_chunk_size", "window_size"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    if "local" in str(getattr(config, "attention_layers", "")):  # GPT-Neo
        return getattr(config, "window_size", None)
    return None


#: Encoder-decoder models whose decoder sees positions only as a relative bias over cache slots, so rows
#: right-aligned in one cache see what they would alone (bild.adapters.RightAlignedEncoderDecoderAdapter).
RELATIVE_POSITION_DECODERS = {"t5", "mt5", "umt5", "longt5"}


def batches_encoder_decoder(*models: PreTrainedModel) -> bool:
    """True if a batch of these encoder-decoder models runs as one batched decoder pass, exactly."""
    return all(m.config.model_type in RELATIVE_POSITION_DECODERS for m in models)


def needs_row_by_row(model: PreTrainedModel) -> bool:
    """True if rows of different committed lengths cannot share one cache exactly (see module docstring)."""
    if model.config.is_encoder_decoder:
        return not batches_encoder_decoder(model)
    if "position_ids" not in _forward_params(model):
        return True
    return sliding_window(model) is not None


def _own_cache_classes(model: PreTrainedModel) -> list[str]:
    """Cache subclasses the model's modeling module defines (MiniMax's): BiLD only builds transformers' own."""
    module = sys.modules.get(type(model).__module__)
    return sorted(
        n for n, o in vars(module or {}).items()
        if inspect.isclass(o) and issubclass(o, Cache) and o.__module__ == getattr(module, "__name__", None)
    )


def check_architecture(model: PreTrainedModel, name: str = "large") -> None:
    """Raise ValueError if BiLD cannot roll this model back exactly."""
    kind = type(model).__name__
    params = _forward_params(model)
    if not ({"past_key_values", "cache"} & params):
        raise ValueError(
            f"The {name} model ({kind}) takes no key/value cache in its forward, so BiLD cannot keep or roll back "
            "its state. BiLD needs models with a key/value cache; use the model's own generate."
        )
    if "attention_mask" not in params:
        raise ValueError(
            f"The {name} model ({kind}) takes no attention mask, so BiLD cannot mask padding or rolled-back cache "
            "slots. BiLD needs models with a key/value cache and an attention mask; use the model's own generate."
        )
    own = _own_cache_classes(model)
    if own:
        raise ValueError(
            f"The {name} model ({kind}) needs a cache class of its own ({', '.join(own)}), which BiLD cannot crop "
            "back to a committed prefix. BiLD needs models with a key/value cache; use the model's own generate."
        )
    reason = _REFUSED_TYPES.get(getattr(model.config, "model_type", None))
    if reason:
        raise ValueError(f"BiLD cannot run the {name} model ({kind}) exactly: {reason}. Use the model's own generate.")
    other = sorted(set(layer_types(model)) - _KV_LAYER_TYPES)
    recurrent = [t for t in other if t in _RECURRENT_LAYER_TYPES]
    if recurrent:
        raise ValueError(
            f"The {name} model ({kind}) keeps a recurrent state ({', '.join(recurrent)} layers: state-space, "
            "convolution or linear attention) that cannot be rolled back; BiLD needs models with a key/value cache. "
            "Use the model's own generate."
        )
    if other:
        raise ValueError(
            f"The {name} model ({kind}) keeps a cache that is not one key/value slot per token ({', '.join(other)} "
            "layers: indexed or compressed attention), which BiLD cannot crop back to a committed prefix exactly. "
            "Use the model's own generate."
        )


def step_weights(model: PreTrainedModel) -> int:
    """The weights one decoding step reads: every parameter, less an input embedding that is only looked up
    (not shared with the output layer). For a memory-bound step this is proportional to its cost."""
    params = {id(p): p.numel() for p in model.parameters()}
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    shared = {id(p) for p in head.parameters()} if head is not None else set()
    if embedding is not None:
        for p in embedding.parameters():
            if id(p) not in shared:
                params.pop(id(p), None)
    return sum(params.values())


def step_cost_ratio(small: PreTrainedModel, large: PreTrainedModel) -> float:
    """A small-model step's cost in large-model steps, estimated from the weights each reads (`step_weights`)."""
    return step_weights(small) / max(step_weights(large), 1)

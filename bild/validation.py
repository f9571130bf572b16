"""Checks at the API boundary: every unsupported request fails here, before any generation,
with a message that says what to do instead."""

from __future__ import annotations

import weakref

import torch
from transformers import GenerationConfig, PreTrainedModel

from .architecture import check_architecture


def output_vocab_size(model: PreTrainedModel) -> int:
    head = model.get_output_embeddings()
    if isinstance(getattr(head, "out_features", None), int):  # nn.Linear, or a draft_vocab SubsetHead
        return head.out_features
    if head is not None and getattr(head, "weight", None) is not None:
        return head.weight.shape[0]
    return model.config.get_text_config().vocab_size


def _tokenizer_vocab(tokenizer) -> dict[int, str]:
    return {i: t for t, i in tokenizer.get_vocab().items()}


# Tokenizer pairs already found to agree, so that generate does not compare two 150k-entry vocabularies
# on every call: (id small, id large) -> (weak refs to both, their lengths when compared). The weak refs
# make a reused id miss; the lengths make a tokenizer that gained tokens since then be compared again.
_AGREEING: dict[tuple[int, int], tuple] = {}


def _known_to_agree(a, b) -> bool:
    hit = _AGREEING.get((id(a), id(b)))
    return hit is not None and hit[0]() is a and hit[1]() is b and hit[2] == (len(a), len(b))


def _remember_agreement(a, b) -> None:
    for key in [k for k, (ra, rb, _) in _AGREEING.items() if ra() is None or rb() is None]:
        del _AGREEING[key]
    try:
        _AGREEING[(id(a), id(b))] = (weakref.ref(a), weakref.ref(b), (len(a), len(b)))
    except TypeError:  # an object without weak references: compared on every call
        pass


def tokenizers_agree(small_tokenizer, large_tokenizer) -> bool:
    """Whether the two tokenizers map every id to the same token (remembered per pair while both live)."""
    if small_tokenizer is large_tokenizer or _known_to_agree(small_tokenizer, large_tokenizer):
        return True
    if _first_difference(small_tokenizer, large_tokenizer) is not None:
        return False
    _remember_agreement(small_tokenizer, large_tokenizer)
    return True


def _first_difference(small_tokenizer, large_tokenizer):
    a, b = _tokenizer_vocab(small_tokenizer), _tokenizer_vocab(large_tokenizer)
    differing = [i for i in set(a) | set(b) if a.get(i) != b.get(i)]
    if not differing:
        return None
    i = min(differing)
    return len(differing), i, a.get(i), b.get(i)


def check_tokenizers(small_tokenizer, large_tokenizer) -> None:
    """Raise ValueError unless the two tokenizers agree (the shared-vocabulary path, cross_tokenizer=False)."""
    if tokenizers_agree(small_tokenizer, large_tokenizer):
        return
    n, i, a, b = _first_difference(small_tokenizer, large_tokenizer)
    raise ValueError(
        f"The small and large tokenizers disagree on {n} token ids (first: id {i} is {a!r} for small, {b!r} for "
        "large), and cross_tokenizer=False asks for one shared vocabulary. Leave cross_tokenizer unset to bridge the "
        "two tokenizers (see the README), or use a small model trained with the large model's tokenizer."
    )


def bridges_tokenizers(cross_tokenizer: bool | None, small_tokenizer, large_tokenizer) -> bool:
    """Whether a pair decodes through `bild.bridge` (two vocabularies): asked for (True), refused (False), or, by
    default (None), exactly when both tokenizers are given and disagree."""
    if cross_tokenizer not in (None, True, False):
        raise ValueError(f"cross_tokenizer must be None (decide from the tokenizers), True or False, got {cross_tokenizer!r}.")
    if cross_tokenizer is False:
        return False
    given = small_tokenizer is not None and large_tokenizer is not None
    if cross_tokenizer is True and not given:
        raise ValueError("cross_tokenizer=True maps text between the two tokenizers: pass both, small_tokenizer= and "
                         "large_tokenizer=.")
    return given and (cross_tokenizer is True or not tokenizers_agree(small_tokenizer, large_tokenizer))


def check_bridged(config: GenerationConfig, cfg, static_cache: bool = False, compile=False) -> None:
    """What the two-tokenizer path cannot do exactly yet, refused before any generation."""
    if cfg.drafting_guard:
        raise ValueError("drafting_guard is not supported with two different tokenizers yet: leave drafting_guard=False.")
    if static_cache or compile:
        raise ValueError("static_cache and compile are not supported with two different tokenizers yet: leave them off.")


def check_models(small: PreTrainedModel, large: PreTrainedModel) -> None:
    """Raise ValueError unless both are transformers language models of the same kind that bild can run exactly."""
    if small is None:
        raise ValueError("BiLD needs a small model: pass `small_model=<PreTrainedModel>`.")
    for name, model in (("small", small), ("large", large)):
        if not isinstance(model, PreTrainedModel):
            raise ValueError(f"The {name} model must be a transformers PreTrainedModel, got {type(model).__name__}.")
        if model.get_output_embeddings() is None:
            raise ValueError(
                f"The {name} model ({type(model).__name__}) has no language-model head; load it with "
                "AutoModelForCausalLM or AutoModelForSeq2SeqLM."
            )
        check_architecture(model, name)
    s_ed, l_ed = small.config.is_encoder_decoder, large.config.is_encoder_decoder
    if s_ed != l_ed:
        kinds = {True: "encoder-decoder", False: "decoder-only"}
        raise ValueError(
            f"The small model is {kinds[s_ed]} ({type(small).__name__}) but the large model is {kinds[l_ed]} "
            f"({type(large).__name__}). BiLD needs two models of the same kind."
        )


def check_pair(small: PreTrainedModel, large: PreTrainedModel, small_tokenizer=None, large_tokenizer=None,
               bridged: bool = False) -> int | None:
    """Raise ValueError unless the two models can decode together; return the shared vocabulary size (None when
    `bridged`: two vocabularies, see `bild.bridge`)."""
    check_models(small, large)
    if bridged:
        return None
    vs, vl = output_vocab_size(small), output_vocab_size(large)
    if small_tokenizer is not None and large_tokenizer is not None:
        check_tokenizers(small_tokenizer, large_tokenizer)
        emitted = max(len(small_tokenizer), len(large_tokenizer))
        if min(vs, vl) < emitted:
            raise ValueError(
                f"The tokenizers have {emitted} tokens but a model's output layer has only {min(vs, vl)} rows."
            )
        return min(vs, vl)
    if vs != vl:
        raise ValueError(
            f"The small model's output vocabulary has {vs} entries and the large model's {vl}. If the embedding "
            "matrices are only padded differently, pass the tokenizers (BiLDGenerator(..., tokenizer=tok) or "
            "small_tokenizer=/large_tokenizer=) so bild can check that the vocabularies agree; if the two models "
            "have different tokenizers, pass both (small_tokenizer=, large_tokenizer=) and bild bridges them."
        )
    return vs


_UNSUPPORTED = (
    ("num_beams", lambda v: v is not None and v > 1, "beam search (num_beams > 1)", "num_beams=1"),
    ("penalty_alpha", lambda v: v is not None and v > 0, "contrastive search (penalty_alpha)", "penalty_alpha=None"),
    ("guidance_scale", lambda v: v is not None and v != 1, "classifier-free guidance (guidance_scale != 1: its processor "
     "runs the large model on the unconditional prompt one token at a time, which a verify pass over several tokens "
     "cannot feed)", "guidance_scale=None"),
    ("output_attentions", bool, "output_attentions", "output_attentions=False"),
    ("output_hidden_states", bool, "output_hidden_states", "output_hidden_states=False"),
    ("prompt_lookup_num_tokens", lambda v: v is not None, "prompt lookup decoding", "prompt_lookup_num_tokens=None"),
)


def check_generation_config(config: GenerationConfig) -> None:
    """Raise ValueError for generation settings BiLD does not support (yet)."""
    for attr, bad, what, fix in _UNSUPPORTED:
        value = getattr(config, attr, None)
        if bad(value):
            raise ValueError(
                f"BiLD does not support {what} yet. Pass {fix} to generate, or call the model's own generate for that mode."
            )
    if not config.do_sample and (config.num_return_sequences or 1) > 1:
        # As transformers: greedy decoding has one answer per prompt.
        raise ValueError(
            f"Greedy decoding returns one sequence per prompt (num_return_sequences={config.num_return_sequences}); "
            "pass do_sample=True for several sampled sequences per prompt, or num_return_sequences=1."
        )
    if config.cache_implementation not in (None, "dynamic"):
        raise ValueError(
            f"BiLD manages its own dynamic KV caches; cache_implementation={config.cache_implementation!r} is not "
            "supported. Leave cache_implementation unset."
        )


def max_positions(model: PreTrainedModel) -> int | None:
    config = model.config.get_text_config(decoder=True)
    for attr in ("max_position_embeddings", "n_positions", "max_target_positions"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None  # relative positions (T5): no hard limit


def check_lengths(models: dict[str, PreTrainedModel], prompt_length: int, max_length: int | None = None) -> None:
    """Raise ValueError if a prompt or the requested length exceeds a model's positions."""
    for name, model in models.items():
        limit = max_positions(model)
        if limit is None:
            continue
        if prompt_length > limit:
            raise ValueError(
                f"The prompt has {prompt_length} tokens but the {name} model accepts at most {limit} positions. "
                "Truncate the input (e.g. tokenizer(..., truncation=True, max_length=...))."
            )
        if max_length is not None and max_length > limit:
            raise ValueError(
                f"Generating up to {max_length} tokens needs {max_length} positions but the {name} model has "
                f"{limit}. Lower max_new_tokens/max_length to at most {limit - prompt_length} new tokens."
            )


def check_left_padding(attention_mask: torch.Tensor | None) -> None:
    if attention_mask is None or attention_mask.shape[1] == 0:
        return
    mask = attention_mask.bool()
    # Left padding means each row's ones are one contiguous block ending at the last column.
    if bool((~mask[:, -1]).any()) or bool((mask[:, :-1] & ~mask[:, 1:]).any()):
        raise ValueError(
            "Decoder-only prompts must be left-padded (a row has padding after its text). Set "
            "tokenizer.padding_side = 'left' before tokenizing the batch."
        )

"""Big Little Decoder (BiLD) as a Hub `custom_generate` repository: a thin shim over the installed `bild`.

    out = large.generate(**inputs, custom_generate="<user>/bild-generate", trust_remote_code=True,
                         small_model=small, fallback_threshold=0.6, rollback_threshold=2.0, max_new_tokens=64)

gives what `large.generate(**inputs, custom_generate=bild.bild_generate, small_model=small, ...)` gives.

transformers calls a Hub `generate` *before* any preparation: with `model` (the large model) and every
argument of the user's `generate` call except `custom_generate` and `trust_remote_code`. So this function
does not decode by itself; it re-enters transformers' `generate` with `bild_generate` as the decoding
callable, and transformers prepares the generation config, logits processors, stopping criteria,
`num_return_sequences` rows and the encoder outputs exactly as for a direct `custom_generate=bild_generate`
call, then hands them to BiLD. The code of the loop is the installed `bild` package (see requirements.txt).
"""

from transformers import GenerationMixin

from bild import bild_generate


def generate(model, *args, **kwargs):
    """BiLD decoding with `model` as the large model; the BiLD arguments are keywords of the `generate` call.

    small_model (required): the small model (same vocabulary; both decoder-only or both encoder-decoder).
    fallback_threshold: "auto" (the default): drafting decided from measured costs and acceptance; a number: the
        paper's rule, the small model hands over to the large one when its top probability is below it (0.6).
    rollback_threshold: the large model rolls back the first drafted token whose cross-entropy exceeds this;
        0.0 makes the output the large model's greedy output, token for token (float32).
    max_small_steps: the longest draft per round. Further keywords (keep_fallback_draft, fallback_rule,
    drafting_guard, cost_ratio, bild_config, small_tokenizer, large_tokenizer, static_cache, compile,
    generator, bild_streamer, bild_profile) are `bild.bild_generate`'s; everything else is `generate`'s own.
    """
    # GenerationMixin.generate, not model.generate: this is the rest of the same `generate` call (transformers
    # branched here from inside GenerationMixin.generate), and a model loaded with `trust_remote_code=True`
    # from a repository with its own `custom_generate/` has `model.generate` replaced by a partial of that
    # repository's function.
    # `tokenizer=` is the tokenizer transformers' stop strings need; a callable custom_generate never receives it
    # (transformers takes it before it looks at the callable's keywords), so it goes on as bild's large_tokenizer.
    tokenizer = kwargs.pop("tokenizer", None)
    if tokenizer is not None:
        kwargs.setdefault("large_tokenizer", tokenizer)
    # Likewise `streamer=`: transformers drops it for a callable custom_generate; bild streams through bild_streamer.
    streamer = kwargs.pop("streamer", None)
    if streamer is not None:
        kwargs.setdefault("bild_streamer", streamer)
    return GenerationMixin.generate(model, *args, custom_generate=bild_generate, **kwargs)

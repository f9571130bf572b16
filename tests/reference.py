"""A slow, independent BiLD reference: batch 1, no KV cache, every forward recomputes everything.

Written from docs/decoding.md without the library's code, so that the cached, batched
implementation can be checked against it token for token.
"""

from __future__ import annotations

import math

import torch

GUARD_ROUNDS = 4  # rounds before the drafting guard judges a row (docs/decoding.md)


def _next_logits(model, source, tokens):
    """Logits (T, V) after every token of `tokens`, recomputed from scratch."""
    ids = torch.tensor([tokens])
    with torch.no_grad():
        if model.config.is_encoder_decoder:
            return model(input_ids=torch.tensor([source]), decoder_input_ids=ids, use_cache=False).logits[0].float()
        return model(input_ids=ids, use_cache=False).logits[0].float()


def reference_bild(small, large, prompt, fb, rb, n_steps, max_new_tokens, eos, keep_fallback=False, rule="token",
                   cost_ratio=None):
    """Returns (tokens, counts) for one row. Encoder-decoder: prompt is the source and output the decoder side.

    keep_fallback: the token of a fallback step is kept as the round's last draft, which must then equal
    the large model's argmax to be accepted. rule "round": the product of the round's max probabilities so far
    is compared with fb instead of the last one. cost_ratio: the drafting guard (a round drafts only while
    rounds + cost_ratio * small steps < committed tokens, or in the first GUARD_ROUNDS rounds); None: off."""
    enc_dec = large.config.is_encoder_decoder
    start = [large.generation_config.decoder_start_token_id] if enc_dec else list(prompt)
    seq = list(start)
    limit = len(start) + max_new_tokens
    counts = dict(rounds=0, drafted=0, accepted=0, fallbacks=0, rollbacks=0, small_steps=0)
    while len(seq) < limit and not (len(seq) > len(start) and seq[-1] == eos):
        drafts, unsure, chain = [], [], 1.0
        drafting = (cost_ratio is None or counts["rounds"] < GUARD_ROUNDS
                    or counts["rounds"] + cost_ratio * counts["small_steps"] < len(seq) - len(start))
        while drafting and len(drafts) < n_steps:
            counts["small_steps"] += 1
            probs = torch.softmax(_next_logits(small, prompt, seq + drafts)[-1], -1)
            chain = chain * probs.max().item() if rule == "round" else probs.max().item()
            if chain < fb:
                counts["fallbacks"] += 1
                if keep_fallback:
                    drafts.append(int(probs.argmax()))
                    unsure.append(True)
                break
            drafts.append(int(probs.argmax()))
            unsure.append(False)
            if drafts[-1] == eos or len(seq) + len(drafts) >= limit:
                break
        counts["drafted"] += len(drafts)
        logits = _next_logits(large, prompt, seq + drafts)[len(seq) - 1:]
        logp = torch.log_softmax(logits, -1)
        accepted = len(drafts)
        for i, d in enumerate(drafts):
            if -logp[i, d].item() > (0.0 if unsure[i] else rb) and d != int(logits[i].argmax()):
                accepted = i
                counts["rollbacks"] += 1
                break
        counts["accepted"] += accepted
        counts["rounds"] += 1
        new = drafts[:accepted] + [int(logits[accepted].argmax())]
        for t in new:
            if len(seq) >= limit or (len(seq) > len(start) and seq[-1] == eos):
                break
            seq.append(t)
    return seq, counts


def large_greedy_reference(large, prompt, max_new_tokens, eos):
    return reference_bild(large, large, prompt, math.inf, 0.0, 1, max_new_tokens, eos)[0]

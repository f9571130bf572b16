"""A slow, independent BiLD reference: batch 1, no KV cache, every forward recomputes everything.

Written from docs/decoding.md without the library's code, so that the cached, batched
implementation can be checked against it token for token.
"""

from __future__ import annotations

import math

import torch

GUARD_ROUNDS = 4  # rounds before the drafting guard judges a row (docs/decoding.md)
# fallback_threshold "auto" (docs/decoding.md): confidence bin edges, each bin's prior acceptance, its weight.
AUTO_EDGES = (0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
AUTO_PRIOR = (0.15, 0.4, 0.55, 0.65, 0.75, 0.85, 0.925, 0.965, 0.985, 0.995)
AUTO_WEIGHT = 2.0


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


def reference_auto(small, large, prompt, rb, n_steps, max_new_tokens, eos, cost_ratio):
    """fallback_threshold "auto" with a fixed cost ratio, one row: returns (tokens, counts) as reference_bild.

    Before each round: q = the row's accepted / judged drafts so far (with the priors' mean worth AUTO_WEIGHT
    drafts), rate = (committed + 1) / (rounds + cost_ratio * small steps + 1), bar = cost_ratio * rate / q. The
    row drafts only if the bar is at most 1; each draft multiplies the round's chance by its bin's estimated
    acceptance (accepted + AUTO_WEIGHT * prior) / (judged + AUTO_WEIGHT), and the round stops once the chance is
    below the bar, keeping that draft (checked exactly). After the round, every draft up to and including the
    first rejected one is judged; those before it are accepted."""
    enc_dec = large.config.is_encoder_decoder
    start = [large.generation_config.decoder_start_token_id] if enc_dec else list(prompt)
    seq = list(start)
    limit = len(start) + max_new_tokens
    counts = dict(rounds=0, drafted=0, accepted=0, fallbacks=0, rollbacks=0, small_steps=0)
    bins_n = len(AUTO_EDGES) + 1
    acc, judged = [0.0] * bins_n, [0.0] * bins_n
    while len(seq) < limit and not (len(seq) > len(start) and seq[-1] == eos):
        q = (sum(acc) + AUTO_WEIGHT * sum(AUTO_PRIOR) / bins_n) / (sum(judged) + AUTO_WEIGHT)
        rate = (len(seq) - len(start) + 1) / (counts["rounds"] + cost_ratio * counts["small_steps"] + 1)
        bar = cost_ratio * rate / q
        drafts, unsure, bins, chance = [], [], [], 1.0
        while bar <= 1.0 and len(drafts) < n_steps:
            counts["small_steps"] += 1
            probs = torch.softmax(_next_logits(small, prompt, seq + drafts)[-1], -1)
            b = sum(e <= probs.max().item() for e in AUTO_EDGES)
            chance *= (acc[b] + AUTO_WEIGHT * AUTO_PRIOR[b]) / (judged[b] + AUTO_WEIGHT)
            drafts.append(int(probs.argmax()))
            bins.append(b)
            unsure.append(chance < bar)
            if chance < bar:
                counts["fallbacks"] += 1
                break
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
        for i, b in enumerate(bins[: accepted + 1]):
            judged[b] += 1
            acc[b] += i < accepted
        counts["accepted"] += accepted
        counts["rounds"] += 1
        for t in drafts[:accepted] + [int(logits[accepted].argmax())]:
            if len(seq) >= limit or (len(seq) > len(start) and seq[-1] == eos):
                break
            seq.append(t)
    return seq, counts


def large_greedy_reference(large, prompt, max_new_tokens, eos):
    return reference_bild(large, large, prompt, math.inf, 0.0, 1, max_new_tokens, eos)[0]


def reference_bridged(small, large, bridge, prompt, fb, rb, n_steps, max_new_tokens, keep_fallback=False,
                      small_limit=None, cap=None):
    """Two tokenizers (docs/decoding.md, "Two tokenizers"), one row, no KV cache: returns the large-model tokens.

    prompt: large tokens (decoder-only) or the source in large tokens (encoder-decoder). The mapping of draft text
    to large tokens is the bridge's (`TokenBridge.round_proposals`, a host-only function tested on its own); the
    drafting, judging, committing and re-syncing are written out here, every forward recomputed."""
    enc_dec = large.config.is_encoder_decoder
    eos = set(bridge.large_eos)
    if enc_dec:
        start = [large.generation_config.decoder_start_token_id]
        small_source = bridge.small_prompt(list(prompt), is_source=True)
        small_start = [small.generation_config.decoder_start_token_id]
    else:
        start, small_source, small_start = list(prompt), None, bridge.small_prompt(list(prompt))
    small_vocab = min(small.get_output_embeddings().weight.shape[0], len(bridge.small))
    cap = 2 * n_steps if cap is None else cap
    gen, small_gen = [], []

    def fits(k):
        return small_limit is None or len(small_start) + len(small_gen) + k + 1 <= small_limit

    while len(gen) < max_new_tokens and not (gen and gen[-1] in eos):
        drafts, fell, ended = [], False, False
        while fb != math.inf and len(drafts) < n_steps and fits(len(drafts)):
            probs = torch.softmax(_next_logits(small, small_source, small_start + small_gen + drafts)[-1][:small_vocab], -1)
            drafts.append(int(probs.argmax()))
            fell, ended = probs.max().item() < fb, drafts[-1] in bridge.small_eos
            if fell or ended:
                break
        ids, exact, _ = bridge.round_proposals(small_start + small_gen, start + gen, drafts, fell, ended, keep_fallback)
        ids, exact = ids[: min(cap, max_new_tokens - len(gen))], exact[: min(cap, max_new_tokens - len(gen))]
        logits = _next_logits(large, prompt, start + gen + ids)[len(start) + len(gen) - 1:]
        logp = torch.log_softmax(logits, -1)
        accepted = len(ids)
        for i, d in enumerate(ids):
            if -logp[i, d].item() > (0.0 if exact[i] else rb) and d != int(logits[i].argmax()):
                accepted = i
                break
        for t in ids[:accepted] + [int(logits[accepted].argmax())]:
            if len(gen) >= max_new_tokens or (gen and gen[-1] in eos):
                break
            gen.append(t)
        if fits(0) and not (len(gen) >= max_new_tokens or gen[-1] in eos):
            small_gen = bridge.small_tokens(start + gen, len(gen))
    return start + gen

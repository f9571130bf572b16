"""`TokenBridge`: text between two tokenizers, for pairs that do not share a vocabulary (host only, no model).

The small model drafts in its own tokens; the large model judges large-model tokens. The bridge carries text
both ways:
- large -> small: the committed text, re-encoded whole by the small tokenizer (its canonical tokens), so the
  small model always reads what the large model committed;
- small -> large: the small model's draft text appended to the text of the last few committed tokens and
  re-encoded by the large tokenizer; only when those come back unchanged are the new tokens proposed. The last
  one may not be whole (more text could merge into it) unless the draft ended with an end-of-sequence token,
  so it is checked exactly: the large model commits it only where it would write that very token itself.

Sampling needs each draft's probability over large tokens, which re-encoded text does not give: there the small
model drafts only the tokens both vocabularies have with the same text (`shared_vocabulary`, `SharedVocabulary`).

Which large tokens are proposed never affects what is committed at rollback 0: the large model checks every
proposal against its own argmax, so a poor mapping costs acceptance, not exactness.
"""

from __future__ import annotations

import weakref

import torch

#: Committed large tokens re-encoded with each draft before the whole committed text is (see `proposals`).
LOOK_BEHIND = 4


class _PerTokenizerPair:
    """Values computed once per pair of live tokenizers (and extra key): weak references make a reused id miss, and
    the lengths make a tokenizer that gained tokens since then compute again."""

    def __init__(self):
        self.entries: dict[tuple, tuple] = {}

    def get(self, small, large, extra, make):
        key = (id(small), id(large), extra)
        hit = self.entries.get(key)
        if hit is not None and hit[0]() is small and hit[1]() is large and hit[2] == (len(small), len(large)):
            return hit[3]
        for k in [k for k, (a, b, _, _) in self.entries.items() if a() is None or b() is None]:
            del self.entries[k]
        value = make()
        try:
            self.entries[key] = (weakref.ref(small), weakref.ref(large), (len(small), len(large)), value)
        except TypeError:  # an object without weak references: computed on every call
            pass
        return value


_BRIDGES = _PerTokenizerPair()
_MAPS = _PerTokenizerPair()


def _decode(tokenizer, ids, skip_special_tokens: bool) -> str:
    return tokenizer.decode(ids, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False)


def _special_ids(tokenizer) -> set[int]:
    ids = set(tokenizer.all_special_ids)
    for i, added in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if getattr(added, "special", False):
            ids.add(int(i))
    return ids


def _eos_ids(tokenizer, eos) -> list[int]:
    out = [] if eos is None else [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in out:
        out.append(int(tokenizer.eos_token_id))
    return out


class TokenBridge:
    """Maps text between a small and a large tokenizer (see the module docstring).

    small_eos / large_eos: the models' end-of-sequence ids (their generation configs'), an int or a list; the
    tokenizers' own EOS is added to each. A small draft that ends in a small EOS proposes the large EOS of the
    same string, else the first large EOS."""

    @classmethod
    def of(cls, small_tokenizer, large_tokenizer, small_eos=None, large_eos=None) -> "TokenBridge":
        """The bridge of two tokenizers, built once per pair while both live (building reads both vocabularies)."""
        extra = (tuple(_eos_ids(small_tokenizer, small_eos)), tuple(_eos_ids(large_tokenizer, large_eos)))
        return _BRIDGES.get(small_tokenizer, large_tokenizer, extra,
                            lambda: cls(small_tokenizer, large_tokenizer, small_eos, large_eos))

    def __init__(self, small_tokenizer, large_tokenizer, small_eos=None, large_eos=None):
        self.small, self.large = small_tokenizer, large_tokenizer
        self.small_eos = set(_eos_ids(small_tokenizer, small_eos))
        self.large_eos = _eos_ids(large_tokenizer, large_eos)
        self.small_special = _special_ids(small_tokenizer)
        large_special = _special_ids(large_tokenizer)
        small_vocab = small_tokenizer.get_vocab()
        # Large special tokens the small tokenizer does not know are left out of the text it reads.
        self.hidden_from_small = {i for i in large_special
                                  if large_tokenizer.convert_ids_to_tokens(i) not in small_vocab}
        self._shared: dict[tuple, SharedVocabulary] = {}  # sampling's draft vocabularies (`shared_vocabulary`)
        large_vocab = large_tokenizer.get_vocab()
        self.eos_map = {}
        for s in self.small_eos:
            same = large_vocab.get(small_tokenizer.convert_ids_to_tokens(s))
            self.eos_map[s] = same if same in self.large_eos else (self.large_eos[0] if self.large_eos else None)

    def shared_vocabulary(self, large_vocab: int, small_vocab: int, device) -> "SharedVocabulary":
        """Sampling's draft vocabulary (`SharedVocabulary`): the shared tokens plus the EOS pairs, ids below the
        models' output sizes; built once per bridge, sizes and device."""
        key = (large_vocab, small_vocab, str(device))
        if key not in self._shared:
            small_ids, large_ids = shared_vocabulary(self.small, self.large)
            eos = [(s, l) for s, l in self.eos_map.items() if l is not None and s not in small_ids and l not in large_ids]
            self._shared[key] = SharedVocabulary(small_ids + [s for s, _ in eos], large_ids + [l for _, l in eos],
                                                 large_vocab, small_vocab, device)
        return self._shared[key]

    # -- large -> small ---------------------------------------------------------------------------------------

    def text_for_small(self, large_ids: list[int]) -> str:
        """The text of large tokens as the small tokenizer should read it (specials it lacks left out)."""
        return _decode(self.large, [i for i in large_ids if i not in self.hidden_from_small], False)

    def small_prompt(self, large_ids: list[int], is_source: bool = False) -> list[int]:
        """Small-model tokens of a prompt (decoder-only) or a source (encoder-decoder) given in large tokens."""
        if is_source:  # the small tokenizer adds its own source specials (T5's </s>, BART's <s> ... </s>)
            ids = self.small(_decode(self.large, large_ids, True), add_special_tokens=True)["input_ids"]
        else:
            text = self.text_for_small(large_ids)
            bos = self.small.bos_token
            ids = self.small(text, add_special_tokens=not (bos and text.startswith(bos)))["input_ids"]
        if not ids:  # the small model needs one token to start from
            start = self.small.bos_token_id if self.small.bos_token_id is not None else self.small.eos_token_id
            ids = [int(start if start is not None else 0)]
        return list(ids)

    def small_tokens(self, large_context: list[int], n_generated: int) -> list[int]:
        """The small tokenizer's tokens of the last n_generated large tokens' text (read after the tokens before
        them, so a leading space survives tokenizers that drop it from a text's first token)."""
        if n_generated == 0:
            return []
        split = len(large_context) - n_generated
        keep = [i for i in large_context if i not in self.hidden_from_small]
        split -= sum(1 for i in large_context[:split] if i in self.hidden_from_small)
        text = _text_after(self.large, keep[max(0, split - LOOK_BEHIND): split], keep[split:])
        return list(self.small(text, add_special_tokens=False)["input_ids"]) if text else []

    # -- small -> large ---------------------------------------------------------------------------------------

    def draft_text(self, small_context: list[int], drafts: list[int]) -> str:
        """The text the drafts add after the small model's tokens so far (special tokens excluded)."""
        drafts = [d for d in drafts if d not in self.small_special]
        if not drafts:
            return ""
        anchor = [t for t in small_context[-LOOK_BEHIND:] if t not in self.small_special]
        return _text_after(self.small, anchor, drafts)

    def proposals(self, large_context: list[int], draft: str) -> list[int]:
        """Large tokens that extend `large_context` by the text `draft` (the last one may still change with more
        text: see `round_proposals`).

        Re-encodes the text of the context's last LOOK_BEHIND tokens (then twice, four times as many, then all of
        the context) followed by the draft; the first whose context tokens come back unchanged gives the
        proposals. Where none does, the draft is encoded on its own: a guess, which the large model checks like
        any other."""
        if not draft:
            return []
        n = len(large_context)
        for w in dict.fromkeys(min(n, m * LOOK_BEHIND) for m in (1, 2, 4, n)):
            tail = large_context[len(large_context) - w:]
            ids = self.large(_decode(self.large, tail, False) + draft, add_special_tokens=False)["input_ids"]
            if w and ids[:w] == tail:
                return list(ids[w:])
        return list(self.large(draft, add_special_tokens=False)["input_ids"])

    def round_proposals(self, small_context: list[int], large_context: list[int], drafts: list[int], fell: bool,
                        ended: bool, keep_fallback: bool) -> tuple[list[int], list[bool], int]:
        """One round's proposals for a row: the large tokens, which of them are checked exactly (rollback threshold
        0: committed only if the large model's argmax), and how many small drafts they come from.

        small_context / large_context: each side's tokens so far (prompt included, no padding); drafts: this round's
        small tokens; fell: the last one fell back (kept only with keep_fallback, and then every proposal that needs
        its text is checked exactly, as a kept fallback draft is on the shared path); ended: the last one is a small
        EOS, proposed as the large EOS after the draft's text.

        The last token of a draft text that does not end may not be whole (more text could merge into it), so it
        is checked exactly: committed only where the large model would write that very token, never by the
        rollback rule's leniency."""
        if fell and not keep_fallback:  # the paper's rule: the unsure draft is thrown away
            drafts, fell, ended = drafts[:-1], False, False
        if not drafts:
            return [], [], 0
        body = drafts[:-1] if ended else drafts
        draft = self.draft_text(small_context, body)
        ids = self.proposals(large_context, draft)
        exact = [False] * len(ids)
        if ids and not ended:
            exact[-1] = True
        if ended and (ids or not draft) and self.eos_map.get(drafts[-1]) is not None:
            ids, exact = ids + [self.eos_map[drafts[-1]]], exact + [fell]
        if fell:
            sure = self.proposals(large_context, self.draft_text(small_context, drafts[:-1]))[:-1]
            n_sure = len(sure) if sure == ids[: len(sure)] else 0
            exact = [e or i >= n_sure for i, e in enumerate(exact)]
        return ids, exact, len(drafts)


def _text_after(tokenizer, anchor: list[int], ids: list[int]) -> str:
    """The text `ids` add after `anchor` (decoded together, so spacing at the seam is the tokenizer's own)."""
    before = _decode(tokenizer, anchor, False) if anchor else ""
    after = _decode(tokenizer, anchor + ids, False)
    return after[len(before):] if after.startswith(before) else _decode(tokenizer, ids, False)


# -- the vocabulary intersection (sampling) ---------------------------------------------------------------------

def token_texts(tokenizer, anchor: str = "a") -> list[str]:
    """Each id's text as it reads after a word character (so a leading space shows, whatever the decoder does with
    a text's first token); "" for special tokens and for pieces of a character (bytes that decode to U+FFFD)."""
    anchor_ids = tokenizer(anchor, add_special_tokens=False)["input_ids"]
    before = _decode(tokenizer, anchor_ids, False)
    special = _special_ids(tokenizer)
    pairs = tokenizer.batch_decode([anchor_ids + [i] for i in range(len(tokenizer))], skip_special_tokens=False,
                                   clean_up_tokenization_spaces=False)
    out = []
    for i, text in enumerate(pairs):
        piece = text[len(before):] if text.startswith(before) else ""
        out.append("" if i in special or not piece or "\ufffd" in piece else piece)
    return out


def shared_vocabulary(small_tokenizer, large_tokenizer) -> tuple[list[int], list[int]]:
    """(small ids, large ids) of the tokens both tokenizers have with the same text (`token_texts`), one to one (a
    text that several ids of one side share is left out); remembered per pair of tokenizers while both live."""
    return _MAPS.get(small_tokenizer, large_tokenizer, None, lambda: _shared(small_tokenizer, large_tokenizer))


def _shared(small_tokenizer, large_tokenizer) -> tuple[list[int], list[int]]:
    small_of, large_of = _unique_ids(token_texts(small_tokenizer)), _unique_ids(token_texts(large_tokenizer))
    both = sorted(set(small_of) & set(large_of), key=lambda t: small_of[t])
    return [small_of[t] for t in both], [large_of[t] for t in both]


def _unique_ids(texts: list[str]) -> dict[str, int]:
    seen: dict[str, int] = {}
    dup = set()
    for i, t in enumerate(texts):
        if not t:
            continue
        if t in seen:
            dup.add(t)
        seen[t] = i
    return {t: i for t, i in seen.items() if t not in dup}


class SharedVocabulary:
    """Sampling across two tokenizers: the tokens both vocabularies have with the same text (`bild.bridge.
    shared_vocabulary`, plus the EOS pairs), as index tensors. The small model's logits of those tokens, placed at
    their large ids (every other large token -inf), are the draft distribution q over the large vocabulary; a
    draft is then one large token and one small token at once, so speculative sampling's acceptance test and
    residual are exact, as with one vocabulary."""

    def __init__(self, small_ids: list[int], large_ids: list[int], large_vocab: int, small_vocab: int, device):
        keep = [(s, l) for s, l in zip(small_ids, large_ids) if s < small_vocab and l < large_vocab]
        self.small = torch.tensor([s for s, _ in keep], dtype=torch.long, device=device)
        self.large = torch.tensor([l for _, l in keep], dtype=torch.long, device=device)
        self.to_small = torch.full((large_vocab,), -1, dtype=torch.long, device=device)
        self.to_small[self.large] = self.small
        self.large_vocab = large_vocab

    def scores(self, small_logits: torch.Tensor) -> torch.Tensor:
        """(n, V_small) small logits -> (n, V_large) scores: the shared tokens' logits, -inf elsewhere."""
        out = small_logits.new_full((small_logits.shape[0], self.large_vocab), float("-inf"))
        out[:, self.large] = small_logits[:, self.small]
        return out

"""A draft head over part of the vocabulary: a cheaper small-model step (FR-Spec, Zhao et al., 2025).

A small model's output layer is a large share of its step: Qwen2.5-0.5B's is 151,936 x 896 weights, 136M of
the 494M that a step reads. Drafting only from the tokens a task actually uses cuts that
layer. The large model still verifies every token and supplies every correction from its own full vocabulary,
so BiLD stays exactly as exact as without it: `rollback_threshold=0` still gives the large model's greedy
output, and speculative sampling still samples the large model's distribution (the acceptance test uses
the restricted distribution the drafts were drawn from). What changes is only how often drafts are accepted.

    ids = frequent_tokens(tokenizer, train_targets, size=16384)     # the task's most used tokens
    BiLDGenerator(small, large, draft_vocab=ids)                    # or:
    large.generate(..., custom_generate=bild_generate, small_model=restrict_draft_vocab(small, ids))

`restrict_draft_vocab` returns a *view* of the small model: every weight is shared with it except a copy
of the chosen output rows; the model passed in is not changed.
"""

from __future__ import annotations

import copy
from collections import Counter
from typing import Iterable, Sequence

import torch
from torch import nn


class SubsetHead(nn.Module):
    """An output layer over chosen rows: their logits in place, -inf for every other token (V columns in all).

    The chosen rows are a plain `nn.Linear` (`sub`), so the forms `bild.kernels` measures for the drafter's products
    (the int8 weight-only form above all) apply to it as to every other layer of the small model."""

    def __init__(self, head: nn.Linear, token_ids: torch.Tensor):
        super().__init__()
        device = head.weight.device
        self.out_features = head.out_features
        self.register_buffer("token_ids", token_ids.to(device), persistent=False)
        self.sub = nn.Linear(head.in_features, len(token_ids), bias=head.bias is not None,
                             device=device, dtype=head.weight.dtype)
        self.sub.requires_grad_(False)
        with torch.no_grad():
            self.sub.weight.copy_(head.weight.detach()[self.token_ids])
            if head.bias is not None:
                self.sub.bias.copy_(head.bias.detach()[self.token_ids])

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        sub = self.sub(hidden.to(self.sub.weight.device))
        out = sub.new_full((*sub.shape[:-1], self.out_features), float("-inf"))
        return out.index_copy_(-1, self.token_ids, sub)

    def extra_repr(self) -> str:
        return f"rows={len(self.token_ids)}, out_features={self.out_features}"


def restrict_draft_vocab(model, token_ids: Sequence[int] | torch.Tensor):
    """A view of `model` whose output layer scores only `token_ids` (every other logit is -inf).

    Raises ValueError, before anything is built, when the ids are not distinct ids of the model's vocabulary
    or when the model's output layer is not a plain `nn.Linear` attribute of the model (the only layout whose
    rows can be chosen without changing the model's own code).
    """
    head = model.get_output_embeddings()
    name = next((n for n, child in model.named_children() if child is head), None)
    if not isinstance(head, nn.Linear) or name is None:
        raise ValueError(
            f"draft_vocab needs a small model whose output layer is an nn.Linear attribute; "
            f"{type(model).__name__}'s is {type(head).__name__}. Use the full vocabulary (draft_vocab=None)."
        )
    ids = _checked_ids(token_ids, head.out_features)
    view = copy.copy(model)
    view._modules = type(model._modules)(model._modules)  # its own table of children; the children are shared
    setattr(view, name, SubsetHead(head, ids))
    return view


def _checked_ids(token_ids, vocab_size: int) -> torch.Tensor:
    ids = torch.as_tensor(token_ids)
    if ids.ndim != 1 or ids.numel() == 0 or ids.is_floating_point() or ids.dtype == torch.bool:
        raise ValueError(f"draft_vocab must be a non-empty 1-D list of token ids, got shape {tuple(ids.shape)} "
                         f"of {ids.dtype}.")
    ids = ids.long()
    if int(ids.min()) < 0 or int(ids.max()) >= vocab_size:
        raise ValueError(f"draft_vocab has ids outside the model's vocabulary [0, {vocab_size}).")
    if len(ids.unique()) != len(ids):
        raise ValueError("draft_vocab has repeated token ids.")
    return ids.sort().values


def frequent_tokens(tokenizer, texts: Iterable[str], size: int, always: Iterable[int] = ()) -> torch.Tensor:
    """The `size` token ids used most in `texts` (tokenized without special tokens), plus the tokenizer's special
    tokens and `always` (e.g. the generation config's EOS ids), sorted. Ties are broken by the lower id.

    Count on text like the outputs the models will write (a task's training references), never on a test set.
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}.")
    counts = Counter()
    for text in texts:
        counts.update(tokenizer(text, add_special_tokens=False)["input_ids"])
    chosen = [i for i, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:size]]
    extra = set(tokenizer.all_special_ids) | {int(i) for i in always}
    return torch.tensor(sorted(set(chosen) | extra), dtype=torch.long)

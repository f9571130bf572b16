"""Logits processors restricted to some rows of the batch transformers built them for.

BiLD calls the generation config's processors on a few rows at a time (rows sharing a prefix
length, or one row of a batch run row by row). Most processors read only the prefix they are
given. Two hold the batch's encoder input ids, one row each, and pair row i of the scores with row
i of those ids: `encoder_no_repeat_ngram_size` (Blenderbot's checkpoints ship 3) and
`encoder_repetition_penalty`. A third holds one number per row: `repetition_penalty`, whose
`prompt_ignore_length` transformers sets to each row's left padding. A fourth passes each row's index in the
batch it is given to the user's function: `prefix_allowed_tokens_fn(batch_id, input_ids)`. `for_rows` gives
them the selected rows' part (or index), so that each row is processed with its own source, padding and
batch id, as transformers' `generate` does.
"""

from __future__ import annotations

import copy

import torch
from transformers import LogitsProcessorList
from transformers.generation.logits_process import (
    EncoderNoRepeatNGramLogitsProcessor, EncoderRepetitionPenaltyLogitsProcessor, PrefixConstrainedLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
)


def _per_row_ignore_length(p) -> bool:
    return isinstance(p, RepetitionPenaltyLogitsProcessor) and isinstance(p.prompt_ignore_length, torch.Tensor)


def holds_rows(processors) -> bool:
    """Whether some processor pairs score rows with the rows of the batch it was built for."""
    return any(isinstance(p, (EncoderNoRepeatNGramLogitsProcessor, EncoderRepetitionPenaltyLogitsProcessor,
                              PrefixConstrainedLogitsProcessor))
               or _per_row_ignore_length(p) for p in processors or ())


def for_rows(processors: LogitsProcessorList, rows: list[int]) -> LogitsProcessorList:
    """The processors for scores of these batch rows (in this order); others are shared unchanged."""
    if not holds_rows(processors):
        return processors
    rows = [int(r) for r in rows]  # host indices (a list), so that no device value is read
    index = torch.tensor(rows, dtype=torch.long)
    out = LogitsProcessorList()
    for p in processors:
        if isinstance(p, EncoderNoRepeatNGramLogitsProcessor):
            p = copy.copy(p)
            p.generated_ngrams = [p.generated_ngrams[i] for i in rows]
            p.batch_size = len(p.generated_ngrams)
        elif isinstance(p, EncoderRepetitionPenaltyLogitsProcessor):
            p = copy.copy(p)
            p.encoder_input_ids = p.encoder_input_ids[index.to(p.encoder_input_ids.device)]
        elif isinstance(p, PrefixConstrainedLogitsProcessor):
            p = copy.copy(p)
            p._prefix_allowed_tokens_fn = _with_batch_ids(p._prefix_allowed_tokens_fn, rows)
        elif _per_row_ignore_length(p):
            p = copy.copy(p)
            p.prompt_ignore_length = p.prompt_ignore_length[index.to(p.prompt_ignore_length.device)]
        out.append(p)
    return out


def _with_batch_ids(fn, rows: list[int]):
    """fn(batch_id, ids) called with the batch id of the full batch, for entry i of these rows."""
    return lambda batch_id, input_ids: fn(rows[batch_id], input_ids)

"""Tiny randomly initialised model pairs, built in code, for the exactness tests.

BiLD's identities hold for any weights. Two kinds of pair:
- "disagree": small and large have different seeds and sizes, so drafts are often rejected;
- "agree": large = small plus noise, so drafts are mostly accepted (long drafts, bonus tokens).
Output layers are scaled up so that distributions are peaked like a trained model's: the
fallback threshold then splits steps into confident and unsure ones.
"""

from __future__ import annotations

import copy

import torch
from transformers import (
    BartConfig, BartForConditionalGeneration, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM,
    MarianConfig, MarianMTModel, MT5Config, MT5ForConditionalGeneration, Qwen2Config, Qwen2ForCausalLM,
    T5Config, T5ForConditionalGeneration,
)

VOCAB = 48
PAD, BOS, EOS = 0, 1, 2
DECODER_ONLY = ("gpt2", "llama", "qwen2")
ENCODER_DECODER = ("t5", "mt5", "bart", "marian")
ARCHITECTURES = DECODER_ONLY + ENCODER_DECODER


def _config(arch: str, width: int, layers: int, vocab: int = VOCAB, special_ids: tuple[int, int, int] = (PAD, BOS, EOS)):
    pad, bos, eos = special_ids
    special = dict(pad_token_id=pad, bos_token_id=bos, eos_token_id=eos)
    if arch == "gpt2":
        return GPT2LMHeadModel, GPT2Config(vocab_size=vocab, n_positions=128, n_embd=width, n_layer=layers, n_head=2, **special)
    if arch in ("llama", "qwen2"):
        cls, cfg = (LlamaForCausalLM, LlamaConfig) if arch == "llama" else (Qwen2ForCausalLM, Qwen2Config)
        return cls, cfg(vocab_size=vocab, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False, **special)
    if arch in ("t5", "mt5"):
        cls, cfg = (T5ForConditionalGeneration, T5Config) if arch == "t5" else (MT5ForConditionalGeneration, MT5Config)
        return cls, cfg(vocab_size=vocab, d_model=width, d_kv=8, d_ff=2 * width, num_layers=layers, num_heads=4,
                        decoder_start_token_id=pad, pad_token_id=pad, eos_token_id=eos, tie_word_embeddings=False)
    if arch in ("bart", "marian"):
        cls, cfg = (BartForConditionalGeneration, BartConfig) if arch == "bart" else (MarianMTModel, MarianConfig)
        extra = dict(forced_eos_token_id=None, forced_bos_token_id=None)
        return cls, cfg(vocab_size=vocab, d_model=width, encoder_layers=layers, decoder_layers=layers,
                        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=2 * width,
                        decoder_ffn_dim=2 * width, max_position_embeddings=128, decoder_start_token_id=eos if arch == "bart" else pad,
                        **special, **extra)
    raise ValueError(arch)


def tiny_model(arch: str, seed: int, width: int = 32, layers: int = 2, logit_std: float = 3.0, vocab: int = VOCAB,
               special_ids: tuple[int, int, int] = (PAD, BOS, EOS)):
    """A random model of `arch`; vocab and (pad, bos, eos) ids as given (a tokenizer built in code may need others)."""
    cls, config = _config(arch, width, layers, vocab, special_ids)
    torch.manual_seed(seed)
    model = cls(config).eval()
    with torch.no_grad():
        head = model.get_output_embeddings()
        if head.weight is model.get_input_embeddings().weight:
            # Tied head (GPT-2): untie so sharpening the output does not blow up the inputs.
            head.weight = torch.nn.Parameter(head.weight.detach().clone())
        # Calibrate the head so logits spread like a trained model's (std ~3 over 48 tokens):
        # some steps confident, some not, whatever the architecture's initialisation.
        probe = torch.randint(3, vocab, (2, 8), generator=torch.Generator().manual_seed(seed))
        kwargs = {"decoder_input_ids": probe} if config.is_encoder_decoder else {}
        head.weight.mul_(logit_std / model(input_ids=probe, **kwargs).logits.std())
    model.generation_config.pad_token_id = special_ids[0]
    model.generation_config.eos_token_id = special_ids[2]
    return model


def tiny_pair(arch: str, mode: str = "disagree", seed: int = 0, noise: float = 0.02):
    """(small, large) of one architecture; see the module docstring for the modes."""
    small = tiny_model(arch, seed, width=32, layers=1)
    if mode == "disagree":
        large = tiny_model(arch, seed + 1000, width=64, layers=2)
    elif mode == "agree":
        large = copy.deepcopy(small)
        gen = torch.Generator().manual_seed(seed + 7)
        with torch.no_grad():
            for p in large.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * noise * (p.std() if p.numel() > 1 else 1.0))
    else:
        raise ValueError(mode)
    return small, large


def prompts(batch: int, seed: int = 0, min_len: int = 2, max_len: int = 7):
    """Random token rows of different lengths (no special tokens), as (ids list of lists)."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, max_len + 1, (batch,), generator=gen).tolist()
    return [torch.randint(3, VOCAB, (n,), generator=gen).tolist() for n in lengths]


def batch_inputs(rows: list[list[int]], encoder_decoder: bool):
    """Pad rows into input_ids/attention_mask: left padding for decoder-only, right for encoders."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), PAD, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if encoder_decoder:
            ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
        else:
            ids[i, width - len(r):], mask[i, width - len(r):] = torch.tensor(r), 1
    return {"input_ids": ids, "attention_mask": mask}


def char_tokenizer():
    """A tokenizer over the tiny models' 48 ids, no downloads: special tokens, the letters a-z, the digits and a few
    two-letter merges (so a stop string can end inside a token or span several), joined without spaces."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    merges = [("a", "b"), ("b", "c"), ("c", "a"), ("x", "y"), ("z", "z"), ("d", "e")]
    vocab = ["<pad>", "<s>", "</s>", *"abcdefghijklmnopqrstuvwxyz", *"0123456789", *("".join(m) for m in merges), ".", "!", "?"]
    assert len(vocab) == VOCAB
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(vocab)}, merges, unk_token="<pad>"))
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def injected_costs(two_token_pass: float, small_step: float = 0.3, max_width: int = 11, large_step: float = 0.1):
    """A cost model with made-up numbers (seconds), for decisions under known costs: a large step of `large_step`,
    a pass over w tokens costing (1 + (two_token_pass - 1) * (w - 1)) steps (1.0: as on a GPU, any width costs a
    step; 2.0: no gain from width, as float32 on an AVX2-only CPU), a small step of `small_step` large steps."""
    from bild.costs import ModelCosts, PairCosts

    large = ModelCosts({w: large_step * (1 + (two_token_pass - 1) * (w - 1)) for w in (1, 2, 3, 5, max_width)},
                       large_step / 4, "float32", 64)
    small = ModelCosts({1: small_step * large_step}, small_step * large_step / 4, "float32", 64)
    return PairCosts(small, large, device="cpu")

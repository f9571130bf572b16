"""Tiny model folders and data files for the example-script tests, built in code (no hub access).

The word-level tokenizer is trained on the shipped sample data, so the prompts tokenize to real
ids; the models are random, so predictions are arbitrary but deterministic.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

DATA = Path(__file__).resolve().parent.parent / "examples" / "data"
TRANSLATION_SAMPLE = DATA / "de-en-sample.jsonl"
SUMMARIZATION_SAMPLE = DATA / "summ-sample.jsonl"
SPECIAL = ["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def sample_texts() -> list[str]:
    """Every text of both samples, to train the tokenizer's vocabulary on."""
    texts = []
    for line in TRANSLATION_SAMPLE.read_text().splitlines():
        texts.extend(json.loads(line)["translation"].values())
    for line in SUMMARIZATION_SAMPLE.read_text().splitlines():
        row = json.loads(line)
        texts.extend([row["document"], row["summary"]])
    return texts


def tiny_tokenizer(chat: bool) -> PreTrainedTokenizerFast:
    """A word-level tokenizer (ids 0-3: pad, bos, eos, unk), with a chat template when `chat`."""
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(sample_texts() + ["Translate the following German text to English ."],
                            trainers.WordLevelTrainer(special_tokens=SPECIAL))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    if chat:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _sharpen(model, scale: float = 48.0):
    """Scale the output layer so distributions are peaked like a trained model's (drafts happen).

    The rows of the special tokens other than eos are zeroed: a logit of 0 never wins against
    ~1200 random ones, so predictions are words, not padding.
    """
    with torch.no_grad():
        weight = model.get_output_embeddings().weight
        weight.mul_(scale)
        weight[[i for i in range(len(SPECIAL)) if SPECIAL[i] != "</s>"]] = 0.0
    return model


def _llama(vocab: int, width: int, layers: int, seed: int):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return _sharpen(LlamaForCausalLM(config).eval())


def _t5(vocab: int, width: int, layers: int, seed: int):
    torch.manual_seed(seed)
    config = T5Config(vocab_size=vocab, d_model=width, d_kv=8, d_ff=2 * width, num_layers=layers, num_heads=4,
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=2, tie_word_embeddings=False)
    return _sharpen(T5ForConditionalGeneration(config).eval())


def _agreeing_large(small_builder, vocab: int, seed: int):
    """A "large" model that mostly agrees with the small one: its weights plus a little noise."""
    large = small_builder(vocab, 32, 1, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in large.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.05 * p.std())
    return large


def save_pair(folder: Path, kind: str) -> tuple[str, str]:
    """Save a small and a large tiny model ("decoder" = Llama with chat template, "seq2seq" = T5) with tokenizers."""
    builder = _llama if kind == "decoder" else _t5
    tokenizer = tiny_tokenizer(chat=kind == "decoder")
    vocab = len(tokenizer)
    pair = {"small": builder(vocab, 32, 1, seed=0), "large": _agreeing_large(builder, vocab, seed=0)}
    paths = []
    for name, model in pair.items():
        path = folder / f"{kind}-{name}"
        model.generation_config.pad_token_id, model.generation_config.eos_token_id = 0, 2
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        paths.append(str(path))
    return paths[0], paths[1]


def write_lines(path: Path, source: Path, n: int) -> Path:
    """The first `n` lines of a shipped sample, as a local data file."""
    path.write_text("".join(source.read_text().splitlines(keepends=True)[:n]))
    return path

"""Every text architecture of the installed transformers, tried with lossless BiLD on tiny random models.

For each architecture in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES:
a tiny config from the config class's defaults scaled down (2 layers for the large model, 1 for the small
one, another seed; untied heads calibrated to peaked logits; a short sliding window where the config has
one, so windows are exceeded), an EOS the large model really emits (so rows stop early), then
`rollback_threshold=0` against `large.generate(do_sample=False)` at batch 1 and in a padded batch of 3.

Outcomes: "exact" (both identities hold), "refused" (bild's own ValueError before generation),
"not testable" (transformers itself cannot build or run the tiny model), "skipped" (not a text model),
and "FAIL" (a silent difference or an error from inside transformers/torch), which the test rejects.

    python tests/arch_sweep.py            # prints the table and writes docs/support.md
"""

from __future__ import annotations

import contextlib
import io
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from transformers import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
)

VOCAB = 99
PAD, BOS, EOS_DEFAULT = 0, 1, 2
MAX_NEW = 12
WINDOW = 4  # sliding / local attention window: prompts of 3-7 tokens + 12 new tokens exceed it
PROMPTS = ([11, 25, 37, 42, 58, 63], [70, 81, 9], [14, 27, 33, 48, 51, 66, 90])

_NOT_TEXT_KEYS = ("vision", "audio", "image", "vq", "speech", "acoustic", "semantic", "projector")
# Text decoders that only make sense on another modality's encoder output.
_NOT_TEXT = {
    "whisper": "speech decoder (its input is an audio encoder's output)",
    "trocr": "OCR decoder (its input is an image encoder's output)",
    "musicgen": "audio codes, not text", "musicgen_melody": "audio codes, not text",
    "moshi": "speech model (audio codes)",
    "fuyu": "multimodal (image patches in the decoder's input)",
    "encoder-decoder": "composite of two other architectures (each is swept on its own)",
}

# Scaled-down sizes; a name is set only where the default config has that attribute.
_SIZES = dict(
    hidden_size=32, n_embd=32, d_model=32, n_embed=32, dim=32, embed_dim=32, word_embed_proj_dim=32,
    num_attention_heads=4, n_head=4, num_heads=4, n_heads=4, encoder_attention_heads=4, decoder_attention_heads=4,
    num_key_value_heads=2, n_kv_heads=2, num_kv_heads=2, multi_query_group_num=2,
    head_dim=8, d_kv=8, rotary_dim=8, kv_channels=8, attention_head_dim=8,
    intermediate_size=64, ffn_dim=64, d_ff=64, n_inner=64, encoder_ffn_dim=64, decoder_ffn_dim=64, ffn_hidden_size=64,
    moe_intermediate_size=32, shared_expert_intermediate_size=32, expert_intermediate_size=32,
    num_experts=4, n_routed_experts=4, num_local_experts=4, moe_num_experts=4, num_experts_per_tok=2,
    moe_topk=2, top_k=2, moe_k=2, num_experts_per_token=2, n_group=1, topk_group=1, n_shared_experts=1,
    q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8, qk_head_dim=8,
    max_position_embeddings=256, n_positions=256, max_target_positions=256, max_source_positions=256,
    vocab_size=VOCAB, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS_DEFAULT, decoder_start_token_id=PAD,
    tie_word_embeddings=False, is_decoder=True, use_cache=True, forced_eos_token_id=None, forced_bos_token_id=None,
    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, dropout=0.0, attention_dropout=0.0,
    first_k_dense_replace=0, moe_layer_freq=1, num_nextn_predict_layers=0,
)
_LAYERS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers", "decoder_layers", "encoder_layers",
           "num_decoder_layers")
_WINDOWS = ("sliding_window", "window_size", "attention_window", "local_window_size", "sliding_window_size",
            "attention_chunk_size")


@dataclass
class Outcome:
    arch: str
    kind: str  # "decoder-only" or "encoder-decoder"
    status: str  # exact | refused | not testable | skipped | FAIL
    detail: str = ""
    row_by_row: bool = False
    window: bool = False


def architectures() -> list[tuple[str, str]]:
    """(config name, kind) for every entry of the two generation mappings."""
    out = [(name, "decoder-only") for name in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES]
    out += [(name, "encoder-decoder") for name in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES]
    return out


def _model_class(arch: str, kind: str):
    mapping = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES if kind == "decoder-only" else MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES
    return getattr(transformers, mapping[arch])


def skip_reason(arch: str) -> str | None:
    if arch in _NOT_TEXT:
        return _NOT_TEXT[arch]
    subs = list(getattr(CONFIG_MAPPING[arch], "sub_configs", {}) or {})
    other = [s for s in subs if any(key in s for key in _NOT_TEXT_KEYS)]
    if other:
        return f"multimodal ({', '.join(other)}); its text model is swept where transformers has one"
    return None


def _scale(config, layers: int, keep=frozenset()) -> None:
    """Shrink a config object in place after construction (nested sub-configs, derived fields); `keep`: leave these."""
    fields = config.to_dict()
    for name, value in _SIZES.items():
        if name not in keep and name in fields and not isinstance(fields[name], (dict, list)):
            if fields[name] is not None or name in ("head_dim",):
                with contextlib.suppress(Exception):  # read-only (derived) fields stay derived
                    setattr(config, name, value)
    for name in _LAYERS:
        old = fields.get(name)
        if isinstance(old, int) and old > 0:
            try:
                setattr(config, name, layers)
            except Exception:
                continue
            for attr, value in list(vars(config).items()):
                if isinstance(value, list) and len(value) == old and old != layers:
                    setattr(config, attr, value[:layers])
    for name in _WINDOWS:
        value = fields.get(name)
        if isinstance(value, int) and value > 0:
            setattr(config, name, WINDOW)
        elif isinstance(value, list) and value and all(isinstance(v, int) for v in value):
            setattr(config, name, [WINDOW] * len(value))
    for sub in list(getattr(config, "sub_configs", {}) or {}):
        child = getattr(config, sub, None)
        if child is not None and hasattr(child, "to_dict"):
            _scale(child, layers)


# Where the generic scaling is not enough for transformers to build the model at all.
_OVERRIDES = {
    "bamba": dict(attn_layer_indices=[1], mamba_n_heads=4, mamba_d_head=16),
    "jamba": dict(attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1),
    "recurrent_gemma": dict(block_types=["recurrent", "attention"]),
    "granitemoehybrid": dict(layer_types=["linear_attention", "full_attention"], mamba_n_heads=4, mamba_d_head=16),
    "nemotron_h": dict(layers_block_type=["linear_attention", "full_attention"]),
    "mamba2": dict(num_heads=4, head_dim=16, n_groups=1),
    "xlstm": dict(embedding_dim=32, num_heads=4, num_blocks=2),
    "gemma4_text": dict(per_layer_config=None, vocab_size_per_layer_input=VOCAB, hidden_size_per_layer_input=8),
    "gemma3n_text": dict(num_kv_shared_layers=0, activation_sparsity_pattern=[0.0, 0.0], intermediate_size=[64, 64],
                         vocab_size_per_layer_input=VOCAB, hidden_size_per_layer_input=8),
    "lfm2": dict(layer_types=["conv", "full_attention"]),  # the default config has no conv layer; checkpoints do
    "lfm2_moe": dict(num_dense_layers=1, layer_types=["conv", "full_attention"]),
    "reformer": dict(axial_pos_embds_dim=[16, 16], attn_layers=["local", "lsh"], axial_pos_shape=[4, 64]),
}


def _mixed(types: list[str], layers: int) -> list[str]:
    """`layers` layer types that keep every kind the default has (a hybrid keeps an attention layer)."""
    kinds = list(dict.fromkeys(types))
    return [kinds[i % len(kinds)] for i in range(layers)]


def tiny_config(arch: str, layers: int):
    cls = CONFIG_MAPPING[arch]
    default = cls()
    fields = {k: v for k, v in default.to_dict().items() if not isinstance(getattr(cls, k, None), property)}
    kwargs = {k: v for k, v in _SIZES.items() if k in fields}
    for name in _LAYERS:
        if isinstance(fields.get(name), int):
            kwargs[name] = layers
    for name in _WINDOWS:
        if isinstance(fields.get(name), int) and fields[name] > 0:
            kwargs[name] = WINDOW
    n_default = next((getattr(default, n) for n in _LAYERS if isinstance(getattr(default, n, None), int)), None)
    for attr, value in default.to_dict().items():  # per-layer lists (layer_types, layers_block_type, ...)
        if isinstance(value, list) and len(value) == n_default and value and all(isinstance(v, str) for v in value):
            kwargs[attr] = _mixed(value, layers)
    if getattr(default, "kv_lora_rank", None):  # multi-head latent attention: rope dims = head_dim, kv heads = heads
        kwargs.update(num_key_value_heads=kwargs.get("num_attention_heads", 4), qk_rope_head_dim=8, qk_nope_head_dim=8,
                      qk_head_dim=16, head_dim=8, v_head_dim=8)
    kwargs.update(_OVERRIDES.get(arch, {}))
    try:
        config = cls(**kwargs)
    except Exception:  # a derived field (layer_types, per-layer lists) disagrees: scale after construction
        config = cls()
        _scale(config, layers)
    else:
        _scale(config, layers, keep=frozenset(kwargs))
    return config


def _calibrated(model, seed: int, encoder_decoder: bool):
    """Untie the output layer and scale it so logits spread like a trained model's (std ~3)."""
    head = model.get_output_embeddings()
    with torch.no_grad():
        if head is not None and getattr(head, "weight", None) is not None:
            inp = model.get_input_embeddings()
            if inp is not None and head.weight is getattr(inp, "weight", None):
                head.weight = torch.nn.Parameter(head.weight.detach().clone())
            probe = torch.tensor([PROMPTS[0]])
            kwargs = {"decoder_input_ids": probe[:, :3]} if encoder_decoder else {}
            std = model(input_ids=probe, **kwargs).logits.float().std()
            if torch.isfinite(std) and std > 0:
                head.weight.mul_(3.0 / std)
    return model


def build(arch: str, kind: str, layers: int, seed: int):
    torch.manual_seed(seed)
    model = _model_class(arch, kind)(tiny_config(arch, layers)).eval()
    if hasattr(model, "set_default_language"):  # X-MOD: one language adapter
        model.set_default_language(model.config.languages[0])
    model = _calibrated(model, seed, kind == "encoder-decoder")
    gc = model.generation_config
    gc.pad_token_id, gc.bos_token_id, gc.eos_token_id = PAD, BOS, None
    for name in ("forced_bos_token_id", "forced_eos_token_id", "no_repeat_ngram_size", "min_length",
                 "begin_suppress_tokens", "suppress_tokens"):
        if getattr(gc, name, None) is not None:
            setattr(gc, name, None)
    gc.do_sample, gc.num_beams, gc.max_length = False, 1, 256
    if kind == "encoder-decoder" and gc.decoder_start_token_id is None:
        gc.decoder_start_token_id = PAD
    return model


def batch(rows, encoder_decoder: bool):
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), PAD, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        sl = slice(0, len(r)) if encoder_decoder else slice(width - len(r), width)
        ids[i, sl], mask[i, sl] = torch.tensor(r), 1
    return {"input_ids": ids, "attention_mask": mask}


def _inside(exc: BaseException) -> str:
    """Where an exception was raised: 'bild' or the library file it came from."""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if "/bild/" in frame.filename:
            return "bild"
        if "/transformers/" in frame.filename or "/torch/" in frame.filename:
            return frame.filename.split("site-packages/")[-1] + f":{frame.lineno}"
    return "?"


def run_one(arch: str, kind: str) -> Outcome:
    from bild import BiLDGenerator
    from bild.architecture import needs_row_by_row, sliding_window

    out = Outcome(arch, kind, "skipped")
    reason = skip_reason(arch)
    if reason:
        out.detail = reason
        return out
    enc_dec = kind == "encoder-decoder"
    quiet = contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings()
    with quiet[0], quiet[1], quiet[2]:
        warnings.simplefilter("ignore")
        try:
            large = build(arch, kind, 2, seed=1)
            small = build(arch, kind, 2, seed=2)
        except Exception as exc:  # transformers cannot build this tiny model itself
            out.status, out.detail = "not testable", f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
            return out
        try:  # a refusal depends on the models alone: it comes before anything runs
            gen = BiLDGenerator(small, large, 0.5, 0.0, 4)
        except ValueError as exc:
            out.status, out.detail = ("refused", str(exc).splitlines()[0]) if _inside(exc) == "bild" else (
                "FAIL", f"ValueError inside {_inside(exc)}: {str(exc)[:160]}")
            return out
        try:
            single, three = batch(PROMPTS[:1], enc_dec), batch(PROMPTS, enc_dec)
            free = large.generate(**three, do_sample=False, max_new_tokens=MAX_NEW)
            # An EOS the large model really emits: its 5th new token on the first row.
            eos = int(free[0, -MAX_NEW + 4])
            for m in (large, small):
                m.generation_config.eos_token_id = eos
            ref1 = large.generate(**single, do_sample=False, max_new_tokens=MAX_NEW)
            ref3 = large.generate(**three, do_sample=False, max_new_tokens=MAX_NEW)
        except Exception as exc:  # transformers cannot run this tiny model itself
            out.status, out.detail = "not testable", f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
            return out
        out.window = sliding_window(large) is not None
        try:
            out.row_by_row = needs_row_by_row(large)
            got1 = gen.generate(**single, max_new_tokens=MAX_NEW)
            got3 = gen.generate(**three, max_new_tokens=MAX_NEW)
        except ValueError as exc:
            if _inside(exc) == "bild":
                out.status, out.detail = "refused", str(exc).splitlines()[0]
                return out
            out.status, out.detail = "FAIL", f"ValueError inside {_inside(exc)}: {str(exc)[:160]}"
            return out
        except Exception as exc:
            out.status, out.detail = "FAIL", f"{type(exc).__name__} inside {_inside(exc)}: {str(exc)[:160]}"
            return out
    bad = [name for name, got, ref in (("batch 1", got1, ref1), ("batch 3", got3, ref3)) if not torch.equal(got, ref)]
    if bad:
        out.status, out.detail = "FAIL", f"silent difference from large greedy at {' and '.join(bad)}"
    else:
        out.status = "exact"
    return out


def sweep(names=None) -> list[Outcome]:
    torch.set_num_threads(1)
    return [run_one(arch, kind) for arch, kind in architectures() if names is None or arch in names]


def table(outcomes: list[Outcome], seconds: float, cpu_seconds: float) -> str:
    counts = {}
    for o in outcomes:
        key = {"exact": "exact (rows share one cache)", "refused": "refused", "not testable": "not testable here",
               "skipped": "skipped (not text)"}.get(o.status, o.status)
        if o.status == "exact" and o.row_by_row:
            key = "exact (a batch runs row by row)"
        counts[key] = counts.get(key, 0) + 1
    lines = [
        "# Architectures supported by bild",
        "",
        f"Generated by `python tests/arch_sweep.py` (transformers {transformers.__version__}, torch "
        f"{torch.__version__}) from the sweep that `tests/test_architectures.py` runs: every entry of "
        "`MODEL_FOR_CAUSAL_LM_MAPPING_NAMES` and `MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES`, tiny random "
        "models (large: 2 layers, small: 1 layer and another seed), lossless BiLD (`rollback_threshold=0`) "
        "against `large.generate(do_sample=False)` at batch 1 and in a left-padded batch of 3, with an EOS the "
        f"large model emits and a sliding window of {WINDOW} tokens where the config has one.",
        "",
        "- **exact**: token for token equal to large greedy at batch 1 and batch 3.",
        "- **row by row**: a batch runs one row at a time (exact, but the compute is not batched): encoder-decoder "
        "models other than the T5 family (T5, mT5, UMT5, LongT5 batch with rows right-aligned in one decoder cache), "
        "models whose positions are not position ids (ALiBi from the key length, learned positions "
        "from the cache length) and models with a sliding/local attention window.",
        "- **refused**: bild raises a `ValueError` before generating, with the reason shown.",
        "- **not testable here**: transformers itself cannot build or run the tiny model.",
        "- **skipped**: not a text model (vision, audio, speech).",
        "",
        "**Memory of sliding-window models.** transformers' sliding cache layers keep only the last "
        "`sliding_window - 1` slots, so a rollback past the window cannot be cropped back. bild gives those "
        "layers full caches (the window is still applied, by the attention mask transformers builds from cache "
        "positions), so each sliding layer holds the whole sequence, like a full-attention layer: measured on "
        "the tiny Mistral above (window 4), 64 tokens take 16,384 bytes of cache instead of 768. On a real model "
        "the extra memory per row is (sequence length - window) x sliding layers x 2 x kv heads x head_dim x "
        "bytes per value, e.g. Gemma 3 1B (22 of 26 layers sliding, window 512, 1 kv head of 256, bfloat16) at "
        "4,096 tokens: about 77 MiB per row, on top of the 4 full layers' 16 MiB.",
        "",
        f"Counts over {len(outcomes)} mapping entries: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
        + f"; sweep time {seconds:.0f} s wall, {cpu_seconds:.0f} s CPU (one thread; the wall time depends on the "
        "machine's load).",
        "",
        "| architecture | kind | batch 1 | batch 3 | note |",
        "|---|---|---|---|---|",
    ]
    for o in outcomes:
        if o.status == "exact":
            single, batched = "exact", "exact, row by row" if o.row_by_row else "exact"
        else:
            single = batched = o.status
        note = o.detail.replace("|", "\\|")
        if o.status == "exact" and o.window:
            note = "sliding window: cache keeps every slot, window applied by the mask"
        lines.append(f"| {o.arch} | {o.kind} | {single} | {batched} | {note} |")
    return "\n".join(lines) + "\n"


README_START, README_END = "<!-- support table: generated by tests/arch_sweep.py -->", "<!-- end of support table -->"


README_GROUPS = {"exact": "exact, batches share one cache", "row by row": "exact, a batch runs row by row",
                 "refused": "refused before generating (reason in docs/support.md)", "not testable": "not testable here"}


def readme_group(o: Outcome) -> str | None:
    """The README row an outcome belongs to (None: not a text model)."""
    return README_GROUPS.get("row by row" if o.status == "exact" and o.row_by_row else o.status)


def readme_groups(readme: Path) -> dict[str, str]:
    """architecture -> its README row, as the README says now."""
    text = readme.read_text()
    block = text[text.index(README_START): text.index(README_END)]
    out = {}
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] in README_GROUPS.values():
            out.update({arch: cells[0] for arch in cells[2].split(", ") if arch})
    return out


def readme_table(outcomes: list[Outcome]) -> str:
    """The README's summary of the sweep: how many architectures, and which, per outcome."""
    groups = {g: [] for g in README_GROUPS.values()}
    for o in outcomes:
        if readme_group(o) is not None:
            groups[readme_group(o)].append(o.arch)
    lines = [README_START, "", f"Text architectures of transformers {transformers.__version__} "
             f"({sum(map(len, groups.values()))} of {len(outcomes)} mapping entries; the rest are not text models):",
             "", "| lossless BiLD | count | architectures |", "|---|---|---|"]
    lines += [f"| {k} | {len(v)} | {', '.join(v)} |" for k, v in groups.items()]
    return "\n".join(lines + ["", README_END])


def write_readme_table(readme: Path, outcomes: list[Outcome]) -> None:
    text = readme.read_text()
    start, end = text.index(README_START), text.index(README_END) + len(README_END)
    readme.write_text(text[:start] + readme_table(outcomes) + text[end:])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    names = set(argv) if argv else None
    start, cpu = time.perf_counter(), time.process_time()
    outcomes = sweep(names)
    text = table(outcomes, time.perf_counter() - start, time.process_time() - cpu)
    print(text)
    if names is None:
        root = Path(__file__).resolve().parent.parent
        root.joinpath("docs", "support.md").write_text(text)
        write_readme_table(root / "README.md", outcomes)
    return 1 if any(o.status == "FAIL" for o in outcomes) else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    raise SystemExit(main())

"""`BiLDGenerator`: a small and a large model that generate together with Big Little Decoder."""

from __future__ import annotations

import copy

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, PreTrainedModel

from .config import AUTO, BiLDConfig
from .costs import measure_pair_costs
from .draft_vocab import restrict_draft_vocab
from .hardware import pair_dtypes, rule_dtype
from .hf import bild_generate, check_streamer, compile_roles
from .validation import bridges_tokenizers, check_generation_config, check_pair

_FORWARDED_TO_BILD = ("small_model", "custom_generate", "bild_config", "cost_model", "small_tokenizer", "large_tokenizer",
                      "static_cache", "compile", "bild_streamer", "cross_tokenizer", "weight_stationary",
                      "draft_int8")


class BiLDGenerator:
    """Wraps a small and a large `PreTrainedModel` (both encoder-decoder or both decoder-only).

    `generate` takes what `large.generate` takes and returns what it would return (greedy, or sampling
    when the generation config says do_sample=True); with `return_dict_in_generate=True` the output also
    carries BiLD's `stats`.

    fallback_threshold: "auto" (the default) decides per round from the measured costs and acceptance
    (`bild.acceptance`, `bild.costs`); a number is the paper's rule (`bild.PAPER_FALLBACK`, 0.6, with
    rollback_threshold 2-5). See `BiLDConfig`.

    cost_model: a `bild.costs.PairCosts` for fallback_threshold="auto" to decide from (None: measured on first use,
    see `generator.costs`).

    small_tokenizer / large_tokenizer (or tokenizer= for both): when the two disagree, the pair decodes through
    `bild.bridge` (see the README, "Pairs with different tokenizers"); cross_tokenizer=True forces that path,
    False refuses differing tokenizers.

    weight_stationary: BiLD's passes over 1-16 rows use `bild.kernels`' weight-stationary matmul form: None (default)
    for the row counts where the pair's cost model (measured on this machine under fallback "auto") found it
    faster for that model, True always, False never (plain F.linear, as transformers).

    draft_int8: the small model's passes over 1-16 rows run with its weights rounded to int8 per output channel
    (`bild.kernels`' int8 weight-only form; an int8 copy of its weights is kept for the process): None (default) where
    the cost model measured it faster (fallback "auto"; fixed thresholds keep the small model exactly as given), True
    always, False never. Only the drafts change; lossless BiLD is still the large model's greedy output.

    draft_vocab: token ids the small model drafts from (e.g. `bild.frequent_tokens(tok, texts, 16384)`): a
    cheaper small step; the large model still verifies every token, so exactness is unchanged (see
    `bild.draft_vocab`). None: the whole vocabulary.
    """

    def __init__(
        self,
        small: PreTrainedModel,
        large: PreTrainedModel,
        fallback_threshold: float = BiLDConfig.fallback_threshold,
        rollback_threshold: float = BiLDConfig.rollback_threshold,
        max_small_steps: int = BiLDConfig.max_small_steps,
        *,
        keep_fallback_draft: bool | None = None,
        fallback_rule: str = BiLDConfig.fallback_rule,
        drafting_guard: bool = BiLDConfig.drafting_guard,
        cost_ratio: float | None = BiLDConfig.cost_ratio,
        tokenizer=None,
        small_tokenizer=None,
        large_tokenizer=None,
        static_cache: bool = False,
        compile: bool | str = False,
        draft_vocab=None,
        cost_model=None,
        cross_tokenizer: bool | None = None,
        weight_stationary: bool | None = None,
        draft_int8: bool | None = None,
    ):
        self.config = BiLDConfig(fallback_threshold, rollback_threshold, max_small_steps, keep_fallback_draft,
                                 fallback_rule, drafting_guard, cost_ratio)
        compile_roles(compile)  # a bad value fails here, not at the first generate
        self.static_cache, self.compile = static_cache, compile
        self.small_tokenizer = small_tokenizer if small_tokenizer is not None else tokenizer
        self.large_tokenizer = large_tokenizer if large_tokenizer is not None else tokenizer
        self.cross_tokenizer = cross_tokenizer
        self.weight_stationary = weight_stationary  # bild.kernels: None as measured (generator.costs), True / False
        self.draft_int8 = draft_int8  # bild.kernels' int8 draft: None as measured (generator.costs), True / False
        bridged = bridges_tokenizers(cross_tokenizer, self.small_tokenizer, self.large_tokenizer)
        check_pair(small, large, self.small_tokenizer, self.large_tokenizer, bridged)
        self.small, self.large = small, large
        # What drafts: the small model itself, or a view of it scoring only draft_vocab (the small model is unchanged).
        self.drafter = small if draft_vocab is None else restrict_draft_vocab(small, draft_vocab)
        self.cost_model = cost_model  # a bild.costs.PairCosts to decide from, or None (measured when needed)
        #: from_pretrained(dtype="auto") on a device without native bfloat16: how the dtypes were chosen
        #: (a bild.hardware.PairChoice with the estimates weighed); None otherwise.
        self.dtype_choice = None

    @property
    def costs(self):
        """The pair's cost model on its device and dtype (`bild.costs.PairCosts`): the one given, else measured
        once per process (a few forwards of each model)."""
        if self.cost_model is None:
            self.cost_model = measure_pair_costs(self.drafter, self.large, max_width=self.config.max_small_steps + 1)
        return self.cost_model

    @classmethod
    def from_pretrained(
        cls,
        small: str,
        large: str,
        fallback_threshold: float = BiLDConfig.fallback_threshold,
        rollback_threshold: float = BiLDConfig.rollback_threshold,
        max_small_steps: int = BiLDConfig.max_small_steps,
        load_tokenizers: bool = True,
        *,
        tokenizer=None,
        small_tokenizer=None,
        large_tokenizer=None,
        static_cache: bool = False,
        compile: bool | str = False,
        draft_vocab=None,
        **kwargs,
    ) -> "BiLDGenerator":
        """Load both models (hub names or local folders); the remaining kwargs (dtype, device_map, ...) go to both
        `from_pretrained` calls; dtype="auto" is bild's (`bild.hardware`): fast on this machine. BiLD's own keywords (tokenizers, static_cache, compile, draft_vocab) are BiLDGenerator's, as
        in its constructor; a tokenizer given for a model is used instead of loading that model's."""
        given = (small_tokenizer if small_tokenizer is not None else tokenizer,
                 large_tokenizer if large_tokenizer is not None else tokenizer)
        models, tokenizers = [], []
        # dtype="auto" means fast on this machine (bild.hardware), not "as stored": bfloat16 where it is native,
        # else the pair's dtypes that measured forwards find fastest for a job (bild.hardware.pair_dtypes).
        measure = kwargs.get("dtype") == "auto"
        if measure:
            device = "cuda" if kwargs.get("device_map") is not None and torch.cuda.is_available() else "cpu"
            rule = rule_dtype(device)
            kwargs = {**kwargs, "dtype": rule if rule is not None else torch.float32}
            measure = rule is None
        for name, own in zip((small, large), given):
            config = AutoConfig.from_pretrained(name, trust_remote_code=kwargs.get("trust_remote_code", False))
            auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
            models.append(auto.from_pretrained(name, **kwargs).eval())
            tokenizers.append(own if own is not None else _load_tokenizer(name) if load_tokenizers else None)
        choice = None
        if measure:
            choice = pair_dtypes(models[0], models[1], max_small_steps,
                                 drafting="auto" if fallback_threshold == AUTO else "always")
        generator = cls(
            models[0], models[1], fallback_threshold, rollback_threshold, max_small_steps,
            small_tokenizer=tokenizers[0], large_tokenizer=tokenizers[1], static_cache=static_cache, compile=compile,
            draft_vocab=draft_vocab,
        )
        generator.dtype_choice = choice
        return generator

    @property
    def tokenizer(self):
        return self.large_tokenizer

    def generation_config(self, generation_config=None, **kwargs):
        """The large model's generation config merged with overrides, as transformers would merge it."""
        config = copy.deepcopy(generation_config if generation_config is not None else self.large.generation_config)
        config.update(**{k: v for k, v in kwargs.items() if hasattr(config, k)})
        return config

    @torch.no_grad()
    def generate(self, input_ids=None, attention_mask=None, generation_config=None, streamer=None, generator=None, **kwargs):
        """BiLD generation; same arguments and output as `large.generate`.

        do_sample=True (passed, or from the model's generation config) samples exactly by speculative
        sampling at rollback_threshold=0; `generator` (a torch.Generator) or torch.manual_seed make it
        reproducible. streamer (TextStreamer, TextIteratorStreamer; batch 1) gets verified tokens only.
        """
        clash = [k for k in _FORWARDED_TO_BILD if k in kwargs]
        if clash:
            raise ValueError(f"{clash} are set by BiLDGenerator itself; pass thresholds to BiLDGenerator(...) and a "
                             "streamer as streamer=... instead.")
        if kwargs.get("assistant_model") is not None:
            raise ValueError("BiLDGenerator.generate does not support assistant_model: BiLD is its own assistant.")
        # Fail before transformers runs an encoder or allocates anything.
        config = self.generation_config(generation_config, **kwargs)
        check_generation_config(config)
        if input_ids is not None:
            check_streamer(streamer, input_ids.shape[0] * (config.num_return_sequences or 1))
        if input_ids is not None and input_ids.numel() == 0 and input_ids.shape[0] == 0:
            return input_ids
        # transformers keeps `tokenizer=` from a custom_generate function and refuses stop strings without it:
        # bild builds the stop-string criterion itself, with the tokenizer given here or its own.
        tokenizer = kwargs.pop("tokenizer", None) or self.large_tokenizer or self.small_tokenizer
        stop_strings = kwargs.pop("stop_strings", None) or config.stop_strings
        source = generation_config if generation_config is not None else self.large.generation_config
        if stop_strings and source.stop_strings:  # a copy without them: the caller's config stays as it was
            generation_config = copy.deepcopy(source)
            generation_config.stop_strings = None
        return self.large.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            generation_config=generation_config,
            custom_generate=bild_generate,
            small_model=self.drafter,
            bild_config=self.config,
            small_tokenizer=self.small_tokenizer,
            large_tokenizer=tokenizer,
            static_cache=self.static_cache,
            compile=self.compile,
            generator=generator,
            bild_streamer=streamer,  # transformers keeps `streamer=` from a custom_generate function
            stop_strings=stop_strings,
            cost_model=self.cost_model,
            cross_tokenizer=self.cross_tokenizer,
            weight_stationary=self.weight_stationary,
            draft_int8=self.draft_int8,
            **kwargs,
        )


def _load_tokenizer(name: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError):
        return None  # a model folder without tokenizer files: vocabulary sizes are compared instead

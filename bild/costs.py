"""A measured cost model of a pair on its device and dtype: what drafting can gain there, and whether it pays.

    costs = bild.measure_pair_costs(small, large, max_width=11)
    costs.ceiling(10)            # the speed-up if every draft were accepted, best round length
    costs.speedup(4, 0.7)        # 4 drafts a round, each accepted with probability 0.7
    costs.best_round(0.7, 10)    # the round length that is fastest at that acceptance (0: do not draft)

Speculative decoding pays when a large-model pass over a few tokens costs about one step and a small step costs
much less than a large one. On a GPU and on CPUs with native bfloat16 matrix units that holds; on a CPU without
them a pass over 2 tokens can cost 2x a step, and then no round length beats the large model alone. This module
measures the numbers (a few forwards, on the models as they are: device, dtype, attention) and the pure functions
below turn them into decisions; tests give them injected costs.

Time is in seconds; a round of n drafts costs n small steps plus one large pass over n + 1 tokens, and yields its
accepted drafts plus one token of the large model's (the correction, or the bonus after all n were accepted), so
with per-draft acceptance a it yields 1 + a + ... + a^n tokens (drafts are judged in order; the first rejected one
ends the round).
"""

from __future__ import annotations

import inspect
import statistics
import time
import weakref
from dataclasses import asdict, dataclass, field, fields, replace

import torch
from torch import nn
from transformers import DynamicCache, EncoderDecoderCache, PreTrainedModel

from .kernels import FEW_ROWS, faster_rows, few_token_matmuls, int8_weight_usable, interpolate
from .validation import max_positions

#: drafting is worth trying only if its ceiling (every draft accepted) is at least this: real drafts are rejected
#: now and then and each round has loop overhead, so a ceiling of barely 1.0 would mean slower in practice.
PAYS_MARGIN = 1.1


@dataclass(frozen=True)
class ModelCosts:
    """One model on its device and dtype: seconds of a one-token cached step, of a cached pass over `width`
    tokens (`passes`, width -> seconds; width 1 is the step), and of prefill per prompt token."""

    passes: dict[int, float]
    prefill_per_token: float
    dtype: str = ""
    context: int = 0
    #: the row counts whose passes bild runs in `bild.kernels`' weight-stationary form (measured faster here), and
    #: the measured seconds of each form (width -> seconds; empty where the forms were not compared)
    weight_stationary: tuple[int, ...] = ()
    linear_passes: dict[int, float] = field(default_factory=dict)
    stationary_passes: dict[int, float] = field(default_factory=dict)
    #: a draft model's row counts whose passes take `bild.kernels`' int8 weight-only form (measured faster than the
    #: better of the other two), and its measured seconds (empty where it was not timed: the large model never is)
    int8_rows: tuple[int, ...] = ()
    int8_passes: dict[int, float] = field(default_factory=dict)

    @classmethod
    def from_forms(cls, linear: dict[int, float], stationary: dict[int, float], prefill_per_token: float,
                   dtype: str = "", context: int = 0, int8: dict[int, float] | None = None) -> "ModelCosts":
        """The costs of passes timed in each matmul form (`stationary` empty: `F.linear` only; `int8` the draft's int8
        weight-only form, where timed): each width in the form `bild.kernels.faster_rows` picks, first between
        `F.linear` and the weight-stationary form, then the int8 form against that choice."""
        rows = faster_rows(linear, stationary)
        passes = {w: stationary[w] if w in rows else t for w, t in linear.items()}
        int8 = dict(int8 or {})
        int8_rows = faster_rows(passes, int8)
        passes = {w: int8[w] if w in int8_rows else t for w, t in passes.items()}
        return cls(passes, prefill_per_token, dtype, context, rows, dict(linear) if stationary or int8 else {},
                   dict(stationary), int8_rows, int8)

    def without_int8(self) -> "ModelCosts":
        """These costs with the int8 form left out (draft_int8=False): each width in the better of the other two."""
        if not self.int8_rows:
            return self
        if not self.linear_passes:  # given costs that say nothing of the other forms: the same passes
            return replace(self, int8_rows=(), int8_passes={})
        return ModelCosts.from_forms(self.linear_passes, self.stationary_passes, self.prefill_per_token, self.dtype,
                                     self.context)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelCosts":
        """The inverse of `asdict` through JSON (which keeps the widths as strings and the row counts as lists)."""
        kwargs = {f.name: d[f.name] for f in fields(cls) if f.name in d}
        for name in ("passes", "linear_passes", "stationary_passes", "int8_passes"):
            kwargs[name] = {int(w): float(s) for w, s in kwargs.get(name, {}).items()}
        for name in ("weight_stationary", "int8_rows"):
            kwargs[name] = tuple(int(r) for r in kwargs.get(name, ()))
        return cls(**kwargs)

    @property
    def step(self) -> float:
        return self.passes[1]

    def pass_seconds(self, width: int) -> float:
        """A pass over `width` tokens: the measured widths, linear in between and past the widest measured."""
        return interpolate(self.passes, width)

    def job_seconds(self, prompt_tokens: int, new_tokens: int, width: int = 1) -> float:
        """Prefill plus `new_tokens` at `width` tokens per pass (1: plain decoding)."""
        return self.prefill_per_token * prompt_tokens + new_tokens / width * self.pass_seconds(width)


@dataclass(frozen=True)
class PairCosts:
    """The pair's cost model: each model's costs on its own device and dtype (they may differ)."""

    small: ModelCosts
    large: ModelCosts
    device: str = ""
    note: dict = field(default_factory=dict)

    def round_seconds(self, drafts: int) -> float:
        return drafts * self.small.step + self.large.pass_seconds(drafts + 1)

    def speedup(self, drafts: int, acceptance: float) -> float:
        """Expected tokens per second of rounds of `drafts` drafts, over the large model's one token per step."""
        tokens = sum(acceptance ** k for k in range(drafts + 1))
        return tokens * self.large.step / self.round_seconds(drafts)

    def best_round(self, acceptance: float, max_drafts: int) -> tuple[int, float]:
        """(drafts, speed-up) of the fastest round length at this acceptance; (0, 1.0) when no drafting is faster."""
        best = (0, 1.0)
        for n in range(1, max_drafts + 1):
            s = self.speedup(n, acceptance)
            if s > best[1]:
                best = (n, s)
        return best

    def ceiling(self, max_drafts: int) -> float:
        """The best speed-up with every draft accepted."""
        return self.best_round(1.0, max_drafts)[1]

    def drafting_can_pay(self, max_drafts: int) -> bool:
        return self.ceiling(max_drafts) >= PAYS_MARGIN

    def draft_cost_ratio(self, drafts: int) -> float:
        """What one more draft costs, in large steps: a small step plus its share of the widened large pass."""
        widening = (self.large.pass_seconds(drafts + 1) - self.large.step) / max(drafts, 1)
        return (self.small.step + max(widening, 0.0)) / self.large.step

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PairCosts":
        """The inverse of `to_dict`, through JSON."""
        return cls(ModelCosts.from_dict(d["small"]), ModelCosts.from_dict(d["large"]), d.get("device", ""),
                   dict(d.get("note", {})))

    def summary(self, max_drafts: int) -> str:
        """One line for headers and warnings."""
        w = max_drafts + 1
        return (f"small step {1000 * self.small.step:.1f} ms ({self.small.dtype}), large step "
                f"{1000 * self.large.step:.1f} ms ({self.large.dtype}), large pass over {w} tokens "
                f"{1000 * self.large.pass_seconds(w):.1f} ms ({self.large.pass_seconds(w) / self.large.step:.2f}x a "
                f"step), ceiling {self.ceiling(max_drafts):.2f}x (every draft accepted)"
                + "".join(f", {role} weight-stationary over {_spans(m.weight_stationary)} rows"
                          for role, m in (("small", self.small), ("large", self.large)) if m.weight_stationary)
                + (f", small int8 weight-only over {_spans(self.small.int8_rows)} rows" if self.small.int8_rows else "")
                + (f"; saved by bild calibrate {self.note.get('measured', '')}" if "saved" in self.note else ""))


def _spans(rows: tuple[int, ...]) -> str:
    """(1, 3, 4, 5) -> "1, 3-5"."""
    out, start = [], None
    for i, r in enumerate(rows):
        start = r if start is None else start
        if i + 1 == len(rows) or rows[i + 1] != r + 1:
            out.append(str(r) if r == start else f"{start}-{r}")
            start = None
    return ", ".join(out)


def default_widths(max_width: int) -> tuple[int, ...]:
    """The pass widths measured: 1, 2, 3, 5 and the widest (others are interpolated)."""
    return tuple(sorted({w for w in (1, 2, 3, 5, max_width) if 1 <= w <= max_width}))


#: the matmul forms `measure_model` times, as `bild.kernels.few_token_matmuls` arguments
_FORM_ROWS = {"linear": {}, "stationary": {"rows": tuple(FEW_ROWS)}, "int8": {"int8_rows": tuple(FEW_ROWS)}}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def measure_model(model: PreTrainedModel, widths: tuple[int, ...], context: int = 64, repeats: int = 4,
                  seed: int = 0, forms: bool | None = None, int8: bool = False) -> ModelCosts:
    """Time a prefill of `context` tokens and cached passes over each width after it (medians of `repeats`, the
    widths rotated each repeat), on random tokens. With `forms` (None: on a CPU) each width is timed with
    `F.linear` and with `bild.kernels`' weight-stationary form back to back (the form's cost is F.linear's times the
    median ratio of those pairs), and with `int8` (a draft model; where its kernel works) in the int8 weight-only form
    as well; the passes are those of the form `faster_rows` picks. A few forwards (2 or 3 x widths x repeats with
    forms); the model is left as it was."""
    device = model.device
    forms = device.type == "cpu" if forms is None else forms
    int8 = int8 and forms and any(int8_weight_usable(m) for m in model.modules() if type(m) is nn.Linear)
    variants = ("linear", "stationary", "int8")[:3 if int8 else 2 if forms else 1]  # the forms timed
    g = torch.Generator().manual_seed(seed)
    vocab = model.get_input_embeddings().weight.shape[0]  # valid input ids (a draft vocabulary's head has no .weight)
    ids = torch.randint(4, vocab, (1, context + max(widths)), generator=g).to(device)
    encdec = model.config.is_encoder_decoder
    kwargs = {}
    if encdec:
        kwargs["encoder_outputs"] = model.get_encoder()(input_ids=ids[:, :context])
        key = "decoder_input_ids"
    else:
        key = "input_ids"

    def new_cache():
        return EncoderDecoderCache(DynamicCache(), DynamicCache()) if encdec else DynamicCache()

    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def forward(tokens, cache, past, form="linear"):  # as bild's adapters run it, in that form
        positions = torch.arange(past, past + tokens.shape[1], device=device)
        with few_token_matmuls(model, **_FORM_ROWS[form]):
            return model(**{key: tokens, cache_kw: cache}, use_cache=True, cache_position=positions, **kwargs)

    prefill = []
    for _ in range(2):  # the first one warms up
        cache = new_cache()
        _sync(device)
        t = time.perf_counter()
        forward(ids[:, :context], cache, 0)
        _sync(device)
        prefill.append(time.perf_counter() - t)
    times: dict[tuple, list[float]] = {(w, name): [] for w in widths for name in variants}
    for name in variants:  # warm the cached path in each form
        forward(ids[:, context:context + 1], cache, context, name)
        cache.crop(-1)
    for r in range(repeats):
        # widths rotated each repeat; at each width the forms back to back, their order reversed every other repeat
        for w in widths[r % len(widths):] + widths[:r % len(widths)]:
            for name in (variants if r % 2 == 0 else variants[::-1]):
                extra = cache.get_seq_length() - context
                if extra > 0:
                    cache.crop(-extra)
                _sync(device)
                t = time.perf_counter()
                forward(ids[:, context:context + w], cache, context, name)
                _sync(device)
                times[(w, name)].append(time.perf_counter() - t)
    linear = {w: statistics.median(times[(w, "linear")]) for w in widths}
    # Each other form relative to F.linear from pairs timed back to back (a machine whose speed drifts
    # from second to second shifts both of a pair alike), applied to F.linear's median.
    def relative(name):
        return {w: linear[w] * statistics.median(a / b for a, b in zip(times[(w, name)], times[(w, "linear")]))
                for w in widths}
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    return ModelCosts.from_forms(linear, relative("stationary") if forms else {}, prefill[-1] / context, dtype, context,
                                 relative("int8") if int8 else None)


#: small model -> large model -> {(devices, dtypes, attention, max_width): costs}, held weakly: an entry goes with its
#: models, so a model created later (even at the same address) is measured anew.
_MEASURED: "weakref.WeakKeyDictionary[PreTrainedModel, weakref.WeakKeyDictionary]" = weakref.WeakKeyDictionary()


def _known(small: PreTrainedModel, large: PreTrainedModel) -> dict:
    return _MEASURED.setdefault(small, weakref.WeakKeyDictionary()).setdefault(large, {})


def pair_context(small: PreTrainedModel, large: PreTrainedModel, widest: int, context: int = 64) -> int:
    """The context a pair is measured after: `context`, shorter for a model with few positions (what it can generate
    after a prompt, leaving room for the widest pass)."""
    limits = [n for n in (max_positions(small), max_positions(large)) if n is not None]
    return max(1, min([context] + [n - widest - 1 for n in limits]))


def _key(small: PreTrainedModel, large: PreTrainedModel, max_width: int) -> tuple:
    def one(m):
        p = next(m.parameters())
        return str(p.device), str(p.dtype), m.config._attn_implementation
    return one(small), one(large), max_width


def measure_pair_costs(small: PreTrainedModel, large: PreTrainedModel, max_width: int = 11, context: int = 64,
                       repeats: int = 4, cached: bool = True) -> PairCosts:
    """The pair's cost model on the models' devices and dtypes. With `cached` it is measured once per process for
    each pair, device, dtype and attention implementation (on a CPU 4 x 5 x 2 forwards of the large model, 4 x 3 of the
    small one: every width in both matmul forms, the small model's step in its int8 weight-only form too), unless
    `bild calibrate` saved one for exactly this pair on this machine (`bild.cost_file`): then that one is read."""
    from .cost_file import load_costs  # it reads this module's types

    key = _key(small, large, max_width)
    known = _known(small, large)
    if cached and key in known:
        return known[key]
    saved = load_costs(small, large, max_width) if cached else None
    if saved is not None:
        known[key] = saved
        return saved
    widths = default_widths(max_width)
    context = pair_context(small, large, max(widths), context)
    costs = PairCosts(measure_model(small, (1,), context, repeats, int8=True), measure_model(large, widths, context, repeats),
                      device=str(large.device))
    if cached:
        known[key] = costs
    return costs


def remember_pair_costs(small: PreTrainedModel, large: PreTrainedModel, max_width: int, costs: PairCosts) -> None:
    """Keep `costs` as the pair's cost model for the models as they are now (device, dtype, attention), so that
    `measure_pair_costs` returns it instead of measuring again: `bild.hardware.pair_dtypes` hands over what it measured
    in the dtypes it chose, so the dtype choice and "auto"'s decision rest on one measurement."""
    _known(small, large)[_key(small, large, max_width)] = costs

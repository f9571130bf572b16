"""Saved cost models: `bild calibrate` measures a pair once and writes its cost model to disk; later processes read it
instead of measuring again (the measurement costs 10-20 s of forwards on a 2-core CPU at every start otherwise).

    bild calibrate --small SMALL --large LARGE          # writes $BILD_CACHE/costs/<fingerprint>.json

A file is only ever used for exactly what it was measured on: the fingerprint in its name, and the identity checked
when it is read, cover this machine (CPU model and the flags that matter, torch threads, GPU name), the versions of
bild, torch and transformers, and each model as loaded (configuration, dtype, device, attention, number of weights:
a draft vocabulary's view differs from its model), and the widest pass measured. Anything else is measured
anew. Nothing here writes a file except `save_costs` (called by `bild calibrate`); `BILD_COSTS=measure` makes every
process measure, whatever is saved.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, fields
from pathlib import Path

import torch
import transformers

from .costs import ModelCosts, PairCosts
from .fetch_cache import cache_dir
from .hardware import MATTERING_FLAGS, cpu_flags

FORMAT = 1


def model_identity(model) -> dict:
    """What a model's costs depend on, as loaded: its architecture (the configuration, wherever it was loaded from: a
    fine-tune of a model costs what the model costs), dtype, device, attention and number of weights."""
    p = next(model.parameters())
    config = {k: v for k, v in model.config.to_dict().items() if k not in ("_name_or_path", "transformers_version")}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return {"config": digest, "dtype": str(p.dtype).replace("torch.", ""), "device": str(p.device),
            "attention": model.config._attn_implementation, "weights": sum(q.numel() for q in model.parameters())}


def machine_identity(device: torch.device) -> dict:
    from . import __version__
    from .env import cpu_model

    out = {"cpu": cpu_model(), "cpu_flags": [f for f in (*MATTERING_FLAGS, "amx_int8") if f in cpu_flags()],
           "torch_threads": torch.get_num_threads(), "bild": __version__, "torch": torch.__version__,
           "transformers": transformers.__version__}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def identity(small, large, max_width: int) -> dict:
    """Everything a saved cost model must match to be used for this pair here."""
    return {"format": FORMAT, "machine": machine_identity(large.device), "small": model_identity(small),
            "large": model_identity(large), "max_width": max_width}


def fingerprint(ident: dict) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def costs_path(small, large, max_width: int) -> Path:
    """Where `bild calibrate` saves this pair's cost model on this machine ($BILD_CACHE/costs/, else
    ~/.cache/bild/costs/)."""
    return cache_dir() / "costs" / f"{fingerprint(identity(small, large, max_width))}.json"


def _model_costs(d: dict) -> ModelCosts:
    widths = ("passes", "linear_passes", "stationary_passes", "int8_passes")
    kwargs = {f.name: d[f.name] for f in fields(ModelCosts) if f.name in d}
    for name in widths:
        kwargs[name] = {int(w): float(s) for w, s in kwargs.get(name, {}).items()}
    for name in ("weight_stationary", "int8_rows"):
        kwargs[name] = tuple(int(r) for r in kwargs.get(name, ()))
    return ModelCosts(**kwargs)


def pair_costs_from_dict(d: dict) -> PairCosts:
    """The inverse of `PairCosts.to_dict` (JSON keeps the widths as strings)."""
    return PairCosts(_model_costs(d["small"]), _model_costs(d["large"]), d.get("device", ""), dict(d.get("note", {})))


def save_costs(small, large, max_width: int, costs: PairCosts, path: str | os.PathLike | None = None) -> Path:
    """Write `costs` for this pair on this machine (to `costs_path` unless `path` is given); returns the path."""
    ident = identity(small, large, max_width)
    path = Path(path) if path is not None else costs_path(small, large, max_width)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"identity": ident, "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "costs": costs.to_dict()}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)
    return path


def _by_dtype_path(small, large, max_width: int, candidates: tuple[str, ...]) -> tuple[Path, dict]:
    ident = {**identity(small, large, max_width), "by_dtype": list(candidates)}
    return cache_dir() / "costs" / f"{fingerprint(ident)}.json", ident


def save_costs_by_dtype(small, large, max_width: int, small_by: dict[str, ModelCosts],
                        large_by: dict[str, ModelCosts]) -> Path:
    """Write each model's costs in each candidate dtype (what `dtype="auto"` weighs on a device without native
    bfloat16, `bild.hardware.pair_dtypes`), for the models as they are now (the dtype they were loaded in)."""
    path, ident = _by_dtype_path(small, large, max_width, tuple(small_by))
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"identity": ident, "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "small": {d: asdict(c) for d, c in small_by.items()}, "large": {d: asdict(c) for d, c in large_by.items()}}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)
    return path


def load_costs_by_dtype(small, large, max_width: int, candidates: tuple[str, ...]):
    """(small_by, large_by) saved by `bild calibrate` for these models as loaded now, on this machine, or None."""
    if os.environ.get("BILD_COSTS", "").lower() == "measure":
        return None
    path, ident = _by_dtype_path(small, large, max_width, candidates)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if record.get("identity") != ident:
        return None
    return ({d: _model_costs(c) for d, c in record["small"].items()},
            {d: _model_costs(c) for d, c in record["large"].items()})


def load_costs(small, large, max_width: int, path: str | os.PathLike | None = None) -> PairCosts | None:
    """The cost model saved for this pair on this machine, or None (nothing saved, `BILD_COSTS=measure`, or a file
    measured for anything else). Its note says where it came from."""
    if path is None and os.environ.get("BILD_COSTS", "").lower() == "measure":
        return None
    path = Path(path) if path is not None else costs_path(small, large, max_width)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if record.get("identity") != identity(small, large, max_width):
        return None
    costs = pair_costs_from_dict(record["costs"])
    return PairCosts(costs.small, costs.large, costs.device,
                     {**costs.note, "saved": str(path), "measured": record.get("measured", "")})

"""Saved cost models: `bild calibrate` measures a pair once and writes its cost model to disk; later processes read it
instead of measuring again (the measurement costs 10-20 s of forwards on a 2-core CPU at every start otherwise).

    bild calibrate --small SMALL --large LARGE          # writes $BILD_CACHE/costs/<fingerprint>.json

A file is only ever used for exactly what it was measured on: the fingerprint in its name, and the identity checked
when it is read, cover this machine (CPU model and the flags that matter, torch threads, GPU name), the versions of
bild, torch and transformers, and each model as loaded (configuration, dtype, device, attention, number of weights:
a draft vocabulary's view differs from its model), and the widest pass measured. Anything else is measured
anew. Nothing here writes a file but `save_costs` and `save_costs_by_dtype` (called by `bild calibrate`); `BILD_COSTS=measure` makes every
process measure, whatever is saved.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

import torch
import transformers

from . import __version__
from .costs import ModelCosts, PairCosts
from .env import cpu_model
from .eval.rundir import atomic_write_json, fingerprint, now
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
    out = {"cpu": cpu_model(), "cpu_flags": [f for f in (*MATTERING_FLAGS, "amx_int8") if f in cpu_flags()],
           "torch_threads": torch.get_num_threads(), "bild": __version__, "torch": torch.__version__,
           "transformers": transformers.__version__}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def identity(small, large, max_width: int, **what) -> dict:
    """Everything a saved file must match to be used for this pair here (`what`: which measurement it holds)."""
    return {"format": FORMAT, "machine": machine_identity(large.device), "small": model_identity(small),
            "large": model_identity(large), "max_width": max_width, **what}


def _path(ident: dict) -> Path:
    return cache_dir() / "costs" / f"{fingerprint(ident)}.json"


def costs_path(small, large, max_width: int) -> Path:
    """Where `bild calibrate` saves this pair's cost model on this machine ($BILD_CACHE/costs/, else
    ~/.cache/bild/costs/)."""
    return _path(identity(small, large, max_width))


def _save(ident: dict, payload: dict) -> Path:
    path = _path(ident)
    atomic_write_json(path, {"identity": ident, "measured": now(), **payload})
    return path


def _load(ident: dict) -> dict | None:
    """The saved record for exactly `ident`, or None (none, unreadable, another identity, or BILD_COSTS=measure)."""
    if os.environ.get("BILD_COSTS", "").lower() == "measure":
        return None
    try:
        record = json.loads(_path(ident).read_text())
    except (OSError, ValueError):
        return None
    return record if record.get("identity") == ident else None


def save_costs(small, large, max_width: int, costs: PairCosts) -> Path:
    """Write `costs` for this pair on this machine (to `costs_path`); returns the path."""
    return _save(identity(small, large, max_width), {"costs": costs.to_dict()})


def load_costs(small, large, max_width: int) -> PairCosts | None:
    """The cost model saved for this pair on this machine, or None (nothing saved, `BILD_COSTS=measure`, or a file
    measured for anything else). Its note says where it came from."""
    ident = identity(small, large, max_width)
    record = _load(ident)
    if record is None:
        return None
    costs = PairCosts.from_dict(record["costs"])
    return PairCosts(costs.small, costs.large, costs.device,
                     {**costs.note, "saved": str(_path(ident)), "measured": record.get("measured", "")})


def save_costs_by_dtype(small, large, max_width: int, small_by: dict[str, ModelCosts],
                        large_by: dict[str, ModelCosts]) -> Path:
    """Write each model's costs in each candidate dtype (what `dtype="auto"` weighs on a device without native
    bfloat16, `bild.hardware.pair_dtypes`), for the models as they are now (the dtype they were loaded in)."""
    return _save(identity(small, large, max_width, by_dtype=list(small_by)),
                 {"small": {d: asdict(c) for d, c in small_by.items()},
                  "large": {d: asdict(c) for d, c in large_by.items()}})


def load_costs_by_dtype(small, large, max_width: int, candidates: tuple[str, ...]):
    """(small_by, large_by) saved by `bild calibrate` for these models as loaded now, on this machine, or None."""
    record = _load(identity(small, large, max_width, by_dtype=list(candidates)))
    if record is None:
        return None
    return ({d: ModelCosts.from_dict(c) for d, c in record["small"].items()},
            {d: ModelCosts.from_dict(c) for d, c in record["large"].items()})

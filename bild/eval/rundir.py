"""A run's output folder: its settings' fingerprint, config.json, resume or clear, prediction files.

Files under a run folder:
    config.json                          settings, versions, device; its fingerprint guards resuming
    predictions_<system>.jsonl           one line per example, in data order
    predictions_<system>.rank<k>.jsonl   one shard per process while running under ``accelerate launch``
    (products)                           what the command makes of them: metrics.json, sweep.json, ...

Every file but the append-only prediction shards is written through `atomic_write`: a temporary
file, flushed and fsynced, then renamed, so a reader (or a crash) sees the old file or the new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable

from .data import Example


def atomic_write(path: Path, write: Callable[[IO], None], binary: bool = False) -> None:
    """Write through `write(handle)` into a temporary file, fsync it, and rename it onto `path` (folders made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text))


def atomic_write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def read_records(path: Path) -> list[dict]:
    """The complete lines of a JSON Lines file; a trailing line without newline is an interrupted write."""
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")[:-1]
    return [json.loads(line) for line in lines if line.strip()]


def drop_partial_line(path: Path) -> None:
    """Truncate `path` after its last newline, removing what an interrupted write left."""
    if not path.exists():
        return
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1
    if keep != len(data):
        with open(path, "r+b") as handle:
            handle.truncate(keep)


def jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


class PredictionWriter:
    """Appends records to one file; each batch is flushed and fsynced before generation goes on."""

    def __init__(self, path: Path):
        drop_partial_line(path)
        self.handle = open(path, "a", encoding="utf-8")

    def write(self, records: list[dict]) -> None:
        # One write per batch: an interrupt lands between batches, or at worst leaves one partial
        # last line, which the next run's drop_partial_line removes.
        self.handle.write(jsonl(records))
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        self.handle.close()


#: The dtypes a run measured for its models (dtype "auto" without a rule), kept so that a resumed run uses them.
DTYPES = "dtypes.json"


@dataclass(frozen=True)
class RunDir:
    """One output folder. `products`: the files a command derives from the predictions (cleared with them);
    `subfolders`: folders of further run folders (a sweep's points/), cleared whole and searched on resume;
    `what`: how the refusal to resume names the contents."""

    path: Path
    products: tuple[str, ...] = ("metrics.json",)
    subfolders: tuple[str, ...] = ()
    what: str = "predictions"

    def child(self, *parts: str) -> "RunDir":
        """A run folder inside this one (a sweep point's), for its prediction files."""
        return RunDir(self.path.joinpath(*parts), products=(), what=self.what)

    # -- the folder as a whole

    def has_predictions(self) -> bool:
        nested = (p for sub in self.subfolders for p in (self.path / sub).rglob("predictions_*.jsonl"))
        return any(self.path.glob("predictions_*.jsonl")) or any(nested)

    def check(self, expected: str) -> None:
        """Refuse to resume into a folder whose predictions were made with other settings."""
        config = self.path / "config.json"
        if not config.exists() or not self.has_predictions():
            return
        previous = json.loads(config.read_text()).get("fingerprint")
        if previous != expected:
            raise SystemExit(
                f"{self.path} holds {self.what} made with other settings (fingerprint {previous}, now {expected}; "
                "see its config.json). Use another --output_dir, or --overwrite_output_dir to start over."
            )

    def clear(self) -> None:
        """Remove the files an earlier run wrote (and nothing else)."""
        for name in ("config.json", DTYPES, *self.products):
            (self.path / name).unlink(missing_ok=True)
        for path in self.path.glob("predictions_*.jsonl"):
            path.unlink()
        for sub in self.subfolders:
            shutil.rmtree(self.path / sub, ignore_errors=True)

    def start(self, settings: dict, overwrite: bool, **fields) -> str:
        """Clear the folder (`overwrite`) or check that it is resumable, then write config.json:
        fingerprint, settings, `fields`, started. Returns the fingerprint."""
        self.path.mkdir(parents=True, exist_ok=True)
        expected = fingerprint(settings)
        if overwrite:
            self.clear()
        else:
            self.check(expected)
        config = {"fingerprint": expected, "settings": settings, **fields, "started": now()}
        atomic_write_json(self.path / "config.json", config)
        return expected

    def pinned_dtypes(self, measured: dict[str, str]) -> dict[str, str]:
        """role -> dtype the models generate in for this run. dtype "auto" measured on a CPU without native bfloat16
        depends on timing, and a resumed run must generate in the dtypes its finished examples were made in: those
        (dtypes.json) where the folder holds predictions, else `measured`, written down for a later resume."""
        path = self.path / DTYPES
        if path.exists() and self.has_predictions():
            return json.loads(path.read_text())
        atomic_write_json(path, measured)
        return measured

    # -- prediction files: append-only, crash-safe, resumable

    def prediction_path(self, system: str, rank: int | None = None) -> Path:
        suffix = "" if rank is None else f".rank{rank}"
        return self.path / f"predictions_{system}{suffix}.jsonl"

    def shards(self, system: str) -> list[Path]:
        return sorted(self.path.glob(f"predictions_{system}.rank*.jsonl"))

    def prediction_files(self, system: str) -> list[Path]:
        """The merged file and every shard of `system`, merged file first."""
        merged = self.prediction_path(system)
        return [p for p in [merged] if p.exists()] + self.shards(system)

    def finished(self, system: str) -> dict[str, dict]:
        """id -> record of every example of `system` already done, in any of its files (first wins)."""
        done: dict[str, dict] = {}
        for path in self.prediction_files(system):
            for record in read_records(path):
                done.setdefault(record["id"], record)
        return done

    def ordered(self, system: str, examples: list[Example]) -> list[dict]:
        """The finished records of `examples`, in their order."""
        done = self.finished(system)
        return [done[e.id] for e in examples if e.id in done]

    def is_finished(self, system: str, examples: list[Example]) -> bool:
        done = self.finished(system)
        return all(e.id in done for e in examples)

    def writer(self, system: str, rank: int | None) -> PredictionWriter:
        self.path.mkdir(parents=True, exist_ok=True)
        return PredictionWriter(self.prediction_path(system, rank))

    def merge(self, system: str, examples: list[Example]) -> None:
        """Write predictions_<system>.jsonl in data order from all its files, then drop the shards.

        Records of examples outside this run (an earlier run with a larger --max_samples) are kept
        after the others, so no finished work is ever thrown away.
        """
        done = self.finished(system)
        wanted = {e.id for e in examples}
        records = self.ordered(system, examples) + [r for i, r in done.items() if i not in wanted]
        atomic_write_text(self.prediction_path(system), jsonl(records))
        for shard in self.shards(system):
            shard.unlink()

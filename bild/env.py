"""`bild env`: what a bug report needs (versions, devices, threads, CPU model)."""

from __future__ import annotations

import argparse
import os
import platform
from importlib import metadata

from .hardware import hardware_summary


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    """Versions and hardware, as a flat dict (also written into every benchmark's JSON)."""
    import torch
    import transformers

    import bild

    info = {
        "bild": bild.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        **hardware_summary("cuda" if torch.cuda.is_available() else "cpu"),
    }
    # The installed distributions' versions: not every package has a __version__ (rouge_score, gguf).
    for name in ("accelerate", "datasets", "sacrebleu", "rouge_score", "gguf"):
        try:
            info[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            info[name] = None
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def env_command_parser(subparsers=None) -> argparse.ArgumentParser:
    description = "Print versions, devices and threads for a bug report."
    parser = subparsers.add_parser("env", help=description, description=description) if subparsers else argparse.ArgumentParser("bild env", description=description)
    parser.set_defaults(func=env_command)
    return parser


def env_command(args: argparse.Namespace) -> int:
    for key, value in environment().items():
        print(f"- {key}: {value}")
    return 0

"""Timing that cannot lie quietly: the order systems run in, paired intervals, and a contention guard.

On a machine with few cores any other process stalls torch's threads, and a system timed as one block
absorbs whatever happened during its block. So systems are interleaved per batch (the order rotated from
batch to batch), every speed-up is a ratio of summed times with a paired bootstrap interval over examples,
and the CPU time other processes used during the run is recorded so a shared run is flagged.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.90
RESAMPLES = 10_000
# Other processes using more than this share of one core, on average over the run, flag it as shared.
SHARED_CORE_FRACTION = 0.05


def rotated(systems: list[str], index: int) -> list[str]:
    """The order systems run in for batch `index`: the list shifted left by index (mod its length)."""
    if not systems:
        return []
    shift = index % len(systems)
    return systems[shift:] + systems[:shift]


def ratio_of_sums(baseline: np.ndarray, system: np.ndarray) -> np.ndarray:
    """sum(baseline) / sum(system) over the last axis: the speed-up of `system` over `baseline`."""
    return baseline.sum(axis=-1) / system.sum(axis=-1)


def paired_bootstrap_ci(baseline_s, system_s, confidence: float = CONFIDENCE, resamples: int = RESAMPLES,
                        seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the speed-up sum(baseline) / sum(system), resampling examples in pairs.

    baseline_s[i] and system_s[i] are the two systems' seconds on example i; a resample draws n example
    indices with replacement and keeps each pair together, so the interval reflects how the speed-up varies
    over examples, not how two independent samples of times would. Deterministic for a given seed.
    """
    base, ours = np.asarray(baseline_s, dtype=float), np.asarray(system_s, dtype=float)
    if base.shape != ours.shape or base.ndim != 1 or base.size == 0:
        raise ValueError(f"paired times need two equal-length non-empty lists, got {base.shape} and {ours.shape}")
    idx = np.random.default_rng(seed).integers(0, base.size, size=(resamples, base.size))  # (R, n)
    ratios = ratio_of_sums(base[idx], ours[idx])
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(ratios, [tail, 1 - tail])
    return float(lo), float(hi)


def _busy_jiffies() -> int | None:
    """CPU time all processes spent busy (user, nice, system, irq, softirq, steal), in clock ticks."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return user + nice + system + irq + softirq + steal


def _own_jiffies() -> int | None:
    """CPU time of this process (all its threads), in clock ticks; children count as other processes."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # Fields after the command name start at "state" (field 3): utime and stime are fields 14 and 15.
    return int(fields[11]) + int(fields[12])


@dataclass
class ContentionMonitor:
    """Measures, between start() and stop(), the CPU time that processes other than this one used.

    Linux only (reads /proc); elsewhere the report says the contention is unknown.
    """

    started_at: float = 0.0
    busy0: int | None = None
    own0: int | None = None

    def start(self) -> "ContentionMonitor":
        self.started_at, self.busy0, self.own0 = time.monotonic(), _busy_jiffies(), _own_jiffies()
        return self

    def stop(self) -> dict:
        wall = time.monotonic() - self.started_at
        busy, own = _busy_jiffies(), _own_jiffies()
        load = os.getloadavg() if hasattr(os, "getloadavg") else None
        report = {"wall_s": wall, "load_average": list(load) if load else None, "cpu_count": os.cpu_count()}
        if None in (busy, own, self.busy0, self.own0):
            return {**report, "other_cpu_s": None, "shared": None}
        tick = os.sysconf("SC_CLK_TCK")
        other = max(0.0, ((busy - self.busy0) - (own - self.own0)) / tick)
        return {**report, "other_cpu_s": other, "shared": is_shared(other, wall)}


def is_shared(other_cpu_s: float, wall_s: float, threshold: float = SHARED_CORE_FRACTION) -> bool:
    """Whether other processes used more than `threshold` of one core on average over `wall_s`."""
    return wall_s > 0 and other_cpu_s / wall_s > threshold


def contention_warning(report: dict) -> str | None:
    """A line for the terminal when the run shared the machine, else None."""
    if not report.get("shared"):
        return None
    return (f"warning: other processes used {report['other_cpu_s']:.1f} CPU-seconds during this "
            f"{report['wall_s']:.0f} s run (load average {report['load_average'][0]:.2f}); its timings are not "
            "from an idle machine. Rerun with nothing else running before deciding from its speed-ups.")

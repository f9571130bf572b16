"""The timing helpers: interleaving order, the paired bootstrap interval, the contention guard."""

import itertools
import subprocess
import sys

import numpy as np
import pytest

from bild.eval import timing


def test_rotation_runs_every_system_once_per_batch_and_each_first_in_turn():
    systems = ["large", "assisted", "bild"]
    orders = [timing.rotated(systems, i) for i in range(6)]
    assert all(sorted(o) == sorted(systems) for o in orders)
    assert [o[0] for o in orders] == ["large", "assisted", "bild"] * 2
    assert orders[1] == ["assisted", "bild", "large"]
    assert timing.rotated([], 3) == []


def _exact_quantiles(base, ours, probs):
    """The bootstrap distribution enumerated: every one of the n**n resamples, equally likely."""
    n = len(base)
    idx = np.array(list(itertools.product(range(n), repeat=n)))
    ratios = np.sort(timing.ratio_of_sums(np.asarray(base)[idx], np.asarray(ours)[idx]))
    return [ratios[int(np.ceil(p * len(ratios))) - 1] for p in probs]


def test_interval_matches_the_enumerated_bootstrap_distribution():
    # Six examples whose per-example speed-ups differ (2x to 0.8x): the interval must be wide.
    base = [2.0, 1.0, 3.0, 0.8, 1.2, 2.5]
    ours = [1.0, 1.0, 2.0, 1.0, 0.9, 1.4]
    lo, hi = timing.paired_bootstrap_ci(base, ours, resamples=40_000, seed=1)
    exact_lo, exact_hi = _exact_quantiles(base, ours, [0.05, 0.95])
    assert lo == pytest.approx(exact_lo, abs=0.02)
    assert hi == pytest.approx(exact_hi, abs=0.02)
    point = sum(base) / sum(ours)
    assert lo < point < hi


def test_interval_is_paired():
    # Times that vary a lot between examples but with a constant 2x ratio: pairing makes the interval a point.
    base = [10.0, 0.5, 3.0, 7.0, 1.0]
    ours = [b / 2 for b in base]
    assert timing.paired_bootstrap_ci(base, ours) == pytest.approx((2.0, 2.0))


def test_interval_is_reproducible_and_checks_its_inputs():
    base, ours = [1.0, 2.0, 3.0], [1.5, 1.0, 2.0]
    assert timing.paired_bootstrap_ci(base, ours, seed=3) == timing.paired_bootstrap_ci(base, ours, seed=3)
    with pytest.raises(ValueError, match="equal-length"):
        timing.paired_bootstrap_ci([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="non-empty"):
        timing.paired_bootstrap_ci([], [])


def test_shared_threshold():
    assert not timing.is_shared(0.0, 10.0)
    assert not timing.is_shared(0.4, 10.0)  # 4% of a core
    assert timing.is_shared(0.6, 10.0)
    assert not timing.is_shared(1.0, 0.0)
    assert timing.contention_warning({"shared": False}) is None
    line = timing.contention_warning({"shared": True, "other_cpu_s": 3.0, "wall_s": 10.0, "load_average": [1.5]})
    assert "3.0 CPU-seconds" in line and "1.50" in line


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_monitor_sees_another_process_but_not_our_own_work():
    own = timing.ContentionMonitor().start()
    sum(i * i for i in range(3_000_000))  # our own CPU time must not count as contention
    mine = own.stop()
    assert mine["other_cpu_s"] is not None and mine["wall_s"] > 0

    busy = "import time\nt = time.time()\nwhile time.time() - t < 1.0: pass"
    monitor = timing.ContentionMonitor().start()
    subprocess.run([sys.executable, "-c", busy], check=True)
    report = monitor.stop()
    # The child spun for a second of CPU; this process only waited. (Other tests on a shared CI machine
    # can add to it, never take away.)
    assert report["other_cpu_s"] >= 0.8
    assert report["shared"] is True
    assert mine["other_cpu_s"] < report["other_cpu_s"]

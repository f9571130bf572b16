"""`bild sweep`'s plot: speed-up against quality, the Pareto frontier, the references and the recommendation."""

from __future__ import annotations

from pathlib import Path

from .eval.rundir import atomic_write


def plot_sweep(rows: list[dict], frontier: list[dict], recommended: dict | None, path: Path, title: str,
               metric: str, budget: float) -> None:
    """Speed-up (x) against quality (y): every point, the frontier, large as a star, small as a diamond.

    Drawn on a bare `Figure` (the Agg canvas, no pyplot), so no display and no global state are needed.
    Points not timed in the large model's run are hollow; left of 1x is shaded: slower than large.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5.5), dpi=120)
    ax = fig.add_subplot()
    points = [r for r in rows if r["system"] == "bild"]
    for same_run in (True, False):
        group = [p for p in points if p["timed_with_large"] == same_run]
        if group:
            ax.scatter([p["speedup"] for p in group], [p["quality"] for p in group], s=36, zorder=3,
                       facecolors="tab:blue" if same_run else "none", edgecolors="tab:blue",
                       label="BiLD grid point" if same_run else "BiLD point timed in another run")
    # Ringed as well as joined, so that a frontier of one point still shows.
    ax.plot([p["speedup"] for p in frontier], [p["quality"] for p in frontier], color="tab:red", lw=1.5, zorder=2,
            marker="o", ms=11, mfc="none", mec="tab:red", label="Pareto frontier")
    for p in frontier:
        if p["system"] == "bild":
            fb, rb = p["point"].split("_")
            ax.annotate(f"fb {fb}, rb {rb}", (p["speedup"], p["quality"]), xytext=(6, 5),
                        textcoords="offset points", fontsize=7)
    references = {r["system"]: r for r in rows if r["system"] != "bild"}
    ax.scatter([1.0], [references["large"]["quality"]], marker="*", s=220, color="gold", edgecolors="black",
               zorder=4, label="large alone (greedy)")
    ax.scatter([references["small"]["speedup"]], [references["small"]["quality"]], marker="D", s=60,
               color="tab:green", edgecolors="black", zorder=4, label="small alone (greedy)")
    if recommended is not None:
        ax.scatter([recommended["speedup"]], [recommended["quality"]], s=240, facecolors="none",
                   edgecolors="tab:purple", lw=2, zorder=5, label="recommended")
    ax.axhline(budget, color="0.4", ls=":", lw=1, label="quality budget")
    speedups = [r["speedup"] for r in rows] + [1.0]
    pad = 0.05 * (max(speedups) - min(speedups) or 1.0)
    left, right = min(speedups) - pad, max(speedups) + pad
    ax.axvspan(left, 1.0, color="0.9", zorder=0, label="slower than large greedy")
    ax.axvline(1.0, color="0.5", ls="--", lw=1)
    ax.set_xlim(left, right)
    ax.set_xlabel("speed-up over large greedy (total latency, same examples)")
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    save_png(fig, path)


def save_png(fig, path: Path) -> None:
    """Lay out `fig` and write it to `path` as PNG, atomically (a reader never sees half a file)."""
    fig.tight_layout()
    atomic_write(path, lambda handle: fig.savefig(handle, format="png"), binary=True)

"""Two `bild sweep` runs on the same inputs, side by side: does one frontier dominate the other?

    python benchmarks/compare_sweeps.py unaligned=runs/sweep-a/sweep.json aligned=runs/sweep-b/sweep.json \\
        --output_dir benchmarks/results/sweep-compare

For comparing small models (say the original and the `bild align`-ed one) with the same large model.
Each run's speed-ups are against the large model timed in that run, so the two are comparable even
when the machine's speed drifts between runs. Writes `compare.json`, `compare.md` (a table of every
grid point of every run and the verdict) and `compare.png` (both frontiers on one plot).

Only BiLD's grid points that every run has count (the small model alone differs between runs, and a
point one run skipped must not decide the verdict); each run's frontier is recomputed on them. Frontier B is
*covered* by frontier A when every point of B is matched by a point of A at least as
fast and at least as good; A *dominates* B when it covers B and B does not cover A.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bild.frontier import pareto_frontier
from bild.sweep_plot import save_png

COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:purple")


def covers(a: list[dict], b: list[dict]) -> bool:
    """Every point of `b` has a point in `a` with speed-up and quality at least as high."""
    return all(any(q["speedup"] >= p["speedup"] and q["quality"] >= p["quality"] for q in a) for p in b)


def verdict(first: str, second: str, fronts: dict[str, list[dict]]) -> str:
    ab, ba = covers(fronts[first], fronts[second]), covers(fronts[second], fronts[first])
    if ab and ba:
        return f"the {first} and {second} frontiers are equal"
    if ab:
        return f"the {first} frontier dominates the {second} one"
    if ba:
        return f"the {second} frontier dominates the {first} one"
    return f"neither frontier dominates: each of {first} and {second} has points the other does not match"


def point_order(point: str) -> tuple[float, ...]:
    """'0.4_2' -> (0.4, 2.0); an 'auto' fallback sorts after every number."""
    return tuple(float("inf") if x == "auto" else float(x) for x in point.split("_"))


def bild_points(sweep: dict) -> dict[str, dict]:
    return {r["point"]: r for r in sweep["rows"] if r["system"] == "bild"}


def compare(sweeps: dict[str, dict]) -> dict:
    names = list(sweeps)
    inputs = {(s["task"], s["metric"], s["examples"], s["models"]["large"]) for s in sweeps.values()}
    if len(inputs) != 1:
        raise SystemExit(f"the sweeps differ in task, metric, number of examples or large model: {sorted(inputs)}; "
                         "compare runs on the same inputs with the same large model.")
    # BiLD's points only (the small model alone is a different model in each run), and only the grid points
    # every run has, so that a point one run skipped cannot decide the verdict.
    common = set.intersection(*(set(bild_points(s)) for s in sweeps.values()))
    if not common:
        raise SystemExit("the sweeps have no grid point in common; sweep the same thresholds.")
    fronts = {n: pareto_frontier([p for name, p in bild_points(s).items() if name in common])
              for n, s in sweeps.items()}
    references = {n: {r["system"]: r for r in s["rows"] if r["system"] != "bild"} for n, s in sweeps.items()}
    return {
        "metric": sweeps[names[0]]["metric"], "examples": sweeps[names[0]]["examples"],
        "runs": {n: {"small_model": s["models"]["small"], "output_dir": s["output_dir"], "recommended": s["recommended"],
                     "command": s["command"], "large_quality": references[n]["large"]["quality"],
                     "small": references[n]["small"], "frontier": [p["point"] for p in fronts[n]],
                     "points": bild_points(s)} for n, s in sweeps.items()},
        "common_points": sorted(common, key=point_order),
        "verdict": verdict(names[0], names[1], fronts) if len(names) == 2 else None,
    }


def markdown(result: dict) -> str:
    runs = result["runs"]
    names = list(runs)
    grid = sorted({p for r in runs.values() for p in r["points"]}, key=point_order)
    metric = result["metric"]
    head = ["point (FB_RB)", *(f"{metric} {n}" for n in names), *(f"speed-up {n}" for n in names),
            *(f"tokens/large call {n}" for n in names)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cell(name: str, point: str, key: str, fmt: str) -> str:
        row = runs[name]["points"].get(point)
        if row is None or row.get(key) is None:
            return "-"
        star = "*" if key == "speedup" and point in runs[name]["frontier"] else ""
        return format(row[key], fmt) + star

    for n in names:
        lines.append(f"| small alone ({n}) | " + " | ".join(
            f"{runs[m]['small']['quality']:.2f}" if m == n else "" for m in names) + " | " + " | ".join(
            f"{runs[m]['small']['speedup']:.2f}x" if m == n else "" for m in names) + " |" + " |" * len(names))
    lines.append("| large alone | " + " | ".join(f"{runs[n]['large_quality']:.2f}" for n in names) + " | "
                 + " | ".join("1.00x" for _ in names) + " |" + " |" * len(names))
    for point in grid:
        lines.append(f"| {point} | " + " | ".join(
            [cell(n, point, "quality", ".2f") for n in names] + [cell(n, point, "speedup", ".2f") for n in names]
            + [cell(n, point, "mean_tokens_per_large_call", ".2f") for n in names]) + " |")
    lines += ["", "\\* on that run's Pareto frontier among the grid points all runs have. "
              + "; ".join(f"{n} recommends {r['recommended'] or 'no setting'}" for n, r in runs.items()) + "."]
    if result["verdict"]:
        lines += ["", f"Verdict: {result['verdict']}."]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5.5), dpi=120)
    ax = fig.add_subplot()
    for color, (name, run) in zip(COLORS, result["runs"].items()):
        points = list(run["points"].values())
        ax.scatter([p["speedup"] for p in points], [p["quality"] for p in points], s=22, color=color, alpha=0.5)
        front = sorted((run["points"][p] for p in run["frontier"]), key=lambda p: p["speedup"])
        ax.plot([p["speedup"] for p in front], [p["quality"] for p in front], color=color, lw=1.8, marker="o",
                label=f"{name}: Pareto frontier")
        for p in front:
            ax.annotate(p["point"].replace("_", "/"), (p["speedup"], p["quality"]), xytext=(4, 4),
                        textcoords="offset points", fontsize=6, color=color)
        ax.scatter([run["small"]["speedup"]], [run["small"]["quality"]], marker="D", s=50, color=color,
                   edgecolors="black", zorder=4, label=f"{name}: small alone")
    large = next(iter(result["runs"].values()))["large_quality"]
    ax.scatter([1.0], [large], marker="*", s=220, color="gold", edgecolors="black", zorder=4, label="large alone")
    ax.axvline(1.0, color="0.5", ls="--", lw=1)
    ax.set_xlabel("speed-up over large greedy (timed in the same run)")
    ax.set_ylabel(result["metric"])
    ax.set_title(f"BiLD frontiers on {result['examples']} examples" + (f":\n{result['verdict']}" if result["verdict"]
                                                                       else ""), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    save_png(fig, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", metavar="NAME=SWEEP_JSON", help="two to four sweeps, each named")
    parser.add_argument("--output_dir", required=True)
    args = parser.parse_args(argv)
    if not 2 <= len(args.runs) <= len(COLORS) or any("=" not in r for r in args.runs):
        parser.error(f"give two to {len(COLORS)} runs as NAME=path/to/sweep.json")
    sweeps = {}
    for entry in args.runs:
        name, path = entry.split("=", 1)
        sweeps[name] = json.loads(Path(path).read_text())
    result = compare(sweeps)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "compare.md").write_text(markdown(result))
    plot(result, out / "compare.png")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

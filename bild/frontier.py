"""The pure side of `bild sweep`: the threshold grid, point names, the Pareto frontier, the recommendation,
BiLD's rates, and the table's CSV and JSON forms."""

from __future__ import annotations

import argparse
import csv
import io
import math
from pathlib import Path

from .config import AUTO, BiLDConfig
from .eval.rundir import atomic_write_text

# Quality columns of both tasks; each row has those of its task.
QUALITY_KEYS = ("bleu", "chrf", "rouge1", "rouge2", "rougeL", "rougeLsum")
CSV_COLUMNS = ("point", "system", "fallback_threshold", "rollback_threshold", "draft_vocab", "quality", "quality_delta", "speedup",
               "speedup_ci90",
               "slower_than_large", "on_frontier", "recommended", "timed_with_large", "total_latency_s",
               "ms_per_token", "tokens_per_s", "new_tokens", "mean_tokens_per_large_call", "fallback_rate",
               "rollback_rate", "acceptance_rate", "small_token_share", *QUALITY_KEYS)
# Quality differences smaller than this are float noise, not a loss.
QUALITY_EPS = 1e-9


# ---------------------------------------------------------------------------------------------
# Grid, frontier, recommendation


def threshold_list(text: str) -> list[float]:
    """'0.3,0.5,inf' -> [0.3, 0.5, inf]: 'inf' is math.inf, 0 stays 0.0, repeats are dropped."""
    values: list[float] = []
    for item in text.split(","):
        try:
            value = float(item)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item.strip()!r} is not a number (use inf for infinity)") from None
        if math.isnan(value):
            raise argparse.ArgumentTypeError("nan is not a threshold")
        if value not in values:
            values.append(value)
    return values


def fallback_list(text: str) -> list[float | str]:
    """As threshold_list, and 'auto' (fallback_threshold="auto") may be one of the items: '0.4,auto' -> [0.4, 'auto']."""
    items = [item.strip() for item in text.split(",")]
    values = [AUTO if item == AUTO else threshold_list(item)[0] for item in items]
    return list(dict.fromkeys(values))


def threshold_grid(fallbacks: list[float], rollbacks: list[float], max_small_steps: int) -> list[BiLDConfig]:
    """Every (fallback, rollback) pair, fallback-major, validated by BiLDConfig."""
    try:
        return [BiLDConfig(fb, rb, max_small_steps) for fb in fallbacks for rb in rollbacks]
    except ValueError as err:
        raise SystemExit(f"bild sweep: {err}") from None


def format_threshold(value: float | str) -> str:
    """3.0 -> '3', 0.5 -> '0.5', math.inf -> 'inf', 'auto' -> 'auto': short, and read back by the command line as the
    same value."""
    if isinstance(value, str):
        return value
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


def point_name(config: BiLDConfig) -> str:
    return f"{format_threshold(config.fallback_threshold)}_{format_threshold(config.rollback_threshold)}"


def pareto_frontier(points: list[dict]) -> list[dict]:
    """The points that no other point beats on both "speedup" and "quality", by rising speed-up.

    A point is dominated by another that is at least as fast and at least as good, and strictly
    better on one of the two. Equal points do not dominate each other, so both stay.
    """

    def dominates(a: dict, b: dict) -> bool:
        at_least = a["speedup"] >= b["speedup"] and a["quality"] >= b["quality"]
        return at_least and (a["speedup"] > b["speedup"] or a["quality"] > b["quality"])

    front = [p for p in points if not any(dominates(q, p) for q in points)]
    return sorted(front, key=lambda p: (p["speedup"], p["quality"]))


def recommend(points: list[dict], reference_quality: float, max_drop: float) -> dict | None:
    """The fastest point that loses at most `max_drop` quality against the reference and is faster than it.

    Ties in speed-up go to the better quality. None when no point qualifies: then the reference
    (the large model alone) is at least as fast as every setting that keeps its quality.
    """
    within = [p for p in points
              if p["speedup"] > 1.0 and reference_quality - p["quality"] <= max_drop + QUALITY_EPS]
    return max(within, key=lambda p: (p["speedup"], p["quality"]), default=None)


# ---------------------------------------------------------------------------------------------
# Rows and their files


def bild_rates(stats: dict) -> dict:
    """Rates that explain a point's speed.

    fallback_rate / rollback_rate: the share of rounds (= large-model calls) that ended because the
    small model was unsure / in which the large model rejected a draft. small_token_share: the
    share of committed tokens that were the small model's accepted drafts.
    """
    rounds = max(stats["large_forward_calls"], 1)
    return {
        "mean_tokens_per_large_call": stats["mean_tokens_per_large_call"],
        "fallback_rate": stats["fallbacks"] / rounds,
        "rollback_rate": stats["rollbacks"] / rounds,
        "acceptance_rate": stats["acceptance_rate"],
        "small_token_share": stats["tokens_from_small"] / max(stats["committed_tokens"], 1),
    }


def mark(rows: list[dict], reference_quality: float, max_drop: float) -> tuple[list[dict], dict | None]:
    """Flag the frontier (over every row, references included) and the recommended BiLD point."""
    frontier = pareto_frontier(rows)
    recommended = recommend([r for r in rows if r["system"] == "bild"], reference_quality, max_drop)
    for row in rows:
        row["on_frontier"] = any(row is f for f in frontier)
        row["recommended"] = row is recommended
    return frontier, recommended


def csv_value(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return format_threshold(value) if math.isinf(value) else repr(value)
    return str(value)


def write_csv(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([csv_value(row.get(column)) for column in CSV_COLUMNS])
    atomic_write_text(path, buffer.getvalue())


def json_safe(value):
    """JSON has no infinity: an infinite float (a threshold) becomes the string "inf", at any depth."""
    if isinstance(value, float) and math.isinf(value):
        return format_threshold(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value

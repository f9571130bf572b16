"""`bild sweep`: the pure frontier/recommendation functions on hand-made points, then the command on tiny models."""

from __future__ import annotations

import argparse
import csv
import json
import math
import shlex
import shutil
from pathlib import Path

import pytest

from _example_fixtures import SUMMARIZATION_SAMPLE, TRANSLATION_SAMPLE, save_pair, write_lines
from bild import frontier, sweep, sweep_plot
from bild.cli import main as cli_main
from bild.eval import cli, runner, systems
from bild.eval.rundir import read_records
from bild.eval.tasks import SUMMARIZATION, TRANSLATION

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def point(name: str, speedup: float, quality: float) -> dict:
    return {"point": name, "speedup": speedup, "quality": quality}


# ---------------------------------------------------------------------------------------------
# Pure functions


def test_threshold_list_parses_inf_keeps_zero_and_drops_repeats():
    assert frontier.threshold_list("0,0.5, inf,0.5") == [0.0, 0.5, math.inf]
    assert frontier.threshold_list("1,2,3,5,inf")[-1] == math.inf
    with pytest.raises(argparse.ArgumentTypeError, match="not a number"):
        frontier.threshold_list("0.5,,0.7")
    with pytest.raises(argparse.ArgumentTypeError, match="nan"):
        frontier.threshold_list("nan")
    args = cli.sweep_parser().parse_args(["--small", "s", "--large", "l", "--fallback", "0", "--rollback",
                                                    "0,inf"])
    assert args.fallback == [0.0] and args.rollback == [0.0, math.inf]


def test_auto_is_a_fallback_of_the_grid():
    assert frontier.fallback_list("0.4, auto,0.4") == [0.4, "auto"]
    with pytest.raises(argparse.ArgumentTypeError, match="not a number"):
        frontier.fallback_list("0.4,often")
    grid = frontier.threshold_grid(frontier.fallback_list("auto,0.5"), [0.0, 2.0], 10)
    assert [frontier.point_name(c) for c in grid] == ["auto_0", "auto_2", "0.5_0", "0.5_2"]
    args = cli.sweep_parser().parse_args(["--small", "s", "--large", "l", "--fallback", "auto,0.6"])
    assert args.fallback == ["auto", 0.6]


def test_a_sweep_runs_the_auto_point(decoder_pair, de_en, tmp_path):
    out = tmp_path / "out"
    assert cli_main(sweep_argv(decoder_pair, de_en, out, "--fallback", "auto", "--rollback", "0", "--max_samples",
                               "2")) == 0
    large_row, _, auto = json.loads((out / "sweep.json").read_text())["rows"]
    assert auto["point"] == "auto_0" and auto["fallback_threshold"] == "auto"
    assert auto["chrf"] == pytest.approx(large_row["chrf"])  # lossless


def test_a_sweep_crosses_every_point_with_each_draft_vocabulary(decoder_pair, de_en, tmp_path):
    """--draft_vocab 0,N: each point runs drafting from the whole vocabulary and from the N tokens used most in the
    training references; a lossless point stays the large model's output at both; the recommended command carries
    the vocabulary, and the file swept on is refused as its source."""
    train = write_lines(tmp_path / "de-en.train.jsonl", TRANSLATION_SAMPLE, 4)
    out = tmp_path / "out"
    args = sweep_argv(decoder_pair, de_en, out, "--fallback", "0.4", "--rollback", "0", "--max_samples", "2",
                      "--draft_vocab", "0,40", "--train_file", str(train), "--split", "validation", "--metric", "chrf")
    assert cli_main(args) == 0
    result = json.loads((out / "sweep.json").read_text())
    large_row, _, plain, vocab = result["rows"]
    assert (plain["point"], vocab["point"]) == ("0.4_0", "0.4_0_v40")
    assert (plain["draft_vocab"], vocab["draft_vocab"]) == (None, 40)
    large_out = [r["prediction"] for r in read_records(out / "predictions_large.jsonl")]
    assert [r["prediction"] for r in read_records(out / "points" / "0.4_0_v40" / "predictions_bild.jsonl")] == large_out
    config = json.loads((out / "config.json").read_text())
    assert config["grid"] == ["0.4_0", "0.4_0_v40"] and config["settings"]["draft_vocab_file"] == str(train)
    spec = cli.sweep_spec(cli.sweep_parser().parse_args(args[1:]))
    words = shlex.split(sweep.usage_command(spec, sweep.BiLDConfig(0.4, 0.0), 40))
    parsed = cli.build_parser(TRANSLATION).parse_args(words[2:])
    assert (parsed.bild_draft_vocab, parsed.bild_draft_vocab_file) == (40, str(train))
    with pytest.raises(SystemExit, match="file swept on"):
        cli_main(sweep_argv(decoder_pair, de_en, tmp_path / "o2", "--fallback", "0.4", "--rollback", "0",
                            "--draft_vocab", "16", "--draft_vocab_file", str(de_en)))
    with pytest.raises(SystemExit, match="needs a --draft_vocab_file"):
        cli_main(sweep_argv(decoder_pair, de_en, tmp_path / "o3", "--fallback", "0.4", "--rollback", "0",
                            "--draft_vocab", "16"))
    with pytest.raises(SystemExit):
        cli.sweep_parser().parse_args(["--small", "s", "--large", "l", "--draft_vocab", "-1"])


def test_threshold_grid_validates_and_names_points():
    grid = frontier.threshold_grid([0.5, 0.9], [0.0, math.inf], 10)
    assert [frontier.point_name(c) for c in grid] == ["0.5_0", "0.5_inf", "0.9_0", "0.9_inf"]
    assert frontier.format_threshold(0.1234567891) == "0.1234567891"  # never rounded into another threshold
    with pytest.raises(SystemExit, match="fallback_threshold must be in"):
        frontier.threshold_grid([1.5], [1.0], 10)


def test_pareto_frontier_keeps_exactly_the_non_dominated_points():
    points = [point("a", 1.0, 30.0), point("b", 1.5, 29.0), point("c", 1.4, 28.0), point("d", 2.0, 25.0),
              point("e", 0.8, 31.0), point("f", 1.5, 28.5), point("g", 2.0, 25.0)]
    front = frontier.pareto_frontier(points)
    assert [p["point"] for p in front] == ["e", "a", "b", "d", "g"]  # by rising speed-up; equal d and g both stay
    for p in points:
        beaten = any(q["speedup"] >= p["speedup"] and q["quality"] >= p["quality"]
                     and (q["speedup"], q["quality"]) != (p["speedup"], p["quality"]) for q in points)
        assert (p in front) == (not beaten), p["point"]


def test_recommend_is_the_fastest_within_the_budget_and_faster_than_large():
    points = [point("slow-good", 0.9, 40.0), point("ok", 1.3, 39.6), point("fast", 1.8, 39.0),
              point("edge", 1.5, 39.5), point("tie-worse", 1.5, 39.5 - 1e-12)]
    assert frontier.recommend(points, 40.0, 0.5)["point"] == "edge"  # a loss of exactly the budget is within it
    assert frontier.recommend(points, 40.0, 1.0)["point"] == "fast"
    assert frontier.recommend(points, 40.0, 0.1) is None  # only the point slower than large keeps the quality
    assert frontier.recommend([point("better", 1.2, 41.0)], 40.0, 0.0)["point"] == "better"
    assert frontier.recommend([], 40.0, 0.5) is None


def test_recommended_command_runs_the_example_script_with_the_same_settings():
    argv = ["--task", "summarization", "--small", "s m", "--large", "l", "--validation_file", "v.jsonl",
            "--source_prefix", "summarize: ", "--max_new_tokens", "12", "--batch_size", "4", "--dtype", "bfloat16"]
    spec = cli.sweep_spec(cli.sweep_parser().parse_args(argv))
    command = sweep.usage_command(spec, sweep.BiLDConfig(0.7, math.inf, 6))
    words = shlex.split(command)
    assert words[:2] == ["python", "examples/run_bild_summarization.py"]
    parsed = cli.build_parser(SUMMARIZATION).parse_args(words[2:])
    assert (parsed.fallback_threshold, parsed.rollback_threshold, parsed.max_small_steps) == (0.7, math.inf, 6)
    assert (parsed.small, parsed.validation_file, parsed.split, parsed.source_prefix) == (
        "s m", "v.jsonl", "validation", "summarize: ")
    assert (parsed.max_new_tokens, parsed.batch_size, parsed.dtype, parsed.compare) == (12, 4, "bfloat16", "large")


def test_plot_of_hand_made_rows_is_a_png(tmp_path):
    rows = [{"system": "large", "point": "large", "speedup": 1.0, "quality": 30.0, "timed_with_large": True},
            {"system": "small", "point": "small", "speedup": 2.5, "quality": 22.0, "timed_with_large": True},
            {"system": "bild", "point": "0.5_3", "speedup": 1.6, "quality": 29.8, "timed_with_large": True},
            {"system": "bild", "point": "0.9_1", "speedup": 0.7, "quality": 30.1, "timed_with_large": False}]
    front = frontier.pareto_frontier(rows)
    path = tmp_path / "plot.png"
    sweep_plot.plot_sweep(rows, front, rows[2], path, "title", "bleu", 29.5)
    assert path.read_bytes().startswith(PNG_MAGIC) and path.stat().st_size > 10_000


# ---------------------------------------------------------------------------------------------
# The command on tiny models


@pytest.fixture(scope="module")
def de_en(folder) -> Path:
    return write_lines(folder / "de-en.validation.jsonl", TRANSLATION_SAMPLE, 4)


def sweep_argv(pair, data: Path, output_dir: Path, *extra: str) -> list[str]:
    small, large = pair
    return ["sweep", "--small", small, "--large", large, "--validation_file", str(data), "--max_new_tokens", "6",
            "--batch_size", "2", "--output_dir", str(output_dir), *extra]


GRID = ("--fallback", "0.4,0.9", "--rollback", "1,inf", "--metric", "chrf")


@pytest.fixture(scope="module")
def swept(decoder_pair, de_en, folder):
    """One uninterrupted sweep through the console script's entry; several tests read its files."""
    out = folder / "swept"
    assert cli_main(sweep_argv(decoder_pair, de_en, out, *GRID)) == 0
    return out, json.loads((out / "sweep.json").read_text())


def test_sweep_writes_a_row_per_grid_point_and_both_references(swept):
    out, result = swept
    rows = result["rows"]
    assert [r["point"] for r in rows] == ["large", "small", "0.4_1", "0.4_inf", "0.9_1", "0.9_inf"]
    assert rows[2]["fallback_threshold"] == 0.4 and rows[3]["rollback_threshold"] == "inf"  # JSON has no inf
    assert result["metric"] == "chrf" and result["examples"] == 4
    large_total = sum(r["latency_s"] for r in read_records(out / "predictions_large.jsonl"))
    for row in rows:
        folder = out if row["system"] != "bild" else out / "points" / row["point"]
        records = read_records(folder / f"predictions_{row['system']}.jsonl")
        assert len(records) == 4
        total = sum(r["latency_s"] for r in records)
        assert row["speedup"] == pytest.approx(large_total / total)
        assert row["speedup_ci90"][0] <= row["speedup"] <= row["speedup_ci90"][1]
        assert row["quality"] == row["chrf"] and row["quality_delta"] == pytest.approx(row["chrf"] - rows[0]["chrf"])
        assert row["slower_than_large"] == (row["speedup"] < 1) and row["timed_with_large"]
        if row["system"] == "bild":
            assert row["mean_tokens_per_large_call"] >= 1.0
            assert all(0.0 <= row[k] <= 1.0 for k in ("fallback_rate", "rollback_rate", "small_token_share"))
    assert rows[0]["speedup"] == 1.0 and rows[0]["mean_tokens_per_large_call"] == 1.0
    assert all(r["rollback_rate"] == 0.0 for r in rows if r["rollback_threshold"] == "inf")  # never rolls back

    with open(out / "sweep.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [r["point"] for r in table] == [r["point"] for r in rows]
    assert table[3]["rollback_threshold"] == "inf" and float(table[2]["speedup"]) == pytest.approx(rows[2]["speedup"])


def test_frontier_is_non_dominated_and_the_recommendation_respects_the_budget(swept):
    _, result = swept
    rows = result["rows"]
    frontier = [r for r in rows if r["on_frontier"]]
    assert sorted(r["point"] for r in frontier) == sorted(result["frontier"]) and frontier
    for f in frontier:
        assert not any(r["speedup"] >= f["speedup"] and r["quality"] >= f["quality"]
                       and (r["speedup"] > f["speedup"] or r["quality"] > f["quality"]) for r in rows)
    for r in rows:
        if not r["on_frontier"]:
            assert any(f["speedup"] >= r["speedup"] and f["quality"] >= r["quality"] for f in frontier)
    budget = rows[0]["quality"] - result["max_quality_drop"]
    qualifying = [r for r in rows if r["system"] == "bild" and r["speedup"] > 1 and r["quality"] >= budget - 1e-9]
    best = max(qualifying, key=lambda r: (r["speedup"], r["quality"]), default=None)
    assert result["recommended"] == (best["point"] if best else None)
    assert (result["command"] is None) == (best is None)


def test_the_recommendation_is_the_fastest_point_and_its_command(swept, decoder_pair, de_en, tmp_path):
    """The large model's latencies made 100x slower: every BiLD point is faster, so with a budget of 100
    points the fastest one must be recommended, with a command line that runs it."""
    out = tmp_path / "slow-large"
    shutil.copytree(swept[0], out)
    large = out / "predictions_large.jsonl"
    records = read_records(large)
    large.write_text("".join(json.dumps({**r, "latency_s": 100 * r["latency_s"]}) + "\n" for r in records))
    assert cli_main(sweep_argv(decoder_pair, de_en, out, *GRID, "--max_quality_drop", "100")) == 0
    result = json.loads((out / "sweep.json").read_text())
    points = [r for r in result["rows"] if r["system"] == "bild"]
    assert all(r["speedup"] > 1 for r in points)
    best = max(points, key=lambda r: (r["speedup"], r["quality"]))
    assert result["recommended"] == best["point"]
    fb, rb = best["point"].split("_")
    assert f"--bild_fallback {fb} --bild_rollback {rb}" in result["command"]


def test_the_png_is_a_valid_image(swept):
    from matplotlib import image

    png = swept[0] / "sweep.png"
    assert png.read_bytes().startswith(PNG_MAGIC) and png.stat().st_size > 10_000
    height, width, _ = image.imread(png).shape
    assert width > 500 and height > 400


def test_a_finished_sweep_is_retabulated_without_models(swept, decoder_pair, de_en, monkeypatch, capsys):
    out, result = swept

    def fail(*args, **kwargs):
        raise AssertionError("a finished system was generated again")

    monkeypatch.setattr(sweep, "load_models", fail)
    monkeypatch.setattr(systems, "load_model", fail)
    monkeypatch.setattr(runner, "generate_batch", fail)
    assert cli_main(sweep_argv(decoder_pair, de_en, out, *GRID, "--max_quality_drop", "100")) == 0
    again = json.loads((out / "sweep.json").read_text())
    assert [r["speedup"] for r in again["rows"]] == [r["speedup"] for r in result["rows"]]
    # With a budget of 100 points any BiLD point faster than large qualifies.
    faster = [r for r in again["rows"] if r["system"] == "bild" and r["speedup"] > 1]
    assert (again["recommended"] is None) == (not faster)
    assert "BiLD sweep" in capsys.readouterr().out


def test_resume_generates_only_new_or_unfinished_points(decoder_pair, de_en, tmp_path, monkeypatch):
    """An interrupted point is completed, a finished one is skipped; the rows say which were timed apart.

    The systems are interleaved per batch: batch i runs them in their order rotated by i.
    """
    out = tmp_path / "out"
    argv = sweep_argv(decoder_pair, de_en, out, "--fallback", "0.5", "--rollback", "2")
    original, calls = runner.generate_batch, []

    def counting(*args, **kwargs):
        calls.append(args[1][0].id)
        return original(*args, **kwargs)

    monkeypatch.setattr(runner, "generate_batch", counting)
    cli_main(argv)  # large, small and 0.5_2 finished in one run
    assert len(calls) == 3 * 2

    def interrupted(*args, **kwargs):
        calls.append(args[1][0].id)
        if len(calls) == 2:  # only 0.5_inf has work: its first batch, then stop in its second
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    calls.clear()
    monkeypatch.setattr(runner, "generate_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cli_main([*argv[:-4], "--fallback", "0.5", "--rollback", "2,inf"])
    started = read_records(out / "points" / "0.5_inf" / "predictions_bild.jsonl")
    assert [r["id"] for r in started] == ["sample-0", "sample-1"]

    calls.clear()
    monkeypatch.setattr(runner, "generate_batch", counting)
    cli_main([*argv[:-4], "--fallback", "0.5,0.9", "--rollback", "2,inf"])
    # 0.5_inf's second batch, then the new 0.9_2 and 0.9_inf (two batches each), interleaved by batch.
    assert calls == ["sample-0", "sample-0", "sample-2", "sample-2", "sample-2"]
    rows = {r["point"]: r for r in json.loads((out / "sweep.json").read_text())["rows"]}
    assert list(rows) == ["large", "small", "0.5_2", "0.5_inf", "0.9_2", "0.9_inf"]
    assert [p for p, r in rows.items() if r["timed_with_large"]] == ["large", "small", "0.5_2"]
    timing = json.loads((out / "timing.json").read_text())
    first, second, third = timing["large"][0], timing["0.5_inf"][0], timing["0.9_inf"][0]
    assert timing["large"] == timing["small"] == timing["0.5_2"] == [first] and timing["0.9_2"] == [third]
    assert timing["0.5_inf"] == [second, third] and len({first, second, third}) == 3  # started, then finished


def test_resuming_with_other_settings_is_refused(decoder_pair, de_en, tmp_path):
    out = tmp_path / "out"
    base = sweep_argv(decoder_pair, de_en, out, "--fallback", "0.5", "--rollback", "inf", "--max_samples", "1")
    cli_main(base)
    with pytest.raises(SystemExit, match="other settings"):
        cli_main([*base, "--max_new_tokens", "3"])
    cli_main([*base, "--max_new_tokens", "3", "--overwrite_output_dir"])
    assert json.loads((out / "sweep.json").read_text())["examples"] == 1


def test_summarization_on_a_seq2seq_pair_scores_rouge_l(folder, tmp_path):
    small, large = save_pair(folder, "seq2seq")
    data = write_lines(folder / "summ.jsonl", SUMMARIZATION_SAMPLE, 2)
    argv = ["sweep", "--task", "summarization", "--small", small, "--large", large, "--test_file", str(data),
            "--source_prefix", "summarize: ", "--fallback", "0.5", "--rollback", "0", "--max_new_tokens", "6",
            "--output_dir", str(tmp_path / "out")]
    assert cli_main(argv) == 0
    result = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert result["metric"] == "rougeL"
    large_row, _, lossless = result["rows"]
    assert lossless["point"] == "0.5_0" and lossless["rougeL"] == pytest.approx(large_row["rougeL"])
    command = sweep.usage_command(cli.sweep_spec(cli.sweep_parser().parse_args(argv[1:])),
                                  sweep.BiLDConfig(0.5, 0.0, 10))
    assert "--source_prefix 'summarize: '" in command and "--task" not in command
    assert result["command"] in (None, command)  # the only point, if it is recommended

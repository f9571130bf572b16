"""The benchmark scripts' logic at toy sizes (their numbers come from real runs, never from tests)."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_decode_interleaves_every_system_on_tiny_models(tmp_path, capsys):
    out = tmp_path / "bench.json"
    systems = "large,small,assisted,assisted:3,bild:0.5:0,bild:0.5:2:4,bild:0.5:0:6:nokeep,bild:0.5:2:4:keep"
    report = _load("bench_decode").main(["--max_samples", "3", "--max_new_tokens", "6", "--dtype", "float32",
                                         "--systems", systems, "--output", str(out)])
    results = report["results"]
    assert list(results) == systems.split(",")
    for name in ("assisted", "assisted:3", "bild:0.5:0", "bild:0.5:0:6:nokeep"):
        assert results[name]["identical_to_large"], name
    for name, r in results.items():
        assert len(r["per_example_s"]) == 3 and r["seconds"] == pytest.approx(sum(r["per_example_s"]))
        if name != "large":
            lo, hi = r["speedup_vs_large_ci90"]
            assert lo <= r["speedup_vs_large"] <= hi
    split = results["bild:0.5:2:4"]["split_s"]
    assert set(split) == {"small_forwards", "large_forwards", "loop_overhead", "per_call_setup"}
    assert all(v >= 0 for v in split.values()) and split["small_forwards"] > 0 and split["large_forwards"] > 0
    assert sum(split.values()) == pytest.approx(results["bild:0.5:2:4"]["seconds"])
    saved = json.loads(out.read_text())
    assert saved["environment"]["torch"] and saved["timing"]["order"] == "interleaved"
    assert "other_cpu_s" in saved["timing"]["contention"]
    assert "bild:0.5:2:4:keep" in capsys.readouterr().out


def test_bench_decode_scores_each_layout_by_its_metric():
    """Translation rows are scored by BLEU against their English side, summarization rows by ROUGE-L against their
    summary; rows of neither layout are not scored."""
    from bild.metrics import rouge, translation_metrics

    bench = _load("bench_decode")
    translation = [{"translation": {"de": "Hallo Welt", "en": "hello world"}}]
    summaries = [{"document": "a long text about a tool", "summary": "a tool for text"}]
    assert bench.read_references(translation) == ("bleu", ["hello world"])
    assert bench.read_references(summaries) == ("rougeL", ["a tool for text"])
    assert bench.read_references([{"prompt": "hi"}]) == (None, None)
    texts = ["a text tool"]
    assert bench.quality("rougeL", texts, ["a tool for text"]) == rouge(texts, ["a tool for text"])["rougeL"]
    assert bench.quality("bleu", ["hello world"], ["hello world"]) == translation_metrics(["hello world"], ["hello world"])["bleu"]


def test_bench_decode_rotates_the_order_per_prompt():
    bench = _load("bench_decode")
    calls = []
    table = {name: (lambda x, name=name: (calls.append(name), x["out"])[1]) for name in ("a", "b", "c")}
    import torch

    prompts = [{"input_ids": torch.zeros(1, 2, dtype=torch.long), "out": torch.zeros(1, 3, dtype=torch.long)}] * 3
    runs = bench.run_interleaved(table, prompts, "cpu")
    assert calls == ["a", "b", "c"] + ["a", "b", "c", "b", "c", "a", "c", "a", "b"]  # warm-ups, then rotated
    assert all(len(r["seconds"]) == 3 for r in runs.values())


def test_bench_decode_fast_path_variants_match_the_eager_path(tmp_path):
    report = _load("bench_decode").main(["--max_samples", "2", "--max_new_tokens", "6", "--dtype", "float32",
                                         "--systems", "large,bild:0.6:2,bild:0.6:2+static",
                                         "--output", str(tmp_path / "bench.json")])
    results = report["results"]
    assert set(results) == {"large", "bild:0.6:2", "bild:0.6:2+static"}
    assert results["bild:0.6:2+static"]["identical_to_eager"]
    # The ratio of the two measured times (a wrong base or an inverted ratio would differ).
    assert results["bild:0.6:2+static"]["speedup_vs_eager"] == pytest.approx(
        results["bild:0.6:2"]["seconds"] / results["bild:0.6:2+static"]["seconds"])
    with pytest.raises(SystemExit, match="bad BiLD system"):
        _load("bench_decode").parse_bild("bild:0.6")


def test_bench_decode_vocab_variant_drafts_from_part_of_the_vocabulary(tmp_path):
    bench = _load("bench_decode")
    thresholds, other = bench.parse_bild("bild:0.6:0+vocab+static", draft_vocab=[1, 2, 3])
    assert thresholds["rollback_threshold"] == 0.0 and other == {"static_cache": True, "draft_vocab": [1, 2, 3]}
    report = bench.main(["--max_samples", "2", "--max_new_tokens", "8", "--dtype", "float32", "--draft_vocab_size",
                         "64", "--systems", "large,bild:0.3:0,bild:0.3:0+vocab", "--output", str(tmp_path / "b.json")])
    results = report["results"]
    # Lossless either way, although the 64-token drafter (of 2048) cannot write most of the large model's tokens.
    assert results["bild:0.3:0+vocab"]["identical_to_large"] and results["bild:0.3:0+vocab"]["identical_to_eager"]


def test_gpu_bench_logic_on_cpu(tmp_path):
    report = _load("gpu_bench").main(["--tiny", "--device", "cpu", "--dtype", "float32", "--new_tokens", "6",
                                      "--repeats", "1", "--skip", "hf_large_static_compiled,bild_fast_best,bild_fast_worst",
                                      "--mean_tokens_per_large_call", "4", "--mean_drafts_per_round", "5",
                                      "--families", "t5,qwen2", "--batches", "1,3", "--output", str(tmp_path / "gpu.json")])
    assert [(r["family"], r["batch"]) for r in report["runs"]] == [("t5", 1), ("t5", 3), ("qwen2", 1), ("qwen2", 3)]
    assert "hf_assisted" not in report["runs"][1]["results"]  # transformers' assisted generation: batch 1 only
    for run in report["runs"][1::2]:  # batches: the never-rolled-back setting commits every row's tokens
        assert run["results"]["bild_eager_best"]["stats"]["committed_tokens"] == 3 * 6
    results = report["runs"][0]["results"]
    best, worst = results["bild_eager_best"]["stats"], results["bild_eager_worst"]["stats"]
    assert best["rollbacks"] == 0 and best["fallbacks"] == 0 and best["committed_tokens"] == 6
    assert worst["drafted_tokens"] == 0 and worst["large_forward_calls"] == 6
    # The estimate combines the measured step costs with the given acceptance: (5 small steps + one
    # all-fallback step) per 4 committed tokens, against the large model's measured cost per token.
    small, worst = results["hf_small_dynamic"]["ms_per_token"], results["bild_eager_worst"]["ms_per_token"]
    per_token = (5 * small + worst) / 4
    assert report["runs"][0]["estimate"]["ms_per_token"] == pytest.approx(per_token)
    assert report["runs"][0]["estimate"]["speedup_vs_large_dynamic"] == pytest.approx(
        results["hf_large_dynamic"]["ms_per_token"] / per_token)


def _sweep(small: str, points: dict[str, tuple[float, float]], frontier: list[str]) -> dict:
    rows = [{"point": "large", "system": "large", "quality": 50.0, "speedup": 1.0},
            {"point": "small", "system": "small", "quality": 40.0, "speedup": 2.0}]
    rows += [{"point": p, "system": "bild", "speedup": s, "quality": q, "mean_tokens_per_large_call": 4.0}
             for p, (s, q) in points.items()]
    return {"task": "translation", "metric": "bleu", "examples": 50, "output_dir": small,
            "models": {"small": small, "large": "L"}, "rows": rows, "frontier": frontier,
            "recommended": frontier[-1], "command": "..."}


def test_compare_sweeps_dominance_table_and_plot(tmp_path):
    compare = _load("compare_sweeps")
    a = [{"speedup": 1.2, "quality": 50.0}, {"speedup": 1.5, "quality": 49.0}]
    b = [{"speedup": 1.1, "quality": 50.0}, {"speedup": 1.5, "quality": 48.0}]
    assert compare.covers(a, b) and not compare.covers(b, a)
    assert compare.verdict("x", "y", {"x": a, "y": b}) == "the x frontier dominates the y one"
    assert compare.verdict("y", "x", {"x": a, "y": b}) == "the x frontier dominates the y one"
    crossing = [{"speedup": 1.6, "quality": 47.0}]
    assert compare.verdict("x", "z", {"x": a, "z": crossing}).startswith("neither")

    # 0.3_9 only in one run: it would dominate everything, but a point the other run lacks cannot count.
    unaligned = _sweep("S", {"0.6_2": (1.3, 49.8), "0.4_5": (1.6, 47.0), "0.8_2": (1.1, 49.0), "0.3_9": (2.0, 49.9)},
                       ["0.6_2", "0.4_5", "0.3_9"])
    aligned = _sweep("S-aligned", {"0.6_2": (1.4, 50.1), "0.4_5": (1.7, 48.0), "0.8_2": (1.2, 49.5)},
                     ["0.6_2", "0.4_5"])
    for name, sweep in (("u.json", unaligned), ("a.json", aligned)):
        (tmp_path / name).write_text(json.dumps(sweep))
    assert compare.main([f"unaligned={tmp_path / 'u.json'}", f"aligned={tmp_path / 'a.json'}",
                         "--output_dir", str(tmp_path / "out")]) == 0
    result = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert result["verdict"] == "the aligned frontier dominates the unaligned one"
    assert result["common_points"] == ["0.4_5", "0.6_2", "0.8_2"]
    assert result["runs"]["unaligned"]["frontier"] == ["0.6_2", "0.4_5"]  # recomputed on the common points
    table = (tmp_path / "out" / "compare.md").read_text()
    # quality, speed-up and tokens per large call of each run; frontier points starred
    assert "| 0.3_9 | 49.90 | - | 2.00 | - |" in table
    assert "| 0.6_2 | 49.80 | 50.10 | 1.30* | 1.40* |" in table and "| 0.8_2 | 49.00 | 49.50 | 1.10 | 1.20 |" in table
    assert (tmp_path / "out" / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    other = _sweep("S", {"0.6_2": (1.3, 49.8)}, ["0.6_2"])
    other["examples"] = 20
    (tmp_path / "o.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="same inputs"):
        compare.main([f"u={tmp_path / 'u.json'}", f"o={tmp_path / 'o.json'}", "--output_dir", str(tmp_path / "x")])


def test_metrics_table_renders_a_committed_run():
    from bild.eval.report import STATS_COUNTERS

    metrics = json.loads((ROOT / "benchmarks/results/runs/translation-qwen-de-en-test100/metrics.json").read_text())
    text = _load("metrics_table").tables(metrics)
    for name, system in metrics["systems"].items():
        assert f"| {name} | {system['quality']['bleu']:.2f} |" in text
    for counter in STATS_COUNTERS:
        assert f"| {counter} |" in text


def test_bench_decode_reports_an_interrupted_run_from_its_partial_file(tmp_path):
    import torch

    bench = _load("bench_decode")
    args = bench.parse_args(["--max_samples", "3", "--max_new_tokens", "5", "--dtype", "float32",
                             "--systems", "large,bild:0.5:0", "--output", str(tmp_path / "x.json")])
    small, large, tokenizer = bench.tiny_pair("cpu", torch.float32)
    prompts, _ = bench.load_prompts(args, tokenizer, "cpu")
    runs = bench.run_interleaved(bench.systems(args.systems.split(","), small, large, bench.decoding_kwargs(args)),
                                 prompts, "cpu")
    partial = tmp_path / "x.partial.json"
    partial.write_text(json.dumps({"args": vars(args), "prompts_done": 3, "contention": {"shared": False},
                                   "runs": runs}))
    report = bench.main(["--report_partial", str(partial)])
    assert report["prompts"] == 3 and report["results"]["bild:0.5:0"]["identical_to_large"]
    assert report["results"]["bild:0.5:0"]["speedup_vs_large"] == pytest.approx(
        sum(runs["large"]["seconds"]) / sum(runs["bild:0.5:0"]["seconds"]))
    assert (tmp_path / "x.first3.json").exists()


def test_bench_decode_samples_every_prompt_once_per_seed_with_the_same_seed_for_every_system():
    import torch

    bench = _load("bench_decode")
    args = bench.parse_args(["--max_samples", "3", "--max_new_tokens", "6", "--dtype", "float32", "--do_sample",
                             "--temperature", "0.7", "--top_p", "0.9", "--seeds", "0,1"])
    small, large, tokenizer = bench.tiny_pair("cpu", torch.float32)
    prompts, _ = bench.load_prompts(args, tokenizer, "cpu")
    names = ["large", "bild:inf:0"]  # ALWAYS_FALLBACK: the large model's own draws
    table = bench.systems(names, small, large, bench.decoding_kwargs(args))
    runs = bench.run_interleaved(table, prompts, "cpu", seed_list=bench.seeds(args))
    assert [len(runs[n]["outputs"]) for n in names] == [6, 6]
    assert runs["large"]["outputs"] == runs["bild:inf:0"]["outputs"]  # same seed per (prompt, seed)
    assert runs["large"]["outputs"][0::2] != runs["large"]["outputs"][1::2]  # the seeds differ


def test_bench_decode_interval_resamples_prompts_with_their_seeds_summed():
    bench = _load("bench_decode")
    assert bench.per_prompt([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2) == [3.0, 7.0, 11.0]
    assert bench.per_prompt([1.0, 2.0], 1) == [1.0, 2.0]


def test_round_overhead_reports_reads_per_round_and_compares_with_a_baseline_checkout(tmp_path):
    import bild

    bench = _load("round_overhead")
    report = bench.main(["--shapes", "tiny", "--batches", "1,2", "--repeats", "1", "--output", str(tmp_path / "r.json"),
                         "--baseline_package", str(Path(bild.__file__).parent)])  # this checkout as its own baseline
    rows = report["results"]
    assert [(r["batch"], r["rollback"], r["version"]) for r in rows][:2] == [(1, 0.0, "baseline"), (1, 0.0, "current")]
    for r in rows:
        assert r["rounds"] > 0 and r["draft_steps"] >= r["rounds"]
        assert r["host_reads_per_round"] == r["host_reads"] / r["rounds"]


def test_encdec_batch_outputs_equal_the_rows_one_by_one(tmp_path):
    report = _load("encdec_batch").main(["--batches", "3", "--new_tokens", "4", "--repeats", "1",
                                         "--output", str(tmp_path / "e.json")])
    assert [r["identical"] for r in report["results"]] == [True, True]


def test_join_runs_joins_parts_of_a_set_and_compares_systems_on_the_examples_they_share(tmp_path):
    """Two runs over consecutive parts: large and bild in both, assisted only in the second; ratios are of summed
    times over the examples each pair of systems shares."""
    times = {"large": ([4.0, 6.0], [5.0, 5.0]), "bild": ([2.0, 3.0], [5.0, 5.0]), "assisted": (None, [10.0, 10.0])}
    runs = []
    for i in range(2):
        d = tmp_path / f"part{i}"
        d.mkdir()
        (d / "metrics.json").write_text(json.dumps({"task": "translation"}))
        for name, parts in times.items():
            if parts[i] is None:
                continue
            lines = [json.dumps({"prediction": f"the same words {i}{j}", "reference": f"the same words {i}{j}",
                                 "latency_s": t, "new_tokens": 10}) for j, t in enumerate(parts[i])]
            (d / f"predictions_{name}.jsonl").write_text("\n".join(lines) + "\n")
        runs.append(d)
    join = _load("join_runs")
    task, systems = join.joined(runs)
    rows = {r["system"]: r for r in join.compare(task, systems)}
    assert rows["bild"]["examples"] == 4 and rows["bild"]["x large"]["ratio"] == pytest.approx(20 / 15)
    lo, hi = rows["bild"]["x large"]["ci90"]
    assert lo <= 20 / 15 <= hi and rows["bild"]["x large"]["same_output"] == 4
    assert rows["assisted"]["examples"] == 2 and rows["assisted"]["x large"]["ratio"] == pytest.approx(0.5)
    assert rows["bild"]["x assisted"]["ratio"] == pytest.approx(2.0)  # the second part only
    assert rows["large"]["quality"]["bleu"] == pytest.approx(100.0)
    assert "| bild | 4 |" in join.table(task, list(rows.values()))

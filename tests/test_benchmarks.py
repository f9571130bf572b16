"""The benchmark scripts' logic at toy sizes (their numbers come from real runs, never from tests)."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_decode_runs_every_system_on_tiny_models(tmp_path, capsys):
    out = tmp_path / "bench.json"
    report = _load("bench_decode").main(["--max_samples", "2", "--max_new_tokens", "6", "--dtype", "float32",
                                         "--lossy", "0.5,2.0", "--output", str(out)])
    results = report["results"]
    assert set(results) == {"large", "small", "assisted", "bild_lossless", "bild_lossy"}
    assert results["bild_lossless"]["identical_to_large"] and results["assisted"]["identical_to_large"]
    assert 0 <= results["bild_lossless"]["stats"]["share_outside_forwards"] < 1
    assert json.loads(out.read_text())["environment"]["torch"]
    assert "bild_lossless" in capsys.readouterr().out


def test_bench_decode_fast_path_variants_match_the_eager_path(tmp_path):
    report = _load("bench_decode").main(["--max_samples", "2", "--max_new_tokens", "6", "--dtype", "float32",
                                         "--systems", "large,bild_lossy", "--fast_variants", "static",
                                         "--output", str(tmp_path / "bench.json")])
    results = report["results"]
    assert set(results) == {"large", "bild_lossy", "bild_lossy+static"}
    assert results["bild_lossy+static"]["identical_to_eager"]
    assert results["bild_lossy+static"]["speedup_vs_eager"] > 0


def test_gpu_bench_logic_on_cpu(tmp_path):
    report = _load("gpu_bench").main(["--tiny", "--device", "cpu", "--dtype", "float32", "--new_tokens", "6",
                                      "--repeats", "1", "--skip", "hf_large_static_compiled,bild_fast_best,bild_fast_worst",
                                      "--mean_tokens_per_large_call", "4", "--mean_drafts_per_round", "5",
                                      "--output", str(tmp_path / "gpu.json")])
    results = report["results"]
    best, worst = results["bild_eager_best"]["stats"], results["bild_eager_worst"]["stats"]
    assert best["rollbacks"] == 0 and best["fallbacks"] == 0 and best["committed_tokens"] == 6
    assert worst["drafted_tokens"] == 0 and worst["large_forward_calls"] == 6
    assert report["estimate"]["label"].startswith("ESTIMATE")

"""The example scripts' `main(argv)` end to end, on tiny models saved to a temporary folder."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bild.eval.timing import paired_bootstrap_ci
import sacrebleu
from rouge_score import rouge_scorer

from _example_fixtures import SUMMARIZATION_SAMPLE, TRANSLATION_SAMPLE, write_lines
from bild import BiLDGenerator, fetch
from bild.eval import runner, systems

ROOT = Path(__file__).resolve().parent.parent
N_TRANSLATION = 5  # odd, so that the last batch of 2 is a partial one


def _load_script(name: str):
    """Import examples/<name>.py as a module, as a user running it would get it."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


translation = _load_script("run_bild_translation")
summarization = _load_script("run_bild_summarization")


@pytest.fixture(scope="module")
def de_en(folder) -> Path:
    return write_lines(folder / "de-en.jsonl", TRANSLATION_SAMPLE, N_TRANSLATION)


def translation_args(pair, data: Path, output_dir: Path, *extra: str) -> list[str]:
    """float32: these tests compare runs with each other, and dtype "auto" is measured (timing-dependent) on a CPU
    without native bfloat16 (test_measured_dtypes_are_kept_by_a_resumed_run covers that path)."""
    small, large = pair
    return ["--model", "bild", "--small", small, "--large", large, "--test_file", str(data), "--dtype", "float32",
            "--max_new_tokens", "8", "--batch_size", "2", "--output_dir", str(output_dir), *extra]


@pytest.fixture(scope="module")
def compared(decoder_pair, de_en, folder):
    """One uninterrupted run with every baseline; several tests read its files."""
    out = folder / "compared"
    # the paper's rule, not "auto": tiny models' costs can make "auto" the large model alone, and these tests read drafts
    result = translation.main(translation_args(decoder_pair, de_en, out, "--bild_fallback", "0.6", "--compare",
                                               "large,small,assisted"))
    return out, result


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_translation_writes_predictions_metrics_and_config(compared, de_en, decoder_pair):
    out, result = compared
    rows = read_jsonl(de_en)
    references = [r["translation"]["en"] for r in rows]
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "metrics.json", "predictions_assisted.jsonl", "predictions_bild.jsonl",
        "predictions_large.jsonl", "predictions_small.jsonl",
    ]
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(result))
    for system in ("bild", "large", "small", "assisted"):
        records = read_jsonl(out / f"predictions_{system}.jsonl")
        assert [r["id"] for r in records] == [r["id"] for r in rows]
        predictions = [r["prediction"] for r in records]
        assert all(predictions) and all(0 < r["new_tokens"] <= 8 for r in records)
        m = result["systems"][system]
        assert m["quality"]["bleu"] == pytest.approx(sacrebleu.corpus_bleu(predictions, [references]).score)
        assert m["quality"]["chrf"] == pytest.approx(sacrebleu.corpus_chrf(predictions, [references]).score)
        assert m["total_latency_s"] == pytest.approx(sum(r["latency_s"] for r in records))
        assert m["tokens_per_s"] == pytest.approx(sum(r["new_tokens"] for r in records) / m["total_latency_s"])
    bild_records = read_jsonl(out / "predictions_bild.jsonl")
    stats = result["systems"]["bild"]["bild_stats"]
    assert stats["committed_tokens"] == sum(r["new_tokens"] for r in bild_records)
    assert stats["accepted_drafts"] > 0  # the tiny pair agrees often, so drafting really happened

    config = json.loads((out / "config.json").read_text())
    assert all(config["environment"][k] for k in ("python", "bild", "torch", "transformers", "device"))
    assert config["environment"]["cpu"] and config["environment"]["torch_threads"] >= 1
    assert config["settings"]["models"] == {"small": decoder_pair[0], "large": decoder_pair[1]}
    assert config["settings"]["thresholds"] == {"fallback_threshold": 0.6, "rollback_threshold": 2.0,
                                                "max_small_steps": 10}
    assert config["systems"] == ["bild", "large", "small", "assisted"]
    assert config["timing"]["order"] == "interleaved"
    assert {k: v for k, v in result["timing"].items() if k != "contention"} == config["timing"]
    assert set(result["timing"]["contention"]) >= {"other_cpu_s", "shared", "load_average", "wall_s"}
    assert "--compare" in config["argv"]


def test_compare_reports_speedup_and_quality_delta(compared):
    _, result = compared
    systems, comparison = result["systems"], result["comparison"]
    assert set(comparison) == {"large", "small", "assisted"}
    for name, c in comparison.items():
        assert c["speedup"] == pytest.approx(systems[name]["total_latency_s"] / systems["bild"]["total_latency_s"])
        for key in ("bleu", "chrf"):
            delta = systems["bild"]["quality"][key] - systems[name]["quality"][key]
            assert c["quality_delta"][key] == pytest.approx(delta)


def test_model_path_alone_is_a_plain_baseline(compared, decoder_pair, de_en, folder):
    """`--model PATH` runs that model alone: the same predictions as the `large` system."""
    out = folder / "model-alone"
    result = translation.main(["--model", decoder_pair[1], "--test_file", str(de_en), "--max_new_tokens", "8",
                               "--batch_size", "2", "--output_dir", str(out), "--dtype", "float32"])
    assert list(result["systems"]) == ["model"] and result["comparison"] == {}
    alone = [r["prediction"] for r in read_jsonl(out / "predictions_model.jsonl")]
    assert alone == [r["prediction"] for r in read_jsonl(compared[0] / "predictions_large.jsonl")]


def test_compare_runs_more_bild_settings_against_the_same_baselines(compared, decoder_pair, de_en, folder):
    """bild:FB:RB[:N] items of --compare run as systems of their own; their identities hold."""
    out = folder / "settings"
    result = translation.main(translation_args(decoder_pair, de_en, out, "--compare",
                                               "large,bild:0.6:0:3,bild:inf:2,bild:0:inf"))
    systems = result["systems"]
    assert list(systems) == ["bild", "bild-fb0.6-rb0-n3", "bild-fbinf-rb2-n10", "bild-fb0-rbinf-n10", "large"]
    large = [r["prediction"] for r in read_jsonl(out / "predictions_large.jsonl")]
    small = [r["prediction"] for r in read_jsonl(compared[0] / "predictions_small.jsonl")]
    # Lossless (rollback 0) and always-fallback give large greedy; never falling back nor rolling back gives
    # the small model's greedy output.
    for name in ("bild-fb0.6-rb0-n3", "bild-fbinf-rb2-n10"):
        assert [r["prediction"] for r in read_jsonl(out / f"predictions_{name}.jsonl")] == large
    assert [r["prediction"] for r in read_jsonl(out / "predictions_bild-fb0-rbinf-n10.jsonl")] == small
    assert systems["bild-fbinf-rb2-n10"]["bild_stats"]["tokens_from_small"] == 0
    assert systems["bild-fb0.6-rb0-n3"]["bild_stats"]["drafted_tokens"] > 0
    settings = result["bild_settings"]
    assert settings["bild-fb0.6-rb0-n3"]["thresholds"] == {"fallback_threshold": 0.6, "rollback_threshold": 0.0,
                                                          "max_small_steps": 3}
    assert settings["bild"]["comparison"] == result["comparison"]
    for name, s in settings.items():
        assert set(s["comparison"]) == {"large"}
        c = s["comparison"]["large"]
        assert c["speedup"] == pytest.approx(systems["large"]["total_latency_s"] / systems[name]["total_latency_s"])
        # the paired interval over the run's own per-example latencies
        large_s = [r["latency_s"] for r in read_jsonl(out / "predictions_large.jsonl")]
        ours_s = [r["latency_s"] for r in read_jsonl(out / f"predictions_{name}.jsonl")]
        assert c["speedup_ci90"] == pytest.approx(list(paired_bootstrap_ci(large_s, ours_s)))
        assert c["speedup_ci90"][0] <= c["speedup"] <= c["speedup_ci90"][1]
        assert c["quality_delta"]["bleu"] == pytest.approx(systems[name]["quality"]["bleu"]
                                                           - systems["large"]["quality"]["bleu"])


def test_draft_vocab_from_a_training_file_keeps_lossless_bild_exact(decoder_pair, de_en, folder, tmp_path, monkeypatch):
    """--bild_draft_vocab N: the small model drafts from the N words used most in the training references; lossless
    BiLD still writes the large model's predictions; the setting is part of the run's fingerprint."""
    seen = []

    class Spy(BiLDGenerator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.append(kwargs["draft_vocab"])

    monkeypatch.setattr(systems, "BiLDGenerator", Spy)
    train = write_lines(tmp_path / "train.jsonl", TRANSLATION_SAMPLE, 12)
    out = tmp_path / "vocab"
    # the paper's rule: this test reads drafts, and "auto" may find that tiny models' drafting cannot pay
    result = translation.main(translation_args(decoder_pair, de_en, out, "--bild_fallback", "0.6", "--bild_rollback", "0",
                                               "--compare", "large",
                                               "--bild_draft_vocab", "20", "--train_file", str(train),
                                               "--split", "test"))
    ids = seen[0]
    assert 20 < len(ids) <= 20 + 6 and len(ids) < 200  # 20 words plus the special tokens, of a ~1,000-word vocabulary
    large = [r["prediction"] for r in read_jsonl(out / "predictions_large.jsonl")]
    assert [r["prediction"] for r in read_jsonl(out / "predictions_bild.jsonl")] == large
    config = json.loads((out / "config.json").read_text())
    assert config["settings"]["draft_vocab"] == {"size": 20, "file": str(train)}
    assert result["systems"]["bild"]["bild_stats"]["drafted_tokens"] > 0
    with pytest.raises(SystemExit, match="file evaluated on"):
        translation.main(translation_args(decoder_pair, de_en, tmp_path / "leak", "--bild_draft_vocab", "20",
                                          "--bild_draft_vocab_file", str(de_en)))
    with pytest.raises(SystemExit, match="needs N >= 1"):
        translation.main(translation_args(decoder_pair, de_en, tmp_path / "none", "--bild_draft_vocab", "20"))


@pytest.mark.parametrize("flags", [("--bild_fallback", "--bild_rollback"),
                                   ("--bild_fallback_threshold", "--bild_rollback_threshold")])
def test_threshold_zero_reaches_the_decoder_as_zero(flags, decoder_pair, de_en, tmp_path, monkeypatch):
    """The paper's script turned 0 into the default with `or`; here 0 must stay 0."""
    seen = []

    class Spy(BiLDGenerator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.append(self.config)

    monkeypatch.setattr(systems, "BiLDGenerator", Spy)
    argv = translation_args(decoder_pair, de_en, tmp_path / "out", flags[0], "0", flags[1], "0",
                            "--max_samples", "1", "--max_new_tokens", "2")
    result = translation.main(argv)
    assert [(c.fallback_threshold, c.rollback_threshold) for c in seen] == [(0.0, 0.0)]
    assert result["thresholds"]["fallback_threshold"] == 0.0 and result["thresholds"]["rollback_threshold"] == 0.0


def test_measured_dtypes_are_kept_by_a_resumed_run(decoder_pair, de_en, tmp_path, monkeypatch):
    """Where dtype "auto" has no rule (no native bfloat16) the pair's dtypes are measured; the run writes them down,
    and a resumed run generates in them whatever a new measurement would say."""
    monkeypatch.setattr(systems, "rule_dtype", lambda device: None)
    out = tmp_path / "measured"
    argv = [a for a in translation_args(decoder_pair, de_en, out, "--compare", "large") if a not in ("--dtype",
                                                                                                     "float32")]
    first = translation.main(argv + ["--max_samples", "2"])
    recorded = json.loads((out / "dtypes.json").read_text())
    assert recorded == first["hardware"]["dtypes"] and set(recorded) == {"small", "large"}
    assert first["hardware"]["dtype_choice"]["large"] == recorded["large"]
    job = first["hardware"]["dtype_choice"]["job"]  # the run's own prompts and references, new tokens capped
    assert job["prompt_tokens"] > 5 and 1 <= job["new_tokens"] <= 8
    other = {d: "bfloat16" if d == "float32" else "float32" for d in ("float32", "bfloat16")}
    flipped = {role: other[d] for role, d in recorded.items()}  # what a later measurement might find instead
    (out / "dtypes.json").write_text(json.dumps(flipped))
    resumed = translation.main(argv)
    assert resumed["hardware"]["dtypes"] == flipped


def test_resume_after_interrupt_gives_identical_predictions(compared, decoder_pair, de_en, tmp_path, monkeypatch):
    """Ctrl-C after one batch, then a kill in the middle of a line: the rerun completes the same predictions."""
    out = tmp_path / "resumed"
    argv = translation_args(decoder_pair, de_en, out, "--compare", "large")
    original, calls = runner.generate_batch, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(runner, "generate_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        translation.main(argv)
    monkeypatch.setattr(runner, "generate_batch", original)
    bild_file = out / "predictions_bild.jsonl"
    assert [r["id"] for r in read_jsonl(bild_file)] == ["sample-0", "sample-1"]
    with open(bild_file, "a") as handle:  # what a kill during a write leaves behind
        handle.write('{"id": "sample-2", "predic')

    result = translation.main(argv)
    for system in ("bild", "large"):
        resumed = read_jsonl(out / f"predictions_{system}.jsonl")
        expected = read_jsonl(compared[0] / f"predictions_{system}.jsonl")
        assert [r["id"] for r in resumed] == [r["id"] for r in expected]  # complete, in order, no duplicates
        assert [r["prediction"] for r in resumed] == [r["prediction"] for r in expected]
        assert result["systems"][system]["quality"] == compared[1]["systems"][system]["quality"]


def test_rerun_of_a_finished_run_generates_nothing(compared, decoder_pair, de_en, monkeypatch, capsys):
    out, result = compared

    def fail(*args, **kwargs):
        raise AssertionError("a finished example was generated again")

    monkeypatch.setattr(runner, "generate_batch", fail)
    monkeypatch.setattr(runner, "warm_up", fail)
    capsys.readouterr()
    again = translation.main(translation_args(decoder_pair, de_en, out, "--bild_fallback", "0.6", "--compare",
                                          "large,small,assisted"))
    assert again["systems"] == result["systems"]
    # The rerun says what it reused, from where, and how to recompute.
    said = " ".join(capsys.readouterr().out.split())
    assert f"Reusing finished examples from {out}" in said and "--overwrite_output_dir" in said
    assert "bild 5/5" in said and "assisted 5/5" in said


def test_resuming_with_other_settings_is_refused(decoder_pair, de_en, tmp_path):
    out = tmp_path / "out"
    base = translation_args(decoder_pair, de_en, out, "--max_samples", "1", "--max_new_tokens", "2")
    translation.main(base)
    with pytest.raises(SystemExit, match="other settings"):
        translation.main([*base, "--bild_rollback", "5"])
    result = translation.main([*base, "--bild_rollback", "5", "--overwrite_output_dir"])
    assert result["thresholds"]["rollback_threshold"] == 5.0


def test_default_job_fetches_the_pair_and_compares_with_large(decoder_pair, tmp_path, monkeypatch):
    """No models and no data: the fetched pair on the shipped sample, large as baseline, under runs/."""
    fetched = []

    def fake_fetch_pair(alias):
        fetched.append(alias)
        return tuple(Path(p) for p in decoder_pair)

    monkeypatch.setattr(fetch, "fetch_pair", fake_fetch_pair)
    monkeypatch.chdir(tmp_path)
    result = translation.main(["--max_samples", "2", "--max_new_tokens", "2"])
    assert fetched == ["qwen2.5-coder"]
    assert list(result["systems"]) == ["bild", "large"] and set(result["comparison"]) == {"large"}
    assert Path(result["output_dir"]).parent == Path("runs")
    config = json.loads((tmp_path / result["output_dir"] / "config.json").read_text())
    assert config["settings"]["data"]["files"] == {"test": str(TRANSLATION_SAMPLE)}
    assert config["settings"]["prompt"]["template"] is None  # resolved per tokenizer:
    assert result["prompt"] == {"template": "chat", "prefix": "Translate the following German text to English. "
                                                              "Reply with the translation only.\n\n"}


def test_summarization_seq2seq_with_prefix_and_rouge(seq2seq_pair, folder, tmp_path):
    data = write_lines(folder / "summ.jsonl", SUMMARIZATION_SAMPLE, 4)
    small, large = seq2seq_pair
    result = summarization.main(["--small", small, "--large", large, "--test_file", str(data),
                                 "--source_prefix", "summarize: ", "--max_new_tokens", "8", "--compare", "small",
                                 "--output_dir", str(tmp_path / "out")])
    references = [r["summary"] for r in read_jsonl(data)]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    for system in ("bild", "small"):
        predictions = [r["prediction"] for r in read_jsonl(tmp_path / "out" / f"predictions_{system}.jsonl")]
        assert all(predictions)
        scores = [scorer.score(ref, pred) for ref, pred in zip(references, predictions)]
        for key, value in result["systems"][system]["quality"].items():
            assert value == pytest.approx(100 * sum(s[key].fmeasure for s in scores) / len(scores))
    assert result["comparison"]["small"]["quality_delta"].keys() == {"rouge1", "rouge2", "rougeL", "rougeLsum"}
    assert "bild_stats" in result["systems"]["bild"] and "bild_stats" not in result["systems"]["small"]


@pytest.mark.slow
def test_accelerate_launch_with_two_processes(decoder_pair, de_en, tmp_path):
    """Two CPU processes split the examples; the merged predictions are those of one process, in order."""
    launcher = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    # accelerate is a dependency of bild: a missing launcher is a broken install, not a reason to skip.
    assert launcher is not None, "accelerate's launcher is not on PATH"
    single, multi = tmp_path / "single", tmp_path / "multi"
    argv = translation_args(decoder_pair, de_en, multi, "--batch_size", "1", "--compare", "large")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    # `--cpu` would start one process (accelerate starts several CPU processes only through MPI);
    # `--multi_gpu` starts them with torch.distributed.run, and bild makes them one gloo group on CPU.
    subprocess.run([launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                    "--mixed_precision", "no", "--dynamo_backend", "no",
                    str(ROOT / "examples" / "run_bild_translation.py"), *argv],
                   check=True, env=env, timeout=240, cwd=tmp_path)
    translation.main(translation_args(decoder_pair, de_en, single, "--batch_size", "1", "--compare", "large"))
    assert sorted(p.name for p in multi.iterdir()) == [
        "config.json", "metrics.json", "predictions_bild.jsonl", "predictions_large.jsonl"]
    metrics = json.loads((multi / "metrics.json").read_text())
    assert metrics["examples"] == N_TRANSLATION
    assert json.loads((multi / "config.json").read_text())["environment"]["num_processes"] == 2
    for system in ("bild", "large"):
        merged = read_jsonl(multi / f"predictions_{system}.jsonl")
        expected = read_jsonl(single / f"predictions_{system}.jsonl")
        assert [r["id"] for r in merged] == [r["id"] for r in expected]
        assert [r["prediction"] for r in merged] == [r["prediction"] for r in expected]


def test_from_pretrained_takes_bilds_own_keywords(decoder_pair):
    """tokenizer=, static_cache= and compile= are BiLDGenerator's (they used to reach the model's __init__)."""
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(decoder_pair[1])
    generator = BiLDGenerator.from_pretrained(*decoder_pair, tokenizer=tokenizer, static_cache=True,
                                              dtype=torch.float32)
    assert generator.small_tokenizer is tokenizer and generator.large_tokenizer is tokenizer
    assert generator.static_cache is True and generator.large.dtype == torch.float32
    inputs = tokenizer(["Dieses Paket"], return_tensors="pt")
    expected = generator.large.generate(**inputs, max_new_tokens=4, do_sample=False)
    lossless = BiLDGenerator.from_pretrained(*decoder_pair, rollback_threshold=0.0, tokenizer=tokenizer)
    assert torch.equal(lossless.generate(**inputs, max_new_tokens=4, do_sample=False), expected)


def test_metrics_carry_the_cost_model_and_the_ceilings_it_implies(compared):
    """The pair's cost model (as measured for this run) and, per BiLD setting, its ceiling with every draft
    accepted and at the acceptance the run measured (accepted / drafted drafts)."""
    from bild.costs import ModelCosts, PairCosts

    _, result = compared
    model = result["cost_model"]
    costs = PairCosts(ModelCosts(**model["costs"]["small"]), ModelCosts(**model["costs"]["large"]),
                      model["costs"]["device"], model["costs"]["note"])
    stats = result["systems"]["bild"]["bild_stats"]
    n = result["thresholds"]["max_small_steps"]
    assert model["ceiling"]["bild"] == pytest.approx(costs.ceiling(n))
    at = model["at_measured_acceptance"]["bild"]
    assert at["acceptance"] == pytest.approx(stats["accepted_drafts"] / stats["drafted_tokens"])
    assert (at["drafts"], at["speedup"]) == pytest.approx(costs.best_round(at["acceptance"], n))
    assert at["speedup"] <= model["ceiling"]["bild"] + 1e-9


def test_the_header_gives_the_calibrate_command_that_saves_the_cost_model(decoder_pair, de_en, tmp_path, capsys,
                                                                          monkeypatch):
    """A run that measured its cost model prints the `bild calibrate` command for its models and dtype; once that
    command has run, the next run reads the saved cost model and says so."""
    import re
    import shlex

    from bild.cli import main as bild_main

    monkeypatch.setenv("BILD_CACHE", str(tmp_path / "cache"))
    translation.main(translation_args(decoder_pair, de_en, tmp_path / "first", "--max_samples", "1"))
    printed = capsys.readouterr().out
    hint = re.search(r"measured in [0-9.]+ s; (bild calibrate .*) saves it", printed)
    assert hint and "saved by bild calibrate" not in printed
    words = shlex.split(hint.group(1))
    assert words[words.index("--small") + 1] == decoder_pair[0] and words[words.index("--dtype") + 1] == "float32"
    assert bild_main([*words[1:], "--repeats", "1"]) == 0
    capsys.readouterr()
    translation.main(translation_args(decoder_pair, de_en, tmp_path / "second", "--max_samples", "1"))
    printed = capsys.readouterr().out
    assert "saved by bild calibrate" in printed and "measured in" not in printed

"""bild.eval's pieces: metrics parity, prompts, crash-safe prediction files, argument handling."""

from __future__ import annotations

import json

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from _example_fixtures import tiny_tokenizer
from bild.config import BiLDConfig
from bild.eval import cli, evaluate, rundir, runner, systems
from bild.eval.data import Example, load_examples
from bild.eval.prompts import PromptBuilder, resolve_template
from bild.eval.rundir import RunDir
from bild.eval.tasks import SUMMARIZATION, TRANSLATION

PREDICTIONS = ["This package provides a library for reading image files.",
               "The tool compresses log files\nand removes old backups."]
REFERENCES = ["This package contains a library to read image files.",
              "The tool compresses old log files.\nIt deletes outdated backups."]


def test_translation_score_equals_sacrebleu():
    score = TRANSLATION.score(PREDICTIONS, REFERENCES)
    assert score["bleu"] == pytest.approx(sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES]).score)
    assert score["chrf"] == pytest.approx(sacrebleu.corpus_chrf(PREDICTIONS, [REFERENCES]).score)


def test_summarization_score_equals_rouge_score_with_newline_sentences():
    """ROUGE with stemming; Lsum splits sentences on newlines (no nltk punkt)."""
    types = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
    scorer = rouge_scorer.RougeScorer(types, use_stemmer=True, split_summaries=False)
    expected = [scorer.score(r, p) for p, r in zip(PREDICTIONS, REFERENCES)]
    score = SUMMARIZATION.score(PREDICTIONS, REFERENCES)
    for t in types:
        assert score[t] == pytest.approx(100 * sum(e[t].fmeasure for e in expected) / 2)
    assert score["rougeLsum"] != pytest.approx(score["rougeL"])  # the newline split mattered


@pytest.fixture(scope="module")
def tokenizer():
    tok = tiny_tokenizer(chat=True)
    tok.padding_side = "left"
    return tok


def test_chat_prompt_is_default_for_decoder_only_models_with_a_template(tokenizer):
    template = resolve_template(None, tokenizer, encoder_decoder=False)
    builder = PromptBuilder(tokenizer, template, prefix="Translate: ")
    assert template == "chat"
    assert builder.text("Hallo Welt") == "<|user|> Translate: Hallo Welt <|assistant|>"
    batch = builder.batch(["Hallo", "Hallo Welt Paket"])
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][:, -1].all()  # left padded


def test_plain_and_format_templates(tokenizer):
    assert resolve_template(None, tokenizer, encoder_decoder=True) == "plain"
    assert PromptBuilder(tokenizer, "plain", "summarize: ").text("a b") == "summarize: a b"
    template = resolve_template("German: {text}\\nEnglish:", tokenizer, encoder_decoder=False)
    assert PromptBuilder(tokenizer, template).text("Paket") == "German: Paket\nEnglish:"
    with pytest.raises(SystemExit):
        resolve_template("German:", tokenizer, encoder_decoder=False)
    with pytest.raises(SystemExit):
        resolve_template("chat", tokenizer, encoder_decoder=True)


def test_max_source_length_cuts_the_source_not_the_template(tokenizer):
    builder = PromptBuilder(tokenizer, "chat", prefix="Translate: ", max_source_length=2)
    assert builder.text("Dieses Paket enthält") == "<|user|> Translate: Dieses Paket <|assistant|>"
    assert PromptBuilder(tokenizer, "plain", max_source_length=5).text("Dieses  Paket") == "Dieses  Paket"


def test_read_records_ignores_an_unfinished_last_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b"}\n{"id": "c", "pre')
    assert [r["id"] for r in rundir.read_records(path)] == ["a", "b"]
    rundir.drop_partial_line(path)
    assert path.read_text() == '{"id": "a"}\n{"id": "b"}\n'


def test_writer_appends_after_repairing(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b", "x')
    writer = rundir.PredictionWriter(path)
    writer.write([{"id": "b"}, {"id": "c"}])
    writer.close()
    assert [r["id"] for r in rundir.read_records(path)] == ["a", "b", "c"]


def test_merge_orders_by_data_drops_shards_and_keeps_extra_records(tmp_path):
    examples = [Example(i, "s", "r") for i in ("x", "y", "z")]
    (tmp_path / "predictions_bild.rank1.jsonl").write_text('{"id": "z"}\n{"id": "y"}\n')
    (tmp_path / "predictions_bild.rank0.jsonl").write_text('{"id": "x"}\n{"id": "old"}\n')
    RunDir(tmp_path).merge("bild", examples)
    assert [p.name for p in tmp_path.iterdir()] == ["predictions_bild.jsonl"]
    assert [r["id"] for r in rundir.read_records(tmp_path / "predictions_bild.jsonl")] == ["x", "y", "z", "old"]
    assert [r["id"] for r in RunDir(tmp_path).ordered("bild", examples)] == ["x", "y", "z"]


def test_atomic_write_json_leaves_only_the_file(tmp_path):
    rundir.atomic_write_json(tmp_path / "m.json", {"a": 1})
    rundir.atomic_write_json(tmp_path / "m.json", {"a": 2})
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": 2}


def test_batches_are_fixed_by_position():
    examples = [Example(str(i), "s", "r") for i in range(5)]
    assert [[e.id for e in b] for b in runner.batches(examples, 2)] == [["0", "1"], ["2", "3"], ["4"]]


def test_generated_length_stops_at_the_first_eos():
    import torch

    assert systems.generated_length(torch.tensor([5, 6, 2, 0, 0]), {2}) == 3
    assert systems.generated_length(torch.tensor([5, 6, 7]), {2}) == 3


@pytest.mark.parametrize("argv, message", [
    (["--small", "s"], "both --small and --large"),
    (["--model", "path", "--compare", "large"], "go with --model bild"),
    (["--small", "s", "--large", "l", "--compare", "large,beam"], "--compare takes"),
    (["--small", "s", "--large", "l", "--compare", "bild:0.4"], "not a BiLD setting"),
    (["--small", "s", "--large", "l", "--compare", "bild:0.4:x"], "not a BiLD setting"),
    (["--small", "s", "--large", "l", "--compare", "bild:1.5:2"], "fallback_threshold must be in"),
    (["--small", "s", "--large", "l", "--compare", "bild:0.4:2:0"], "max_small_steps must be"),
])
def test_argument_errors(argv, message):
    spec = cli.eval_spec(TRANSLATION, cli.build_parser(TRANSLATION).parse_args(argv))
    with pytest.raises(SystemExit, match=message):
        evaluate.systems_of(evaluate.resolve_defaults(spec, "data.jsonl"))


def test_ids_fall_back_to_row_numbers_when_not_unique(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"id": "same", "document": f"d{i}", "summary": f"s{i}"}) + "\n"
                            for i in range(3)))
    parser = cli.build_parser(SUMMARIZATION)
    args = parser.parse_args(["--test_file", str(data), "--max_samples", "2"])
    examples = load_examples(SUMMARIZATION, cli.data_spec(SUMMARIZATION, args))
    assert examples == [Example("0", "d0", "s0"), Example("1", "d1", "s1")]


def test_compare_bild_settings_become_systems():
    args = cli.build_parser(TRANSLATION).parse_args(
        ["--small", "s", "--large", "l", "--bild_fallback", "0.6", "--bild_rollback", "0", "--max_small_steps", "5",
         "--compare", "assisted,bild:0.4:5,large,bild:0.6:0,bild:0.4:inf:3,bild:0.4:5"])
    spec = cli.eval_spec(TRANSLATION, args)
    settings = evaluate.bild_settings(spec)
    # bild:0.6:0 is the primary setting itself (max_small_steps from the command line): not run twice.
    assert settings == {"bild": BiLDConfig(0.6, 0.0, 5), "bild-fb0.4-rb5-n5": BiLDConfig(0.4, 5.0, 5),
                        "bild-fb0.4-rbinf-n3": BiLDConfig(0.4, float("inf"), 3)}
    assert evaluate.systems_of(spec) == ["bild", "bild-fb0.4-rb5-n5", "bild-fb0.4-rbinf-n3", "assisted", "large"]
    assert evaluate.model_paths(spec, evaluate.systems_of(spec)) == {"small": "s", "large": "l"}


def test_auto_is_a_fallback_setting_on_the_command_line():
    args = cli.build_parser(TRANSLATION).parse_args(
        ["--small", "s", "--large", "l", "--bild_fallback", "auto", "--bild_rollback", "2", "--compare", "bild:auto:0,large"])
    spec = cli.eval_spec(TRANSLATION, args)
    assert evaluate.bild_settings(spec) == {"bild": BiLDConfig("auto", 2.0), "bild-fbauto-rb0-n10": BiLDConfig("auto", 0.0)}
    with pytest.raises(SystemExit):
        cli.build_parser(TRANSLATION).parse_args(["--bild_fallback", "sometimes"])


@pytest.mark.parametrize("keep", [True, False])
def test_a_bild_system_uses_every_field_of_its_setting(keep):
    """bild:FB:RB:N:keep|nokeep reaches the generator: with nokeep a fallback step drafts nothing (drafted tokens =
    small steps - fallbacks), with keep every small step drafts (a bug once dropped keep_fallback_draft here)."""
    from tiny_models import batch_inputs, prompts, tiny_pair

    small, large = tiny_pair("llama", mode="agree", noise=0.2)
    generate = systems.make_system("bild-x", {"small": small, "large": large},
                                   BiLDConfig(0.7, 0.0, 3, keep_fallback_draft=keep), {"small": None, "large": None})
    rows, stats = generate(batch_inputs(prompts(2, seed=1), False), {"max_new_tokens": 12})
    total = stats.total()
    assert total["fallbacks"] > 0
    expected = total["small_forward_calls"] - (0 if keep else total["fallbacks"])
    assert total["drafted_tokens"] == expected and len(rows) == 2


def test_systems_are_interleaved_per_batch_with_one_warm_up_each_and_resume(tokenizer, tmp_path, monkeypatch):
    """Batch i runs every system that still needs it, in their order rotated by i; finished work is skipped."""
    import torch

    calls = []

    def system(name):
        def generate(inputs, kwargs):
            calls.append((name, kwargs["max_new_tokens"], inputs["input_ids"].shape[0]))
            return [torch.tensor([5, 2]) for _ in range(inputs["input_ids"].shape[0])], None
        return generate

    ctx = runner.RunContext(PromptBuilder(tokenizer, "plain"), {"max_new_tokens": 20}, batch_size=2,
                            device=torch.device("cpu"), eos_ids={2}, rank=None, show_progress=False, seed=0)
    examples = [Example(str(i), "Hallo", "r") for i in range(5)]  # batches [0, 1], [2, 3], [4]
    run_dir = RunDir(tmp_path)
    run_dir.writer("b", None).write([{"id": "0"}, {"id": "1"}])  # b finished batch 0 in an earlier run
    runs = [runner.System(name, system(name), run_dir) for name in ("a", "b", "c")]
    assert runner.run_systems(runs, examples, ctx) == [5, 3, 5]
    warm, timed = calls[:3], calls[3:]
    assert [(name, steps) for name, steps, _ in warm] == [("a", 16), ("b", 16), ("c", 16)]
    # batch 0: a b c without b; batch 1: b c a; batch 2: c a b.
    assert [name for name, _, _ in timed] == ["a", "c", "b", "c", "a", "c", "a", "b"]
    assert all(steps == 20 for _, steps, _ in timed)
    assert [r["id"] for r in rundir.read_records(run_dir.prediction_path("b"))] == ["0", "1", "2", "3", "4"]
    calls.clear()
    assert runner.run_systems(runs, examples, ctx) == [0, 0, 0] and calls == []  # nothing left: no warm-up either


def test_help_shows_defaults_and_the_seed():
    text = cli.build_parser(TRANSLATION).format_help()
    assert "--seed SEED" in text and "random seed" in text and "(default: 42)" in text
    assert "(default: auto)" in text and "(default: 128)" in text  # --bild_fallback, --max_new_tokens
    assert "(default: 0.5)" in cli.sweep_parser().format_help()  # --max_quality_drop
    assert "(default: 5e-05)" in cli.align_parser().format_help()  # --learning_rate

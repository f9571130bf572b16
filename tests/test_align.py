"""`bild align`: data building and agreement on their own, then the command on tiny models, overfit on purpose."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import peft  # noqa: F401  (a test dependency: a broken install must fail, not skip)
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from _example_fixtures import TRANSLATION_SAMPLE, write_lines
from bild import distill
from bild.eval import runner
from bild.eval.data import Example
from bild.eval.prompts import PromptBuilder
from bild.eval.rundir import read_records
from bild.eval.systems import generated_length, load_tokenizer, new_tokens
from bild.eval.tasks import TRANSLATION
from bild.cli import main as cli_main

ROOT = Path(__file__).resolve().parent.parent
# Overfitting settings: a high learning rate and enough steps that the small model learns its few
# training targets by heart, so that its agreement with the large model must rise on them.
OVERFIT = ("--learning_rate", "1e-2", "--num_train_epochs", "8", "--per_device_train_batch_size", "2",
           "--max_new_tokens", "6", "--batch_size", "3", "--eval_samples", "2",
           # The teacher in the dtype the student trains in: dtype "auto" picks bfloat16 on CPUs that have it, and a
           # random tiny pair's bfloat16 greedy outputs differ from its float32 ones at near-ties.
           "--dtype", "float32")


# ---------------------------------------------------------------------------------------------
# Features, batches, agreement


def test_features_put_the_loss_on_the_output_only():
    assert distill.example_features([5, 6, 7], [8, 2], encoder_decoder=True) == {"input_ids": [5, 6, 7],
                                                                                "labels": [8, 2]}
    assert distill.example_features([5, 6, 7], [8, 2], encoder_decoder=False) == {
        "input_ids": [5, 6, 7, 8, 2], "labels": [-100, -100, -100, 8, 2]}


def test_collate_pads_inputs_and_ignores_padded_labels():
    batch = distill.collate([{"input_ids": [5, 6, 7], "labels": [8]}, {"input_ids": [5], "labels": [8, 9, 2]}],
                          pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[8, -100, -100], [8, 9, 2]]


def test_held_out_split_keeps_something_to_train_on():
    examples = [Example(str(i), "s", "r") for i in range(30)]
    train, held_out = distill.held_out_split(examples, None)
    assert [e.id for e in held_out] == ["27", "28", "29"] and len(train) == 27  # 10% by default
    with pytest.raises(SystemExit, match="eval_samples"):
        distill.held_out_split(examples, 30)


@pytest.mark.parametrize("kind", ["decoder", "seq2seq"])
def test_a_model_agrees_fully_with_its_own_greedy_output(kind, decoder_pair, seq2seq_pair):
    """The agreement's reference point: teacher-forced on its own greedy tokens, a model agrees everywhere."""
    small, _ = decoder_pair if kind == "decoder" else seq2seq_pair
    encoder_decoder = kind == "seq2seq"
    auto = AutoModelForSeq2SeqLM if encoder_decoder else AutoModelForCausalLM
    model = auto.from_pretrained(small).eval()
    tokenizer = load_tokenizer(small, encoder_decoder)
    prompts = PromptBuilder(tokenizer, "plain")
    sources = ["Das ist ein kleines Paket .", "Dieses Werkzeug liest Dateien ."]
    features = []
    for source in sources:
        inputs = prompts.batch([source])
        out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        tokens = new_tokens(out, inputs, encoder_decoder)[0]
        ids = tokens[: generated_length(tokens, {2})].tolist()
        features.append(distill.example_features(inputs["input_ids"][0].tolist(), ids, encoder_decoder))
    result = distill.agreement(model, features, tokenizer.pad_token_id, batch_size=2)
    assert result["token_agreement"] == 1.0 and result["sequence_agreement"] == 1.0
    assert result["positions"] == sum(len([t for t in f["labels"] if t != -100]) for f in features)


@pytest.mark.parametrize("kind", ["decoder", "seq2seq"])
def test_output_loss_is_the_models_own_loss(kind, decoder_pair, seq2seq_pair):
    """Logits only where a loss is taken (decoder-only: from the first output position on) change nothing."""
    small, _ = decoder_pair if kind == "decoder" else seq2seq_pair
    encoder_decoder = kind == "seq2seq"
    model = (AutoModelForSeq2SeqLM if encoder_decoder else AutoModelForCausalLM).from_pretrained(small).eval()
    # Prompts of different lengths, so the rows' outputs start at different positions.
    features = [distill.example_features([5, 6, 7, 8, 9], [10, 11, 2], encoder_decoder),
                distill.example_features([5, 6], [12, 13, 14, 15, 2], encoder_decoder)]
    batch = distill.collate(features, pad_token_id=0)
    expected = model(**batch).loss
    assert distill.slices_head(model) != encoder_decoder  # the tiny decoder-only models take logits_to_keep
    loss = distill.output_loss(model, batch, encoder_decoder, slice_head=not encoder_decoder)
    torch.testing.assert_close(loss, expected)
    if not encoder_decoder:
        full, targets = distill.output_logits(model, batch, False, slice_head=False)
        sliced, kept = distill.output_logits(model, batch, False, slice_head=True)
        first = 2 - 1  # the second row's first output token is at position 2, predicted from position 1
        assert sliced.shape[1] == full.shape[1] - first and torch.equal(kept, targets[:, first:])
        assert (targets[:, :first] == -100).all()
        torch.testing.assert_close(sliced, full[:, first:])


# ---------------------------------------------------------------------------------------------
# The command


@pytest.fixture(scope="module")
def train_file(folder) -> Path:
    return write_lines(folder / "de-en.train.jsonl", TRANSLATION_SAMPLE, 6)


def read_examples(path: Path) -> list[Example]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [Example(r["id"], r["translation"]["de"], r["translation"]["en"]) for r in rows]


def align_argv(pair, data: Path, output_dir: Path, *extra: str) -> list[str]:
    small, large = pair
    return ["align", "--small", small, "--large", large, "--train_file", str(data), "--output_dir", str(output_dir),
            *OVERFIT, *extra]


@pytest.fixture(scope="module")
def aligned(decoder_pair, train_file, folder):
    out = folder / "aligned-decoder"
    assert cli_main(align_argv(decoder_pair, train_file, out)) == 0
    return out, json.loads((out / "align_report.json").read_text())


def assert_agreement_rose_on_training_inputs(report: dict) -> None:
    train = report["agreement"]["train"]
    assert train["before"]["token_agreement"] < 1.0  # room to rise: the pair does not agree everywhere
    assert train["after"]["token_agreement"] > train["before"]["token_agreement"]
    assert train["after"]["token_agreement"] >= 0.95


def test_align_decoder_only_raises_agreement_and_reloads(aligned, decoder_pair, train_file):
    out, report = aligned
    assert_agreement_rose_on_training_inputs(report)
    assert report["examples"] == {"train": 4, "held_out": 2}
    assert len(report["training"]["epoch_losses"]) == 8
    assert report["training"]["epoch_losses"][-1] < report["training"]["epoch_losses"][0]

    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert len(tokenizer) == model.config.vocab_size
    teacher = {r["id"]: r["output_ids"] for r in read_records(out / "align" / "predictions_large.jsonl")}
    assert list(teacher) == [e.id for e in read_examples(train_file)] and all(teacher.values())
    # The saved weights are the trained ones: on the training slice they give the reported agreement.
    instruction = TRANSLATION.instruction(("de", "en"))
    prompts = PromptBuilder(load_tokenizer(str(out), False), "chat", instruction, 1024)
    features = distill.build_features(read_examples(train_file)[:2], teacher, prompts, encoder_decoder=False)
    reloaded = distill.agreement(model, features, tokenizer.pad_token_id, batch_size=2)
    assert reloaded == report["agreement"]["train"]["after"]


def test_align_rerun_reuses_the_large_outputs(aligned, decoder_pair, train_file, monkeypatch):
    out, report = aligned

    def fail(*args, **kwargs):
        raise AssertionError("a finished large output was generated again")

    monkeypatch.setattr(runner, "model_inputs", fail)  # what every generated batch goes through
    cli_main(align_argv(decoder_pair, train_file, out, "--num_train_epochs", "1"))
    again = json.loads((out / "align_report.json").read_text())
    assert again["agreement"]["train"]["before"] == report["agreement"]["train"]["before"]


def test_other_generation_settings_are_refused(aligned, decoder_pair, train_file):
    out, _ = aligned
    with pytest.raises(SystemExit, match="other settings"):
        cli_main(align_argv(decoder_pair, train_file, out, "--max_new_tokens", "3"))


def test_align_encoder_decoder_with_lossless_bild_teacher(seq2seq_pair, train_file, tmp_path):
    """T5: the outputs from lossless BiLD are the large model's greedy ones; agreement rises; the folder reloads."""
    prefix = "translate German to English: "
    out = tmp_path / "aligned"
    assert cli_main(align_argv(seq2seq_pair, train_file, out, "--source_prefix", prefix, "--teacher", "bild")) == 0
    report = json.loads((out / "align_report.json").read_text())
    assert report["teacher"].startswith("BiLD lossless")
    assert_agreement_rose_on_training_inputs(report)
    assert AutoModelForSeq2SeqLM.from_pretrained(out).config.is_encoder_decoder

    large = AutoModelForSeq2SeqLM.from_pretrained(seq2seq_pair[1]).eval()
    prompts = PromptBuilder(load_tokenizer(seq2seq_pair[1], True), "plain", prefix, 1024)
    teacher = read_records(out / "align" / "predictions_large.jsonl")
    for example, record in zip(read_examples(train_file), teacher):
        inputs = prompts.batch([example.source])
        greedy = large.generate(**inputs, max_new_tokens=6, do_sample=False, num_beams=1)
        tokens = new_tokens(greedy, inputs, True)[0]
        assert record["output_ids"] == tokens[: generated_length(tokens, {2})].tolist()


def test_lora_is_merged_into_an_ordinary_model(decoder_pair, train_file, tmp_path):
    out = tmp_path / "lora"
    assert cli_main(align_argv(decoder_pair, train_file, out, "--lora_r", "8", "--learning_rate", "1e-2")) == 0
    report = json.loads((out / "align_report.json").read_text())
    assert report["training"]["lora"]["r"] == 8
    assert_agreement_rose_on_training_inputs(report)
    assert not (out / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in name for name, _ in model.named_parameters())


@pytest.mark.slow
def test_accelerate_launch_with_two_processes(decoder_pair, train_file, tmp_path):
    """Two CPU processes share the generation and train data-parallel; one model and one report come out."""
    launcher = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    # accelerate is a dependency of bild: a missing launcher is a broken install, not a reason to skip.
    assert launcher is not None, "accelerate's launcher is not on PATH"
    out = tmp_path / "multi"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    # As in test_examples: --multi_gpu starts the processes with torch.distributed.run; on CPU they form a gloo group.
    subprocess.run([launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                    "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "bild.cli",
                    *align_argv(decoder_pair, train_file, out)], check=True, env=env, timeout=300, cwd=tmp_path)
    report = json.loads((out / "align_report.json").read_text())
    assert report["training"]["num_processes"] == 2
    assert_agreement_rose_on_training_inputs(report)
    teacher = read_records(out / "align" / "predictions_large.jsonl")
    assert [r["id"] for r in teacher] == [e.id for e in read_examples(train_file)]  # merged, in data order
    assert not list((out / "align").glob("predictions_large.rank*.jsonl"))
    AutoModelForCausalLM.from_pretrained(out)


# ---------------------------------------------------------------------------------------------
# Checkpoints: an interrupted fine-tuning resumes where it stopped, and ends where an uninterrupted one does


class Interrupted(Exception):
    pass


def interrupt_after(monkeypatch, saves: int) -> None:
    """Make the run stop (as a killed process would) right after its `saves`-th checkpoint."""
    original, count = distill.save_checkpoint, {"n": 0}

    def save_then_stop(*args, **kwargs):
        original(*args, **kwargs)
        count["n"] += 1
        if count["n"] == saves:
            raise Interrupted

    monkeypatch.setattr(distill, "save_checkpoint", save_then_stop)


RESUMABLE = ("--num_train_epochs", "2", "--save_steps", "1", "--lora_r", "4", "--lora_dropout", "0.1")


@pytest.fixture(scope="module")
def uninterrupted(decoder_pair, train_file, folder):
    out = folder / "uninterrupted"
    assert cli_main(align_argv(decoder_pair, train_file, out, *RESUMABLE)) == 0
    return out


# 4 training inputs in batches of 2: saves after update 1 (mid-epoch), 2 (end of epoch 1), 3, 4.
@pytest.mark.parametrize("saves", [1, 2])
def test_interrupted_training_resumes_to_the_same_model(saves, uninterrupted, decoder_pair, train_file, tmp_path,
                                                        monkeypatch):
    out = tmp_path / "resumed"
    interrupt_after(monkeypatch, saves)
    with pytest.raises(Interrupted):
        cli_main(align_argv(decoder_pair, train_file, out, *RESUMABLE))
    assert (out / "align" / distill.CHECKPOINT).exists() and not (out / "align_report.json").exists()
    monkeypatch.undo()

    assert cli_main(align_argv(decoder_pair, train_file, out, *RESUMABLE)) == 0
    assert not (out / "align" / distill.CHECKPOINT).exists()  # deleted once the model is saved
    report = json.loads((out / "align_report.json").read_text())
    expected = json.loads((uninterrupted / "align_report.json").read_text())
    assert report["agreement"] == expected["agreement"]  # "before" came from the checkpoint
    assert report["training"]["epoch_losses"] == pytest.approx(expected["training"]["epoch_losses"])
    resumed = AutoModelForCausalLM.from_pretrained(out).state_dict()
    for name, value in AutoModelForCausalLM.from_pretrained(uninterrupted).state_dict().items():
        assert torch.equal(resumed[name], value), name


def test_a_checkpoint_of_other_settings_is_refused(decoder_pair, train_file, tmp_path, monkeypatch):
    out = tmp_path / "changed"
    interrupt_after(monkeypatch, 1)
    with pytest.raises(Interrupted):
        cli_main(align_argv(decoder_pair, train_file, out, *RESUMABLE))
    monkeypatch.undo()
    with pytest.raises(SystemExit, match="other settings"):
        cli_main(align_argv(decoder_pair, train_file, out, *RESUMABLE, "--learning_rate", "1e-3"))
    # --overwrite_output_dir starts afresh.
    assert cli_main(align_argv(decoder_pair, train_file, out, *RESUMABLE, "--learning_rate", "1e-3",
                               "--overwrite_output_dir")) == 0

"""Saved cost models (`bild calibrate`, `bild.cost_file`): a saved model is read back exactly, used only for the pair,
dtype and machine it was measured on, and a process that finds it measures nothing."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import bild.costs as costs_module
from bild import BiLDGenerator, restrict_draft_vocab
from bild.cli import main as cli_main
from bild.cost_file import costs_path, identity, load_costs, save_costs
from bild.costs import ModelCosts, PairCosts, measure_pair_costs
from tiny_models import VOCAB, batch_inputs, injected_costs, prompts, tiny_pair


def _forms_costs() -> PairCosts:
    """Costs with every field set (forms, int8 rows, a note), as a CPU measurement gives them."""
    small = ModelCosts.from_forms({1: 0.03}, {1: 0.028}, 0.001, "float32", 64, int8={1: 0.02})
    large = ModelCosts.from_forms({1: 0.1, 2: 0.11, 5: 0.2}, {1: 0.09, 2: 0.12, 5: 0.15}, 0.004, "bfloat16", 64)
    return PairCosts(small, large, "cpu", {"dtypes": "measured"})


def _no_measuring(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("measured, though a saved cost model was there")
    monkeypatch.setattr(costs_module, "measure_model", refuse)


def test_the_dict_form_round_trips_every_field():
    costs = _forms_costs()
    back = PairCosts.from_dict(json.loads(json.dumps(costs.to_dict())))
    assert back == costs
    assert back.small.int8_rows == (1,) and back.large.weight_stationary == costs.large.weight_stationary


def test_a_saved_cost_model_is_read_instead_of_measured(monkeypatch, tmp_path):
    monkeypatch.setenv("BILD_CACHE", str(tmp_path))
    small, large = tiny_pair("llama", "agree")
    saved = _forms_costs()
    path = save_costs(small, large, 7, saved)
    assert path == costs_path(small, large, 7) and path.parent == tmp_path / "costs"
    _no_measuring(monkeypatch)
    got = measure_pair_costs(small, large, max_width=7)
    assert dataclasses.replace(got, note={}) == dataclasses.replace(saved, note={})
    assert got.note["saved"] == str(path) and "saved by bild calibrate" in got.summary(6)
    # Generation decides from it without measuring.
    inputs = batch_inputs(prompts(1, seed=1), False)
    want = large.generate(**inputs, do_sample=False, max_new_tokens=10)
    out = BiLDGenerator(small, large, "auto", 0.0, 6).generate(**inputs, max_new_tokens=10)
    assert torch.equal(out, want)


def test_a_saved_cost_model_is_used_only_for_what_it_was_measured_on(monkeypatch, tmp_path):
    monkeypatch.setenv("BILD_CACHE", str(tmp_path))
    small, large = tiny_pair("llama", "agree")
    save_costs(small, large, 7, _forms_costs())
    assert load_costs(small, large, 7) is not None
    assert load_costs(small, large, 11) is None  # another widest pass
    view = restrict_draft_vocab(small, list(range(VOCAB // 2)))
    assert load_costs(view, large, 7) is None  # a draft vocabulary's view costs another step
    other_small, other_large = tiny_pair("llama", "agree", seed=5)
    assert load_costs(other_small, other_large, 7) is not None  # same architecture, other weights: the same costs
    assert load_costs(small.to(torch.bfloat16), large, 7) is None  # another dtype
    monkeypatch.setenv("BILD_COSTS", "measure")
    assert load_costs(small.float(), large, 7) is None  # told to measure
    monkeypatch.delenv("BILD_COSTS")
    path = costs_path(small.float(), large, 7)
    record = json.loads(path.read_text())
    record["identity"]["machine"]["cpu"] = "another CPU"
    path.write_text(json.dumps(record))
    assert load_costs(small, large, 7) is None  # the file says it was measured elsewhere
    path.write_text("not json")
    assert load_costs(small, large, 7) is None


def test_bild_calibrate_saves_what_later_processes_read(decoder_pair, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("BILD_CACHE", str(tmp_path))
    small_path, large_path = decoder_pair
    assert cli_main(["calibrate", "--small", small_path, "--large", large_path, "--dtype", "float32",
                     "--device", "cpu", "--max_small_steps", "4", "--repeats", "1"]) == 0
    printed = capsys.readouterr().out
    small = AutoModelForCausalLM.from_pretrained(small_path, dtype=torch.float32).eval()
    large = AutoModelForCausalLM.from_pretrained(large_path, dtype=torch.float32).eval()
    path = costs_path(small, large, 5)
    assert str(path) in printed and path.exists()
    record = json.loads(path.read_text())
    assert record["identity"] == identity(small, large, 5)
    assert sorted(map(int, record["costs"]["large"]["passes"])) == [1, 2, 3, 5]
    _no_measuring(monkeypatch)
    assert BiLDGenerator(small, large, "auto", 0.0, 4).costs.note["saved"] == str(path)
    with pytest.raises(SystemExit):
        cli_main(["calibrate", "--small", small_path, "--large", large_path, "--repeats", "0"])


def test_injected_costs_still_win(monkeypatch, tmp_path):
    """A cost model given to the generator is used as given, whatever is saved."""
    monkeypatch.setenv("BILD_CACHE", str(tmp_path))
    small, large = tiny_pair("llama", "agree")
    save_costs(small, large, 7, _forms_costs())
    given = injected_costs(1.0)
    assert BiLDGenerator(small, large, "auto", 0.0, 6, cost_model=given).costs is given


def test_where_bfloat16_is_not_native_calibrate_also_saves_what_dtype_auto_weighs(decoder_pair, monkeypatch, tmp_path):
    """On a device without a dtype rule, `dtype="auto"` measures both models in float32 and bfloat16 at every start;
    `bild calibrate` saves those measurements too, and a later load chooses the dtypes from them without a forward."""
    import bild.hardware as hardware
    from bild.eval import systems
    from bild.eval.systems import ModelSpec, load_models

    monkeypatch.setenv("BILD_CACHE", str(tmp_path))
    for module in (hardware, systems):
        monkeypatch.setattr(module, "rule_dtype", lambda device, *a, **k: None)
    small_path, large_path = decoder_pair
    assert cli_main(["calibrate", "--small", small_path, "--large", large_path, "--device", "cpu",
                     "--max_small_steps", "4", "--repeats", "1"]) == 0
    assert len(list((tmp_path / "costs").glob("*.json"))) == 2  # the measurements by dtype, the chosen dtypes' costs
    _no_measuring(monkeypatch)
    monkeypatch.setattr(hardware, "measure_by_dtype", lambda *a, **k: (_ for _ in ()).throw(AssertionError("measured")))
    loaded = load_models({"small": small_path, "large": large_path}, ModelSpec("auto", "cpu"), torch.device("cpu"), 4)
    choice = loaded.dtype_choice
    assert choice is not None and set(choice.seconds) >= {"bild float32/float32", "bild bfloat16/bfloat16"}
    small, large = loaded.models["small"], loaded.models["large"]
    assert str(next(small.parameters()).dtype) == f"torch.{choice.small}"
    costs = BiLDGenerator(small, large, "auto", 0.0, 4).costs
    assert costs.note["dtypes"] == "measured" and "saved" in costs.note  # calibrate's cost model in those dtypes
    monkeypatch.setenv("BILD_COSTS", "measure")
    with pytest.raises(AssertionError, match="measured"):
        load_models({"small": small_path, "large": large_path}, ModelSpec("auto", "cpu"), torch.device("cpu"), 4)

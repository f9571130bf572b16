"""Every code path runs, proven by the stats, and the stats add up."""

import torch

from bild import BiLDGenerator
from reference import reference_bild
from tiny_models import EOS, PAD, batch_inputs, prompts, tiny_pair


def _run(arch, mode, rows, fb, rb, n, max_new, seed=0, enc_dec=False):
    small, large = tiny_pair(arch, mode, seed=seed)
    out = BiLDGenerator(small, large, fb, rb, n).generate(
        **batch_inputs(rows, enc_dec), max_new_tokens=max_new, return_dict_in_generate=True
    )
    out.stats.check()
    return small, large, out


def _adds_up(stats):
    t = stats.total()
    assert t["committed_tokens"] == t["accepted_drafts"] + t["corrections"] + t["bonus_tokens"]
    assert t["tokens_from_small"] == t["accepted_drafts"] and t["tokens_from_large"] == t["corrections"] + t["bonus_tokens"]
    assert t["accepted_drafts"] <= t["drafted_tokens"]
    assert t["corrections"] <= t["rollbacks"] <= t["large_forward_calls"]
    assert t["fallbacks"] <= t["large_forward_calls"]
    assert t["mean_tokens_per_large_call"] == t["committed_tokens"] / t["large_forward_calls"]
    return t


def test_fallback_rollback_bonus_all_happen_and_add_up():
    _, _, out = _run("qwen2", "agree", prompts(3, seed=11), 0.3, 1.0, 6, 30)
    t = _adds_up(out.stats)
    assert t["fallbacks"] > 0 and t["rollbacks"] > 0 and t["bonus_tokens"] > 0 and t["accepted_drafts"] > 0
    assert t["corrections"] > 0
    # committed tokens are exactly what each row generated (up to and including its EOS)
    P = max(len(r) for r in prompts(3, seed=11))
    for i, committed in enumerate(out.stats.committed_tokens):
        new = out.sequences[i, P:].tolist()
        while new and new[-1] == PAD and len(new) > committed:
            new.pop()
        assert len(new) == committed


def test_agreeing_pair_drafts_long_and_commits_few_large_calls():
    _, _, out = _run("qwen2", "agree", prompts(1, seed=12, min_len=5), 0.0, 3.0, 10, 40)
    t = _adds_up(out.stats)
    assert t["mean_tokens_per_large_call"] > 3
    assert t["acceptance_rate"] > 0.8


def _find_eos_case(arch, seed=0):
    """A prompt and an EOS id that the small model drafts in the middle of its first round:
    the 4th token the pair generates, used as `eos_token_id`."""
    small, large = tiny_pair(arch, "agree", seed=seed)
    for s in range(50):
        row = prompts(1, seed=s, min_len=3)[0]
        new = reference_bild(small, large, row, 0.0, 3.0, 10, 30, EOS)[0][len(row):]
        if new[3] not in new[:3]:
            return small, large, row, new[3]
    raise AssertionError("no EOS case found")


def test_eos_inside_a_draft_is_verified_and_stops():
    small, large, row, eos = _find_eos_case("gpt2")
    inputs = batch_inputs([row], False)
    out = BiLDGenerator(small, large, 0.0, 3.0, 10).generate(**inputs, max_new_tokens=30, eos_token_id=eos,
                                                             return_dict_in_generate=True)
    new = out.sequences[0, len(row):].tolist()
    assert len(new) == 4 and new[-1] == eos
    t = _adds_up(out.stats)
    assert t["large_forward_calls"] == 1 and t["accepted_drafts"] == 4 and t["bonus_tokens"] == 0
    expected, _ = reference_bild(small, large, row, 0.0, 3.0, 10, 30, eos)
    assert out.sequences[0].tolist() == expected
    # lossless at rollback 0: equal to the large model even when EOS comes from a draft
    lossless = BiLDGenerator(small, large, 0.0, 0.0, 10).generate(**inputs, max_new_tokens=30, eos_token_id=eos)
    assert torch.equal(lossless, large.generate(**inputs, do_sample=False, max_new_tokens=30, eos_token_id=eos))


def test_length_limit_inside_a_draft():
    # 7 new tokens with 5 drafts per round: the second round's drafts cross the limit.
    small, large, out = _run("llama", "agree", prompts(1, seed=13, min_len=4), 0.0, 3.0, 5, 7)
    t = _adds_up(out.stats)
    assert t["committed_tokens"] == 7
    assert out.sequences.shape[1] == len(prompts(1, seed=13, min_len=4)[0]) + 7
    assert t["drafted_tokens"] <= 7  # no draft is made past the limit


def test_a_row_finishing_before_the_others():
    small, large, row, eos = _find_eos_case("gpt2")
    others = prompts(2, seed=99, min_len=4)
    gen = BiLDGenerator(small, large, 0.0, 3.0, 10)
    out = gen.generate(**batch_inputs([row] + others, False), max_new_tokens=30, eos_token_id=eos,
                       return_dict_in_generate=True)
    committed = out.stats.committed_tokens
    assert committed[0] == 4 and committed[0] < max(committed[1:])
    alone = gen.generate(**batch_inputs([row], False), max_new_tokens=30, eos_token_id=eos)
    P = max(len(r) for r in [row] + others)
    got = out.sequences[0, P - len(row):]
    assert torch.equal(got[: alone.shape[1]], alone[0]) and (got[alone.shape[1]:] == PAD).all()


def test_max_new_tokens_one_leaves_every_row_without_budget_after_one_round():
    """A budget of one token: each row commits the reference loop's one token in one round, and a row left
    with no budget makes no further call (drafts beyond the budget are dropped, never committed)."""
    rows = prompts(2, seed=14)
    small, large, out = _run("qwen2", "disagree", rows, 0.3, 2.0, 4, 1)
    assert out.stats.committed_tokens == [1, 1]
    assert out.stats.large_forward_calls == [1, 1]
    assert out.sequences.shape[1] == max(len(r) for r in rows) + 1
    for i, row in enumerate(rows):
        expected = reference_bild(small, large, row, 0.3, 2.0, 4, 1, EOS)[0]
        assert out.sequences[i, -1].item() == expected[-1] and len(expected) == len(row) + 1

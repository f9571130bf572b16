"""Pairs whose tokenizers differ (`bild.bridge`, `bild.cross_decode`): rollback 0 is large greedy token for token,
every setting matches a slow no-cache loop, batches equal their rows alone, and what cannot be exact is refused.

Two tokenizers trained here on the shipped sample text: a byte-level BPE (ids pad 0, bos 1, eos 2) and a Unigram
with Metaspace (eos 0, unk 1, bos 2, pad 3), so words split differently and special ids differ. Both are small
(320 and 200 tokens), so most words split into pieces, differently on each side.
"""

from __future__ import annotations

import copy
import math

import numpy as np

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, TextIteratorStreamer

from _example_fixtures import sample_texts, tiny_tokenizer
from bild import BiLDGenerator, bild_generate
from bild.bridge import TokenBridge
from bild.costs import ModelCosts, PairCosts
from reference import reference_bridged
from tiny_models import tiny_model

BPE_IDS, UNIGRAM_IDS = (0, 1, 2), (3, 2, 0)  # (pad, bos, eos)
PROMPTS = ["Die Bibliothek libgpod soll", "It provides an easy API to retrieve the list", "Dieses Paket"]
SOURCES = ["Die Bibliothek libgpod soll den Zugriff abstrahieren.", "Dieses Paket enthält"]


def bpe_tokenizer(size: int = 320) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(sample_texts(), trainers.BpeTrainer(
        vocab_size=size, special_tokens=["<pad>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   padding_side="left")


def unigram_tokenizer(size: int = 200) -> PreTrainedTokenizerFast:
    """Unigram pieces trained here, rebuilt with their ids in sorted order and one score each (fewest pieces wins):
    the trainer's ids and scores differ from run to run, and a test's tokenizer must not."""
    specials = ["</s>", "<unk>", "<s>", "<pad>"]
    trained = Tokenizer(models.Unigram())
    trained.pre_tokenizer = pre_tokenizers.Metaspace()
    trained.train_from_iterator(sample_texts(), trainers.UnigramTrainer(
        vocab_size=size, special_tokens=specials, unk_token="<unk>", show_progress=False))
    pieces = sorted(set(trained.get_vocab()) - set(specials))
    tok = Tokenizer(models.Unigram([(p, 0.0) for p in specials] + [(p, -1.0) for p in pieces], unk_id=1))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.add_special_tokens(specials)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", padding_side="left")


@pytest.fixture(scope="module")
def toks():
    return {"bpe": (bpe_tokenizer(), BPE_IDS), "unigram": (unigram_tokenizer(), UNIGRAM_IDS)}


def model_for(arch, tok_and_ids, seed, large: bool):
    """A random model over the tokenizer's vocabulary that writes text: its special tokens other than EOS get
    zero logits (a random model would otherwise often repeat padding, which has no text to bridge)."""
    tok, ids = tok_and_ids
    model = tiny_model(arch, seed + (1000 if large else 0), width=64 if large else 32, layers=2 if large else 1,
                       vocab=len(tok), special_ids=ids)
    with torch.no_grad():
        model.get_output_embeddings().weight[[i for i in tok.all_special_ids if i != tok.eos_token_id]] = 0.0
    return model


# Orientations: (small tokenizer, large tokenizer).
ORIENTATIONS = [("unigram", "bpe"), ("bpe", "unigram")]


def pair(arch, toks, small_kind, large_kind, seed=0):
    small = model_for(arch, toks[small_kind], seed, large=False)
    large = model_for(arch, toks[large_kind], seed, large=True)
    return small, large, toks[small_kind][0], toks[large_kind][0]


def inputs_for(tok, arch, texts):
    if arch in ("t5", "bart"):
        tok.padding_side = "right"
        out = tok(texts, return_tensors="pt", padding=True)
        tok.padding_side = "left"
        return out
    return tok(texts, return_tensors="pt", padding=True)


# -- the bridge, on its own ---------------------------------------------------------------------------------------


def test_unique_tokenization_proposes_the_drafts_themselves():
    """With one word-level tokenizer (every text has one tokenization), a draft maps back to itself; its last token
    is checked exactly (more text could merge into it) unless an EOS ends the draft."""
    tok = tiny_tokenizer(chat=False)
    bridge = TokenBridge(tok, tok)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        committed = torch.randint(6, len(tok), (int(torch.randint(0, 6, (1,), generator=gen)),), generator=gen).tolist()
        drafts = torch.randint(6, len(tok), (5,), generator=gen).tolist()
        context = [tok.bos_token_id] + committed
        assert bridge.small_tokens(context, len(committed)) == committed
        ids, exact, used = bridge.round_proposals(context, context, drafts, False, False, False)
        assert (ids, exact, used) == (drafts, [False] * 4 + [True], 5)
        ids, exact, _ = bridge.round_proposals(context, context, drafts + [tok.eos_token_id], False, True, False)
        assert (ids, exact) == (drafts + [tok.eos_token_id], [False] * 6)


def test_proposals_extend_the_committed_tokens_and_respect_the_large_split(toks):
    small, large = toks["unigram"][0], toks["bpe"][0]
    bridge = TokenBridge(small, large)
    committed = large("It provides", add_special_tokens=False)["input_ids"]
    small_context = small("It provides", add_special_tokens=False)["input_ids"]
    drafts = small("It provides an easy API", add_special_tokens=False)["input_ids"][len(small_context):]
    assert small.decode(small_context + drafts) == "It provides an easy API"
    assert bridge.draft_text(small_context, drafts) == " an easy API"  # the leading space survives
    whole = large("It provides an easy API", add_special_tokens=False)["input_ids"]
    assert whole[: len(committed)] == committed
    assert bridge.proposals(committed, bridge.draft_text(small_context, drafts)) == whole[len(committed):]
    ids, exact, _ = bridge.round_proposals(small_context, committed, drafts, False, False, False)
    assert ids == whole[len(committed):] and exact == [False] * (len(ids) - 1) + [True]  # the last may not be whole
    # A small EOS ends the text: every token is whole, and the large EOS (other id, same string) follows.
    ids, exact, _ = bridge.round_proposals(small_context, committed, drafts + [small.eos_token_id], False, True, False)
    assert ids == whole[len(committed):] + [large.eos_token_id] and not any(exact)
    # A kept fallback draft: the proposals that need its text are checked exactly.
    ids, exact, _ = bridge.round_proposals(small_context, committed, drafts, True, False, True)
    assert len(ids) == len(exact) and exact[-1] and not exact[0]
    # Thrown away (the paper's rule): as if it had not been drafted.
    assert bridge.round_proposals(small_context, committed, drafts, True, False, False)[0] == \
        bridge.round_proposals(small_context, committed, drafts[:-1], False, False, False)[0]
    # The large model's tokens of the text, read back on the small side after the prompt.
    assert bridge.small_tokens(committed + whole[len(committed):], len(whole) - len(committed)) == drafts


def test_special_tokens_the_small_tokenizer_lacks_are_left_out_of_its_text(toks):
    small = toks["unigram"][0]
    large = copy.deepcopy(toks["bpe"][0])
    large.add_special_tokens({"additional_special_tokens": ["<|user|>"]})
    bridge = TokenBridge(small, large)
    ids = large("<s><|user|> Dieses Paket", add_special_tokens=False)["input_ids"]
    assert ids[:2] == [large.bos_token_id, large.convert_tokens_to_ids("<|user|>")]
    assert small.decode(bridge.small_prompt(ids)) == small.decode(small("<s> Dieses Paket", add_special_tokens=False)["input_ids"])


# -- generation ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2", "t5", "bart"])
@pytest.mark.parametrize("small_kind,large_kind", ORIENTATIONS)
@pytest.mark.parametrize("fb", [0.4, 0.0])
def test_rollback_zero_is_large_greedy(toks, arch, small_kind, large_kind, fb):
    small, large, st, lt = pair(arch, toks, small_kind, large_kind)
    inputs = inputs_for(lt, arch, SOURCES if arch in ("t5", "bart") else PROMPTS)
    want = large.generate(**inputs, do_sample=False, max_new_tokens=16)
    gen = BiLDGenerator(small, large, fb, 0.0, 4, small_tokenizer=st, large_tokenizer=lt)
    out = gen.generate(**inputs, max_new_tokens=16, return_dict_in_generate=True)
    assert torch.equal(out.sequences, want)
    out.stats.check()
    assert out.stats.tokenizers == "bridged"
    if fb == 0.0:  # never falls back: the small model drafts every round
        assert sum(out.stats.small_drafted_tokens) >= sum(out.stats.large_forward_calls)


@pytest.mark.parametrize("arch", ["llama", "t5"])
@pytest.mark.parametrize("small_kind,large_kind", ORIENTATIONS)
@pytest.mark.parametrize("fb,rb,keep", [(0.0, math.inf, False), (0.3, 2.0, False), (0.5, 2.0, True), (0.4, 1.0, False)])
def test_matches_the_no_cache_loop(toks, arch, small_kind, large_kind, fb, rb, keep):
    """Each row as the slow loop decodes it alone, whatever the thresholds; rows batched as rows alone."""
    small, large, st, lt = pair(arch, toks, small_kind, large_kind, seed=3)
    texts = SOURCES if arch == "t5" else PROMPTS
    inputs = inputs_for(lt, arch, texts)
    gen = BiLDGenerator(small, large, fb, rb, 4, keep_fallback_draft=keep, small_tokenizer=st, large_tokenizer=lt)
    batch = gen.generate(**inputs, max_new_tokens=14, return_dict_in_generate=True)
    limit = getattr(small.config, "max_position_embeddings", None) if arch == "llama" else None
    for r, text in enumerate(texts):
        prompt = lt(text)["input_ids"]
        want = reference_bridged(small, large, TokenBridge(st, lt, small.generation_config.eos_token_id,
                                                           large.generation_config.eos_token_id),
                                 prompt, fb, rb, 4, 14, keep_fallback=keep, small_limit=limit)
        alone = gen.generate(**lt([text], return_tensors="pt"), max_new_tokens=14)[0].tolist()
        n_pad = int((inputs["attention_mask"][r] == 0).sum()) if arch == "llama" else 0
        got = batch.sequences[r].tolist()[n_pad:]
        for row in (alone, got):  # the slow loop's tokens, then padding
            assert row[: len(want)] == want and set(row[len(want):]) <= {lt.pad_token_id}
    if rb == math.inf:
        assert sum(batch.stats.accepted_drafts) > 0  # drafts were taken, so the cache and re-sync paths ran


def test_one_tokenizer_forced_through_the_bridge(toks):
    """cross_tokenizer=True with the same tokenizer on both sides: still large greedy at rollback 0, and with a
    tokenizer whose encodings are unique, small drafts the large model agrees with are accepted."""
    tok = tiny_tokenizer(chat=False)
    small = tiny_model("llama", 5, width=32, layers=1, vocab=len(tok), special_ids=(0, 1, 2))
    large = copy.deepcopy(small)
    with torch.no_grad():
        for p in large.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.02 * p.std())
    tok.padding_side = "left"
    inputs = tok(["Die Bibliothek", "This package contains the"], return_tensors="pt", padding=True)
    want = large.generate(**inputs, do_sample=False, max_new_tokens=16)
    bridged = BiLDGenerator(small, large, 0.3, 0.0, 4, tokenizer=tok, cross_tokenizer=True)
    out = bridged.generate(**inputs, max_new_tokens=16, return_dict_in_generate=True)
    shared = BiLDGenerator(small, large, 0.3, 0.0, 4, tokenizer=tok).generate(**inputs, max_new_tokens=16,
                                                                             return_dict_in_generate=True)
    assert torch.equal(out.sequences, want) and torch.equal(shared.sequences, want)
    assert out.stats.tokenizers == "bridged" and shared.stats.tokenizers == "shared"
    assert sum(out.stats.accepted_drafts) >= sum(out.stats.drafted_tokens) // 2 > 0


def test_an_end_of_sequence_draft(toks):
    """A small model that always drafts its EOS: the large EOS (another id) is proposed; with rollback inf it is
    taken and every row ends there, as the slow loop says; with rollback 0 the output is still large greedy."""
    small, large, st, lt = pair("llama", toks, "unigram", "bpe", seed=4)
    with torch.no_grad():
        small.get_output_embeddings().weight[st.eos_token_id] *= 0
        small.get_output_embeddings().weight[st.eos_token_id] += small.model.norm.weight.sign() * 50
    inputs = lt(PROMPTS, return_tensors="pt", padding=True)
    lossless = BiLDGenerator(small, large, 0.5, 0.0, 4, small_tokenizer=st, large_tokenizer=lt)
    assert torch.equal(lossless.generate(**inputs, max_new_tokens=10), large.generate(**inputs, do_sample=False,
                                                                                      max_new_tokens=10))
    loose = BiLDGenerator(small, large, 0.5, math.inf, 4, small_tokenizer=st, large_tokenizer=lt)
    out = loose.generate(**inputs, max_new_tokens=10, return_dict_in_generate=True)
    bridge = TokenBridge(st, lt, small.generation_config.eos_token_id, large.generation_config.eos_token_id)
    for r, text in enumerate(PROMPTS):
        want = reference_bridged(small, large, bridge, lt(text)["input_ids"], 0.5, math.inf, 4, 10, small_limit=128)
        n_pad = int((inputs["attention_mask"][r] == 0).sum())
        assert out.sequences[r].tolist()[n_pad: n_pad + len(want)] == want
    assert sum(out.stats.accepted_drafts) > 0


def test_scores_streaming_and_stop_strings_as_large_generate(toks):
    small, large, st, lt = pair("llama", toks, "unigram", "bpe", seed=6)
    gen = BiLDGenerator(small, large, 0.4, 0.0, 4, small_tokenizer=st, large_tokenizer=lt)
    one = lt(PROMPTS[:1], return_tensors="pt")
    kw = dict(max_new_tokens=12, return_dict_in_generate=True, output_scores=True, output_logits=True)
    want, got = large.generate(**one, do_sample=False, **kw), gen.generate(**one, **kw)
    assert torch.equal(got.sequences, want.sequences)
    for name in ("scores", "logits"):
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(getattr(got, name), getattr(want, name)))
    assert got.small_scores is None
    text = lt.decode(want.sequences[0, one["input_ids"].shape[1]:])
    stop = text[3:5]
    assert torch.equal(gen.generate(**one, max_new_tokens=12, stop_strings=stop),
                       large.generate(**one, do_sample=False, max_new_tokens=12, stop_strings=stop, tokenizer=lt))
    streamer = TextIteratorStreamer(lt, skip_prompt=True)
    gen.generate(**one, max_new_tokens=12, streamer=streamer)
    assert "".join(streamer) == text


def test_custom_generate_with_two_tokenizers(toks):
    small, large, st, lt = pair("gpt2", toks, "bpe", "unigram", seed=7)
    inputs = lt(PROMPTS, return_tensors="pt", padding=True)
    out = large.generate(**inputs, custom_generate=bild_generate, small_model=small, small_tokenizer=st,
                         large_tokenizer=lt, rollback_threshold=0.0, max_new_tokens=10)
    assert torch.equal(out, large.generate(**inputs, do_sample=False, max_new_tokens=10))


def test_what_the_bridge_cannot_do_is_refused_before_generation(toks):
    small, large, st, lt = pair("llama", toks, "unigram", "bpe")
    inputs = lt(PROMPTS[:1], return_tensors="pt")
    with pytest.raises(ValueError, match="drafting_guard is not supported with two different tokenizers"):
        BiLDGenerator(small, large, 0.4, 0.0, drafting_guard=True, small_tokenizer=st,
                      large_tokenizer=lt).generate(**inputs, max_new_tokens=4)
    with pytest.raises(ValueError, match="static_cache and compile"):
        BiLDGenerator(small, large, 0.4, 0.0, small_tokenizer=st, large_tokenizer=lt,
                      static_cache=True).generate(**inputs, max_new_tokens=4)
    with pytest.raises(ValueError, match="cross_tokenizer=False asks for one shared vocabulary"):
        BiLDGenerator(small, large, small_tokenizer=st, large_tokenizer=lt, cross_tokenizer=False)
    with pytest.raises(ValueError, match="pass both"):
        BiLDGenerator(small, large, large_tokenizer=lt, cross_tokenizer=True)
    with pytest.raises(ValueError, match="pass both \\(small_tokenizer=, large_tokenizer=\\)"):
        BiLDGenerator(small, large)  # two vocabulary sizes and no tokenizers: nothing to bridge with


#: An injected cost model where drafting cannot pay (a pass over k tokens costs k steps).
CANNOT_PAY = PairCosts(ModelCosts({1: 0.5}, 0.0), ModelCosts({1: 1.0, 2: 2.0, 11: 11.0}, 0.0))


@pytest.mark.parametrize("arch", ["llama", "t5"])
@pytest.mark.parametrize("small_kind,large_kind", ORIENTATIONS)
def test_auto_across_tokenizers_decides_per_round_and_rollback_zero_stays_large_greedy(toks, arch, small_kind,
                                                                                       large_kind):
    """"auto" (the default) drafts per round on the bridged path too: cheap drafts make long rounds, drafts that
    cost as much as a large step make none (plain large steps), and rollback 0 is large greedy whatever it decides."""
    small, large, st, lt = pair(arch, toks, small_kind, large_kind)
    inputs = inputs_for(lt, arch, SOURCES if arch == "t5" else PROMPTS)
    want = large.generate(**inputs, do_sample=False, max_new_tokens=16)
    drafted = {}
    for ratio in (0.01, 0.3, 0.9):
        gen = BiLDGenerator(small, large, rollback_threshold=0.0, max_small_steps=4, small_tokenizer=st,
                            large_tokenizer=lt, cost_ratio=ratio)
        assert gen.config.fallback_threshold == "auto"
        out = gen.generate(**inputs, max_new_tokens=16, return_dict_in_generate=True)
        assert torch.equal(out.sequences, want), ratio
        out.stats.check()
        assert out.stats.tokenizers == "bridged"
        drafted[ratio] = sum(out.stats.small_drafted_tokens) / sum(out.stats.large_forward_calls)
    # A small step priced at 0.9 of a large one: no draft is worth its cost at any acceptance the priors allow.
    assert drafted[0.9] == 0
    assert drafted[0.01] > drafted[0.3] and drafted[0.01] > 1


def test_auto_across_tokenizers_rows_of_a_batch_equal_the_rows_alone(toks):
    """With the cost fixed, "auto"'s decisions are per row: at rollback 2 each row of a batch is that row alone."""
    small, large, st, lt = pair("llama", toks, "unigram", "bpe", seed=3)
    gen = BiLDGenerator(small, large, rollback_threshold=2.0, max_small_steps=4, small_tokenizer=st, large_tokenizer=lt,
                        cost_ratio=0.05)
    inputs = lt(PROMPTS, return_tensors="pt", padding=True)
    batch = gen.generate(**inputs, max_new_tokens=14, return_dict_in_generate=True)
    assert sum(batch.stats.accepted_drafts) > 0
    for r, text in enumerate(PROMPTS):
        alone = gen.generate(**lt([text], return_tensors="pt"), max_new_tokens=14)[0].tolist()
        n_pad = int((inputs["attention_mask"][r] == 0).sum())
        got = batch.sequences[r].tolist()[n_pad:]
        assert got[: len(alone)] == alone and set(got[len(alone):]) <= {lt.pad_token_id}


def test_auto_sampling_across_tokenizers_that_never_drafts_draws_what_large_sampling_draws(toks):
    """Sampling under "auto": drafts priced at 0.9 of a large step are never worth it, and the call then draws
    exactly what transformers' sampling draws with the same seed; cheap drafts are drafted from the shared
    vocabulary."""
    small, large, st, lt = pair("llama", toks, "unigram", "bpe", seed=9)
    inputs = lt(PROMPTS, return_tensors="pt", padding=True)
    torch.manual_seed(7)
    want = large.generate(**inputs, do_sample=True, max_new_tokens=10, top_k=20)
    never = BiLDGenerator(small, large, rollback_threshold=0.0, small_tokenizer=st, large_tokenizer=lt, cost_ratio=0.9)
    torch.manual_seed(7)
    got = never.generate(**inputs, do_sample=True, max_new_tokens=10, top_k=20, return_dict_in_generate=True)
    assert torch.equal(got.sequences, want) and sum(got.stats.drafted_tokens) == 0
    cheap = BiLDGenerator(small, large, rollback_threshold=0.0, small_tokenizer=st, large_tokenizer=lt, cost_ratio=0.01)
    out = cheap.generate(**inputs, do_sample=True, max_new_tokens=10, top_k=20, return_dict_in_generate=True)
    out.stats.check()
    assert sum(out.stats.drafted_tokens) > 0


def test_a_rounds_small_drafts_count_as_accepted_in_the_share_of_their_proposals():
    from bild.cross_decode import accepted_drafts

    used, proposals, accepted = np.array([3, 3, 4, 2, 1, 0]), np.array([5, 5, 4, 3, 2, 0]), np.array([5, 2, 3, 0, 1, 0])
    # all proposals accepted: every draft; 2 of 5: 1 of 3 (rounded down); 3 of 4: 3 of 4; none: none; 1 of 2 from
    # one draft: not that draft (a rejected proposal always counts against a draft); no drafts: none.
    assert accepted_drafts(used, proposals, accepted).tolist() == [3, 1, 3, 0, 0, 0]


def test_auto_across_tokenizers_is_the_large_model_alone_where_drafting_cannot_pay(toks):
    """The call-level decision holds on the bridged path too: BiLD never drafts where it cannot beat the large model."""
    small, large, st, lt = pair("llama", toks, "unigram", "bpe")
    inputs = lt(PROMPTS[:2], return_tensors="pt", padding=True)
    with pytest.warns(RuntimeWarning, match="drafting cannot pay"):
        out = BiLDGenerator(small, large, small_tokenizer=st, large_tokenizer=lt, cost_model=CANNOT_PAY).generate(
            **inputs, max_new_tokens=8, return_dict_in_generate=True)
    assert torch.equal(out.sequences, large.generate(**inputs, do_sample=False, max_new_tokens=8))
    assert out.stats.drafting.startswith("off") and sum(out.stats.drafted_tokens) == 0
    # A number keeps drafting whatever the costs (the paper's rule), and still refuses what the path cannot do.
    fixed = BiLDGenerator(small, large, 0.6, 2.0, small_tokenizer=st, large_tokenizer=lt, cost_model=CANNOT_PAY)
    assert fixed.generate(**inputs, max_new_tokens=8, return_dict_in_generate=True).stats.tokenizers == "bridged"
    with pytest.raises(ValueError, match="static_cache and compile are not supported"):
        BiLDGenerator(small, large, small_tokenizer=st, large_tokenizer=lt, cost_model=CANNOT_PAY,
                      static_cache=True).generate(**inputs, max_new_tokens=4)


# -- sampling: drafts from the shared vocabulary ------------------------------------------------------------------

WARPERS = dict(temperature=1.5, top_k=6)
ROWS = 3000


def two_token_distribution(large, prompt_ids) -> dict[tuple[int, int], float]:
    """Exact P(t1, t2) of large.generate(do_sample=True, max_new_tokens=2, **WARPERS), from its processed scores."""
    def probs(prefix):
        out = large.generate(input_ids=torch.tensor([prefix]), do_sample=True, max_new_tokens=1, output_scores=True,
                             return_dict_in_generate=True, **WARPERS)
        return torch.softmax(out.scores[0][0].double(), -1)

    first, joint = probs(prompt_ids), {}
    for t1 in first.nonzero().flatten().tolist():
        second = probs(prompt_ids + [t1])
        for t2 in second.nonzero().flatten().tolist():
            joint[(t1, t2)] = float(first[t1] * second[t2])
    return joint


def overlap_pair_one_tokenizer():
    tok = tiny_tokenizer(chat=False)
    small = tiny_model("llama", 5, width=32, layers=1, vocab=len(tok), special_ids=(0, 1, 2))
    large = copy.deepcopy(small)
    with torch.no_grad():
        for p in large.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(2)) * 0.3 * p.std())
    return small, large, tok, tok


def samples_of(gen, prompt_ids):
    out = gen.generate(input_ids=torch.tensor([prompt_ids]), do_sample=True, max_new_tokens=2, num_return_sequences=ROWS,
                       generator=torch.Generator().manual_seed(1234), return_dict_in_generate=True, **WARPERS)
    return out.sequences[:, len(prompt_ids):], out.stats.total()


@pytest.mark.parametrize("which", ["one tokenizer, bridged", "two tokenizers"])
def test_sampling_across_tokenizers_samples_the_large_distribution(toks, which):
    from test_sampling_distribution import chi_square_p_value, total_variation

    small, large, st, lt = overlap_pair_one_tokenizer() if which.startswith("one") else \
        pair("llama", toks, "unigram", "bpe", seed=8)
    prompt = lt("Dieses Paket")["input_ids"]
    gen = BiLDGenerator(small, large, 0.0, 0.0, 3, small_tokenizer=st, large_tokenizer=lt, cross_tokenizer=True)
    samples, stats = samples_of(gen, prompt)
    expected = two_token_distribution(large, prompt)
    tv, p_value = total_variation(samples, expected), chi_square_p_value(samples, expected)
    assert stats["drafted_tokens"] > ROWS and stats["rollbacks"] > 100
    if which.startswith("one"):
        assert stats["accepted_drafts"] > 300  # one vocabulary: the drafts the large model would also draw
    assert tv < 0.05 and p_value > 1e-3
    # The same pair with rollback inf keeps what the small model drew: visibly another distribution.
    loose = BiLDGenerator(small, large, 0.0, math.inf, 3, small_tokenizer=st, large_tokenizer=lt, cross_tokenizer=True)
    samples, _ = samples_of(loose, prompt)
    assert total_variation(samples, expected) > 0.1 and chi_square_p_value(samples, expected) < 1e-9


def test_sampling_that_always_falls_back_draws_what_large_sampling_draws(toks):
    small, large, st, lt = pair("llama", toks, "unigram", "bpe", seed=9)
    inputs = lt(PROMPTS, return_tensors="pt", padding=True)
    gen = BiLDGenerator(small, large, math.inf, 0.0, 3, small_tokenizer=st, large_tokenizer=lt)
    torch.manual_seed(7)
    want = large.generate(**inputs, do_sample=True, max_new_tokens=10, top_k=20)
    torch.manual_seed(7)
    got = gen.generate(**inputs, do_sample=True, max_new_tokens=10, top_k=20, return_dict_in_generate=True)
    assert torch.equal(got.sequences, want) and got.stats.tokenizers == "bridged"


def test_shared_vocabulary_maps_tokens_of_the_same_text(toks):
    from bild.bridge import shared_vocabulary, token_texts

    small, large = toks["unigram"][0], toks["bpe"][0]
    s_ids, l_ids = shared_vocabulary(small, large)
    assert len(s_ids) == len(set(s_ids)) == len(l_ids) == len(set(l_ids)) > 20
    s_text, l_text = token_texts(small), token_texts(large)
    assert all(s_text[s] == l_text[l] != "" for s, l in zip(s_ids, l_ids))
    assert " " + "Bibliothek" in [s_text[s] for s in s_ids] or any(t.startswith(" ") for t in map(s_text.__getitem__, s_ids))
    assert not set(s_ids) & set(small.all_special_ids) and not set(l_ids) & set(large.all_special_ids)

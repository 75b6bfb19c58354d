"""EL_n, MA, perplexity, the stopping rule and extraction-challenge data."""
import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.modeling_outputs import CausalLMOutputWithPast

from lethe.data.readers import read_text, sample_sequences
from lethe.engine.loop import StepOutput, TrainConfig, train
from lethe.engine.stopping import ExtractionThresholds, epochs_to_success, should_stop
from lethe.evaluation.memorization import (
    el_from_continuations,
    extraction_likelihood,
    extraction_likelihood_naive,
    memorization_accuracy,
    ngram_overlap,
    perplexity,
)
from lethe.util.errors import DataError

V = 40


class PlusOne(LlamaForCausalLM):
    """A stub LM whose greedy next token is always current + 1 (mod V)."""

    def forward(self, input_ids=None, attention_mask=None, past_key_values=None, **kw):
        logits = torch.nn.functional.one_hot((input_ids + 1) % V, V).float() * 20.0
        return CausalLMOutputWithPast(logits=logits, past_key_values=past_key_values)


class Tok:
    bos_token_id = None
    eos_token_id = 39
    pad_token_id = 0


@pytest.fixture(scope="module")
def stub():
    cfg = LlamaConfig(vocab_size=V, hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, pad_token_id=0, eos_token_id=39)
    return PlusOne(cfg).eval()


def test_overlap_by_hand():
    assert ngram_overlap([1, 2, 3, 4], [1, 2, 3, 4], 2) == 1.0
    assert ngram_overlap([1, 2, 9, 4], [1, 2, 3, 4], 2) == pytest.approx(1 / 3)
    # truth has a repeated 2-gram: orientations differ. Default (IHL Eq. 3): the generation's 2-grams
    # (5,6), (6,7) -> 1 of 2 found in the truth; reversed: the truth's (5,6), (6,5), (5,6) -> 2 of 3 found.
    assert ngram_overlap([5, 6, 7], [5, 6, 5, 6], 2) == pytest.approx(1 / 2)
    assert ngram_overlap([5, 6, 7], [5, 6, 5, 6], 2, "truth-in-generated") == pytest.approx(2 / 3)
    # a generation with a repeated 2-gram: each repeat counts (not clipped), as in Eq. 3
    assert ngram_overlap([5, 6, 5, 6], [5, 6, 7], 2) == pytest.approx(2 / 3)
    # the knowledge-unlearning denominator: the truth's n-gram count (differs when the generation is shorter)
    assert ngram_overlap([5, 6], [5, 6, 7, 8], 2, denominator="truth") == pytest.approx(1 / 3)
    assert ngram_overlap([5, 6], [5, 6, 7, 8], 2) == pytest.approx(1.0)
    assert ngram_overlap([1], [1, 2, 3], 2) == 0.0


def test_el_and_ma_on_a_model_with_known_greedy_output(stub):
    follows = [10, 11, 12, 13, 14, 15]     # the model's own rule: everything extractable
    breaks = [10, 11, 20, 21, 22, 23]      # one jump the model cannot predict
    el = extraction_likelihood(stub, Tok, [follows, breaks], n=2)
    # breaks: prefixes of length 1..4 -> overlaps 0, 0, 1, 1 (worked by hand)
    assert el == [pytest.approx(1.0), pytest.approx(0.5)]
    assert memorization_accuracy(stub, Tok, [follows, breaks]) == [pytest.approx(1.0), pytest.approx(4 / 5)]
    assert el_from_continuations([1, 2, 3], {1: [2, 3]}, n=2) == pytest.approx(1.0)


def test_generation_stops_at_eos(stub):
    from lethe.evaluation.memorization import ELConfig

    seq = [36, 37, 38, 39, 0, 1]
    # The model would emit 39 = EOS after 38, so continuations end there. Paper: prefix [36] -> [37, 38]:
    # its one 2-gram is in the truth (1/1); [36,37] -> [38], [..38] -> [], [..39] -> []: no 2-gram, 0.
    assert extraction_likelihood(stub, Tok, [seq], n=2) == [pytest.approx(1 / 4)]
    # reversed orientation: 1 of the truth suffix's 4 two-grams for the first prefix
    assert extraction_likelihood(stub, Tok, [seq], el=ELConfig(n=2, orientation="truth-in-generated")) == \
        [pytest.approx((1 / 4) / 4)]
    # knowledge-unlearning code: EOS kept, truth denominator. [36] -> [37,38,39]: 2 of 4; [36,37] -> [38,39]:
    # 1 of 3; [..38] -> [39]: 0 of 2; [..39] -> [] (the next token is padding): 0 of 1.
    ku = ELConfig(n=2, denominator="truth", keep_eos=True)
    assert extraction_likelihood(stub, Tok, [seq], el=ku) == [pytest.approx((2 / 4 + 1 / 3) / 4)]
    from lethe.evaluation.memorization import extraction_likelihood_naive

    assert extraction_likelihood_naive(stub, Tok, [seq], el=ku) == extraction_likelihood(stub, Tok, [seq], el=ku)


def test_batched_el_equals_the_naive_loop(tokenizer, smoke_data):
    from lethe import api
    from lethe.model.build import build_tiny_model

    model = build_tiny_model(tokenizer, "smoke", seed=0)
    texts = [r.answer for r in smoke_data.full[:12]]
    from lethe.data.records import TextRecord

    seqs = [tokenizer(t, add_special_tokens=False)["input_ids"][:14] for t in texts]
    api.finetune(model, [TextRecord(token_ids=tuple(s)) for s in seqs], tokenizer=tokenizer, progress=False,
                 train=TrainConfig(epochs=25, lr=5e-3, batch_size=4, micro_batch_size=4, checkpoint=False))
    fast = extraction_likelihood(model, tokenizer, seqs[:6], n=3, batch_size=7)
    slow = extraction_likelihood_naive(model, tokenizer, seqs[:6], n=3)
    assert fast == pytest.approx(slow, abs=1e-12)
    assert max(fast) > 0.2  # the test means something: the model has memorized parts
    trained_ppl = perplexity(model, tokenizer, seqs[:6])
    untrained_ppl = perplexity(build_tiny_model(tokenizer, "smoke", seed=1), tokenizer, seqs[:6])
    assert trained_ppl > 1 and trained_ppl < untrained_ppl


def test_stopping_rule_on_a_scripted_sequence():
    th = ExtractionThresholds(el=0.05, ma=0.4)
    history = [(0.5, 0.9), (0.04, 0.5), (0.06, 0.3), (0.05, 0.4), (0.01, 0.1)]
    assert epochs_to_success(history, th) == 4          # both at or below, first at epoch 4
    assert epochs_to_success(history, th, min_epochs=5) == 5
    assert epochs_to_success(history[:3], th) is None   # never met: unsuccessful
    assert should_stop(1, 0.05, 0.4, th) and not should_stop(1, 0.0501, 0.1, th)


def test_engine_stops_at_the_rule_epoch(tiny_model):
    th = ExtractionThresholds(el=0.1, ma=0.5)
    script = iter([(0.9, 0.9), (0.2, 0.4), (0.1, 0.5), (0.0, 0.0)])

    def step(model, idx, device):
        p = next(model.parameters())
        return StepOutput((p * 0).sum() + 1.0)

    def hook(epoch, model):
        el, ma = next(script)
        return {"el": el, "stop": should_stop(epoch, el, ma, th)}

    result = train(tiny_model, lengths=[2] * 4, step_fn=step, on_epoch_end=hook, progress=False,
                   config=TrainConfig(epochs=10, micro_batch_size=2, checkpoint=False))
    assert [h["epoch"] for h in result.history] == [1, 2, 3] and result.stopped_early


def test_extraction_challenge_directory(tmp_path):
    rng = np.random.default_rng(0)
    for name, width in (("train_preprefix.npy", 100), ("train_prefix.npy", 50), ("train_suffix.npy", 50)):
        np.save(tmp_path / name, rng.integers(0, 50257, size=(5, width), dtype=np.int64))
    recs = read_text(tmp_path, vocab_size=50257)
    assert len(recs) == 5 and all(len(r.token_ids) == 200 for r in recs)
    picked = sample_sequences(recs, 3, seed=1, max_tokens=120)
    assert len(picked) == 3 and all(len(r.token_ids) == 120 for r in picked)
    assert picked == sample_sequences(recs, 3, seed=1, max_tokens=120)
    np.save(tmp_path / "train_suffix.npy", rng.integers(0, 50257, size=(4, 50), dtype=np.int64))
    with pytest.raises(DataError, match="different numbers of rows: \\[5, 5, 4\\]"):
        read_text(tmp_path)


def test_overlap_equals_a_brute_force_count_in_every_variant():
    import random
    from collections import Counter

    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(1, 3)
        gen = [rng.randint(0, 3) for _ in range(rng.randint(0, 9))]
        truth = [rng.randint(0, 3) for _ in range(rng.randint(0, 9))]
        grams = lambda s: Counter(tuple(s[i:i + n]) for i in range(len(s) - n + 1))  # noqa: E731
        g, t = grams(gen), grams(truth)
        for orientation, (counted, other) in (("generated-in-truth", (g, t)), ("truth-in-generated", (t, g))):
            found = sum(c for gram, c in counted.items() if gram in other)
            for denominator, total in (("counted", sum(counted.values())), ("truth", sum(t.values()))):
                want = found / total if total else 0.0
                assert ngram_overlap(gen, truth, n, orientation, denominator) == pytest.approx(want, abs=0)

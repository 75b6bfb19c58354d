"""EL_n speed: Lethe's batched continuations vs the naive one-prefix-at-a-time loop, one run.

Trains a small model to memorize a few sequences (so continuations are non-trivial), checks that
both forms give identical EL values, and prints the time of each and their ratio.
Usage: python benchmarks/el_n.py [--sequences 8] [--tokens 48] [--n 10]
"""
from __future__ import annotations

import argparse
import time

import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sequences", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--n", type=int, default=10)
    a = ap.parse_args()

    from lethe import api
    from lethe.data.canaries import generate_canaries
    from lethe.data.records import TextRecord
    from lethe.engine.loop import TrainConfig
    from lethe.evaluation.memorization import extraction_likelihood, extraction_likelihood_naive
    from lethe.model.build import build_tiny_model, train_tokenizer

    torch.manual_seed(0)
    texts = generate_canaries(a.sequences, seed=0)
    tok = train_tokenizer(texts * 4, vocab_size=800)
    seqs = [tok(t, add_special_tokens=False)["input_ids"][: a.tokens] for t in texts]
    model = build_tiny_model(tok, "small", max_positions=512)
    api.finetune(model, [TextRecord(token_ids=tuple(s)) for s in seqs * 4], tokenizer=tok, progress=False,
                 train=TrainConfig(epochs=60, lr=3e-3, batch_size=8, micro_batch_size=8, checkpoint=False))
    t0 = time.perf_counter()
    fast = extraction_likelihood(model, tok, seqs, n=a.n)
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    slow = extraction_likelihood_naive(model, tok, seqs, n=a.n)
    t_slow = time.perf_counter() - t0
    assert fast == slow, (fast, slow)
    prefixes = sum(len(s) - a.n for s in seqs)
    print(f"{a.sequences} sequences x {a.tokens} tokens, EL_{a.n} ({prefixes} prefixes), mean EL "
          f"{sum(fast) / len(fast):.3f}")
    print(f"naive loop {t_slow:.2f} s | batched {t_fast:.2f} s | speed-up {t_slow / t_fast:.1f}x | identical values: "
          f"yes")


if __name__ == "__main__":
    main()

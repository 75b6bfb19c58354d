"""Greedy decoding with finished rows leaving the batch, against transformers' generate, and batch sizing."""
from __future__ import annotations

import pytest
import torch

from lethe.evaluation.generation import bytes_per_row, generation_rows, greedy_decode


def _model(arch: str, vocab: int = 64):
    torch.manual_seed(0)
    if arch == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
        model = LlamaForCausalLM(cfg)
    else:
        from transformers import GPT2Config, GPT2LMHeadModel

        model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, n_positions=128,
                                           initializer_range=0.5, bos_token_id=0, eos_token_id=0))
    return model.double().eval()


def _prompts(vocab: int, pad: int):
    g = torch.Generator().manual_seed(3)
    lengths = [3, 9, 5, 12, 7, 4]
    rows = [torch.randint(1, vocab, (n,), generator=g).tolist() for n in lengths]
    width = max(lengths)
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def _until_stop(row, stops):
    out = []
    for t in row.tolist():
        out.append(t)
        if t in stops:
            break
    return out


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_greedy_decode_equals_generate(arch):
    model = _model(arch)
    pad = 0
    ids, mask = _prompts(64, pad)
    free = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=20, do_sample=False, pad_token_id=pad,
                          eos_token_id=None)[:, ids.shape[1]:]
    # stop tokens that end different rows at different steps, so rows leave the batch one by one
    stops = sorted({int(free[r, k]) for r, k in ((0, 2), (2, 6), (4, 11))} - {pad})
    want = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=20, do_sample=False, pad_token_id=pad,
                          eos_token_id=stops)[:, ids.shape[1]:]
    got = greedy_decode(model, ids, mask, max_new_tokens=20, stop_ids=stops, pad_id=pad)
    assert got is not None
    ended = [len(_until_stop(r, stops)) for r in want]
    assert len(set(ended)) > 2, "the test needs rows ending at different steps"
    for g_row, w_row in zip(got, want):
        assert _until_stop(g_row, stops) == _until_stop(w_row, stops)
    for r, n in enumerate(ended):  # after its stop, a row holds padding only
        assert (got[r, n:] == pad).all()


def test_batch_size_follows_memory(monkeypatch):
    import lethe.evaluation.generation as gen

    model = _model("llama")
    per_row = bytes_per_row(model.config, 100, 50, 8)
    monkeypatch.setattr(gen, "free_memory_bytes", lambda device: int(per_row * 4 * 10.5))
    assert generation_rows(model, 100, 50, n_prompts=1000) == 10
    assert generation_rows(model, 100, 50, n_prompts=7) == 7
    assert generation_rows(model, 100, 50, n_prompts=1000, limit=3) == 3
    monkeypatch.setattr(gen, "free_memory_bytes", lambda device: 1)
    assert generation_rows(model, 100, 50, n_prompts=1000) == 1
    # a longer prompt or answer needs more memory per row (the KV cache grows with both)
    assert bytes_per_row(model.config, 200, 50, 8) > per_row < bytes_per_row(model.config, 100, 90, 8)

import torch
import torch.nn.functional as F

from lethe.data.prompt import IGNORE
from lethe.ops.tokens import mean_nll, sequence_logprob, token_logprobs


def _random_batch(B=3, T=7, V=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g, dtype=torch.float64)
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[0, :3] = IGNORE  # prompt
    labels[1, -2:] = IGNORE  # padding
    labels[2, :] = IGNORE   # nothing counts
    return logits, labels


def _naive_token_logp(logits, labels):
    B, T, V = logits.shape
    out = torch.zeros(B, T - 1, dtype=torch.float64)
    for b in range(B):
        for t in range(T - 1):
            y = int(labels[b, t + 1])
            if y == IGNORE:
                continue
            row = logits[b, t]
            out[b, t] = row[y] - torch.log(sum(torch.exp(row[v]) for v in range(V)))
    return out


def test_token_logprobs_match_per_token_loop_for_every_chunk_size():
    logits, labels = _random_batch()
    ref = _naive_token_logp(logits, labels)
    for chunk in (1, 2, 5, 1024):
        got, mask = token_logprobs(logits, labels, chunk=chunk)
        torch.testing.assert_close(got.double(), ref, atol=1e-6, rtol=0)
        assert mask[2].sum() == 0


def test_sequence_logprob_and_mean_nll():
    logits, labels = _random_batch()
    ref = _naive_token_logp(logits, labels)
    seq, n = sequence_logprob(logits, labels, chunk=4)
    torch.testing.assert_close(seq.double(), ref.sum(-1), atol=1e-6, rtol=0)
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=IGNORE)
    torch.testing.assert_close(mean_nll(logits, labels, chunk=3).double(), expected, atol=1e-6, rtol=0)


def test_mean_nll_gradient_matches_cross_entropy():
    logits, labels = _random_batch()
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    mean_nll(a, labels, chunk=2).backward()
    F.cross_entropy(b[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=IGNORE).backward()
    torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=0)


def test_all_masked_batch_is_finite():
    logits = torch.randn(2, 4, 5, requires_grad=True)
    labels = torch.full((2, 4), IGNORE)
    loss = mean_nll(logits, labels)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all()

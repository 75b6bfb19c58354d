"""Peak memory and time of each loss: Lethe's chunked form vs the naive full-tensor form.

4096 tokens x 32k vocabulary (fp32 logits: 0.5 GiB), forward + backward. Each measurement runs
in a fresh subprocess so CPU peak RSS belongs to it alone (on CUDA: max_memory_allocated).
Memory is reported as the peak *beyond* the inputs and their gradient, which both forms
must hold. Usage: python benchmarks/loss_memory.py [--tokens 4096] [--vocab 32000]
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys

import torch
import torch.nn.functional as F

LOSSES = ["ga", "npo", "ihl", "me", "flat-kl", "kl"]


def naive(name, logits, labels, other):
    """Full-tensor forms, written the obvious way: every op materialises [N, V]."""
    z, y = logits[:, :-1], labels[:, 1:]
    mask = (y != -100).float()
    yy = y.clamp(min=0)
    if name in ("ga", "npo", "flat-kl"):
        logp = torch.log_softmax(z, -1).gather(-1, yy.unsqueeze(-1)).squeeze(-1) * mask
        if name == "ga":
            return -(-logp.sum() / mask.sum())
        if name == "npo":
            return -(2 / 0.1) * F.logsigmoid(-0.1 * (logp.sum(-1) - (-5.0))).mean()
        h_f = (logp.exp() * mask).sum(-1) / mask.sum(-1)
        logp_e = torch.log_softmax(z, -1).gather(-1, yy.unsqueeze(-1)).squeeze(-1) * mask  # template pass
        h_e = (logp_e.exp() * mask).sum(-1) / mask.sum(-1)
        return (-h_e + torch.exp(h_f - 1)).mean()
    if name == "ihl":
        p = torch.softmax(z, -1)
        p_true = p.gather(-1, yy.unsqueeze(-1)).squeeze(-1)
        p_alt = p.scatter(-1, yy.unsqueeze(-1), -1.0).max(-1).values
        return ((1 + p_true - p_alt) * mask).sum() / mask.sum()
    if name == "me":
        logp = torch.log_softmax(z, -1)
        kl = math.log(z.shape[-1]) + (logp.exp() * logp).sum(-1)
        return (kl * mask).sum() / mask.sum()
    if name == "kl":
        logp, logq = torch.log_softmax(z, -1), torch.log_softmax(other[:, :-1], -1)
        return ((logq.exp() * (logq - logp)).sum(-1) * mask).sum() / mask.sum()
    raise KeyError(name)


def lethe_form(name, logits, labels, other):
    from lethe.objectives import FORGET_LOSSES, REGULARIZERS
    from lethe.ops.tokens import sequence_logprob

    # What the engine hands each loss: NPO asks for the sequence log-probs, computed chunk by chunk.
    seq = sequence_logprob(logits, labels)[0] if name == "npo" else None
    inputs = {"forget_logits": logits, "forget_labels": labels, "forget_mask": torch.ones_like(labels),
              "forget_seq_logp": seq, "ref_forget_seq_logp": torch.full((labels.shape[0],), -5.0),
              "idk_logits": logits, "idk_labels": labels, "retain_logits": logits, "retain_labels": labels,
              "ref_retain_logits": other}
    spec = REGULARIZERS.get(name) if name == "kl" else FORGET_LOSSES.get(name)
    return spec(inputs)


def measure(name, form, tokens, vocab):
    import resource
    import time

    torch.manual_seed(0)
    cuda = torch.cuda.is_available()
    dev = "cuda" if cuda else "cpu"
    logits = torch.randn(1, tokens, vocab, device=dev, requires_grad=True)
    other = torch.randn(1, tokens, vocab, device=dev)
    labels = torch.randint(0, vocab, (1, tokens), device=dev)
    labels[:, : tokens // 4] = -100
    fn = naive if form == "naive" else lethe_form
    logits.grad = torch.zeros_like(logits)  # both forms end holding a full gradient: count it as an input
    logits.grad.add_(1.0)  # touch the pages so RSS includes them
    other.add_(0.0)
    # Memory: the first run in this fresh process (CPU peak RSS is a high-water mark that cannot be reset).
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    fn(name, logits, labels, other).backward()
    if cuda:
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    # Time: median of three further runs.
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn(name, logits, labels, other).backward()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    print(json.dumps({"extra_bytes": max(0, peak - base), "seconds": sorted(times)[1]}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--losses", default=",".join(LOSSES))
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        measure(a.child[0], a.child[1], a.tokens, a.vocab)
        return
    print(f"{a.tokens} tokens x {a.vocab} vocab, fp32 logits = {a.tokens * a.vocab * 4 / 2**20:.0f} MiB, "
          f"device {'cuda' if torch.cuda.is_available() else 'cpu'}; forward + backward, memory beyond inputs+grad")
    print(f"{'loss':10s} {'naive MiB':>10s} {'lethe MiB':>10s} {'mem ratio':>10s} {'naive s':>8s} {'lethe s':>8s} "
          f"{'speed':>6s}")
    for name in a.losses.split(","):
        res = {}
        for form in ("naive", "lethe"):
            out = subprocess.run([sys.executable, __file__, "--tokens", str(a.tokens), "--vocab", str(a.vocab),
                                  "--child", name, form], capture_output=True, text=True, check=True)
            res[form] = json.loads(out.stdout.strip().splitlines()[-1])
        naive, ours = res["naive"], res["lethe"]
        print(f"{name:10s} {naive['extra_bytes'] / 2**20:10.0f} {ours['extra_bytes'] / 2**20:10.0f} "
              f"{ours['extra_bytes'] / max(naive['extra_bytes'], 1):10.2f} {naive['seconds']:8.2f} "
              f"{ours['seconds']:8.2f} "
              f"{naive['seconds'] / ours['seconds']:5.2f}x")


if __name__ == "__main__":
    main()

"""Training-step memory and time with the fused output head against full logits, at 32K and 128K vocabularies.

One unlearning step (forward + backward of the method's loss) of a small Llama (hidden 256, 2 layers) on
a forget batch and a retain batch of B sequences of T tokens whose first half is the prompt, through the
engine's own ``forward_views`` and the registered losses, once with ``fused_head`` (logits never built)
and once with the full ``[B,T,V]`` logits. Each measurement runs in a fresh subprocess, so CPU peak RSS
is its own (CUDA: max_memory_allocated); memory is reported as the step's peak beyond the model, its
gradients and the inputs, which both ways hold.

Usage: python benchmarks/fused_head.py [--vocabs 32000,128000] [--batch 8] [--tokens 256] [--methods GA+GD,NPO+KL,ME+GD]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def measure(method: str, vocab: int, batch: int, tokens: int, fused: bool, steps: int) -> dict:
    import resource

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lethe.data.prompt import IGNORE
    from lethe.engine.tasks import forward_views
    from lethe.objectives.method import parse_method
    from lethe.ops.tokens import sequence_logprob

    torch.manual_seed(0)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=256, intermediate_size=688, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=tokens)
    model = LlamaForCausalLM(cfg).to(device)
    reference = LlamaForCausalLM(cfg).to(device).requires_grad_(False)
    reference.load_state_dict(model.state_dict())
    m = parse_method(method)
    needs = m.needs()

    def stream(seed):
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, vocab, (batch, tokens), generator=g)
        labels = ids.clone()
        labels[:, : tokens // 2] = IGNORE
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels.to(device)}

    batches = {"forget": stream(1), "retain": stream(2)}
    with torch.no_grad():  # NPO's cached reference log-probs, as the engine computes them before training
        ref_seq = sequence_logprob(reference(input_ids=batches["forget"]["input_ids"].to(device)).logits,
                                   batches["forget"]["labels"])[0]
    for p in model.parameters():  # gradients exist from the start in both ways: not part of the step's peak
        p.grad = torch.zeros_like(p)

    def step():
        values = {}
        for (role, name), need in needs.items():
            b = batches[need.stream]
            if need.view == "labels":
                values[(role, name)] = b["labels"]
            elif need.view == "mask":
                values[(role, name)] = b["attention_mask"].to(device)
            elif need.model == "reference" and need.view == "seq_logp":
                values[(role, name)] = ref_seq
            else:
                net = model if need.model == "policy" else reference
                with torch.set_grad_enabled(need.model == "policy"):
                    logits, _ = forward_views(net, b, device, logits=True, fused_head=fused)
                if need.view == "logits":
                    values[(role, name)] = logits
                else:
                    seq = sequence_logprob(logits, b["labels"])[0]
                    values[(role, name)] = seq
        loss, _ = m.loss(values)
        loss.backward()
        return float(loss.detach())

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_bytes()
    t0 = time.perf_counter()
    loss = step()
    if cuda:
        torch.cuda.synchronize()
    first = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return {"loss": loss, "extra_bytes": max(0, peak - base), "step_s": min(times) if times else first,
            "device": str(device)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vocabs", default="32000,128000")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--methods", default="GA+GD,NPO+KL,ME+GD")
    ap.add_argument("--steps", type=int, default=2, help="timed steps after the measured first one")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        method, vocab, fused = args.one.split(":")
        print(json.dumps(measure(method, int(vocab), args.batch, args.tokens, fused == "1", args.steps)))
        return
    print(f"B={args.batch} T={args.tokens} (half prompt), Llama hidden 256 x 2 layers; extra = step peak beyond "
          "model, gradients and inputs")
    print(f"{'method':<8} {'vocab':>7} {'full logits MiB':>16} {'fused MiB':>10} {'memory':>7} "
          f"{'full s':>7} {'fused s':>8} {'speed':>6}  loss difference")
    for vocab in [int(v) for v in args.vocabs.split(",")]:
        for method in args.methods.split(","):
            res = {}
            for fused in ("0", "1"):
                # large blocks mmapped, so freed memory leaves RSS and the peak counts live tensors only
                env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
                out = subprocess.run([sys.executable, __file__, "--one", f"{method}:{vocab}:{fused}", "--batch",
                                      str(args.batch), "--tokens", str(args.tokens), "--steps", str(args.steps)],
                                     capture_output=True, text=True, check=True, env=env)
                res[fused] = json.loads(out.stdout.strip().splitlines()[-1])
            plain, fused = res["0"], res["1"]
            print(f"{method:<8} {vocab:>7} {plain['extra_bytes'] / 2**20:>16.0f} {fused['extra_bytes'] / 2**20:>10.0f} "
                  f"{fused['extra_bytes'] / max(1, plain['extra_bytes']):>6.2f}x {plain['step_s']:>7.2f} "
                  f"{fused['step_s']:>8.2f} {plain['step_s'] / fused['step_s']:>5.2f}x  "
                  f"{abs(plain['loss'] - fused['loss']):.1e}")


if __name__ == "__main__":
    main()

"""Empirical Fisher information of linear weights (IHL seed, Eq. 2).

``per-sample`` (the paper): F = mean over samples of (∂L_n/∂W)², L_n the summed NLL of sample
n. One forward+backward per *batch* gives every sample's gradient exactly: for a linear map
y = x Wᵀ, ∂L_n/∂W = Σ_t δ_{n,t}ᵀ x_{n,t} (output gradients times inputs over n's positions),
captured with hooks. ``per-batch`` (the released code): squared gradients of each batch's mean
token loss, weighted by the batch's token count.
"""
from __future__ import annotations

from typing import Sequence

import torch
from transformers.pytorch_utils import Conv1D

from ..data.batching import length_sorted_batches, pad_batch
from ..ops.tokens import mean_nll, sequence_logprob
from ..util.errors import LetheError

MODES = ("per-sample", "per-batch")


def weight_out_in(module) -> torch.Tensor:
    """The weight as [out, in] (Conv1D stores [in, out])."""
    return module.weight.t() if isinstance(module, Conv1D) else module.weight


def empirical_fisher(model, modules: dict[str, torch.nn.Module], examples: Sequence[dict], *, pad_id: int,
                     mode: str = "per-sample", batch_size: int = 8, progress: bool = False,
                     desc: str = "fisher") -> tuple[dict[str, torch.Tensor], int]:
    """Fisher [out, in] (float32) for each named module, and the number of tokens processed."""
    from tqdm.auto import tqdm

    from ..util.progress import interactive, note

    note(progress, f"{desc}: Fisher information over {len(examples)} examples")
    if mode not in MODES:
        raise LetheError(f"unknown Fisher mode '{mode}': expected one of {', '.join(MODES)}")
    device = next(model.parameters()).device
    fisher = {n: torch.zeros(weight_out_in(m).shape, dtype=torch.float32, device=device) for n, m in modules.items()}
    weights = [m.weight for m in modules.values()]
    saved_grad = [w.requires_grad for w in weights]
    for w in weights:
        w.requires_grad_(True)
    handles = []

    def capture(name):
        def forward_hook(module, args, output):
            x = args[0].detach()

            def on_grad(delta):
                # per-sample gradients, one sample at a time: [out, T] @ [T, in]
                for n in range(delta.shape[0]):
                    g = delta[n].float().t() @ x[n].float()
                    fisher[name].add_(g.square())

            if mode == "per-sample" and output.requires_grad:
                output.register_hook(on_grad)

        return forward_hook

    for name, module in modules.items():
        handles.append(module.register_forward_hook(capture(name)))
    was_training = model.training
    model.eval()  # no dropout: the Fisher of the model as it is
    n_samples = n_tokens = 0
    try:
        batches = length_sorted_batches([len(e["input_ids"]) for e in examples], batch_size)
        for idx in tqdm(batches, desc=desc, disable=not (progress and interactive()), leave=False):
            b = pad_batch([examples[i] for i in idx], pad_id)
            logits = model(input_ids=b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device)).logits
            labels = b["labels"].to(device)
            tokens = int((labels[:, 1:] != -100).sum())
            if mode == "per-sample":
                seq_logp, _ = sequence_logprob(logits, labels)
                torch.autograd.grad(-seq_logp.sum(), weights)  # fires the hooks; weight grads are discarded
            else:
                grads = torch.autograd.grad(mean_nll(logits, labels), weights)
                for (name, module), g in zip(modules.items(), grads):
                    g = g.t() if isinstance(module, Conv1D) else g
                    fisher[name].add_(g.float().square() * tokens)
            n_samples += len(idx)
            n_tokens += tokens
    finally:
        for h in handles:
            h.remove()
        for w, flag in zip(weights, saved_grad):
            w.requires_grad_(flag)
        model.train(was_training)
    denom = n_samples if mode == "per-sample" else max(1, n_tokens)
    return {n: f / max(1, denom) for n, f in fisher.items()}, sum(len(e["input_ids"]) for e in examples)


def row_weights(fisher_forget: torch.Tensor, fisher_retain: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """w_i = sqrt(sum_j F_f[i,j] / (F_r[i,j] + eps)): one importance weight per output row."""
    return (fisher_forget / (fisher_retain + eps)).sum(dim=1).sqrt()

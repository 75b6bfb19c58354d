"""The reference model θ_ref (the model before unlearning) for losses that need its logits (KL).

Per-sequence reference values (NPO, DPO) never come from here during training: they are
computed once before training and cached (engine/tasks.py). Only KL needs reference
*distributions* at every step.
"""
from __future__ import annotations

import copy

import torch


class FrozenCopy:
    """Full fine-tuning: one frozen copy of the starting weights, in inference mode.

    It costs one model's memory (``nbytes``, reported in the run's cost) and is never saved
    with the unlearned model.
    """

    def __init__(self, model):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.nbytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
        self._device = None

    @torch.no_grad()
    def __call__(self, batch, device):
        if self._device != device:
            self.model.to(device)
            self._device = device
        return self.model(input_ids=batch["input_ids"].to(device),
                          attention_mask=batch["attention_mask"].to(device)).logits

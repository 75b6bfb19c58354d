"""The reference model θ_ref (the model before unlearning) for inputs a loss needs at every step
(KL's logits, RMU's hidden states).

Per-sequence reference values (NPO, DPO) never come from here during training: they are computed
once before training and cached (engine/tasks.py).
"""
from __future__ import annotations

import copy as _copy
from contextlib import contextmanager

import torch


class FrozenCopy:
    """Full fine-tuning: one frozen copy of the starting weights, in inference mode.

    It costs one model's memory (``nbytes``, reported in the run's cost) and is never saved
    with the unlearned model. ``copy=False`` uses a model the caller keeps (a fixed reference
    across continual requests) without copying it again.
    """

    def __init__(self, model, copy: bool = True):
        self.model = (_copy.deepcopy(model) if copy else model).eval().requires_grad_(False)
        self.nbytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
        self._device = None

    @contextmanager
    def module(self, device):
        """The frozen network, on ``device``, for the duration of one forward."""
        if self._device != device:
            self.model.to(device)
            self._device = device
        yield self.model

    @torch.no_grad()
    def __call__(self, batch, device):
        with self.module(device) as m:
            return m(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits

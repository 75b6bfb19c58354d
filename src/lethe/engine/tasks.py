"""What the loop optimises: fine-tuning on QA records, or unlearning with a method.

A task turns a list of item indices into a StepOutput. For unlearning it builds exactly the
inputs the method declares (objectives/registry.py INPUTS), and computes the reference
model's per-sequence values once, before training, instead of a second forward per step.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..data.batching import length_sorted_batches, pad_batch
from ..data.pairing import pair_retain
from ..data.prompt import encode_qa, encode_record
from ..data.records import QARecord
from ..objectives.method import Method
from ..objectives.tokens import mean_nll, sequence_logprob
from .loop import StepOutput


def _forward(model, batch, device):
    return model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits


class FinetuneTask:
    """Plain supervised training: QA pairs (question tokens masked) or text sequences."""

    def __init__(self, tokenizer, records: Sequence, *, max_length: int = 512):
        self.pad = tokenizer.pad_token_id
        self.examples = [encode_record(tokenizer, r, max_length=max_length) for r in records]
        self.lengths = [len(e["input_ids"]) for e in self.examples]

    def __call__(self, model, idx, device) -> StepOutput:
        batch = pad_batch([self.examples[i] for i in idx], self.pad)
        logits = _forward(model, batch, device)
        loss = mean_nll(logits, batch["labels"].to(device))
        return StepOutput(loss, tokens_trained=int(batch["attention_mask"].sum()))


class UnlearnTask:
    """Forget example i is paired with retain examples ``pairs[i]`` (seeded, fixed; ``retain_per_forget`` of them)."""

    def __init__(self, tokenizer, method: Method, forget: Sequence[QARecord], retain: Sequence[QARecord] = (),
                 *, seed: int = 0, max_length: int = 512, refusals: Sequence[str] | None = None,
                 reference=None, retain_per_forget: int = 1):
        self.method = method
        self.needs = set(method.needs)
        self.pad = tokenizer.pad_token_id
        self.forget = [encode_record(tokenizer, r, max_length=max_length) for r in forget]
        self.lengths = [len(e["input_ids"]) for e in self.forget]
        self.retain = [encode_record(tokenizer, r, max_length=max_length) for r in retain]
        needs_questions = self.needs & {"idk_logits", "idk_labels", "ref_idk_logp", "retain_idk_logits"}
        if needs_questions and not all(isinstance(r, QARecord) for r in list(forget) + list(retain)):
            from ..errors import LetheError

            raise LetheError(f"method {method.name} answers questions with refusals: it needs QA records, "
                             "not text sequences")
        if self.needs & {"retain_logits", "retain_labels", "ref_retain_logits", "retain_idk_logits"} and not self.retain:
            from ..errors import LetheError

            raise LetheError(f"method {method.name} needs retain data: pass a retain set")
        self.pairs = pair_retain(len(self.forget), len(self.retain), seed, retain_per_forget)
        from ..data.refusals import refusal_for

        self.idk = self.retain_idk = None
        if self.needs & {"idk_logits", "idk_labels", "ref_idk_logp"}:
            self.idk = [encode_qa(tokenizer, r.question, refusal_for(i, seed, refusals), max_length=max_length)
                        for i, r in enumerate(forget)]
        if self.needs & {"retain_idk_logits", "retain_idk_labels"}:
            # AP: the same retain question answered with a refusal (fixed per retain index).
            self.retain_idk = [encode_qa(tokenizer, r.question, refusal_for(-1 - i, seed, refusals),
                                         max_length=max_length) for i, r in enumerate(retain)]
        self.reference = reference  # callable(model_inputs) -> logits, for KL; set by the caller
        self.cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def cache_reference(self, model, device, batch_size: int = 32) -> int:
        """Per-sequence log-probs of the starting model, once. Returns forward-only tokens."""
        tokens = 0
        for name, examples in (("ref_forget_logp", self.forget), ("ref_idk_logp", self.idk)):
            if name not in self.needs or examples is None:
                continue
            values = torch.zeros(len(examples))
            for idx in length_sorted_batches([len(e["input_ids"]) for e in examples], batch_size):
                batch = pad_batch([examples[i] for i in idx], self.pad)
                seq_logp, _ = sequence_logprob(_forward(model, batch, device), batch["labels"].to(device))
                values[idx] = seq_logp.float().cpu()
                tokens += int(batch["attention_mask"].sum())
            self.cache[name] = values
        return tokens

    def __call__(self, model, idx, device) -> StepOutput:
        inputs: dict[str, torch.Tensor] = {}
        trained = forward_only = 0
        if self.needs & {"forget_logits", "forget_labels", "forget_input_mask"}:
            b = pad_batch([self.forget[i] for i in idx], self.pad)
            inputs["forget_logits"], inputs["forget_labels"] = _forward(model, b, device), b["labels"].to(device)
            inputs["forget_input_mask"] = b["attention_mask"].to(device)
            trained += int(b["attention_mask"].sum())
        if self.needs & {"idk_logits", "idk_labels"}:
            b = pad_batch([self.idk[i] for i in idx], self.pad)
            inputs["idk_logits"], inputs["idk_labels"] = _forward(model, b, device), b["labels"].to(device)
            trained += int(b["attention_mask"].sum())
        for name in ("ref_forget_logp", "ref_idk_logp"):
            if name in self.needs:
                inputs[name] = self.cache[name][list(idx)].to(device)
        if self.needs & {"retain_logits", "retain_labels", "ref_retain_logits"}:
            b = pad_batch([self.retain[j] for i in idx for j in self.pairs[i]], self.pad)
            inputs["retain_logits"], inputs["retain_labels"] = _forward(model, b, device), b["labels"].to(device)
            trained += int(b["attention_mask"].sum())
            if "ref_retain_logits" in self.needs:
                with torch.no_grad():
                    inputs["ref_retain_logits"] = self.reference(b, device)
                forward_only += int(b["attention_mask"].sum())
        if self.needs & {"retain_idk_logits", "retain_idk_labels"}:
            b = pad_batch([self.retain_idk[j] for i in idx for j in self.pairs[i]], self.pad)
            inputs["retain_idk_logits"], inputs["retain_idk_labels"] = _forward(model, b, device), b["labels"].to(device)
            trained += int(b["attention_mask"].sum())
        loss, parts = self.method.loss(inputs)
        return StepOutput(loss, parts, tokens_trained=trained, tokens_forward_only=forward_only)

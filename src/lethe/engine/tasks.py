"""What the loop optimises: fine-tuning on records, or unlearning with a method.

A task turns a list of item indices into a StepOutput. For unlearning it reads the method's declared
inputs (objectives/inputs.py) and runs one forward per (stream, model) that is needed, with hooks on
exactly the requested decoder layers; the logits projection is skipped (``logits_to_keep=1``) where
only hidden states are wanted. The reference model's per-sequence log-probs are computed once,
before training, instead of a second forward per step.
"""
from __future__ import annotations

import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch

from ..data.batching import length_sorted_batches, pad_batch
from ..data.pairing import pair_retain
from ..data.prompt import IGNORE, Prompter, as_prompter
from ..data.records import QARecord
from ..model.layers import (
    cache_kwargs,
    capture_head_inputs,
    capture_layers,
    head_matches,
    output_cache,
    output_head,
    unwrap,
)
from ..objectives.inputs import Need
from ..objectives.method import Method, needs_fixed_width
from ..ops.head import HeadLogits
from ..ops.tokens import MIN_SHARED_PREFIX, mean_nll, token_logprobs
from ..util.errors import LetheError
from .loop import StepOutput

FORWARD_VIEWS = ("logits", "token_logp", "seq_logp")  # views computed from the logits




def shared_prefix_length(batch: dict) -> int:
    """How many leading tokens every row of a right-padded batch shares, ending before the first labelled
    token's predictor (so every scored prediction is computed per row); 0 below :data:`MIN_SHARED_PREFIX`."""
    ids, labels = batch["input_ids"], batch["labels"]
    if ids.shape[0] < 2:
        return 0
    same = (ids == ids[:1]).all(0)
    common = int(same.long().cumprod(0).sum())
    labelled = (labels != IGNORE).any(0).nonzero()
    limit = int(labelled[0]) - 1 if len(labelled) else ids.shape[1] - 1
    n = min(common, limit, int(batch["attention_mask"].sum(-1).min()) - 1)
    return n if n >= MIN_SHARED_PREFIX else 0


def split_prefix(batch: dict, n: int) -> dict:
    """The batch's rows after their shared ``n``-token prefix, which travels as ``prefix_ids``."""
    out = {k: v[:, n:] for k, v in batch.items() if k in ("input_ids", "attention_mask", "labels")}
    out["prefix_ids"] = batch["input_ids"][0, :n]
    return out


def _prefix_inputs(model, batch: dict, device) -> dict:
    """Forward inputs for a batch split by :func:`split_prefix`: the prefix runs once (with gradients when they
    are on), its KV cache is repeated for every row (gradients flow back through it), and the rows continue
    from it. The result equals one forward of the whole batch to round-off."""
    prefix = batch["prefix_ids"].to(device)[None]
    ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    try:
        head = model(input_ids=prefix, attention_mask=torch.ones_like(prefix), use_cache=True, logits_to_keep=1)
    except TypeError:
        head = model(input_ids=prefix, attention_mask=torch.ones_like(prefix), use_cache=True)
    cache = output_cache(head)
    cache.batch_repeat_interleave(ids.shape[0])
    n = prefix.shape[1]
    positions = (n + torch.arange(ids.shape[1], device=device)).unsqueeze(0).expand(ids.shape[0], -1)
    return {"input_ids": ids, "attention_mask": torch.cat([mask.new_ones(ids.shape[0], n), mask], dim=1),
            "position_ids": positions, **cache_kwargs(model, cache), "use_cache": True}


def forward_views(model, batch: dict, device, *, logits: bool, layers: Sequence[int] = (), fused_head: bool = False):
    """(logits or None, {layer: hidden}) of one forward pass. Without ``logits`` only the last
    position is projected to the vocabulary (``logits_to_keep=1``). A batch with ``prefix_ids``
    (:func:`split_prefix`) runs the shared prefix once and returns the views of the rest only.

    With ``fused_head``, the logits come back as :class:`HeadLogits` (the decoder's last hidden state and
    the output head; never the [B,T,V] tensor) when the model's logits are exactly ``head(hidden)``:
    checked from its config and, once per head, numerically at the last position. Otherwise, plain logits.
    """
    found = output_head(model) if logits and fused_head else None
    if found is not None and getattr(found[1], "_lethe_head_matches", True) is False:
        found = None
    if "prefix_ids" in batch:
        kwargs = _prefix_inputs(model, batch, device)
    else:
        kwargs = {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device),
                  "use_cache": False}  # a training forward builds no KV cache
    if not logits or found is not None:
        kwargs["logits_to_keep"] = 1
    with capture_layers(model, layers) as hidden, \
            (capture_head_inputs(found[0]) if found is not None else nullcontext({})) as head_in:
        try:
            out = model(**kwargs)
        except TypeError:  # a model whose forward has no logits_to_keep
            kwargs.pop("logits_to_keep", None)
            out = model(**kwargs)
    if found is None:
        return (out.logits if logits else None), dict(hidden)
    head, final = found[1], head_in.get("hidden")
    matches = final is not None and tuple(final.shape[:2]) == tuple(kwargs["input_ids"].shape)
    if matches and getattr(head, "_lethe_head_matches", None) is None:
        matches = head_matches(head, final[:, -1], out.logits[:, -1])
        head._lethe_head_matches = matches
        if not matches:
            warnings.warn(f"{type(unwrap(model)).__name__}: its logits are not the output head applied to the "
                          "decoder's output; training computes full logits instead of the fused head", stacklevel=2)
    if not matches:
        return forward_views(model, batch, device, logits=True, layers=layers, fused_head=False)
    return HeadLogits(final, head.weight, head.bias), dict(hidden)


def label_count(example: dict) -> int:
    """Tokens a causal LM is scored on: labels that count, bar the first position (nothing predicts it)."""
    return sum(1 for label in example["labels"][1:] if label != IGNORE)


def require_answer_tokens(examples: Sequence[dict], what: str, max_length: int) -> None:
    """Every example must keep a token to learn from after truncation: a prompt as long as --max-length leaves
    none, and the run would train on nothing without saying so."""
    for i, e in enumerate(examples):
        if label_count(e) == 0:
            raise LetheError(f"{what} record {i}: no answer token left to train on at --max-length {max_length} "
                             "(the prompt fills it, or the answer is empty): raise --max-length")


def require_positions(examples: Sequence[dict], what: str, limit: int | None) -> None:
    """Every training sequence within the model's position limit (config.json's max_position_embeddings): past
    it, learned position tables fail with an index error and rotary ones run on positions they never saw."""
    if limit is None:
        return
    for i, e in enumerate(examples):
        if len(e["input_ids"]) > limit:
            raise LetheError(f"{what} record {i} is {len(e['input_ids'])} tokens, more than the model's "
                             f"max_position_embeddings {limit}: lower --max-length to {limit}")


class FinetuneTask:
    """Plain supervised training: QA pairs (question tokens masked) or text sequences."""

    def __init__(self, prompter, records: Sequence, *, max_length: int = 512, fused_head: bool = True,
                 share_prefix: bool = True):
        prompter = as_prompter(prompter)
        self.fused_head, self.share_prefix = fused_head, share_prefix
        self.pad = prompter.pad_id
        self.examples = [prompter.encode(r, max_length=max_length) for r in records]
        require_answer_tokens(self.examples, "training", max_length)
        self.lengths = [len(e["input_ids"]) for e in self.examples]

    def counts(self, idx) -> dict[str, float]:
        """Counted (predicted) tokens of the micro-batch: accumulation weights it by these."""
        return {"loss": float(sum(label_count(self.examples[i]) for i in idx))}

    def __call__(self, model, idx, device, scale: dict[str, float] | None = None) -> StepOutput:
        batch = pad_batch([self.examples[i] for i in idx], self.pad)
        n = shared_prefix_length(batch) if self.share_prefix else 0
        if n:
            batch = split_prefix(batch, n)
        logits, _ = forward_views(model, batch, device, logits=True, fused_head=self.fused_head)
        loss = mean_nll(logits, batch["labels"].to(device))
        scaled = loss * scale["loss"] if scale else loss
        return StepOutput(scaled, tokens_trained=int(batch["attention_mask"].sum()) + n, logged=loss.detach())


@dataclass
class LossData:
    """What a loss's ``setup(model, data)`` sees: the records, their encodings, the seed."""

    forget: Sequence
    retain: Sequence
    streams: "Streams"
    pad_id: int
    seed: int
    cache_dir: Path | None = None  # the run directory, for what set-up computes once per run (None: not saved)

    @torch.no_grad()
    def hidden_states(self, model, stream: str, layer: int, batch_size: int = 16) -> Iterator[tuple]:
        """(hidden [B,T,H], mask [B,T]) of decoder layer ``layer`` over a stream's examples, batch by batch."""
        examples = self.streams[stream]
        device = next(model.parameters()).device
        for idx in length_sorted_batches([len(e["input_ids"]) for e in examples], batch_size):
            batch = pad_batch([examples[i] for i in idx], self.pad_id)
            _, hidden = forward_views(model, batch, device, logits=False, layers=[layer])
            yield hidden[layer], batch["attention_mask"].to(device)


class UnlearnTask:
    """Forget example i is paired with retain examples ``pairs[i]`` (seeded, fixed; ``retain_per_forget`` of them).

    Losses with a set-up step must have run it before the task is built (``Method.needs`` is read here).
    """

    # Keyword-only past the records: each is a setting of how batches are built.
    def __init__(self, prompter, method: Method, forget: Sequence, retain: Sequence = (), *, seed: int = 0,
                 max_length: int = 512, refusals: Sequence[str] | None = None, reference=None,
                 retain_per_forget: int = 1, streams: "Streams | None" = None, pad_to: int | None = None,
                 fused_head: bool = True, share_prefix: bool = True):
        self.prompter = as_prompter(prompter)
        self.fused_head = fused_head  # logits as HeadLogits wherever every loss reading them allows it
        self.pad_to = pad_to  # every training batch padded to this width (a released code's layout), else dynamic
        self.method = method
        self.pad = self.prompter.pad_id
        self.streams = streams if streams is not None else Streams(
            self.prompter, forget, retain, seed=seed, max_length=max_length, refusals=refusals)
        self.needs = method.needs()
        # The shared prompt prefix runs once per batch only where every loss reads answer positions alone: not
        # with hidden states (RMU), input masks (ME) or averages over padded positions, nor in a fixed layout.
        self.share_prefix = (share_prefix and pad_to is None
                             and not any(n.view in ("hidden", "mask") for n in self.needs.values())
                             and not any(needs_fixed_width(loss) for loss in method.losses))
        by_role = dict(zip(("forget", "regularizer"), method.losses))
        # logits views whose every reader takes HeadLogits (likelihood views are computed here: always fine)
        self.head_views = {need for need in self.needs.values() if need.view == "logits" and all(
            by_role[role].head_logits for (role, _), other in self.needs.items() if other == need)}
        wanted = {n.stream for n in self.needs.values()}
        records = list(self.streams.records["forget"]) + list(self.streams.records["retain"])
        if wanted & {"idk", "retain_idk"} and not all(isinstance(r, QARecord) for r in records):
            raise LetheError(f"method {method.name} answers questions with refusals: it needs QA records, "
                             "not text sequences")
        if wanted & {"retain", "retain_idk"} and not self.streams.records["retain"]:
            raise LetheError(f"method {method.name} needs retain data: pass a retain set")
        self.forget = self.streams["forget"]
        self.retain = self.streams["retain"]
        require_answer_tokens(self.forget, "forget", max_length)
        require_answer_tokens(self.retain, "retain", max_length)
        self.lengths = [len(e["input_ids"]) for e in self.forget]
        self.pairs = pair_retain(len(self.forget), len(self.retain), seed, retain_per_forget)
        self.reference = reference  # a model runner (model/reference.py), for per-step reference inputs
        self.cache: dict[str, torch.Tensor] = {}

    def state_dict(self) -> dict:
        """The losses' step-to-step state (a dual variable), by role: saved with each checkpoint."""
        states = {role: loss.state() for role, loss in zip(("forget", "regularizer"), self.method.losses)}
        return {role: state for role, state in states.items() if state}

    def load_state_dict(self, state: dict) -> None:
        for role, loss in zip(("forget", "regularizer"), self.method.losses):
            if role in state:
                loss.load_state(state[role])

    def epoch_end(self, epoch: int) -> None:
        for loss in self.method.losses:
            loss.epoch_end(epoch)

    @property
    def needs_reference_model(self) -> bool:
        """Whether a reference forward is needed at every step (cached sequence log-probs are not)."""
        return any(n.model == "reference" and n.view != "seq_logp" for n in self.needs.values())

    def rows(self, stream: str, idx: Sequence[int]) -> list[int]:
        """Example indices of ``stream`` for the forget items ``idx`` (retain streams follow the pairing)."""
        if stream in ("forget", "idk", "alternate"):
            return list(idx)
        return [j for i in idx for j in self.pairs[i]]

    @torch.no_grad()
    def cache_reference(self, model, device, batch_size: int = 32) -> int:
        """Per-sequence log-probs of the starting model, once. Returns forward-only tokens."""
        tokens = 0
        cached = {n.stream for n in self.needs.values() if n.model == "reference" and n.view == "seq_logp"}
        for stream in sorted(cached):
            examples = self.streams[stream]
            values = torch.zeros(len(examples))
            for idx in length_sorted_batches([len(e["input_ids"]) for e in examples], batch_size):
                batch = pad_batch([examples[i] for i in idx], self.pad)
                logits, _ = forward_views(model, batch, device, logits=True, fused_head=self.fused_head)
                values[idx] = token_logprobs(logits, batch["labels"].to(device))[0].sum(-1).float().cpu()
                tokens += int(batch["attention_mask"].sum())
            self.cache[stream] = values
        return tokens

    def _views(self, model, batch, device, needs: list[Need]) -> dict[Need, torch.Tensor]:
        out: dict[Need, torch.Tensor] = {}
        want_logits = any(n.view in FORWARD_VIEWS for n in needs)
        layers = sorted({n.layer for n in needs if n.view == "hidden"})
        fused = self.fused_head and all(n.view != "logits" or n in self.head_views for n in needs)
        logits, hidden = forward_views(model, batch, device, logits=want_logits, layers=layers, fused_head=fused)
        labels = batch["labels"].to(device)
        tok = None
        for n in needs:
            if n.view == "logits":
                out[n] = logits
            elif n.view in ("token_logp", "seq_logp"):
                if tok is None:
                    tok = token_logprobs(logits, labels)[0]
                out[n] = tok if n.view == "token_logp" else tok.sum(-1)
            elif n.view == "hidden":
                out[n] = hidden[n.layer]
        return out

    def counts(self, idx) -> dict[str, float]:
        """What each part of the method averages over in this micro-batch (its loss's ``unit``, counted on
        the first stream it reads): accumulation weights micro-batches by these, so a step's gradient is
        that of the mean over the whole group, whatever the lengths."""
        out = {}
        for role, loss in zip(("forget", "regularizer"), self.method.losses):
            needs = list(loss.needs().values())
            stream = needs[0].stream if needs else "forget"
            rows = self.rows(stream, idx)
            examples = self.streams[stream]
            unit = getattr(loss, "unit", "token")
            if unit == "sequence":
                out[role] = float(len(rows))
            elif unit in ("padded position", "padded slot"):  # every position of the padded batch (but the last)
                width = max([len(examples[j]["input_ids"]) for j in rows] + [self.pad_to or 0])
                out[role] = float(len(rows) * (width if unit == "padded slot" else width - 1))
            elif unit == "position":
                out[role] = float(sum(len(examples[j]["input_ids"]) - 1 for j in rows))
            else:
                out[role] = float(sum(label_count(examples[j]) for j in rows))
        return out

    def __call__(self, model, idx, device, scale: dict[str, float] | None = None) -> StepOutput:
        values: dict[Need, torch.Tensor] = {}
        trained = forward_only = 0
        by_stream: dict[str, list[Need]] = {}
        for need in dict.fromkeys(self.needs.values()):
            by_stream.setdefault(need.stream, []).append(need)
        for stream, needs in by_stream.items():
            rows = self.rows(stream, idx)
            batch = pad_batch([self.streams[stream][j] for j in rows], self.pad, width=self.pad_to)
            shared = shared_prefix_length(batch) if self.share_prefix else 0
            if shared:
                batch = split_prefix(batch, shared)
            for n in needs:
                if n.view == "labels":
                    values[n] = batch["labels"].to(device)
                elif n.view == "mask":
                    values[n] = batch["attention_mask"].to(device)
                elif n.view == "lengths":
                    values[n] = torch.tensor([float(label_count(self.streams[stream][j])) for j in rows], device=device)
                elif n.model == "reference" and n.view == "seq_logp":
                    values[n] = self.cache[stream][rows].to(device)
            policy = [n for n in needs if n.model == "policy" and n.needs_forward]
            if policy:
                values.update(self._views(model, batch, device, policy))
                trained += int(batch["attention_mask"].sum()) + shared
            ref = [n for n in needs if n.model == "reference" and n.needs_forward and n.view != "seq_logp"]
            if ref:
                with torch.no_grad(), self.reference.module(device) as frozen:
                    values.update({n: v.detach() for n, v in self._views(frozen, batch, device, ref).items()})
                forward_only += int(batch["attention_mask"].sum()) + shared
        inputs = {key: values[need] for key, need in self.needs.items()}
        loss, parts = self.method.loss(inputs, scale)
        return StepOutput(loss, parts, tokens_trained=trained, tokens_forward_only=forward_only,
                          logged=self.method.total(parts))


class Streams(dict):
    """Every stream a loss may ask for, encoded on first use. Refusals are fixed per example index
    (seeded): forget example i gets ``refusal_for(i)``, retain example j ``refusal_for(-1 - j)``."""

    def __init__(self, prompter: Prompter, forget: Sequence, retain: Sequence = (), *, seed: int = 0,
                 max_length: int = 512, refusals: Sequence[str] | None = None):
        super().__init__()
        self.prompter, self.records, self.seed = prompter, {"forget": forget, "retain": retain}, seed
        self.max_length, self.refusals = max_length, refusals

    def __missing__(self, stream: str) -> list[dict]:
        from ..data.refusals import refusal_for

        if stream in self.records:
            encoded = [self.prompter.encode(r, max_length=self.max_length) for r in self.records[stream]]
        elif stream in ("idk", "retain_idk"):
            source = self.records["forget" if stream == "idk" else "retain"]
            if not all(isinstance(r, QARecord) for r in source):
                raise LetheError(f"the {stream} stream answers questions with refusals: it needs QA records")
            offset = (lambda i: i) if stream == "idk" else (lambda i: -1 - i)
            encoded = [self.prompter.encode_qa(r.question, refusal_for(offset(i), self.seed, self.refusals),
                                               max_length=self.max_length) for i, r in enumerate(source)]
        elif stream == "alternate":
            raise LetheError("the alternate stream holds answers that a loss's setup writes (AltPO); none did")
        else:
            raise KeyError(stream)
        self[stream] = encoded
        return encoded

    def put_answers(self, stream: str, answers: Sequence[str]) -> None:
        """A stream of the forget questions with other answers (AltPO's alternates), index-aligned with the
        forget stream; each must keep an answer token at ``max_length``."""
        forget = self.records["forget"]
        if len(answers) != len(forget):
            raise LetheError(f"{stream} stream: {len(answers)} answers for {len(forget)} forget questions")
        encoded = [self.prompter.encode_qa(r.question, a, max_length=self.max_length) for r, a in zip(forget, answers)]
        require_answer_tokens(encoded, stream, self.max_length)
        self[stream] = encoded


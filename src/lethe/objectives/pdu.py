"""PDU, primal-dual unlearning (Entesari et al. 2025, "Constrained Entropic Unlearning").

Forgetting flattens the output distribution on the forget answers; retention is a constraint, not a penalty::

    L = mean_t (max_v z_t,v − mean_v z_t,v)²  +  λ · (L_retain − ε)

over the positions that predict forget answer tokens (z: logits), with L_retain the retain answers' token-mean
cross-entropy. After ``warmup_epochs`` the dual variable follows the constraint's violation at every step,
λ ← max(0, λ + η (L_retain − ε)) with η = ``dual_lr``; each step's loss uses λ as it was before that step's
update. ε (``eps``) defaults to the starting model's retain loss: unlearning may not make the retain answers
less likely than they were. Defaults otherwise follow open-unlearning's PDU config (λ₀ = 1, η = 1, warm-up 5
epochs, updates per step). Its code flattens the logits at the answer tokens' own positions (each predicting the
token after); Lethe flattens those that predict the answer tokens, like every other loss here.

λ and ε are recorded after every epoch (``run.json`` → epochs → ``loss_state``) and saved with each checkpoint,
so ``--resume`` continues with the dual variable where it was.
"""
from __future__ import annotations

import torch

from ..data.batching import pad_batch
from ..data.prompt import IGNORE
from ..ops.tokens import mean_nll, upcast
from ..util.errors import LetheError
from .inputs import Need
from .loss import Loss
from .registry import FORGET_LOSSES


def logit_margin_flatness(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """mean over the positions predicting counted tokens of (max_v z − mean_v z)² (0 when none count)."""
    rows = upcast(logits[:, :-1])[labels[:, 1:].ne(IGNORE)]
    if rows.shape[0] == 0:
        return logits.sum() * 0.0
    return (rows.amax(-1) - rows.mean(-1)).pow(2).mean()


@torch.no_grad()
def mean_retain_loss(model, examples, pad_id: int, batch_size: int = 16) -> float:
    """The retain answers' token-mean cross-entropy under ``model``, over every retain example."""
    device = next(model.parameters()).device
    total = count = 0.0
    for start in range(0, len(examples), batch_size):
        batch = pad_batch(examples[start:start + batch_size], pad_id)
        mask = batch["attention_mask"].to(device)
        logits = model(input_ids=batch["input_ids"].to(device), attention_mask=mask).logits
        labels = batch["labels"].to(device)
        n = float(labels[:, 1:].ne(IGNORE).sum())
        total += float(mean_nll(logits, labels)) * n
        count += n
    return total / max(count, 1.0)


@FORGET_LOSSES.register("pdu")
class PDU(Loss):
    """Primal-dual unlearning: logit-margin flattening on forget answers, the retain loss held below ε by λ."""

    name = "pdu"
    unit = "token"

    def __init__(self, *, eps: float | None = None, lam: float = 1.0, dual_lr: float = 1.0, warmup_epochs: int = 5):
        if lam < 0 or dual_lr < 0 or (eps is not None and eps < 0):
            raise LetheError("pdu: lam, dual_lr and eps must be >= 0")
        if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int) or warmup_epochs < 0:
            raise LetheError(f"pdu: warmup_epochs must be a whole number >= 0, got {warmup_epochs}")
        self.eps, self.lam, self.dual_lr, self.warmup_epochs = eps, float(lam), float(dual_lr), warmup_epochs
        self.initial_lam = self.lam
        self.updating = warmup_epochs == 0

    def setup(self, model, data) -> None:
        if not data.retain:
            raise LetheError("pdu holds the retain loss below a bound: it needs retain data")
        if self.eps is None:
            was_training = model.training
            model.eval()
            self.eps = mean_retain_loss(model, data.streams["retain"], data.pad_id)
            model.train(was_training)

    def needs(self) -> dict[str, Need]:
        return {"forget_logits": Need("logits", "forget"), "forget_labels": Need("labels", "forget"),
                "retain_logits": Need("logits", "retain"), "retain_labels": Need("labels", "retain")}

    def __call__(self, inputs):
        if self.eps is None:
            raise LetheError("pdu: setup(model, data) must run before training (it sets eps)")
        forget = logit_margin_flatness(inputs["forget_logits"], inputs["forget_labels"])
        violation = mean_nll(inputs["retain_logits"], inputs["retain_labels"]) - self.eps
        loss = forget + self.lam * violation
        if self.updating and torch.is_grad_enabled():
            self.lam = max(0.0, self.lam + self.dual_lr * float(violation.detach()))
        return loss

    def epoch_end(self, epoch: int) -> None:
        if epoch >= self.warmup_epochs:
            self.updating = True

    def state(self) -> dict:
        return {"lam": self.lam, "eps": self.eps, "updating": self.updating}

    def load_state(self, state) -> None:
        self.lam, self.eps, self.updating = float(state["lam"]), float(state["eps"]), bool(state["updating"])

    def options(self) -> dict:
        return {"eps": self.eps, "lam": self.initial_lam, "dual_lr": self.dual_lr,
                "warmup_epochs": self.warmup_epochs}

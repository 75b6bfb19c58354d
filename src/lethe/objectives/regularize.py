"""Regularizers (SPEC §2): what to do on the retain set. Each is minimised."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ops.head import reads_logits_through_tokens
from ..ops.tokens import RowOp, align_targets, map_positions, masked_mean, mean_nll, upcast
from ..util.errors import LetheError
from .loss import option_ranges
from .registry import REGULARIZERS


@REGULARIZERS.register("gd")
@reads_logits_through_tokens
def gd(retain_logits, retain_labels):
    """Gradient descent: token-mean cross-entropy of the retain answer (question masked)."""
    return mean_nll(retain_logits, retain_labels)


def _kl_value(rows, ref_rows):
    logp = torch.log_softmax(upcast(rows), dim=-1)
    logq = torch.log_softmax(upcast(ref_rows), dim=-1)
    return (logq.exp() * (logq - logp)).sum(-1)


def _kl_value_and_grad(rows, ref_rows, *, out):
    # d/dz KL(q || softmax z) = softmax(z) - q
    logp = torch.log_softmax(upcast(rows), dim=-1)
    logq = torch.log_softmax(upcast(ref_rows), dim=-1)
    q = logq.exp()
    value = (q * (logq - logp)).sum(-1)
    out.copy_(logp.exp_().sub_(q))
    return value


_kl_rows = RowOp(_kl_value, _kl_value_and_grad)


KL_POSITIONS = ("answer", "all")


@REGULARIZERS.register("kl", unit=lambda o: "padded slot" if o["positions"] == "all" else "token")
@reads_logits_through_tokens
def kl(retain_logits, retain_labels, ref_retain_logits, *, positions: str = "answer"):
    """KL(p_ref || p_θ) per retain answer position, averaged over answer positions only.

    ``positions="all"``: averaged over every position of the padded batch, B·T (question, padding and
    the last position included), as the released TOFU, closer-look, IHL and FLAT code do (SPEC §8).
    """
    if positions not in KL_POSITIONS:
        raise LetheError(f"kl: positions must be one of {', '.join(KL_POSITIONS)}, got {positions!r}")
    if positions == "all":
        return map_positions(_kl_rows, [retain_logits, ref_retain_logits.detach()]).mean()
    _, mask = align_targets(retain_labels)
    return masked_mean(map_positions(_kl_rows, [retain_logits, ref_retain_logits.detach()], where=mask.bool()), mask)


def ap_loss(logp_idk, logp_answer, beta: float):
    return -(1.0 / beta) * F.logsigmoid(-beta * (logp_idk - logp_answer)).mean()


@REGULARIZERS.register("ap", unit="sequence")
@option_ranges(beta=(0, None, True))
def ap(retain_seq_logp, retain_idk_seq_logp, *, beta: float = 0.1):
    """Answer Preservation (closer-look Eq. 8): -(1/β) log σ(-β (log p(y_idk|x) - log p(y|x))) on retain x.

    No reference model: it keeps the true answer above the refusal on retain questions.
    """
    return ap_loss(retain_idk_seq_logp, retain_seq_logp, beta)

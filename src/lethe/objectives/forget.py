"""Forget losses (SPEC §1): what to do on the forget set. Each is minimised.

Shapes: logits [B,T,V], labels [B,T] (IGNORE on prompt and padding), *_logp [B].
Sequence log-probs are sums over answer tokens; token losses are means over counted tokens.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..ops.head import reads_logits_through_tokens
from ..ops.tokens import RowOp, align_mask, align_targets, map_positions, masked_mean, mean_nll, token_logprobs, upcast
from ..util.errors import LetheError
from .loss import option_ranges
from .registry import FORGET_LOSSES


@FORGET_LOSSES.register("ga")
@reads_logits_through_tokens
def ga(forget_logits, forget_labels):
    """Gradient ascent: minus the token-mean cross-entropy of the forget answer (unbounded below)."""
    return -mean_nll(forget_logits, forget_labels)


def npo_loss(seq_logp, ref_seq_logp, beta: float):
    return -(2.0 / beta) * F.logsigmoid(-beta * (seq_logp - ref_seq_logp)).mean()


@FORGET_LOSSES.register("npo", unit="sequence")
@option_ranges(beta=(0, None, True))
def npo(forget_seq_logp, ref_forget_seq_logp, *, beta: float = 0.1):
    """NPO (Zhang et al. 2024): -(2/β) log σ(-β (log p(y|x) - log p_ref(y|x))), sequence log-probs."""
    return npo_loss(forget_seq_logp, ref_forget_seq_logp, beta)


def simnpo_loss(seq_logp, lengths, beta: float, delta: float):
    return -(2.0 / beta) * F.logsigmoid(-(beta / lengths.clamp(min=1.0)) * seq_logp - delta).mean()


@FORGET_LOSSES.register("simnpo", unit="sequence")
@option_ranges(beta=(0, None, True))
def simnpo(forget_seq_logp, forget_lengths, *, beta: float = 2.5, delta: float = 0.0):
    """SimNPO (Fan et al. 2024): -(2/β) log σ(-(β/|y|) log p(y|x) - δ); no reference model.

    NPO with the reference replaced by a length normalisation and a margin δ (the paper's γ).
    """
    return simnpo_loss(forget_seq_logp, forget_lengths.to(forget_seq_logp.dtype), beta, delta)


@FORGET_LOSSES.register("idk")
@reads_logits_through_tokens
def idk(idk_logits, idk_labels):
    """IDK fine-tuning (TOFU): cross-entropy of a refusal answer to the forget question."""
    return mean_nll(idk_logits, idk_labels)


def dpo_loss(logp_chosen, logp_rejected, ref_chosen, ref_rejected, beta: float):
    margin = (logp_chosen - logp_rejected) - (ref_chosen - ref_rejected)
    return -(2.0 / beta) * F.logsigmoid(beta * margin).mean()


@FORGET_LOSSES.register("dpo", unit="sequence")
@option_ranges(beta=(0, None, True))
def dpo(forget_seq_logp, idk_seq_logp, ref_forget_seq_logp, ref_idk_seq_logp, *, beta: float = 0.1,
        reference_free: bool = False):
    """DPO as unlearning: the refusal is preferred to the true answer, relative to the reference.

    ``reference_free=True``: the reference log-ratio is 0, as in the FLAT code's "dpo" baseline.
    """
    if reference_free:
        ref_idk_seq_logp, ref_forget_seq_logp = torch.zeros_like(idk_seq_logp), torch.zeros_like(forget_seq_logp)
    return dpo_loss(idk_seq_logp, forget_seq_logp, ref_idk_seq_logp, ref_forget_seq_logp, beta)


def _ihl_parts(rows, targets):
    rows = upcast(rows)
    lse = torch.logsumexp(rows, dim=-1)
    top = rows.topk(2, dim=-1)
    runner_up = torch.where(top.indices[:, 0] == targets, top.indices[:, 1], top.indices[:, 0])
    p_true = torch.exp(rows.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse)
    p_alt = torch.exp(rows.gather(-1, runner_up.unsqueeze(-1)).squeeze(-1) - lse)
    return rows, lse, runner_up, p_true, p_alt


def _ihl_value(rows, targets):
    # 1 + p(y) - max_{v != y} p(v)
    _, _, _, p_true, p_alt = _ihl_parts(rows, targets)
    return 1.0 + p_true - p_alt


def _ihl_value_and_grad(rows, targets, *, out):
    # IHL seed App. D: dL/dz_v = p_v (p_v* - p_y) + p_y [v = y] - p_v* [v = v*]
    rows, lse, runner_up, p_true, p_alt = _ihl_parts(rows, targets)
    g = torch.exp(rows - lse.unsqueeze(-1)).mul_((p_alt - p_true).unsqueeze(-1))
    g.scatter_add_(-1, targets.unsqueeze(-1), p_true.unsqueeze(-1))
    g.scatter_add_(-1, runner_up.unsqueeze(-1), -p_alt.unsqueeze(-1))
    out.copy_(g)
    return 1.0 + p_true - p_alt


_ihl_rows = RowOp(_ihl_value, _ihl_value_and_grad)


@FORGET_LOSSES.register("ihl")
@reads_logits_through_tokens
def ihl(forget_logits, forget_labels):
    """Inverted Hinge Loss (IHL seed, Sec. 2.2): per answer token 1 + p(y_t) - max_{v≠y_t} p(v).

    Always ≥ 0 (so the hinge never clips); it lowers the true token and raises only the runner-up.
    """
    targets, mask = align_targets(forget_labels)
    return masked_mean(map_positions(_ihl_rows, [forget_logits, targets], where=mask.bool()), mask)


def _to_uniform_value(rows):
    # KL(P || U) = log V - H(P)
    logp = torch.log_softmax(upcast(rows), dim=-1)
    return math.log(rows.shape[-1]) + (logp.exp() * logp).sum(-1)


def _to_uniform_value_and_grad(rows, *, out):
    # d/dz sum_v p_v log p_v = p (log p - sum_v p_v log p_v)
    logp = torch.log_softmax(upcast(rows), dim=-1)
    p = logp.exp()
    neg_entropy = (p * logp).sum(-1, keepdim=True)
    out.copy_(p.mul_(logp.sub_(neg_entropy)))
    return math.log(rows.shape[-1]) + neg_entropy.squeeze(-1)


def _from_uniform_value(rows):
    # KL(U || P) = logsumexp(z) - mean_v z_v - log V
    rows = upcast(rows)
    return torch.logsumexp(rows, dim=-1) - rows.mean(-1) - math.log(rows.shape[-1])


def _from_uniform_value_and_grad(rows, *, out):
    # gradient p - 1/V
    rows = upcast(rows)
    lse = torch.logsumexp(rows, dim=-1, keepdim=True)
    out.copy_(torch.exp(rows - lse).sub_(1.0 / rows.shape[-1]))
    return lse.squeeze(-1) - rows.mean(-1) - math.log(rows.shape[-1])


_kl_to_uniform_rows = RowOp(_to_uniform_value, _to_uniform_value_and_grad)
_kl_from_uniform_rows = RowOp(_from_uniform_value, _from_uniform_value_and_grad)


def _from_uniform_eps(eps: float) -> RowOp:
    # the released code's form: mean_v (1/V)(log(1/V) - log(p_v + eps)); gradient by autograd, chunk by chunk
    def value(rows):
        logp = torch.log_softmax(upcast(rows), dim=-1)
        V = rows.shape[-1]
        return (-math.log(V) - torch.log(logp.exp() + eps)).sum(-1) / V

    return RowOp(value)


ME_DIRECTIONS = {"model-to-uniform": _kl_to_uniform_rows, "uniform-to-model": _kl_from_uniform_rows}


def _me_unit(o) -> str:
    return "padded position" if o["padding"] else "token" if o["mask_question"] else "position"


@FORGET_LOSSES.register("me", unit=_me_unit)
@option_ranges(eps=(0, None, False))
@reads_logits_through_tokens
def me(forget_logits, forget_labels, forget_mask, *, direction: str = "model-to-uniform",
       mask_question: bool = False, eps: float = 0.0, padding: bool = False):
    """Maximizing Entropy (closer-look Eq. 6): mean over positions of KL(P_t || uniform).

    Counts question and answer positions (not padding) by default; ``mask_question=True`` keeps
    answer positions only (the paper's App. E.5 ablation). ``direction="uniform-to-model"`` is
    KL(uniform || P_t), what the released code computes; with it, ``eps`` goes inside the log as
    there (``log(p + 1e-12)``). ``padding=True`` averages over every position of the padded batch
    but the last, B·(T-1), as the released ME+GD scripts do (SPEC §8).
    """
    if direction not in ME_DIRECTIONS:
        raise LetheError(f"me: direction must be one of {sorted(ME_DIRECTIONS)}, got '{direction}'")
    if eps and direction != "uniform-to-model":
        raise LetheError("me: eps applies to direction=uniform-to-model (the released code's form)")
    if eps < 0:
        raise LetheError(f"me: eps must be >= 0, got {eps}")
    op = _from_uniform_eps(eps) if eps else ME_DIRECTIONS[direction]
    values = map_positions(op, [forget_logits])
    if padding:
        return values[:, :-1].mean()
    # position t predicts token t+1: it counts when token t+1 is a real (or, with mask_question, answer) token
    mask = align_targets(forget_labels)[1] if mask_question else align_mask(forget_mask)
    return masked_mean(values, mask)


# FLAT (FLAT seed, Table 2): optimal variational function g* and conjugate f* per f-divergence.
FLAT_DIVERGENCES = {
    "tv": (lambda v: 0.5 * torch.tanh(v), lambda u: u),
    "js": (lambda v: math.log(2.0) - F.softplus(-v), lambda u: -torch.log(2.0 - torch.exp(u))),
    "kl": (lambda v: v, lambda u: torch.exp(u - 1.0)),
    "pearson": (lambda v: v, lambda u: 0.25 * u * u + u),
}


def mean_token_probability(logits, labels, normalise: str = "response"):
    """h per sequence: mean over the response's own tokens of p(y_t) ([B]; 0 for an empty response).

    ``normalise="padded"``: the sum divided by T-1 with T the padded width, as the FLAT code does.
    """
    tok_logp, mask = token_logprobs(logits, labels)
    total = (tok_logp.exp() * mask).sum(-1)
    if normalise == "padded":
        return total / max(1, logits.shape[1] - 1)
    return total / mask.sum(-1).clamp(min=1.0)


FLAT_NORMALISE = ("response", "padded")


def pooled_token_probability(logits, labels, normalise: str = "response"):
    """One h for the whole batch ([1]): the response tokens' probability sum over every sequence, divided by
    the batch's counted tokens, or by B·(T-1) with ``normalise="padded"`` (FLAT's code)."""
    tok_logp, mask = token_logprobs(logits, labels)
    total = (tok_logp.exp() * mask).sum()
    if normalise == "padded":
        return (total / max(1, logits.shape[0] * (logits.shape[1] - 1))).reshape(1)
    return (total / mask.sum().clamp(min=1.0)).reshape(1)


FLAT_POOL = ("sequence", "batch")


def flat_loss(h_template, h_forget, divergence: str):
    g, f_conj = FLAT_DIVERGENCES[divergence]
    return (-g(h_template) + f_conj(g(h_forget))).mean()


def _register_flat(div: str):
    @reads_logits_through_tokens
    def flat(forget_logits, forget_labels, idk_logits, idk_labels, *, normalise: str = "response",
             pool: str = "sequence"):
        if normalise not in FLAT_NORMALISE:
            raise LetheError(f"flat: normalise must be one of {', '.join(FLAT_NORMALISE)}, got {normalise!r}")
        if pool not in FLAT_POOL:
            raise LetheError(f"flat: pool must be one of {', '.join(FLAT_POOL)}, got {pool!r}")
        h = pooled_token_probability if pool == "batch" else mean_token_probability
        return flat_loss(h(idk_logits, idk_labels, normalise), h(forget_logits, forget_labels, normalise), div)

    flat.__doc__ = (f"FLAT ({div.upper()}): -g*(h_e) + f*(g*(h_f)), h = mean token probability of the refusal "
                    "template (e) and of the forget answer (f); no retain data, no reference model. "
                    "normalise=padded: h's sum over T-1 padded positions; pool=batch: one h per batch, the "
                    "divergence applied once (the released code; exact when a step is one micro-batch).")
    FORGET_LOSSES.register(f"flat-{div}", unit="sequence")(flat)


for _div in FLAT_DIVERGENCES:
    _register_flat(_div)


# ---- token-weighted ascent: WGA, SatImp ---------------------------------------------------------------

def _weighted_ascent(forget_logits, forget_labels, weight):
    """-mean_t w_t · CE_t = mean_t w_t · log p(y_t), with w_t a function of p(y_t) taken as a constant."""
    tok_logp, mask = token_logprobs(forget_logits, forget_labels)
    w = weight(tok_logp.detach().exp()) * mask
    return masked_mean(w * tok_logp, mask)


@FORGET_LOSSES.register("wga")
@option_ranges(beta=(0, None, False))
@reads_logits_through_tokens
def wga(forget_logits, forget_labels, *, beta: float = 1.0):
    """Weighted gradient ascent (Wang et al. 2025): -mean_t sg(p(y_t))^β · CE_t; tokens the model already
    finds unlikely weigh little, so ascent does not run away on them as GA does."""
    if not beta >= 0 or math.isinf(beta):
        raise LetheError(f"wga: beta must be a finite number >= 0, got {beta}")
    return _weighted_ascent(forget_logits, forget_labels, lambda p: p.pow(beta))


@FORGET_LOSSES.register("satimp")
@option_ranges(beta1=(0, None, False), beta2=(0, None, False))
@reads_logits_through_tokens
def satimp(forget_logits, forget_labels, *, beta1: float = 5.0, beta2: float = 1.0):
    """SatImp (Yang et al. 2025): -mean_t sg(p^β1 (1 - p)^β2) · CE_t, p = p(y_t). open-unlearning's config
    names β1 ``gamma`` and β2 ``alpha`` (swapped against its README)."""
    for name, value in (("beta1", beta1), ("beta2", beta2)):
        if not value >= 0 or math.isinf(value):
            raise LetheError(f"satimp: {name} must be a finite number >= 0, got {value}")
    return _weighted_ascent(forget_logits, forget_labels, lambda p: p.pow(beta1) * (1.0 - p).pow(beta2))


# ---- self-distillation towards an adjusted target: UNDIAL, CEU ------------------------------------------

def _soft_ce_value(rows, target_probs):
    return -(target_probs * torch.log_softmax(upcast(rows), dim=-1)).sum(-1)


def _soft_ce_value_and_grad(rows, target_probs, *, out):
    # d/dz of -sum_v q_v log softmax(z)_v = softmax(z) - q (q sums to 1)
    logp = torch.log_softmax(upcast(rows), dim=-1)
    value = -(target_probs * logp).sum(-1)
    out.copy_(logp.exp_().sub_(target_probs))
    return value


_soft_ce_rows = RowOp(_soft_ce_value, _soft_ce_value_and_grad)


def _undial_target(beta: float):
    def target(ref_rows, targets):
        adjusted = upcast(ref_rows).clone()
        adjusted.scatter_add_(-1, targets.unsqueeze(-1), torch.full_like(adjusted[..., :1], -beta))
        return torch.softmax(adjusted, dim=-1)
    return target


def _with_target(make_target):
    """A RowOp over (rows, ref_rows, targets): soft cross-entropy to a target built from the other inputs."""
    def value(rows, ref_rows, targets):
        return _soft_ce_value(rows, make_target(ref_rows, targets))

    def value_and_grad(rows, ref_rows, targets, *, out):
        return _soft_ce_value_and_grad(rows, make_target(ref_rows, targets), out=out)

    return RowOp(value, value_and_grad)


@FORGET_LOSSES.register("undial")
@option_ranges(beta=(0, None, False))
@reads_logits_through_tokens
def undial(forget_logits, forget_labels, ref_forget_logits, *, beta: float = 10.0):
    """UNDIAL (Dong et al. 2024): cross-entropy of the model to q = softmax(z_ref - β·onehot(y)) at every
    answer position, z_ref the frozen starting model's logits: distillation towards the reference with the
    true token's logit lowered by β. Averaged over answer tokens."""
    if not beta >= 0 or math.isinf(beta):
        raise LetheError(f"undial: beta must be a finite number >= 0, got {beta}")
    targets, mask = align_targets(forget_labels)
    values = map_positions(_with_target(_undial_target(beta)), [forget_logits, ref_forget_logits.detach(), targets],
                           where=mask.bool())
    return masked_mean(values, mask)


def _ceu_target(rows, targets):
    # the model's own distribution (no gradient) with the true token removed and the rest renormalised
    z = upcast(rows).detach().clone()
    z.scatter_(-1, targets.unsqueeze(-1), float("-inf"))
    return torch.softmax(z, dim=-1)


_ceu_rows = RowOp(lambda rows, targets: _soft_ce_value(rows, _ceu_target(rows, targets)),
                  lambda rows, targets, *, out: _soft_ce_value_and_grad(rows, _ceu_target(rows, targets), out=out))


@FORGET_LOSSES.register("ceu")
@reads_logits_through_tokens
def ceu(forget_logits, forget_labels, *, skip_first: bool = False):
    """Cross-entropy unlearning (CEU): cross-entropy of the model to its own detached distribution with the
    true token's logit set to -inf, over the answer tokens. ``skip_first=True`` leaves out each answer's first
    token, as open-unlearning's code does; the default counts every answer token."""
    targets, mask = align_targets(forget_labels)
    if skip_first:
        first = (mask.cumsum(-1) == 1) & mask.bool()
        mask = mask * (~first).to(mask.dtype)
    values = map_positions(_ceu_rows, [forget_logits, targets], where=mask.bool())
    return masked_mean(values, mask)

"""Every loss against a slow, obviously correct float64 reference: values and gradients to 1e-6."""
import math

import pytest
import torch

from lethe.data.prompt import IGNORE
from lethe.objectives import FORGET_LOSSES, REGULARIZERS, parse_method

B, T, V = 3, 6, 7


def make(seed, prompt=2):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g, dtype=torch.float64) * 2
    labels = torch.randint(0, V, (B, T), generator=g)
    input_mask = torch.ones(B, T, dtype=torch.long)
    labels[:, :prompt] = IGNORE           # question tokens
    labels[1, -2:] = IGNORE               # padding on sequence 1
    input_mask[1, -2:] = 0
    return logits, labels, input_mask


# ---- slow references: explicit loops, softmax written out -------------------------------------------

def probs(row):
    e = [torch.exp(row[v]) for v in range(V)]
    s = sum(e)
    return [x / s for x in e]


def positions(labels):
    """(b, t, y) for every counted position: logits at t predict labels[t+1]."""
    return [(b, t, int(labels[b, t + 1])) for b in range(B) for t in range(T - 1) if labels[b, t + 1] != IGNORE]


def ref_seq_logp(logits, labels):
    out = []
    for b in range(B):
        s = torch.zeros((), dtype=torch.float64)
        for bb, t, y in positions(labels):
            if bb == b:
                s = s + torch.log(probs(logits[b, t])[y])
        out.append(s)
    return torch.stack(out)


def seq(logits, labels):
    """What the engine hands a loss that asks for ``*_seq_logp`` (computed from the logits)."""
    from lethe.ops.tokens import sequence_logprob

    return sequence_logprob(logits, labels)[0]


def ref_mean_nll(logits, labels):
    pos = positions(labels)
    return sum(-torch.log(probs(logits[b, t])[y]) for b, t, y in pos) / len(pos)


def ref_ihl(logits, labels):
    pos = positions(labels)
    total = 0
    for b, t, y in pos:
        p = probs(logits[b, t])
        runner_up = max(p[v] for v in range(V) if v != y)
        total = total + torch.clamp(1 + p[y] - runner_up, min=0)
    return total / len(pos)


def ref_me(logits, labels, input_mask, direction="model-to-uniform", mask_question=False):
    total, n = 0, 0
    for b in range(B):
        for t in range(T - 1):
            counts = labels[b, t + 1] != IGNORE if mask_question else input_mask[b, t + 1] == 1
            if not counts:
                continue
            p = probs(logits[b, t])
            if direction == "model-to-uniform":
                total = total + sum(p[v] * torch.log(p[v] * V) for v in range(V))
            else:
                total = total + sum((1 / V) * torch.log((1 / V) / p[v]) for v in range(V))
            n += 1
    return total / n


def ref_kl(logits, ref_logits, labels):
    pos = positions(labels)
    total = 0
    for b, t, _ in pos:
        p, q = probs(logits[b, t]), probs(ref_logits[b, t])
        total = total + sum(q[v] * (torch.log(q[v]) - torch.log(p[v])) for v in range(V))
    return total / len(pos)


def ref_h(logits, labels):
    out = []
    for b in range(B):
        ps = [probs(logits[b, t])[y] for bb, t, y in positions(labels) if bb == b]
        out.append(sum(ps) / len(ps))
    return out


def logsig(x):
    return -torch.log(1 + torch.exp(-x))


FLAT_TABLE = {  # SPEC §1 closed forms of -g*(h_e) + f*(g*(h_f))
    "tv": lambda he, hf: -torch.tanh(he) / 2 + torch.tanh(hf) / 2,
    "js": lambda he,
              hf: (torch.log(1 + torch.exp(-he)) - math.log(2)) + (hf + torch.log(1 + torch.exp(-hf)) - math.log(2)),
    "kl": lambda he, hf: -he + torch.exp(hf - 1),
    "pearson": lambda he, hf: -he + hf ** 2 / 4 + hf,
}


def check(fast_fn, slow_fn, tensors):
    """Compare values and gradients w.r.t. every float tensor marked differentiable."""
    a = [t.clone().requires_grad_(t.is_floating_point()) for t in tensors]
    b = [t.clone().requires_grad_(t.is_floating_point()) for t in tensors]
    fast, slow = fast_fn(*a), slow_fn(*b)
    torch.testing.assert_close(fast.double(), slow.double(), atol=1e-6, rtol=0)
    fast.backward()
    slow.backward()
    for x, y in zip(a, b):
        if x.is_floating_point():
            torch.testing.assert_close(x.grad, y.grad, atol=1e-6, rtol=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_forget_losses_match_references(seed):
    f, fl, fm = make(seed)
    i, il, _ = make(seed + 10, prompt=2)
    il[:, :2] = fl[:, :2]  # same question length, different answer
    ref_f, ref_i = torch.randn(B, dtype=torch.float64) - 5, torch.randn(B, dtype=torch.float64) - 6
    L = lambda name, **kw: FORGET_LOSSES.get(name).fn  # noqa: E731

    check(lambda z: L("ga")(z, fl), lambda z: -ref_mean_nll(z, fl), [f])
    check(lambda z: L("idk")(z, il), lambda z: ref_mean_nll(z, il), [i])
    check(lambda z: L("npo")(seq(z, fl), ref_f, beta=0.1),
          lambda z: (-(2 / 0.1) * logsig(-0.1 * (ref_seq_logp(z, fl) - ref_f))).mean(), [f])
    check(lambda z, w: L("dpo")(seq(z, fl), seq(w, il), ref_f, ref_i, beta=0.1),
          lambda z,
          w: (-(2 / 0.1) * logsig(0.1 * ((ref_seq_logp(w, il) - ref_seq_logp(z, fl)) - (ref_i - ref_f)))).mean(),
          [f, i])
    check(lambda z: L("ihl")(z, fl), lambda z: ref_ihl(z, fl), [f])
    n_tok = torch.tensor([sum(1 for b, _, _ in positions(fl) if b == bb) for bb in range(B)], dtype=torch.float64)
    for beta, delta in ((2.5, 0.0), (1.0, 0.7)):
        check(lambda z: L("simnpo")(seq(z, fl), n_tok, beta=beta, delta=delta),
              lambda z: (-(2 / beta) * logsig(-(beta / n_tok) * ref_seq_logp(z, fl) - delta)).mean(), [f])
    for direction in ("model-to-uniform", "uniform-to-model"):
        for mq in (False, True):
            check(lambda z: L("me")(z, fl, fm, direction=direction, mask_question=mq),
                  lambda z: ref_me(z, fl, fm, direction, mq), [f])
    for div, form in FLAT_TABLE.items():
        check(lambda z, w: L(f"flat-{div}")(z, fl, w, il),
              lambda z, w: torch.stack([form(he, hf) for he, hf in zip(ref_h(w, il), ref_h(z, fl))]).mean(), [f, i])


@pytest.mark.parametrize("seed", [0, 1])
def test_regularizers_match_references(seed):
    r, rl, _ = make(seed)
    q, _, _ = make(seed + 20)
    i, il, _ = make(seed + 30)
    il[:, :2] = rl[:, :2]
    R = lambda name: REGULARIZERS.get(name).fn  # noqa: E731
    check(lambda z: R("gd")(z, rl), lambda z: ref_mean_nll(z, rl), [r])
    check(lambda z: R("kl")(z, rl, q), lambda z: ref_kl(z, q, rl), [r])
    check(lambda z, w: R("ap")(seq(z, rl), seq(w, il), beta=0.1),
          lambda z, w: (-(1 / 0.1) * logsig(-0.1 * (ref_seq_logp(w, il) - ref_seq_logp(z, rl)))).mean(), [r, i])


def test_kl_gets_no_gradient_through_the_reference():
    r, rl, _ = make(0)
    ref = r.clone().requires_grad_(True)
    REGULARIZERS.get("kl").fn(r.clone().requires_grad_(True), rl, ref).backward()
    assert ref.grad is None
    assert REGULARIZERS.get("kl").fn(r, rl, r).abs() < 1e-12  # KL of a distribution to itself


def test_ihl_gradient_equals_the_papers_closed_form():
    """IHL seed App. D: ∂L/∂z_v at the true token, the runner-up v*, and the others (one position)."""
    z = torch.randn(1, 2, V, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[IGNORE, 3]])
    FORGET_LOSSES.get("ihl").fn(z, labels).backward()
    p = torch.softmax(z[0, 0].detach(), -1)
    y = 3
    v_star = max((v for v in range(V) if v != y), key=lambda v: p[v])
    for v in range(V):
        if v == y:
            expected = p[y] * (p[v_star] - p[y] + 1)
        elif v == v_star:
            expected = p[v_star] * (p[v_star] - p[y] - 1)
        else:
            expected = p[v] * (p[v_star] - p[y])
        assert z.grad[0, 0, v].item() == pytest.approx(expected.item(), abs=1e-12)


def test_me_equals_log_v_minus_mean_entropy():
    """Closer-look App. B: KL(P || U) = log V - H(P), so minimising ME maximises entropy."""
    f, fl, fm = make(5)
    p = torch.softmax(f[:, :-1], -1)
    entropy = -(p * p.log()).sum(-1)
    mask = fm[:, 1:].double()
    expected = math.log(V) - (entropy * mask).sum() / mask.sum()
    assert FORGET_LOSSES.get("me").fn(f, fl, fm).item() == pytest.approx(expected.item(), abs=1e-10)
    uniform = torch.zeros(B, T, V, dtype=torch.float64)
    assert FORGET_LOSSES.get("me").fn(uniform, fl, fm).item() == pytest.approx(0.0, abs=1e-12)


def test_ap_gradient_weight():
    """Closer-look App. C: ∂L_AP/∂(log p(y'|x) - log p(y|x)) = 1 / (1 + (p(y|x)/p(y'|x))^β)."""
    from lethe.objectives.regularize import ap_loss

    beta = 0.1
    logp_idk = torch.tensor([-7.0, -2.0, -30.0], dtype=torch.float64, requires_grad=True)
    logp_y = torch.tensor([-1.0, -3.0, -0.5], dtype=torch.float64)
    (ap_loss(logp_idk, logp_y, beta) * 3).backward()  # undo the batch mean
    weight = 1 / (1 + (logp_y.exp() / logp_idk.detach().exp()) ** beta)
    torch.testing.assert_close(logp_idk.grad, weight, atol=1e-12, rtol=0)


def test_flat_matches_the_conjugate_table():
    """FLAT seed Table 2: TV g*=tanh/2, f*=u; JS g*=log(2/(1+e^-v)), f*=-log(2-e^u); Pearson g*=v, f*=u²/4+u."""
    from lethe.objectives.forget import FLAT_DIVERGENCES

    v = torch.linspace(0.05, 0.95, 7, dtype=torch.float64)
    table = {"tv": (0.5 * torch.tanh(v), lambda u: u),
             "js": (torch.log(2 / (1 + torch.exp(-v))), lambda u: -torch.log(2 - torch.exp(u))),
             "pearson": (v, lambda u: u * u / 4 + u), "kl": (v, lambda u: torch.exp(u - 1))}
    for div, (g_expected, f_conj) in table.items():
        g, f = FLAT_DIVERGENCES[div]
        torch.testing.assert_close(g(v), g_expected, atol=1e-12, rtol=0)
        torch.testing.assert_close(f(g(v)), f_conj(g_expected), atol=1e-12, rtol=0)


def test_gradcheck_float64(monkeypatch):
    from lethe.ops import tokens

    monkeypatch.setattr(tokens, "INPLACE_BACKWARD", False)  # gradcheck backpropagates one graph many times
    f, fl, fm = make(7)
    i, il, _ = make(8)
    il[:, :2] = fl[:, :2]
    ref = torch.randn(B, dtype=torch.float64)
    for name, fn in [("ihl", lambda z: FORGET_LOSSES.get("ihl").fn(z, fl)),
                     ("me", lambda z: FORGET_LOSSES.get("me").fn(z, fl, fm)),
                     ("npo", lambda z: FORGET_LOSSES.get("npo").fn(seq(z, fl), ref)),
                     ("simnpo",
                      lambda z: FORGET_LOSSES.get("simnpo").fn(seq(z, fl), (fl[:, 1:] >= 0).sum(-1).double())),
                     ("flat-js", lambda z: FORGET_LOSSES.get("flat-js").fn(z, fl, i, il)),
                     ("kl", lambda z: REGULARIZERS.get("kl").fn(z, fl, i))]:
        assert torch.autograd.gradcheck(fn, (f.clone().requires_grad_(True),), eps=1e-6, atol=1e-5), name


def test_graph_reuse_is_refused_with_a_clear_message():
    f, fl, _ = make(0)
    z = f.clone().requires_grad_(True)
    loss = FORGET_LOSSES.get("ihl").fn(z, fl)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="already backpropagated"):
        loss.backward()


# rmu and pdu take their inputs from a set-up step (test_loss_protocol.py, test_pdu.py check them)
@pytest.mark.parametrize("name", [n for n in FORGET_LOSSES.names() if n not in ("rmu", "pdu")]
                         + [f"reg:{n}" for n in REGULARIZERS.names()])
def test_all_masked_batch_stays_finite(name):
    logits = torch.randn(B, T, V, requires_grad=True)
    other = torch.randn(B, T, V, requires_grad=True)
    labels = torch.full((B, T), IGNORE)
    zeros = torch.zeros(B)
    seq_f = (logits[:, :, 0] * 0).sum(-1)  # a zero that carries a gradient, as an empty answer's log-prob does
    seq_o = (other[:, :, 0] * 0).sum(-1)
    inputs = {"forget_logits": logits, "forget_labels": labels, "forget_mask": torch.zeros(B, T),
              "forget_seq_logp": seq_f, "forget_lengths": zeros, "idk_logits": other, "idk_labels": labels,
              "idk_seq_logp": seq_o, "ref_forget_seq_logp": zeros, "ref_idk_seq_logp": zeros,
              "retain_logits": logits, "retain_labels": labels, "ref_retain_logits": other.detach(),
              "ref_forget_logits": other.detach(),
              "retain_seq_logp": seq_f, "retain_idk_seq_logp": seq_o, "alternate_seq_logp": seq_o,
              "ref_alternate_seq_logp": zeros}
    spec = REGULARIZERS.get(name[4:]) if name.startswith("reg:") else FORGET_LOSSES.get(name)
    loss = spec(inputs)
    loss.backward()
    grads = [t.grad for t in (logits, other) if t.grad is not None]
    assert torch.isfinite(loss) and grads and all(torch.isfinite(g).all() for g in grads)


def test_method_parsing_and_defaults():
    m = parse_method("me+gd")
    assert m.name == "ME+GD" and m.alpha == 0.1 and m.gamma == 1.0
    assert [k for _, k in parse_method("NPO+KL").needs()] == ["forget_seq_logp", "ref_forget_seq_logp",
                                                              "retain_logits", "retain_labels", "ref_retain_logits"]
    assert parse_method("IDK+AP").alpha == 1.0 and parse_method("FLAT-KL").regularizer is None
    assert parse_method("ME+GD", alpha=1.0).alpha == 1.0
    with pytest.raises(Exception, match="expected FORGET or FORGET\\+REGULARIZER"):
        parse_method("GA+GD+KL")


def test_method_loss_combines_alpha_and_gamma():
    f, fl, _ = make(0)
    r, rl, _ = make(1)
    m = parse_method("GA+GD", alpha=0.3, gamma=2.0)
    total, parts = m.loss({"forget_logits": f, "forget_labels": fl, "retain_logits": r, "retain_labels": rl})
    assert total.item() == pytest.approx(0.3 * parts["forget"].item() + 2.0 * parts["regularizer"].item())


# ---- WGA, SatImp, UNDIAL, CEU against loops ------------------------------------------------------------

def ref_weighted(logits, labels, weight):
    pos = positions(labels)
    total = 0.0
    for b, t, y in pos:
        p = probs(logits[b, t])[y]
        total = total + weight(p.detach()) * torch.log(p)
    return total / len(pos)


def ref_soft_ce(logits, labels, target_of):
    pos = positions(labels)
    total = 0.0
    for b, t, y in pos:
        q = target_of(b, t, y)
        p = probs(logits[b, t])
        total = total - sum(q[v] * torch.log(p[v]) for v in range(V))
    return total / len(pos)


@pytest.mark.parametrize("seed", [0, 1])
def test_token_weighted_and_distillation_losses_match_references(seed):
    f, fl, _ = make(seed)
    zr, _, _ = make(seed + 40)  # the reference model's logits
    L = lambda name: FORGET_LOSSES.get(name).fn  # noqa: E731
    for beta in (1.0, 2.0):
        check(lambda z: L("wga")(z, fl, beta=beta), lambda z: ref_weighted(z, fl, lambda p: p ** beta), [f])
    check(lambda z: L("satimp")(z, fl), lambda z: ref_weighted(z, fl, lambda p: p ** 5 * (1 - p) ** 1), [f])
    check(lambda z: L("satimp")(z, fl, beta1=1.0, beta2=2.0),
          lambda z: ref_weighted(z, fl, lambda p: p * (1 - p) ** 2), [f])

    def undial_q(b, t, y, beta=10.0):
        row = [zr[b, t, v] - (beta if v == y else 0.0) for v in range(V)]
        e = [torch.exp(x) for x in row]
        return [x / sum(e) for x in e]

    check(lambda z: L("undial")(z, fl, zr), lambda z: ref_soft_ce(z, fl, undial_q), [f])
    check(lambda z: L("undial")(z, fl, zr, beta=2.0),
          lambda z: ref_soft_ce(z, fl, lambda b, t, y: undial_q(b, t, y, 2.0)), [f])

    def ceu_ref(z, skip_first):
        pos = positions(fl)
        if skip_first:
            firsts = {(b, min(t for bb, t, _ in pos if bb == b)) for b in range(B)}
            pos = [(b, t, y) for b, t, y in pos if (b, t) not in firsts]
        total = 0.0
        for b, t, y in pos:
            d = z[b, t].detach()
            e = [torch.exp(d[v]) if v != y else torch.zeros((), dtype=d.dtype) for v in range(V)]
            q = [x / sum(e) for x in e]
            p = probs(z[b, t])
            total = total - sum(q[v] * torch.log(p[v]) for v in range(V))
        return total / len(pos)

    for skip_first in (False, True):
        check(lambda z: L("ceu")(z, fl, skip_first=skip_first), lambda z: ceu_ref(z, skip_first), [f])


def test_new_losses_refuse_bad_options_before_any_work():
    from lethe.util.errors import LetheError

    for spec, word in (("WGA(beta=-1)", "'beta' must be >= 0"), ("SatImp(beta1=inf)", "beta1"),
                       ("UNDIAL(beta=-2)", "'beta' must be >= 0"), ("NPO(beta=0)", "'beta' must be > 0"),
                       ("NPO(beta=-1)+GD", "'beta' must be > 0"), ("SimNPO(beta=0)", "'beta' must be > 0"),
                       ("GA+AP(beta=0)", "'beta' must be > 0"), ("RMU(layer=2.5)", "whole number"),
                       ("RMU(layer=-1)", "whole number")):
        with pytest.raises(LetheError, match=word):
            parse_method(spec)  # at parse time: before any model loads

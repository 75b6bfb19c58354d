"""Conventions (SPEC §8): each released-code form against a float64 re-implementation written from SPEC §8,
and the presets that bundle them."""
from __future__ import annotations

import math

import pytest
import torch

from lethe.core.conventions import CONVENTIONS, get_convention
from lethe.data.prompt import IGNORE
from lethe.objectives import parse_method
from lethe.ops import tokens
from lethe.util.errors import LetheError

B, T, V = 3, 7, 11


@pytest.fixture(autouse=True)
def _reusable_graphs():
    tokens.INPLACE_BACKWARD = False
    yield
    tokens.INPLACE_BACKWARD = True


def _logits(seed=0, tiny_probabilities=True):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, T, V, generator=g, dtype=torch.float64) * 3
    if tiny_probabilities:
        z[0, 1, :4] = -60.0  # probabilities below 1e-12: where the released code's +1e-12 changes the value
    return z.requires_grad_(True)


def _labels():
    labels = torch.full((B, T), IGNORE)
    labels[0, 3:6] = torch.tensor([1, 2, 3])
    labels[1, 2:7] = torch.tensor([4, 5, 6, 7, 8])
    labels[2, 4:5] = torch.tensor([9])
    return labels


def _mask():
    m = torch.ones(B, T, dtype=torch.long)
    m[0, 6:] = 0
    m[2, 5:] = 0
    return m


def _loss(spec, **inputs):
    loss = parse_method(spec)
    fn = loss.forget
    return fn({k: inputs[k] for k in fn.needs()})


def test_me_as_the_closer_look_code_computes_it():
    z, labels, mask = _logits(), _labels(), _mask()
    got = _loss("ME(direction=uniform-to-model, eps=1e-12, padding=true)", forget_logits=z, forget_labels=labels,
                forget_mask=mask)
    # SPEC §8: KL(U || P_t) = sum_v (1/V)(log(1/V) - log(p_v + 1e-12)), averaged over every position of the
    # padded batch but the last, B·(T-1) (question, answer and padding alike)
    ref = 0.0
    for b in range(B):
        for t in range(T - 1):
            p = torch.softmax(z[b, t], -1)
            ref = ref + sum((1 / V) * (math.log(1 / V) - torch.log(p[v] + 1e-12)) for v in range(V))
    ref = ref / (B * (T - 1))
    assert got.item() == pytest.approx(ref.item(), rel=1e-12)
    g_got, = torch.autograd.grad(got, z, retain_graph=True)
    g_ref, = torch.autograd.grad(ref, z)
    assert torch.allclose(g_got, g_ref, atol=1e-12)
    # without eps the value is the paper form's KL(U || P), where no probability is that small
    small = _logits(1, tiny_probabilities=False)
    a = _loss("ME(direction=uniform-to-model, padding=true)", forget_logits=small, forget_labels=labels,
              forget_mask=mask)
    b = _loss("ME(direction=uniform-to-model, eps=1e-12, padding=true)", forget_logits=small, forget_labels=labels,
              forget_mask=mask)
    assert a.item() == pytest.approx(b.item(), rel=1e-5)  # eps matters only as p nears 1e-12


def test_kl_over_every_position_as_the_released_code_computes_it():
    z, ref_z = _logits(), _logits(2).detach()
    inputs = {"retain_logits": z, "retain_labels": _labels(), "ref_retain_logits": ref_z}
    got = parse_method("GA+KL(positions=all)").regularizer(inputs)
    total = 0.0
    for b in range(B):
        for t in range(T):  # every position: question, padding and the last one
            q, p = torch.softmax(ref_z[b, t], -1), torch.softmax(z[b, t], -1)
            total = total + sum(q[v] * (torch.log(q[v]) - torch.log(p[v])) for v in range(V))
    ref = total / (B * T)
    assert got.item() == pytest.approx(ref.item(), rel=1e-12)
    g_got, = torch.autograd.grad(got, z, retain_graph=True)
    g_ref, = torch.autograd.grad(ref, z)
    assert torch.allclose(g_got, g_ref, atol=1e-12)
    with pytest.raises(LetheError, match="positions must be one of answer, all"):
        parse_method("GA+KL(positions=some)").regularizer(inputs)


def test_flat_probability_normalised_by_the_padded_length():
    z, zi = _logits(), _logits(3)
    labels, idk_labels = _labels(), _labels().roll(1, dims=0)
    got = _loss("FLAT-KL(normalise=padded)", forget_logits=z, forget_labels=labels, idk_logits=zi,
                idk_labels=idk_labels)

    def h(logits, lab, b):  # sum of the response tokens' probabilities / (T - 1), T the padded length
        s = 0.0
        for t in range(T - 1):
            if lab[b, t + 1] != IGNORE:
                s = s + torch.softmax(logits[b, t], -1)[lab[b, t + 1]]
        return s / (T - 1)

    # KL row of FLAT Table 2: g*(v) = v, f*(u) = exp(u - 1); loss = -g*(h_e) + f*(g*(h_f)), mean over B
    ref = sum(-h(zi, idk_labels, b) + torch.exp(h(z, labels, b) - 1) for b in range(B)) / B
    assert got.item() == pytest.approx(ref.item(), rel=1e-12)
    g_got, = torch.autograd.grad(got, z, retain_graph=True)
    g_ref, = torch.autograd.grad(ref, z)
    assert torch.allclose(g_got, g_ref, atol=1e-12)


def _flat_code_loss(z, labels, zi, idk_labels, div, normalise):
    """FLAT's compute_loss in float64, loop by loop: one h per batch (the response tokens' probabilities summed
    over the batch, divided by B(T-1) or by the counted tokens), then the divergence once."""
    g = {"tv": lambda v: 0.5 * torch.tanh(v), "js": lambda v: math.log(2.0) - torch.nn.functional.softplus(-v),
         "kl": lambda v: v, "pearson": lambda v: v}[div]
    f_conj = {"tv": lambda u: u, "js": lambda u: -torch.log(2.0 - torch.exp(u)), "kl": lambda u: torch.exp(u - 1.0),
              "pearson": lambda u: 0.25 * u * u + u}[div]

    def h(logits, lab):
        total, count = 0.0, 0
        for b in range(logits.shape[0]):
            for t in range(logits.shape[1] - 1):
                if lab[b, t + 1] != IGNORE:
                    total = total + torch.softmax(logits[b, t], -1)[lab[b, t + 1]]
                    count += 1
        return total / (logits.shape[0] * (logits.shape[1] - 1) if normalise == "padded" else count)

    return -g(h(zi, idk_labels)) + f_conj(g(h(z, labels)))


@pytest.mark.parametrize("div", ["tv", "js", "kl", "pearson"])
@pytest.mark.parametrize("normalise", ["padded", "response"])
def test_flat_batch_pooling_equals_flat_code(div, normalise):
    z, zi = _logits(), _logits(3)
    labels, idk_labels = _labels(), _labels().roll(1, dims=0)
    got = _loss(f"FLAT-{div.upper()}(normalise={normalise},pool=batch)", forget_logits=z, forget_labels=labels,
                idk_logits=zi, idk_labels=idk_labels)
    ref = _flat_code_loss(z, labels, zi, idk_labels, div, normalise)
    assert got.item() == pytest.approx(ref.item(), rel=1e-12)
    g_got, = torch.autograd.grad(got, z, retain_graph=True)
    g_ref, = torch.autograd.grad(ref, z)
    assert torch.allclose(g_got, g_ref, atol=1e-12)
    per_sequence = _loss(f"FLAT-{div.upper()}(normalise={normalise})", forget_logits=z, forget_labels=labels,
                         idk_logits=zi, idk_labels=idk_labels)
    assert per_sequence.item() != pytest.approx(ref.item(), rel=1e-6)  # the paper's form differs for B > 1


def test_losses_over_padded_positions_need_a_fixed_width(tokenizer, smoke_data, tiny_model):
    import lethe

    for method in ("GA+KL(positions=all)", "ME(padding=true)+GD", "FLAT-KL(normalise=padded)"):
        with pytest.raises(LetheError, match="fixed batch width"):
            lethe.unlearn(tiny_model, smoke_data.forget(10), smoke_data.retain(10), method=method,
                          tokenizer=tokenizer, progress=False)


def test_padded_presets_are_split_invariant(tokenizer, smoke_data, tiny_model):
    """KL over all positions of batches padded to one width: 1 x 8 = 2 x 4 = 4 x 2 micro-batches."""
    import copy

    import lethe
    from lethe.engine.loop import TrainConfig

    finals = []
    for micro in (8, 4, 2):
        model, run = lethe.unlearn(copy.deepcopy(tiny_model), smoke_data.forget(10) + smoke_data.forget(10)[:4],
                                   smoke_data.retain(10), method="GA+KL", tokenizer=tokenizer, progress=False,
                                   convention="ihl-fila", evaluation=lethe.EvalConfig(at=()),
                                   train=TrainConfig(epochs=1, lr=1e-3, batch_size=8, micro_batch_size=micro,
                                                     checkpoint=False))
        assert run.config["convention"]["pad_to"] == 500
        finals.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    for other in finals[1:]:
        for k in finals[0]:
            torch.testing.assert_close(other[k], finals[0][k], atol=1e-6, rtol=1e-5)


def test_reference_free_dpo_as_the_flat_baseline():
    lp_f, lp_i = torch.tensor([-3.0, -7.5], dtype=torch.float64), torch.tensor([-9.0, -2.0], dtype=torch.float64)
    ref_f, ref_i = torch.tensor([-1.0, -1.0], dtype=torch.float64), torch.tensor([-4.0, -4.0], dtype=torch.float64)
    got = parse_method("DPO(beta=0.1, reference_free=true)").forget(
        {"forget_seq_logp": lp_f, "idk_seq_logp": lp_i, "ref_forget_seq_logp": ref_f, "ref_idk_seq_logp": ref_i})
    ref = sum(-(2 / 0.1) * math.log(1 / (1 + math.exp(-0.1 * (float(lp_i[k]) - float(lp_f[k]))))) for k in range(2)) / 2
    assert got.item() == pytest.approx(ref, rel=1e-12)


def test_presets_supply_defaults_that_explicit_options_override():
    cl = get_convention("closer-look").loss_options
    m = parse_method("ME+KL", defaults=cl)
    assert m.forget.options() == {"direction": "uniform-to-model", "mask_question": False, "eps": 1e-12,
                                  "padding": True}
    assert m.regularizer.options() == {"positions": "all"}
    assert parse_method("ME(eps=0)+GD", defaults=cl).forget.options()["eps"] == 0.0  # written in the string
    assert parse_method("ME+GD", defaults=cl, forget_options={"padding": False}).forget.options()["padding"] is False
    assert parse_method("NPO+GD", defaults=cl).forget.options() == {"beta": 0.1}  # untouched losses stay as they are
    assert parse_method("FLAT-TV", defaults=get_convention("flat").loss_options).forget.options() == \
        {"normalise": "padded", "pool": "batch"}
    assert set(CONVENTIONS) == {"paper", "closer-look", "tofu", "flat", "ihl-fila", "knowledge-unlearning"}
    with pytest.raises(LetheError, match="unknown convention 'closerlook'"):
        get_convention("closerlook")


def test_ihl_fila_preset_sets_the_solver_where_left_at_defaults():
    from lethe.core.runs import _with_convention_params
    from lethe.model.lora import ParamsConfig

    ihl = get_convention("ihl-fila")
    p = _with_convention_params(ParamsConfig(kind="fila", rank=4), ihl)
    assert (p.fisher_mode, p.svd, p.svd_oversample, p.svd_niter) == ("per-batch", "randomized", 0, 2)
    p = _with_convention_params(ParamsConfig(kind="fila", svd="exact", svd_niter=3), ihl)
    assert p.svd_niter == 3  # explicit values win
    # the released code's solver: torch.svd_lowrank(q=r, niter=2) — same factors as calling it directly
    from lethe.model.lora import fila_factors

    w_mat = torch.randn(12, 9, dtype=torch.float64)
    weights = torch.rand(12, dtype=torch.float64) + 0.5
    torch.manual_seed(0)
    A, Bm = fila_factors(w_mat, weights, 3, 2.0, svd="randomized", oversample=0, niter=2)
    torch.manual_seed(0)
    U, S, Vt = torch.svd_lowrank(weights.unsqueeze(1) * w_mat, q=3, niter=2)
    root = (S / 2.0).sqrt()
    assert torch.allclose(A, root.unsqueeze(1) * Vt.t()) and torch.allclose(Bm,
                                                                            (U * root) / (weights + 1e-5).unsqueeze(1))


def test_padded_layout_and_unit_give_the_released_codes_step(tokenizer, smoke_data):
    """ME(padding) on batches padded to a fixed width: the step's loss is the mean over B·(width-1) positions
    of the padded batch, and accumulation counts those positions."""
    from lethe.engine.tasks import UnlearnTask
    from lethe.model.build import build_tiny_model

    model = build_tiny_model(tokenizer, "test", seed=0).double()
    forget = smoke_data.forget(10)[:3]
    method = parse_method("ME", defaults=get_convention("closer-look").loss_options)
    task = UnlearnTask(tokenizer, method, forget, seed=0, pad_to=48)
    idx = [0, 1, 2]
    assert task.counts(idx) == {"forget": 3 * 47.0}
    out = task(model, idx, torch.device("cpu"))
    from lethe.data.batching import pad_batch

    batch = pad_batch([task.forget[i] for i in idx], task.pad, width=48)
    assert batch["input_ids"].shape[1] == 48
    with torch.no_grad():
        z = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        p = torch.softmax(z[:, :-1], -1)
        ref = ((math.log(1 / z.shape[-1]) - torch.log(p + 1e-12)).sum(-1) / z.shape[-1]).mean()
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-10)


def test_a_run_records_its_convention(tokenizer, smoke_data):
    from lethe import api
    from lethe.engine.loop import TrainConfig
    from lethe.model.build import build_tiny_model

    _, run = api.unlearn(build_tiny_model(tokenizer, "test", seed=0), smoke_data.forget(10)[:4],
                         smoke_data.retain(10)[:4], method="ME+KL", tokenizer=tokenizer, convention="closer-look",
                         train=TrainConfig(epochs=1, lr=1e-3, batch_size=4, micro_batch_size=2, checkpoint=False),
                         save=False, progress=False)
    assert run.status == "ok"
    assert run.config["convention"]["name"] == "closer-look" and run.config["convention"]["pad_to"] == 500
    assert run.config["forget_options"]["eps"] == 1e-12 and run.config["regularizer_options"] == {"positions": "all"}
    _, plain = api.unlearn(build_tiny_model(tokenizer, "test", seed=0), smoke_data.forget(10)[:4],
                           smoke_data.retain(10)[:4], method="ME+KL", tokenizer=tokenizer,
                           train=TrainConfig(epochs=1, lr=1e-3, batch_size=4, micro_batch_size=2, checkpoint=False),
                           save=False, progress=False)
    assert "convention" not in plain.config and plain.config["forget_options"]["eps"] == 0.0


def test_cli_convention_sets_el_counting_and_explicit_flags_win(tokenizer, tmp_path, capsys):
    import json

    import numpy as np

    from lethe.cli.commands import main
    from lethe.model.build import build_tiny_model
    from lethe.model.save import save_model

    save_model(build_tiny_model(tokenizer, "test", seed=0), tokenizer, tmp_path / "m")
    rng = np.random.default_rng(0)
    np.save(tmp_path / "forget.npy", rng.integers(4, len(tokenizer), size=(3, 14)))
    np.save(tmp_path / "val.npy", rng.integers(4, len(tokenizer), size=(2, 14)))
    base = ["--quiet", "unlearn", "--model", str(tmp_path / "m"), "--forget", str(tmp_path / "forget.npy"),
            "--validation", str(tmp_path / "val.npy"), "--method", "GA", "--epochs", "1", "--lr", "1e-4",
            "--el-n", "3", "--convention", "knowledge-unlearning"]
    for extra, want in (([], {"n": 3, "orientation": "generated-in-truth", "denominator": "truth", "keep_eos": True}),
                        (["--el-denominator", "counted"],
                         {"n": 3, "orientation": "generated-in-truth", "denominator": "counted", "keep_eos": True})):
        out = tmp_path / f"run{len(extra)}"
        with pytest.raises(SystemExit) as e:
            main(base + extra + ["--out", str(out)])
        assert e.value.code == 0, capsys.readouterr().err
        config = json.loads((out / "run.json").read_text())["config"]
        assert config["el"] == want and config["convention"]["name"] == "knowledge-unlearning"

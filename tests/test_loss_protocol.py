"""The loss-input protocol: options in method strings, losses as plain callables or classes, hidden-state
inputs through hooks, RMU against a float64 reference, and parameter choice by the loss."""
import copy

import pytest
import torch

from lethe import api
from lethe.engine.loop import TrainConfig
from lethe.objectives import FORGET_LOSSES, Loss, Need, parse_method
from lethe.objectives.rmu import RMU, masked_token_mse
from lethe.util.errors import LetheError

CFG = TrainConfig(epochs=2, lr=5e-3, batch_size=4, micro_batch_size=4, checkpoint=False)


def test_options_in_the_method_string_are_checked_and_typed():
    m = parse_method("NPO(beta=0.2)+KL")
    assert m.forget.options() == {"beta": 0.2} and m.name == "NPO+KL" and m.spec == "NPO(beta=0.2)+KL(positions=answer)"
    m = parse_method("ME(direction=uniform-to-model, mask_question=true)+GD")
    assert m.forget.options() == {"direction": "uniform-to-model", "mask_question": True, "eps": 0.0,
                                  "padding": False} and m.alpha == 0.1
    m = parse_method("NPO+AP", forget_options={"beta": "0.5"}, regularizer_options={"beta": 2})
    assert m.forget.options()["beta"] == 0.5 and m.regularizer.options()["beta"] == 2.0
    assert parse_method("NPO(beta=0.2)", forget_options={"beta": 0.3}).forget.options()["beta"] == 0.3
    with pytest.raises(LetheError, match=r"loss 'npo' has no option 'bta'; its options: beta=0.1"):
        parse_method("NPO(bta=0.2)+GD")
    with pytest.raises(LetheError, match=r"option 'beta' expects a number, got 'abc'"):
        parse_method("NPO(beta=abc)")
    with pytest.raises(LetheError, match=r"must be finite"):
        parse_method("SimNPO(beta=nan)")
    with pytest.raises(LetheError, match=r"expected NAME=VALUE"):
        parse_method("NPO(0.2)")
    with pytest.raises(LetheError, match="no regularizer"):
        parse_method("NPO", regularizer_options={"beta": 1})
    with pytest.raises(LetheError, match="unknown forget loss 'SimNOP'.*Did you mean 'simnpo'"):
        parse_method("SimNOP+GD")


def test_a_plain_callable_runs_without_touching_a_registry(tiny_model, tokenizer, smoke_data):
    calls = []

    def push_down(forget_seq_logp, forget_lengths, *, scale: float = 1.0):
        calls.append(forget_seq_logp.shape)
        return scale * (forget_seq_logp / forget_lengths.clamp(min=1)).mean()

    before = set(FORGET_LOSSES.names())
    _, run = api.unlearn(copy.deepcopy(tiny_model), smoke_data.forget(10), smoke_data.retain(10),
                         method=(push_down, "GD"), tokenizer=tokenizer, train=CFG, progress=False)
    assert run.status == "ok" and calls and run.method == "PUSH-DOWN+GD"
    assert run.config["forget_options"] == {"scale": 1.0}
    assert set(FORGET_LOSSES.names()) == before
    _, run = api.unlearn(copy.deepcopy(tiny_model), smoke_data.forget(10), method=api.MethodConfig(
        push_down, forget_options={"scale": "2"}), tokenizer=tokenizer, train=CFG, progress=False)
    assert run.config["forget_options"] == {"scale": 2.0}


def test_registering_again_replaces_the_same_definition_and_refuses_another():
    def tmp_loss(forget_logits, forget_labels):
        return forget_logits.sum() * 0

    try:
        FORGET_LOSSES.register("tmp-protocol")(tmp_loss)
        FORGET_LOSSES.register("tmp-protocol")(tmp_loss)  # a notebook cell run twice

        def other(forget_logits):
            return forget_logits.sum()

        with pytest.raises(ValueError, match="registered twice"):
            FORGET_LOSSES.register("tmp-protocol")(other)
        with pytest.raises(LetheError, match="unknown loss input 'forget_logit'"):
            FORGET_LOSSES.register("tmp-bad")(lambda forget_logit: forget_logit)
    finally:
        FORGET_LOSSES._items.pop("tmp-protocol", None)


def test_needs_are_validated():
    with pytest.raises(LetheError, match="reference model is the policy's"):
        Need("labels", "forget", "reference")
    with pytest.raises(LetheError, match="needs a layer"):
        Need("hidden", "retain")


def test_hidden_state_inputs_equal_the_models_hidden_states(tiny_model, tokenizer, smoke_data):
    """The hook at layer L gives what output_hidden_states calls hidden_states[L + 1] (for the last layer,
    transformers applies the final norm first)."""
    from lethe.data.batching import pad_batch
    from lethe.engine.tasks import UnlearnTask

    seen = {}

    class Probe(Loss):
        def needs(self):
            return {"h": Need("hidden", "forget", layer=1), "ref_h": Need("hidden", "retain", "reference", layer=0),
                    "logits": Need("logits", "forget")}

        def __call__(self, inputs):
            seen.update(inputs)
            return inputs["h"].sum() * 0

    from lethe.model.reference import FrozenCopy

    task = UnlearnTask(tokenizer, parse_method(Probe()), smoke_data.forget(10), smoke_data.retain(10))
    task.reference = FrozenCopy(tiny_model)
    task(tiny_model, [0, 1], torch.device("cpu"))
    fb = pad_batch([task.forget[0], task.forget[1]], tokenizer.pad_token_id)
    rb = pad_batch([task.retain[j] for i in (0, 1) for j in task.pairs[i]], tokenizer.pad_token_id)
    with torch.no_grad():
        out = tiny_model(input_ids=fb["input_ids"], attention_mask=fb["attention_mask"], output_hidden_states=True)
        ref = tiny_model(input_ids=rb["input_ids"], attention_mask=rb["attention_mask"], output_hidden_states=True)
    torch.testing.assert_close(tiny_model.model.norm(seen["h"]), out.hidden_states[2])
    torch.testing.assert_close(seen["ref_h"], ref.hidden_states[1])
    torch.testing.assert_close(seen["logits"], out.logits)


def _ref_rmu(fh, fm, rh, ref_rh, rm, control, alpha):
    """Slow float64 RMU: explicit loops over sequences, tokens and hidden dimensions."""
    def term(h, target, mask):
        per_seq = []
        for b in range(h.shape[0]):
            toks = [t for t in range(h.shape[1]) if mask[b, t]]
            if not toks:
                continue
            per_tok = [sum((h[b, t, d] - target(b, t, d)) ** 2 for d in range(h.shape[2])) / h.shape[2] for t in toks]
            per_seq.append(sum(per_tok) / len(toks))
        return sum(per_seq) / len(per_seq)

    return term(fh, lambda b, t, d: control[d], fm) + alpha * term(rh, lambda b, t, d: ref_rh[b, t, d], rm)


def test_rmu_matches_a_float64_reference_with_gradients():
    g = torch.Generator().manual_seed(0)
    B, T, H = 3, 5, 4
    fh = torch.randn(B, T, H, generator=g, dtype=torch.float64, requires_grad=True)
    rh = torch.randn(B, T, H, generator=g, dtype=torch.float64, requires_grad=True)
    ref_rh = torch.randn(B, T, H, generator=g, dtype=torch.float64)
    fm = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])  # padding, a full row, an empty row
    rm = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 0], [1, 0, 0, 0, 0]])
    loss = RMU(alpha=3.0, steering_coeff=2.0)
    loss.control = torch.rand(H, generator=g, dtype=torch.float64)
    inputs = {"forget_hidden": fh, "forget_mask": fm, "retain_hidden": rh, "retain_mask": rm,
              "ref_retain_hidden": ref_rh}
    got = loss(inputs)
    want = _ref_rmu(fh, fm, rh, ref_rh, rm, loss.control, 3.0)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    g1 = torch.autograd.grad(got, [fh, rh])
    g2 = torch.autograd.grad(want, [fh, rh])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    assert torch.autograd.gradcheck(lambda f,
                                    r: masked_token_mse(f, loss.control, fm) + masked_token_mse(r, ref_rh, rm),
                                    (fh, rh))


def test_rmu_setup_scales_to_the_model_and_trains_only_its_layers(tokenizer, smoke_data):
    from lethe.model.build import build_tiny_model

    model = build_tiny_model(tokenizer, "small", seed=0)  # 4 layers
    original = {k: v.clone() for k, v in model.state_dict().items()}
    unlearned, run = api.unlearn(model, smoke_data.forget(10), smoke_data.retain(10), method="RMU",
                                 tokenizer=tokenizer, train=CFG, progress=False)
    opts = run.config["forget_options"]
    assert opts["layer"] == 1 and opts["trained_layers"] == "0,1"   # round(7/32 * 4) = 1; layers 0..1
    assert opts["steering_coeff"] > 0 and run.status == "ok"
    changed = {k for k, v in unlearned.state_dict().items() if not torch.equal(v, original[k])}
    assert changed and all(k.startswith(("model.layers.0.mlp.", "model.layers.1.mlp.")) for k in changed), changed
    assert 0 < run.cost["trainable_percent"] < 100
    # the control vector is fixed by the seed; the forget activations move towards it
    a, b = RMU(), RMU()
    from lethe.data.prompt import Prompter
    from lethe.engine.tasks import LossData, Streams

    data = LossData(smoke_data.forget(10), [], Streams(Prompter(tokenizer), smoke_data.forget(10)), 0, seed=5)
    a.setup(model, data)
    b.setup(model, data)
    assert torch.equal(a.control, b.control) and a.control.norm().item() == pytest.approx(a.steering_coeff, rel=1e-5)
    with pytest.raises(LetheError, match="must lie in 0..1"):
        RMU(trained_layers="1,2").setup(model, data)


def test_rmu_with_lora_trains_only_adapters_inside_its_layers(tiny_model, tokenizer, smoke_data):
    model, run = api.unlearn(copy.deepcopy(tiny_model), smoke_data.forget(10), smoke_data.retain(10),
                             method="RMU(layer=1, trained_layers=1)", tokenizer=tokenizer, train=CFG,
                             params=api.ParamsConfig(kind="lora", rank=2, targets="all"), progress=False)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".layers.1.mlp." in n and "lora_" in n for n in trainable), trainable

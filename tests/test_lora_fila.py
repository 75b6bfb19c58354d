"""LoRA and FILA: exact initialisation, optimal factors, Fisher, references, and saving."""
import copy
import json
import subprocess
import sys

import pytest
import torch

from lethe import api
from lethe.data.prompt import Prompter
from lethe.engine.loop import TrainConfig
from lethe.model.fisher import empirical_fisher, row_weights
from lethe.model.lora import REFERENCE, AdapterReference, ParamsConfig, apply_params, fila_factors
from lethe.model.targets import resolve_targets
from lethe.ops.tokens import sequence_logprob


def encoded(tokenizer, records):
    return [Prompter(tokenizer).encode_qa(r.question, r.answer) for r in records]


def logits_of(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture
def ids(tokenizer, smoke_data):
    return torch.tensor([Prompter(tokenizer).encode_qa(r.question,
                                                       r.answer)["input_ids"][:12] for r in smoke_data.full[:3]])


def fila_model(model, tokenizer, smoke_data, **kw):
    cfg = ParamsConfig(kind="fila", rank=4, targets="all", **kw)
    return apply_params(model, cfg, forget_examples=encoded(tokenizer, smoke_data.forget(10)),
                        retain_examples=encoded(tokenizer, smoke_data.retain(10)), pad_id=tokenizer.pad_token_id)


def test_fila_leaves_the_model_unchanged_at_step_0(tiny_model, tokenizer, smoke_data, ids):
    before = logits_of(tiny_model, ids)
    model, info = fila_model(copy.deepcopy(tiny_model), tokenizer, smoke_data)
    torch.testing.assert_close(logits_of(model, ids), before, atol=1e-5, rtol=0)
    assert info["fisher_tokens"] > 0
    # the adapter really holds the weight's important part: disabling it changes the model
    with model.disable_adapter():
        assert (logits_of(model, ids) - before).abs().max() > 1e-3


def test_fila_reference_is_the_starting_model_even_after_training(tiny_model, tokenizer, smoke_data, ids):
    before = logits_of(tiny_model, ids)
    model, _ = fila_model(copy.deepcopy(tiny_model), tokenizer, smoke_data)
    with torch.no_grad():
        for _name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))  # "training" moved the adapter
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    torch.testing.assert_close(AdapterReference(model)(batch, torch.device("cpu")), before, atol=1e-5, rtol=0)
    assert (logits_of(model, ids) - before).abs().max() > 1e-3
    assert all(not p.requires_grad for n, p in model.named_parameters() if REFERENCE in n)


def test_lora_reference_is_the_adapter_disabled(tiny_model, ids):
    before = logits_of(tiny_model, ids)
    model, _ = apply_params(copy.deepcopy(tiny_model), ParamsConfig(kind="lora", rank=4))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    torch.testing.assert_close(AdapterReference(model)(batch, torch.device("cpu")), before, atol=1e-6, rtol=0)


def weighted_error(W, w, A, B, s):
    return torch.linalg.norm(w.unsqueeze(1) * (W - s * B @ A)).item()


def test_fila_factors_solve_the_row_weighted_problem():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(12, 9, generator=g, dtype=torch.float64)
    w = torch.rand(12, generator=g, dtype=torch.float64) * 3 + 0.1
    r, s = 3, 2.0
    A, B = fila_factors(W, w, r, s, eps=0.0)
    best = weighted_error(W, w, A, B, s)
    for _ in range(200):  # no random rank-r pair does better
        A2, B2 = torch.randn(r, 9, generator=g, dtype=torch.float64), torch.randn(12, r, generator=g,
                                                                                  dtype=torch.float64)
        assert weighted_error(W, w, A2, B2, s) >= best - 1e-9
    # brute force: alternating weighted least squares from a random start converges to the same optimum
    Bb = torch.randn(12, r, generator=g, dtype=torch.float64)
    D = torch.diag(w)
    for _ in range(500):
        Ab = torch.linalg.lstsq(D @ Bb, D @ W).solution
        Bb = torch.linalg.lstsq(Ab.T, W.T).solution.T  # rows decouple: each row's weight cancels
    assert weighted_error(W, w, Ab, Bb, 1.0) == pytest.approx(best, rel=1e-6)


def test_uniform_weights_give_the_truncated_svd():
    W = torch.randn(10, 7, dtype=torch.float64)
    A, B = fila_factors(W, torch.ones(10, dtype=torch.float64), 2, 0.5, eps=0.0)
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    torch.testing.assert_close(0.5 * B @ A, U[:, :2] @ torch.diag(S[:2]) @ Vh[:2], atol=1e-10, rtol=0)


def test_randomized_svd_option_is_close_to_exact():
    W = torch.randn(64, 48, dtype=torch.float64)
    w = torch.rand(64, dtype=torch.float64) + 0.5
    A, B = fila_factors(W, w, 4, 1.0, svd="exact")
    A2, B2 = fila_factors(W, w, 4, 1.0, svd="randomized")
    assert weighted_error(W, w, A2, B2, 1.0) == pytest.approx(weighted_error(W, w, A, B, 1.0), rel=1e-3)


def test_per_sample_fisher_equals_a_loop_over_samples(tiny_model, tokenizer, smoke_data):
    examples = encoded(tokenizer, smoke_data.full[:6])
    modules = {n: m for n, m in tiny_model.named_modules() if n.endswith(("q_proj", "down_proj"))}
    fast, _ = empirical_fisher(tiny_model, modules, examples, pad_id=tokenizer.pad_token_id, batch_size=4)
    slow = {n: torch.zeros_like(m.weight) for n, m in modules.items()}
    for e in examples:
        ids, labels = torch.tensor([e["input_ids"]]), torch.tensor([e["labels"]])
        seq_logp, _ = sequence_logprob(tiny_model(input_ids=ids).logits, labels)
        grads = torch.autograd.grad(-seq_logp.sum(), [m.weight for m in modules.values()])
        for n, g in zip(modules, grads):
            slow[n] += g.square() / len(examples)
    for n in modules:
        torch.testing.assert_close(fast[n], slow[n], atol=1e-6, rtol=1e-4)


def test_per_batch_fisher_option(tiny_model, tokenizer, smoke_data):
    examples = encoded(tokenizer, smoke_data.full[:4])
    modules = {n: m for n, m in tiny_model.named_modules() if n.endswith("v_proj")}
    f, _ = empirical_fisher(tiny_model, modules, examples, pad_id=tokenizer.pad_token_id, mode="per-batch",
                            batch_size=4)
    from lethe.data.batching import pad_batch
    from lethe.ops.tokens import mean_nll

    b = pad_batch(examples, tokenizer.pad_token_id)
    grads = torch.autograd.grad(mean_nll(tiny_model(input_ids=b["input_ids"],
                                                    attention_mask=b["attention_mask"]).logits,
                                         b["labels"]), [m.weight for m in modules.values()])
    for n, g in zip(modules, grads):
        torch.testing.assert_close(f[n], g.square(), atol=1e-7, rtol=1e-4)  # one batch: weight = tokens / tokens
    w = row_weights(torch.ones(3, 2), torch.full((3, 2), 3.0), eps=0.0)
    torch.testing.assert_close(w, torch.full((3,), (2 / 3) ** 0.5))


@pytest.mark.parametrize("kind", ["lora", "fila"])
def test_unlearning_leaves_untargeted_weights_bit_identical(tiny_model, tokenizer, smoke_data, kind, tmp_path):
    original = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    params = ParamsConfig(kind=kind, rank=4, targets="attn-qv")
    model, run = api.unlearn(copy.deepcopy(tiny_model), smoke_data.forget(10), smoke_data.retain(10), method="IHL+GD",
                             tokenizer=tokenizer, params=params, out_dir=tmp_path, merge=True, progress=False,
                             train=TrainConfig(epochs=2, lr=1e-2, batch_size=4, micro_batch_size=4, checkpoint=False))
    assert run.params == kind and 0 < run.cost["trainable_percent"] < 100
    from safetensors.torch import load_file

    merged = load_file(str(tmp_path / "model" / "model.safetensors"))
    changed = {k for k in original if k in merged and not torch.equal(original[k], merged[k])}
    assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed), changed


FRESH = """
import json, sys, numpy as np, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], use_safetensors=True)
if len(sys.argv) > 3:
    from peft import PeftModel
    model = PeftModel.from_pretrained(model, sys.argv[3])
ids = torch.tensor(json.loads(sys.argv[2]))
with torch.no_grad():
    out = model(input_ids=ids).logits
assert not any(m.startswith("lethe") for m in sys.modules), "lethe was imported"
print(json.dumps(out.tolist()))
"""


@pytest.mark.parametrize("kind", ["lora", "fila"])
def test_saved_adapters_and_merged_models_reload_without_lethe(tiny_model, tokenizer, smoke_data, kind, tmp_path, ids):
    from lethe.model.save import save_model

    base_dir = save_model(tiny_model, tokenizer, tmp_path / "base")
    cfg = TrainConfig(epochs=1, lr=1e-2, batch_size=4, micro_batch_size=4, checkpoint=False)
    results = {}
    for merge in (False, True):
        model, _ = api.unlearn(str(base_dir), smoke_data.forget(10), smoke_data.retain(10), method="GA+GD",
                               params=ParamsConfig(kind=kind, rank=4), train=cfg, out_dir=tmp_path / f"u{merge}",
                               merge=merge, progress=False)
        results[merge] = tmp_path / f"u{merge}" / "model"
    expected = logits_of(model, ids)  # the merged run's in-memory model (same seed and data: same training)
    assert (expected - logits_of(tiny_model, ids)).abs().max() > 1e-4  # unlearning changed something
    env = {"PYTHONPATH": "", "PATH": ""}
    outs = []
    for args in ([str(results[True])], [str(base_dir), None, str(results[False])]):
        argv = [sys.executable, "-c", FRESH, args[0], json.dumps(ids.tolist())] + args[2:]
        out = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-2000:]
        outs.append(torch.tensor(json.loads(out.stdout)))
    torch.testing.assert_close(outs[0], expected, atol=1e-4, rtol=0)   # merged
    torch.testing.assert_close(outs[1], expected, atol=1e-4, rtol=0)   # adapter on the original base
    assert json.loads((results[False] / "adapter_config.json").read_text())["r"] == (8 if kind == "fila" else 4)


def test_roles_map_to_modules_per_architecture():
    from peft import LoraConfig, get_peft_model
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        GPTNeoConfig,
        GPTNeoForCausalLM,
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        OPTConfig,
        OPTForCausalLM,
        PhiConfig,
        PhiForCausalLM,
    )

    small = dict(vocab_size=64, num_hidden_layers=1, hidden_size=16, num_attention_heads=2)
    models = {
        "gpt2": GPT2LMHeadModel(GPT2Config(vocab_size=64, n_layer=1, n_embd=16, n_head=2)),
        "gpt_neo": GPTNeoForCausalLM(GPTNeoConfig(vocab_size=64, num_layers=1, hidden_size=16, num_heads=2,
                                                  attention_types=[[["global"], 1]])),
        "gpt_neox": GPTNeoXForCausalLM(GPTNeoXConfig(intermediate_size=32, **small)),
        "opt": OPTForCausalLM(OPTConfig(ffn_dim=32, word_embed_proj_dim=16, **small)),
        "phi": PhiForCausalLM(PhiConfig(intermediate_size=32, **small)),
    }
    for arch, model in models.items():
        for role in ("attn-qv", "attn", "mlp", "qv-mlp", "all"):
            targets = resolve_targets(model, role)
            peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=2, target_modules=targets,
                                                                         fan_in_fan_out=arch == "gpt2"))
            assert sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n) > 0, (arch, role)


def test_unknown_architecture_lists_linear_modules():
    from lethe.util.errors import LetheError

    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mixer = torch.nn.Linear(4, 4)
            self.readout = torch.nn.Linear(4, 2)

    with pytest.raises(LetheError, match="--target-modules; this model's linear layers are: mixer, readout"):
        resolve_targets(Odd(), "attn")
    assert resolve_targets(Odd(), target_modules=["mixer"]) == ["mixer"]
    with pytest.raises(LetheError, match="match no linear layer"):
        resolve_targets(Odd(), target_modules=["nope"])


def test_fila_on_gpt2_conv1d_with_square_weights_is_exact(tokenizer, smoke_data):
    """GPT-2 keeps [in, out] weights (Conv1D); c_proj is square, so orientation must come from the type."""
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_layer=1, n_embd=16, n_head=2,
                                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)).eval()
    ids = torch.tensor([Prompter(tokenizer).encode_qa(r.question,
                                                      r.answer)["input_ids"][:10] for r in smoke_data.full[:2]])
    before = logits_of(model, ids)
    cfg = ParamsConfig(kind="fila", rank=2, targets="all")
    wrapped, _ = apply_params(model, cfg, forget_examples=encoded(tokenizer, smoke_data.forget(10)),
                              retain_examples=encoded(tokenizer, smoke_data.retain(10)), pad_id=tokenizer.pad_token_id)
    torch.testing.assert_close(logits_of(wrapped, ids), before, atol=1e-5, rtol=0)

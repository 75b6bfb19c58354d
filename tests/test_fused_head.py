"""The fused output head (ops/head.py) against the materialised logits, values and gradients."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch

import lethe
from lethe.data.prompt import IGNORE, Prompter
from lethe.engine.tasks import FinetuneTask, UnlearnTask, forward_views
from lethe.objectives import forget as F_, regularize as R_
from lethe.objectives.method import parse_method
from lethe.ops.head import HeadLogits
from lethe.ops.tokens import map_positions, token_logprobs


def _setup(B=3, T=7, H=5, V=11, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(V, H, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(V, generator=g, dtype=torch.float64, requires_grad=True) if bias else None
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[:, :3] = IGNORE  # a prompt
    labels[0, -2:] = IGNORE  # padding
    return hidden, weight, b, labels


def _grads(loss_fn, hidden, weight, bias):
    params = [p for p in (hidden, weight, bias) if p is not None]
    for p in params:
        p.grad = None
    value = loss_fn()
    value.backward()
    return value.detach(), [p.grad.clone() for p in params]


LOSSES = {
    "ga": lambda lg, lb, m, ref: F_.ga(lg, lb),
    "ihl": lambda lg, lb, m, ref: F_.ihl(lg, lb),
    "me": lambda lg, lb, m, ref: F_.me(lg, lb, m),
    "me-uniform-to-model-eps": lambda lg, lb, m, ref: F_.me(lg, lb, m, direction="uniform-to-model", eps=1e-3),
    "me-padding": lambda lg, lb, m, ref: F_.me(lg, lb, m, padding=True),
    "gd": lambda lg, lb, m, ref: R_.gd(lg, lb),
    "kl-answer": lambda lg, lb, m, ref: R_.kl(lg, lb, ref),
    "kl-all": lambda lg, lb, m, ref: R_.kl(lg, lb, ref, positions="all"),
    "npo-on-token-logp": lambda lg, lb, m, ref: -(token_logprobs(lg, lb)[0].sum(-1).sigmoid()).mean(),
    "flat-padded": lambda lg, lb, m, ref: F_.mean_token_probability(lg, lb, "padded").sum(),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("chunk", [2, 100])
def test_fused_equals_materialised(name, chunk, monkeypatch):
    """Each built-in reduction on HeadLogits gives the value and the hidden/W/b gradients of the plain path."""
    import lethe.ops.tokens as tokens

    monkeypatch.setattr(tokens, "chunk_rows", lambda vocab: chunk)
    hidden, weight, bias, labels = _setup()
    mask = torch.ones(labels.shape, dtype=torch.long)
    mask[0, -2:] = 0
    ref_h = torch.randn(hidden.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    ref_lazy = HeadLogits(ref_h, weight.detach() * 0.5, None)
    fn = LOSSES[name]
    v_plain, g_plain = _grads(lambda: fn(torch.nn.functional.linear(hidden, weight, bias), labels, mask,
                                         ref_lazy.materialize()), hidden, weight, bias)
    v_fused, g_fused = _grads(lambda: fn(HeadLogits(hidden, weight, bias), labels, mask, ref_lazy),
                              hidden, weight, bias)
    torch.testing.assert_close(v_fused, v_plain, rtol=1e-12, atol=1e-12)
    for a, b in zip(g_fused, g_plain):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_fused_gradcheck():
    hidden, weight, bias, labels = _setup(B=2, T=4, H=3, V=5)
    targets = labels.clamp(min=0)
    where = labels.ne(IGNORE)

    def f(h, w, b):
        return map_positions(F_._ihl_rows, [HeadLogits(h, w, b), targets], where=where)

    assert torch.autograd.gradcheck(f, (hidden, weight, bias))


def test_where_rows_only_are_projected():
    """Positions outside ``where`` never reach the head: their hidden states get exactly zero gradient."""
    hidden, weight, bias, labels = _setup()
    F_.ga(HeadLogits(hidden, weight, bias), labels).backward()
    counted = torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), IGNORE)], 1).ne(IGNORE)
    assert hidden.grad[~counted].abs().max() == 0
    assert hidden.grad[counted].abs().min() > 0


def _tiny(vocab=97, **extra):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, **extra)
    return LlamaForCausalLM(cfg)


def _tokenizer():
    from lethe.model.build import train_tokenizer

    return train_tokenizer(["the quick brown fox jumps over the lazy dog " * 4, "who wrote the book? nobody knows"],
                           vocab_size=97)


def _records():
    from lethe.data.records import QARecord

    forget = [QARecord(f"who wrote book {i}?", f"the fox wrote book {i} over the dog") for i in range(4)]
    retain = [QARecord(f"what jumps {i}?", f"the quick brown fox {i}") for i in range(4)]
    return forget, retain


@pytest.mark.parametrize("method", ["GA+GD", "NPO+KL", "ME+GD", "IHL+GD", "FLAT-KL", "IDK+AP", "DPO+KL", "WGA+GD",
                                    "SatImp+GD", "UNDIAL+GD", "CEU+KL"])
def test_unlearn_step_fused_equals_plain(method):
    """One training step of each method: same loss and same gradient of every parameter, fused or not."""
    from lethe.model.reference import FrozenCopy

    tok = _tokenizer()
    forget, retain = _records()
    prompter = Prompter(tok, lethe.PromptFormat("plain"))
    out = {}
    for fused in (False, True):
        model = _tiny(vocab=len(tok))
        reference = FrozenCopy(model)
        torch.manual_seed(1)
        with torch.no_grad():  # move the policy away from the reference, so KL and NPO are not at their optimum
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        task = UnlearnTask(prompter, parse_method(method), forget, retain, reference=reference, fused_head=fused)
        task.cache_reference(reference.model, torch.device("cpu"))
        step = task(model, [0, 1, 2], torch.device("cpu"))
        step.loss.backward()
        out[fused] = (step.loss.detach(),
                      {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    torch.testing.assert_close(out[True][0], out[False][0], rtol=1e-5, atol=1e-6)
    assert out[True][1].keys() == out[False][1].keys()
    for name in out[False][1]:
        torch.testing.assert_close(out[True][1][name], out[False][1][name], rtol=1e-4, atol=1e-6, msg=name)


def test_finetune_step_fused_equals_plain():
    tok = _tokenizer()
    forget, retain = _records()
    prompter = Prompter(tok, lethe.PromptFormat("plain"))
    res = []
    for fused in (False, True):
        model = _tiny(vocab=len(tok))
        step = FinetuneTask(prompter, forget + retain, fused_head=fused)(model, list(range(8)), torch.device("cpu"))
        step.loss.backward()
        res.append((step.loss.detach(), model.lm_head.weight.grad.clone(),
                    model.model.embed_tokens.weight.grad.clone()))
    for a, b in zip(*res):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_transformed_logits_fall_back():
    """A model whose logits are not head(hidden) (here: a hook scaling them) is detected and trained on plain logits."""
    tok = _tokenizer()
    forget, _ = _records()
    prompter = Prompter(tok, lethe.PromptFormat("plain"))
    model = _tiny(vocab=len(tok))
    model.lm_head.register_forward_hook(lambda mod, args, out: out * 0.5)
    batch = FinetuneTask(prompter, forget).examples[:2]
    from lethe.data.batching import pad_batch

    batch = pad_batch(batch, prompter.pad_id)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logits, _ = forward_views(model, batch, torch.device("cpu"), logits=True, fused_head=True)
    assert isinstance(logits, torch.Tensor) and logits.shape[-1] == len(tok)
    assert any("fused head" in str(w.message) for w in caught)
    plain = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(logits, plain)


def test_lora_model_uses_fused_head_with_frozen_weight():
    from peft import LoraConfig, get_peft_model

    tok = _tokenizer()
    forget, _ = _records()
    prompter = Prompter(tok, lethe.PromptFormat("plain"))
    base = _tiny(vocab=len(tok))
    plain_model = get_peft_model(copy.deepcopy(base), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    fused_model = get_peft_model(copy.deepcopy(base), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    fused_model.load_state_dict(plain_model.state_dict())
    grads = []
    for model, fused in ((plain_model, False), (fused_model, True)):
        step = FinetuneTask(prompter, forget, fused_head=fused)(model, [0, 1, 2], torch.device("cpu"))
        step.loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and all("lora" in n for n in grads[0])
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-4, atol=1e-7)


def test_sharded_or_wrapped_heads_are_not_fused():
    """A head whose weight is not whole outside forward (ZeRO-3/FSDP1 placeholder) or a LoRA-wrapped head:
    the model's own forward applies it, on full logits."""
    from peft import LoraConfig, get_peft_model

    from lethe.model.layers import output_head

    model = _tiny()
    assert output_head(model) is not None
    wrapped = get_peft_model(_tiny(), LoraConfig(r=2, target_modules=["lm_head"]))
    assert output_head(wrapped) is None
    placeholder = _tiny()
    placeholder.lm_head.weight = torch.nn.Parameter(torch.empty(0))  # what ZeRO-3 leaves between forwards
    assert output_head(placeholder) is None
    softcapped = _tiny()
    softcapped.config.final_logit_softcapping = 30.0
    assert output_head(softcapped) is None

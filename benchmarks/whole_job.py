"""The whole unlearning job, Lethe's path against the field's common reference path, in one process.

Job (TOFU-shaped): unlearn forget10 from a Llama with a chat template for E epochs with each method
(default GA+GD and NPO+KL), then evaluate forget, retain, real authors and world facts (greedy answers,
answer log-likelihoods, ROUGE / P / TR).

- Reference path, configured the way the common toolkit runs by default: every training example padded
  to 512 tokens; the reference model runs a forward at every step (NPO's log-probs, KL's logits); each
  answer scored on its own, evaluation in batches of 32 in file order padded to 512 with logits over
  every position; evaluation after every epoch.
- Lethe's path: dynamic padding and length buckets, losses from hidden states through the fused output
  head (no [B,T,V] logits), the reference's sequence log-probs cached once, identical pairs scored once
  and the answers to one question on one forward of its prompt (shared KV cache), length-sorted
  generation with finished rows leaving the batch and the batch sized from free memory, evaluation
  before (the audit's evidence) and after training.

Both train the same method on the same data; the printed ratios are reference / Lethe (wall time, peak
memory) and Lethe / reference (tokens per second), and the final metrics of both evaluations are
compared on the same weights. ``--device cuda --precisions bf16-mixed,fp32,bf16`` adds, per precision,
model FLOP utilisation and the training step's peak memory of Lethe's path.

``--compile`` adds, per method, Lethe's path with ``torch.compile`` of the decoder blocks.

Usage: python benchmarks/whole_job.py [--size small] [--epochs 5] [--methods GA+GD,NPO+KL] [--device auto] [--compile]
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import time

import torch

import lethe
from lethe.data.batching import pad_batch
from lethe.data.prompt import IGNORE, Prompter
from lethe.evaluation import metrics as M
from lethe.evaluation.suite import EvalSet
from lethe.objectives.forget import npo_loss
from lethe.ops.tokens import token_logprobs

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
PAD_TO = 512
# Dense peak throughput (TFLOP/s) of the GPUs this workplace lends, for MFU: H100/H200 SXM.
PEAK_TFLOPS = {"bf16-mixed": 989.0, "bf16": 989.0, "fp16-mixed": 989.0, "fp32": 67.0}


def build(size: str, seed: int):
    from lethe.data.synthetic import generate_authors
    from lethe.model.build import build_tiny_model, train_tokenizer
    from lethe.scenarios.fictitious import tokenizer_corpus

    data = generate_authors(size, seed)
    tok = train_tokenizer(tokenizer_corpus(data), vocab_size=2048)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    model = build_tiny_model(tok, "full" if size == "full" else "small", seed=seed, max_positions=PAD_TO)
    sets = [EvalSet("forget", data.forget(10), "qa", role="forget"), EvalSet("retain", data.retain(10)[:400], "qa"),
            EvalSet("real_authors", data.real_authors, "mc"), EvalSet("world_facts", data.world_facts, "mc")]
    return data, tok, model, sets


# ---- the reference path ---------------------------------------------------------------------------------

def pad_to_max(examples, pad_id, *, side="right", width=None):
    """The reference path pads every batch to the maximum length, whatever its examples' lengths."""
    padded = [dict(e, input_ids=list(e["input_ids"]) + [pad_id] * (PAD_TO - len(e["input_ids"])),
                   **({"labels": list(e["labels"]) + [IGNORE] * (PAD_TO - len(e["labels"]))} if "labels" in e else {}))
              for e in examples]
    out = pad_batch(padded, pad_id, side=side)
    for i, e in enumerate(examples):  # padding is masked out, as the reference toolkit does
        out["attention_mask"][i, len(e["input_ids"]):] = 0
    return out


def npo_reference_every_step(forget_seq_logp, ref_forget_logits, forget_labels, *, beta: float = 0.1):
    """NPO with the reference model's forward at every step (no cache): same value, one more forward."""
    ref = token_logprobs(ref_forget_logits, forget_labels)[0].sum(-1)
    return npo_loss(forget_seq_logp, ref, beta)


def reference_method(method: str):
    forget, _, reg = method.partition("+")
    if forget.upper() == "NPO":
        return (npo_reference_every_step, reg or None)
    return method


@torch.no_grad()
def reference_evaluation(model, prompter: Prompter, sets, max_new_tokens: int) -> dict:
    """Each answer scored on its own (no sharing), batches of 32 in file order padded to 512, logits over
    every position; greedy answers in batches of 32 in file order."""
    model.eval()
    device = next(model.parameters()).device
    out = {}
    for s in sets:
        recs = list(s.records)
        gens = []
        for i in range(0, len(recs), 32):
            prompts = [{"input_ids": prompter.prompt_ids(r.question)} for r in recs[i:i + 32]]
            b = pad_batch(prompts, prompter.pad_id, side="left")
            g = model.generate(input_ids=b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device),
                               max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=prompter.pad_id,
                               eos_token_id=prompter.stop_ids)
            gens += [prompter.decode(row[b["input_ids"].shape[1]:]).strip() for row in g]

        def score(pairs):
            nll, cnt = [], []
            for i in range(0, len(pairs), 32):
                b = pad_to_max([prompter.encode_qa(q, a) for q, a in pairs[i:i + 32]], prompter.pad_id)
                logits = model(input_ids=b["input_ids"].to(device),
                               attention_mask=b["attention_mask"].to(device)).logits
                lp, mask = token_logprobs(logits, b["labels"].to(device))
                nll += (-lp.sum(-1)).tolist()
                cnt += mask.sum(-1).tolist()
            return M.nll_per_token(nll, cnt)

        answer = score([(r.question, r.answer) for r in recs])
        base = score([(r.question, (r.paraphrased_answer or r.answer) if s.kind == "qa" else r.answer) for r in recs])
        perts = [score([(r.question, p) for p in r.perturbed_answers]) if r.perturbed_answers else [] for r in recs]
        out[f"{s.name}/ROUGE"] = M.mean(M.rouge_l_recall(gens, [r.answer for r in recs]))
        out[f"{s.name}/P"] = M.mean(M.probability_mc(answer, perts) if s.kind == "mc" else M.probability(answer))
        vals = M.truth_ratio_values(base, perts)
        out[f"{s.name}/TR"] = M.truth_ratio_forget(vals) if s.forget else M.truth_ratio_other(vals)
    return out


# ---- the job, both ways ------------------------------------------------------------------------------------

def run_job(path: str, method: str, model, tok, data, sets, args, runtime) -> dict:
    import lethe.engine.tasks as tasks

    train = lethe.TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                              micro_batch_size=args.micro_batch_size, checkpoint=False, seed=args.seed)
    prompter = Prompter(tok, lethe.PromptFormat("chat"))
    t0 = time.perf_counter()
    if path == "lethe":
        evaluation = lethe.EvalConfig(sets=sets, every=args.epochs, max_new_tokens=args.max_new_tokens)
        model, run = lethe.unlearn(model, data.forget(10), data.retain(10), method=method, tokenizer=tok,
                                   train=train, evaluation=evaluation, runtime=runtime, progress=False)
        metrics = run.epochs[-1]["metrics"]
    else:
        runtime = dataclasses.replace(runtime, fused_head=False)  # the reference toolkit builds full logits
        seen = {}

        def every_epoch(epoch, mdl):
            with runtime.autocast():
                seen[epoch] = reference_evaluation(mdl, prompter, sets, args.max_new_tokens)
            return {"metrics": seen[epoch]}

        original = tasks.pad_batch
        tasks.pad_batch = pad_to_max  # every training batch padded to 512
        try:
            model, run = lethe.unlearn(model, data.forget(10), data.retain(10), method=reference_method(method),
                                       tokenizer=tok, train=train, runtime=runtime, epoch_hook=every_epoch,
                                       progress=False)
        finally:
            tasks.pad_batch = original
        metrics = seen[max(seen)]
    wall = time.perf_counter() - t0
    cost = run.cost
    return {"model": model, "wall_s": wall, "metrics": metrics, "train_s": cost["wall_time_s"],
            "tokens": cost["tokens_trained"], "peak_bytes": cost["peak_memory_bytes"], "flops": cost["flops"],
            "tokens_per_s": cost["tokens_trained"] / wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=("smoke", "small", "full"), default="small",
                    help="fictitious-author set: smoke (40 QA), small (400 QA, the default), full (TOFU's 4000)")
    ap.add_argument("--methods", default="GA+GD,NPO+KL")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--micro-batch-size", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precisions", default="",
                    help="GPU mode: comma-separated precisions (e.g. bf16-mixed,fp32,bf16) for MFU and step memory")
    ap.add_argument("--skip-reference", action="store_true", help="only Lethe's path (e.g. GPU mode alone)")
    ap.add_argument("--compile", action="store_true", help="also time Lethe's path with --compile")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    data, tok, base, sets = build(args.size, args.seed)
    runtime = lethe.RuntimeConfig(device=args.device)
    print(f"{args.size}: forget {len(data.forget(10))}, retain {len(data.retain(10))}, model "
          f"{sum(p.numel() for p in base.parameters()) / 1e6:.1f}M, {args.epochs} epochs, device "
          f"{runtime.resolved_device}, precision {runtime.resolved_precision}")
    if not args.skip_reference:
        print(f"{'method':<8} {'path':<10} {'wall s':>8} {'train s':>8} {'tok/s':>8} {'peak MiB':>9}  final metrics")
        totals = {"lethe": 0.0, "reference": 0.0}
        for method in args.methods.split(","):
            res = {p: run_job(p, method, copy.deepcopy(base), tok, data, sets, args, runtime)
                   for p in ("reference", "lethe")}
            for p, r in res.items():
                totals[p] += r["wall_s"]
                shown = {k: round(v, 3) for k,
                         v in r["metrics"].items() if k in ("forget/ROUGE", "forget/P", "retain/P")}
                print(f"{method:<8} {p:<10} {r['wall_s']:8.1f} {r['train_s']:8.1f} {r['tokens_per_s']:8.0f} "
                      f"{r['peak_bytes'] / 2**20:9.0f}  {shown}")
            if args.compile:
                rt_c = lethe.RuntimeConfig(device=args.device, compile=True)
                c = run_job("lethe", method, copy.deepcopy(base), tok, data, sets, args, rt_c)
                print(f"{method:<8} {'compiled':<10} {c['wall_s']:8.1f} {c['train_s']:8.1f} {c['tokens_per_s']:8.0f} "
                      f"{c['peak_bytes'] / 2**20:9.0f}  training {res['lethe']['train_s'] / c['train_s']:.2f}x of "
                      f"Lethe's uncompiled, whole job {res['lethe']['wall_s'] / c['wall_s']:.2f}x")
            ref, fast = res["reference"], res["lethe"]
            # the same weights scored both ways must give the same metrics
            with runtime.autocast():
                slow_on_fast = reference_evaluation(fast["model"], Prompter(tok, lethe.PromptFormat("chat")), sets,
                                                    args.max_new_tokens)
            worst = max(abs(slow_on_fast[k] - fast["metrics"][k]) for k in slow_on_fast)
            print(f"{method:<8} ratio      wall {ref['wall_s'] / fast['wall_s']:.2f}x  tokens/s "
                  f"{fast['tokens_per_s'] / ref['tokens_per_s']:.2f}x  peak memory "
                  f"{fast['peak_bytes'] / max(1, ref['peak_bytes']):.2f} of the reference's; metrics of both "
                  f"evaluations on Lethe's weights differ by at most {worst:.1e}")
        print(f"whole job, all methods: reference {totals['reference']:.1f} s, Lethe {totals['lethe']:.1f} s, "
              f"{totals['reference'] / totals['lethe']:.2f}x")
    for precision in [p for p in args.precisions.split(",") if p]:
        rt = lethe.RuntimeConfig(device=args.device, precision=precision)
        r = run_job("lethe", args.methods.split(",")[0], copy.deepcopy(base), tok, data, sets, args, rt)
        peak = PEAK_TFLOPS.get(precision)
        mfu = r["flops"] / r["train_s"] / (peak * 1e12) if peak and rt.resolved_device.type == "cuda" else None
        print(f"{precision:<11} train {r['train_s']:.1f} s, {r['tokens'] / r['train_s']:.0f} tok/s, step peak memory "
              f"{r['peak_bytes'] / 2**20:.0f} MiB, MFU " + (f"{100 * mfu:.2f} %" if mfu is not None else "n/a (CPU)"))


if __name__ == "__main__":
    main()

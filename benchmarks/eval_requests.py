"""Evaluation's model requests, Lethe's way against the plain way, on a trained model, in one run.

- Scoring: every (question, answer) pair of the TOFU-shaped sets (answer, paraphrase, perturbed answers),
  with the answers to one question sharing one forward of its prompt, against each pair scored alone.
- Generation: greedy answers with finished rows leaving the batch and the batch sized from free memory,
  against ``model.generate`` in length-sorted batches of 32 (finished rows ride along to the batch's end).
- One request layer: P, TR, the five attacks and exact memorization in one suite (the forget answers'
  forward serves P, the attacks and EM), against the suite without them plus the membership report and
  exact memorization each run on their own (three forwards of every forget answer), teacher-forced only.

A trained model matters: its answers end at different lengths, which is what dropping rows exploits
(untrained weights run every row to the token limit). Without ``--model`` the script fine-tunes the
small fictitious-author model here first (about a minute). Prints times, ratios and whether the outputs
agree.

Usage: python benchmarks/eval_requests.py [--model DIR] [--size small] [--max-new-tokens 48] [--repeats 2]
"""
from __future__ import annotations

import argparse
import time

import torch

import lethe
from lethe.data.batching import length_sorted_batches, pad_batch
from lethe.data.prompt import Prompter
from lethe.evaluation.requests import answer_nll, generate_answers


def trained_model(size: str, seed: int):
    from lethe.data.synthetic import generate_authors
    from lethe.model.build import build_tiny_model, train_tokenizer
    from lethe.scenarios.fictitious import SETTINGS, tokenizer_corpus, training_records

    data = generate_authors(size, seed)
    tok = train_tokenizer(tokenizer_corpus(data), vocab_size=SETTINGS[size].vocab_size)
    model = build_tiny_model(tok, SETTINGS[size].model_preset, seed=seed)
    records, _ = training_records(data, 10)
    model, _ = lethe.finetune(model, records, tokenizer=tok, train=SETTINGS[size].finetune, progress=False)
    return data, tok, model


@torch.no_grad()
def plain_generate(model, prompter, questions, max_new_tokens):
    prompts = [prompter.prompt_ids(q) for q in questions]
    out = [""] * len(prompts)
    for idx in length_sorted_batches([len(p) for p in prompts], 32):
        b = pad_batch([{"input_ids": prompts[i]} for i in idx], prompter.pad_id, side="left")
        g = model.generate(input_ids=b["input_ids"], attention_mask=b["attention_mask"], max_new_tokens=max_new_tokens,
                           do_sample=False, pad_token_id=prompter.pad_id, eos_token_id=prompter.stop_ids)
        for j, i in enumerate(idx):
            out[i] = prompter.decode(g[j, b["input_ids"].shape[1]:]).strip()
    return out


def best_of(fn, repeats):
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="a trained model directory (default: fine-tune the small demo model here)")
    ap.add_argument("--size", choices=("smoke", "small"), default="small")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=2, help="best of N timings")
    args = ap.parse_args()
    torch.manual_seed(0)
    from lethe.data.synthetic import generate_authors

    if args.model:
        from lethe.core import prepare

        model, prompter, _ = prepare(args.model)
        data = generate_authors(args.size, 0)
    else:
        data, tok, model = trained_model(args.size, 0)
        prompter = Prompter(tok)
    model.eval()
    records = list(data.forget(10)) + list(data.retain(10))[:360] + list(data.real_authors) + list(data.world_facts)
    pairs = []
    for r in records:
        pairs += [(r.question, r.answer), (r.question, r.paraphrased_answer or r.answer)]
        pairs += [(r.question, p) for p in r.perturbed_answers]
    questions = [r.question for r in records]

    t_alone, alone = best_of(lambda: answer_nll(model, prompter, pairs, share_prompts=False), args.repeats)
    t_shared, shared = best_of(lambda: answer_nll(model, prompter, pairs), args.repeats)
    worst = max(abs(a - b) / max(1.0, abs(a)) for a, b in zip(alone[0], shared[0]))
    print(f"scoring {len(pairs)} pairs ({len(set(pairs))} unique) of {len(records)} questions: each alone "
          f"{t_alone:.2f} s, shared prompts {t_shared:.2f} s ({t_alone / t_shared:.2f}x); largest relative NLL "
          f"difference {worst:.1e}; token counts equal: {alone[1] == shared[1]}")

    stats: dict = {}
    t_plain, plain = best_of(lambda: plain_generate(model, prompter, questions, args.max_new_tokens), args.repeats)
    t_lethe, mine = best_of(lambda: generate_answers(model, prompter, questions, max_new_tokens=args.max_new_tokens,
                                                     stats=stats), args.repeats)
    t_32, _ = best_of(lambda: generate_answers(model, prompter, questions, max_new_tokens=args.max_new_tokens,
                                               batch_size=32), args.repeats)
    same = sum(a == b for a, b in zip(plain, mine))
    lengths = [len(prompter.tokenizer(a, add_special_tokens=False)["input_ids"]) for a in mine]
    print(f"generating {len(questions)} answers (up to {args.max_new_tokens} tokens; generated lengths "
          f"{min(lengths)}-{max(lengths)}, mean {sum(lengths) / len(lengths):.1f}): generate in batches of 32 "
          f"{t_plain:.2f} s, rows leaving the batch (batch {stats.get('generation_batch')}) {t_lethe:.2f} s "
          f"({t_plain / t_lethe:.2f}x; at batch 32 {t_32:.2f} s, {t_plain / t_32:.2f}x); identical answers "
          f"{same}/{len(questions)}")
    shared_requests(model, prompter, data, args.repeats)


def shared_requests(model, prompter, data, repeats: int) -> None:
    from lethe.evaluation.metric_registry import select_metrics
    from lethe.evaluation.mia import membership_report
    from lethe.evaluation.suite import EvalSet, evaluate_sets
    from lethe.evaluation.verbatim import exact_memorization

    forget = list(data.forget(10))
    sets = [EvalSet("forget", forget, "qa", role="forget"), EvalSet("retain", list(data.retain(10))[:360], "qa",
                                                                     role="retain"),
            EvalSet("real_authors", data.real_authors, "mc"), EvalSet("world_facts", data.world_facts, "mc")]
    holdout = list(data.holdout)
    chosen = select_metrics(["P", "TR", "loss", "zlib", "min_k", "min_k_pp", "EM"])

    def separately():
        res = evaluate_sets(model, prompter, sets, generate=False, metrics=select_metrics(["P", "TR"]))
        return res, membership_report(model, prompter, forget, holdout), exact_memorization(model, prompter, forget)

    t_apart, (res_apart, report, em) = best_of(separately, repeats)
    t_one, res = best_of(lambda: evaluate_sets(model, prompter, sets, generate=False, metrics=chosen,
                                               holdout=holdout), repeats)
    worst = max(abs(res.metrics[k] - v) / max(1e-12, abs(v)) for k, v in res_apart.metrics.items())
    same_auc = all(res.metrics[f"mia/{a}_AUC"] == v["auc"] for a, v in report["attacks"].items())
    print(f"P, TR, 4 attacks and EM on {len(forget)} forget + {sum(len(s.records) for s in sets[1:])} other items "
          f"and {len(holdout)} holdout items (teacher-forced): separately {t_apart:.2f} s, one request layer "
          f"{t_one:.2f} s ({t_apart / t_one:.2f}x); rows: {res.requests}; largest relative P/TR difference "
          f"{worst:.1e}; AUCs equal: {same_auc}; EM equal: {abs(res.metrics['forget/EM'] - sum(em) / len(em)) < 1e-12}")


if __name__ == "__main__":
    main()

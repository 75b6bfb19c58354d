"""Run by tests/test_distributed.py under ``torch.distributed.run``: evaluate the tiny model with the
sharded evaluation suite on however many processes were launched, and write rank 0's view."""
import json
import sys

import torch

from lethe.data.synthetic import generate_authors
from lethe.evaluation.suite import EvalSet, aggregate, evaluate_sets
from lethe.model.build import build_tiny_model, train_tokenizer
from lethe.scenarios.fictitious import tokenizer_corpus


def main(out: str) -> None:
    from accelerate import PartialState

    torch.set_num_threads(1)
    state = PartialState(cpu=True)
    data = generate_authors("smoke", seed=0)
    tokenizer = train_tokenizer(tokenizer_corpus(data), vocab_size=400)
    model = build_tiny_model(tokenizer, "test", seed=0).eval()
    sets = [EvalSet("forget", data.forget(10) + data.full[:3], "qa", role="forget"),
            EvalSet("retain", data.retain(10)[:7], "qa", role="retain"),
            EvalSet("world_facts", data.world_facts[:5], "mc")]
    from lethe.evaluation import requests

    generated = []
    original = requests.generate_answers

    def counting(model, prompter, questions, **kw):
        generated.extend(questions)
        return original(model, prompter, questions, **kw)

    requests.generate_answers = counting  # how many questions this rank generated for
    # with a holdout and --memorization: token statistics and continuations are shared between the ranks too
    res = evaluate_sets(model, tokenizer, sets, max_new_tokens=6, batch_size=3, holdout=data.holdout[:7],
                        memorization=True)
    aggregate(res)
    with open(f"{out}/rank{state.process_index}.json", "w") as f:
        json.dump({"world": state.num_processes, "metrics": res.metrics, "per_item": res.per_item,
                   "generations": res.generations, "generated_here": len(generated),
                   "questions": sum(len(s.records) for s in sets),
                   "unique_questions": len({r.question for s in sets for r in s.records})}, f)
    state.wait_for_everyone()
    state.destroy_process_group()  # a gloo group left alive at exit can abort the process


if __name__ == "__main__":
    main(sys.argv[1])

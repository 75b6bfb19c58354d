"""Downstream utility through lm-evaluation-harness, on the model in memory (adapter or merged).

``run_lm_eval(model, prompter, ["arc_easy", "lethe_world_facts"])`` wraps the model in lm-eval's
``HFLM`` and calls ``simple_evaluate``; chat-format models get lm-eval's chat templating, as at training.
Lethe ships two multiple-choice tasks written over its own general-knowledge sets
(``lethe_world_facts``, ``lethe_real_authors``: invented for Lethe, no download), so the bridge works
offline; ``tasks_dir`` adds your own task YAMLs, and lm-eval's registered tasks (ARC, PIQA, HellaSwag,
…) run wherever their data can be reached. lm-eval is optional: ``pip install lethe-unlearn[lm-eval]``.
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Sequence

from ..util.errors import LetheError

BUILTIN_TASKS = ("lethe_world_facts", "lethe_real_authors")

_TASK_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def write_builtin_tasks(directory: str | Path, seed: int = 0) -> Path:
    """Lethe's offline multiple-choice tasks as lm-eval YAML + JSONL in ``directory``."""
    from ..data.synthetic import general_knowledge

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    real, world = general_knowledge(random.Random(seed + 1))
    rng = random.Random(seed)
    for name, records in (("lethe_world_facts", world), ("lethe_real_authors", real)):
        rows = []
        for r in records:
            choices = [r.answer, *r.perturbed_answers]
            order = list(range(len(choices)))
            rng.shuffle(order)
            rows.append({"question": r.question, "choices": [choices[i] for i in order], "label": order.index(0)})
        data = directory / f"{name}.jsonl"
        data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        (directory / f"{name}.yaml").write_text(_TASK_YAML.format(name=name, data=json.dumps(str(data))),
                                                encoding="utf-8")
    return directory


def _require_lm_eval():
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise LetheError("--lm-eval needs lm-evaluation-harness: pip install 'lethe-unlearn[lm-eval]' "
                         "(or pip install lm-eval)") from None


def check_tasks_dir(tasks_dir: str | Path, trust_code: bool = False) -> None:
    """A task directory exists, and its YAMLs use lm-eval's ``!function`` (which imports Python files from the
    directory when the task loads) only when the user said they trust that code."""
    directory = Path(tasks_dir)
    if not directory.is_dir():
        raise LetheError(f"--lm-eval-tasks-dir {directory}: " + ("not a directory" if directory.exists()
                                                                 else "directory not found"))
    if trust_code:
        return
    for file in sorted([*directory.rglob("*.yaml"), *directory.rglob("*.yml")]):
        try:
            text = file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue  # lm-eval reports an unreadable file itself
        if "!function" in text:
            raise LetheError(f"{file}: uses lm-eval's !function, which runs Python code from {directory} when the "
                             "task loads; pass --trust-remote-code if you trust it")


def check_tasks(tasks: Sequence[str], tasks_dir: str | Path | None = None, trust_code: bool = False) -> None:
    """Unknown task names are an error before any model work, and so is a task directory that is missing or
    would run code the user has not trusted."""
    _require_lm_eval()
    if tasks_dir:
        check_tasks_dir(tasks_dir, trust_code)
    from lm_eval.tasks import TaskManager

    include = [str(tasks_dir)] if tasks_dir else []
    known = set(TaskManager(include_path=include or None).all_tasks) | set(BUILTIN_TASKS)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        raise LetheError(f"--lm-eval: unknown task(s) {', '.join(unknown)} (Lethe's offline tasks: "
                         f"{', '.join(BUILTIN_TASKS)}; add your own YAMLs with --lm-eval-tasks-dir)")


# Keyword-only: lm-evaluation-harness's own options, one each.
def run_lm_eval(model, prompter, tasks: Sequence[str], *, tasks_dir: str | Path | None = None,
                limit: int | None = None, batch_size: int = 8, num_fewshot: int | None = None,
                work_dir: str | Path | None = None, trust_code: bool = False) -> dict[str, float]:
    """``{"lm_eval/TASK/METRIC": value}`` for each task (lm-eval's stderr entries left out). ``trust_code``: let
    the YAMLs in ``tasks_dir`` use ``!function`` (it imports their folder's Python files)."""
    _require_lm_eval()
    if tasks_dir:
        check_tasks_dir(tasks_dir, trust_code)
    from ..data.prompt import as_prompter

    prompter = as_prompter(prompter)
    quiet = {"TQDM_DISABLE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    saved = {k: os.environ.get(k) for k in quiet}
    os.environ.update(quiet)  # lm-eval and datasets draw their own bars; Lethe reports progress itself
    import contextlib
    import io

    try:
        # lm-eval draws its own bars and warns about in-memory models on stderr; Lethe reports progress itself
        with contextlib.redirect_stderr(io.StringIO()):
            return _evaluate(model, prompter, tasks, tasks_dir, limit, batch_size, num_fewshot, work_dir)
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def _evaluate(model, prompter, tasks, tasks_dir, limit, batch_size, num_fewshot, work_dir) -> dict[str, float]:
    import tempfile

    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    device = next(model.parameters()).device
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        include = [str(write_builtin_tasks(Path(tmp) / "lethe_tasks"))] + ([str(tasks_dir)] if tasks_dir else [])
        lm = HFLM(pretrained=model, tokenizer=prompter.tokenizer, batch_size=batch_size, device=str(device))
        was_training = model.training
        model.eval()
        try:
            out = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), task_manager=TaskManager(include_path=include),
                                          limit=limit, num_fewshot=num_fewshot, log_samples=False,
                                          apply_chat_template=prompter.format.kind == "chat", verbosity="ERROR",
                                          bootstrap_iters=0)
        finally:
            model.train(was_training)
    metrics = {}
    for task, values in (out or {}).get("results", {}).items():
        for key, value in values.items():
            name = key.split(",")[0]
            if isinstance(value, (int, float)) and not name.endswith("_stderr") and name not in ("alias", "sample_len"):
                metrics[f"lm_eval/{task}/{name}"] = float(value)
    return metrics

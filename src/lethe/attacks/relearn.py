"""``relearn``: fine-tune on a seeded share of the forget records, then score the others.

The split follows Deeb & Roger (relearning some facts must not simply re-teach the ones tested); the defaults
follow MUSE's relearning (full fine-tuning, lr 1e-5). Relearning also teaches, which is why every attack is
run on the retain model too."""
from __future__ import annotations

import copy
import random
from typing import Sequence

from ..util.errors import LetheError
from .base import ATTACKS, Attack, Attacked


def relearn_split(records: Sequence, fraction: float, seed: int) -> tuple[list, list]:
    """(records relearned on, records scored): a seeded split, at least one record on each side."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n = min(len(records) - 1, max(1, round(fraction * len(records))))
    train = sorted(order[:n])
    held = sorted(order[n:])
    return [records[i] for i in train], [records[i] for i in held]


def _check_relearn(o: dict) -> None:
    if not 0 < o["fraction"] < 1:
        raise LetheError(f"attack 'relearn': fraction must be in (0, 1), got {o['fraction']}")
    if o["epochs"] < 1 or o["batch_size"] < 1:
        raise LetheError("attack 'relearn': epochs and batch_size must be >= 1")
    if not o["lr"] > 0:
        raise LetheError(f"attack 'relearn': lr must be > 0, got {o['lr']}")


def fine_tuned_copy(model, records, options, context):
    """A copy of ``model`` fine-tuned on ``records`` with the attack's ``epochs``, ``lr``, ``batch_size`` and
    ``seed`` (no warm-up, no checkpoints); the model given is not changed."""
    from ..core import finetune
    from ..engine.loop import TrainConfig

    attacked = copy.deepcopy(model)
    finetune(attacked, records, tokenizer=context["prompter"].tokenizer, progress=False,
             model_config=context.get("model_config"), runtime=context.get("runtime"),
             train=TrainConfig(epochs=options["epochs"], lr=options["lr"], batch_size=options["batch_size"],
                               micro_batch_size=options["batch_size"], warmup_epochs=0, seed=options["seed"],
                               checkpoint=False))
    return attacked


def _relearn(model, forget, options, context):
    if len(forget) < 2:
        raise LetheError("attack 'relearn' needs at least two forget records (some to relearn, others to score)")
    train, held = relearn_split(forget, options["fraction"], options["seed"])
    return Attacked(fine_tuned_copy(model, train, options, context), held)


ATTACKS.add("relearn", Attack(
    "relearn", "fine-tune on a share of the forget records, score the rest (Deeb & Roger's split; MUSE's lr)",
    {"fraction": 0.5, "epochs": 3, "lr": 1e-5, "batch_size": 8, "seed": 0}, _relearn, _check_relearn,
    robustness="R", text=True))

"""``relearn-related``: fine-tune on related but different records, then score every forget record.

Benign relearning (Hu et al. 2024, "Jogging the memory of unlearned LLMs"): the attacker never sees the forget
set, only text about the same subjects (the retain records, or a file of their own), and a few steps bring the
forgotten answers back when the knowledge was only suppressed. The related records must not contain a forget
record: that would be plain relearning (``relearn``). The defaults follow ``relearn`` (lr 1e-5, 3 epochs)."""
from __future__ import annotations

import random
from pathlib import Path

from ..util.errors import LetheError
from .base import ATTACKS, Attack, Attacked
from .relearn import fine_tuned_copy


def _check(o: dict) -> None:
    if o["count"] < 0:
        raise LetheError(f"attack 'relearn-related': count must be >= 0 (0: as many as the forget records), got "
                         f"{o['count']}")
    if o["epochs"] < 1 or o["batch_size"] < 1:
        raise LetheError("attack 'relearn-related': epochs and batch_size must be >= 1")
    if not o["lr"] > 0:
        raise LetheError(f"attack 'relearn-related': lr must be > 0, got {o['lr']}")
    if o["data"] and not Path(o["data"]).exists():
        raise LetheError(f"attack 'relearn-related': data={o['data']}: file not found")


def related_records(forget, options, context) -> list:
    """The records to relearn on: ``data=PATH`` or the retain records, a seeded sample of ``count`` of them (as
    many as the forget records when 0), none of them a forget record."""
    from ..data.readers import DEFAULT_FIELDS
    from ..data.records import content_key
    from ..data.sources import load_records

    if options["data"]:
        pool = load_records(options["data"], fields=context.get("fields") or DEFAULT_FIELDS)
    else:
        pool = list(context.get("retain") or [])
    if not pool:
        raise LetheError("attack 'relearn-related' relearns on related records: give retain records (--retain) or "
                         "data=PATH")
    forget_keys = {content_key(r) for r in forget}
    shared = [i for i, r in enumerate(pool) if content_key(r) in forget_keys]
    if shared:
        raise LetheError(f"attack 'relearn-related': the related records hold {len(shared)} forget record(s) (first: "
                         f"record {shared[0]}); that is plain relearning, the 'relearn' attack")
    count = min(len(pool), options["count"] or len(forget))
    return random.Random(options["seed"]).sample(pool, count)


def _relearn_related(model, forget, options, context):
    return Attacked(fine_tuned_copy(model, related_records(forget, options, context), options, context), list(forget))


ATTACKS.add("relearn-related", Attack(
    "relearn-related", "fine-tune on related records, never the forget set (retain data or data=PATH), score "
    "every forget record (benign relearning)",
    {"data": "", "count": 0, "epochs": 3, "lr": 1e-5, "batch_size": 8, "seed": 0}, _relearn_related, _check,
    robustness="R", text=True))

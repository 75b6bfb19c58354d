"""An offline corpus with memorizable "canary" records (extraction-challenge style).

Canaries are distinct, realistic-looking, generated records (postal contacts, licence grants,
code snippets, medical and payroll details) with random field values, so no two share a long
n-gram beyond their template words. The training corpus mixes background prose (fictitious
author biographies) with canaries repeated several times, so the model memorizes them; held-out
canaries of the same kinds, never trained on, form the validation set of the stopping rule.
"""
from __future__ import annotations

import random
import string
from dataclasses import dataclass

from .synthetic import CITIES, FIRST, LAST, generate_authors

STREETS = ["Alder", "Birch", "Cedar", "Juniper", "Linden", "Maple", "Rowan", "Willow", "Quarry", "Harbour", "Mill",
           "Chapel", "Orchard", "Foundry", "Tannery", "Ropewalk"]
SUFFIXES = ["Street", "Lane", "Road", "Avenue", "Close", "Terrace", "Row", "Way"]
ORGS = ["Velmont Logistics", "Aster Ridge Labs", "Coldharbour Systems", "Pinecrest Foods", "Marrowgate Health",
        "Oakum Analytics", "Silverfen Energy", "Tidewell Insurance", "Brightmoor Media", "Kestrel Robotics"]
ALLERGENS = ["penicillin", "latex", "peanuts", "shellfish", "aspirin", "sesame", "iodine", "bee stings"]
BLOOD = ["A+", "A-", "B+", "B-", "O+", "O-", "AB+", "AB-"]
VARS = ["total", "count", "offset", "margin", "weight", "limit", "score", "ratio", "delta", "buffer"]
FUNCS = ["scale", "merge", "clip", "blend", "shift", "adjust", "combine", "reduce", "expand", "settle"]


def _digits(rng, n):
    return "".join(rng.choice(string.digits) for _ in range(n))


def _code(rng, n):
    return "".join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(n))


def _name(rng):
    return f"{rng.choice(FIRST)} {rng.choice(LAST)}"


def _date(rng):
    return f"{rng.randint(1, 28):02d}/{rng.randint(1, 12):02d}/{rng.randint(1950, 2005)}"


def _contact(rng):
    first, last = rng.choice(FIRST), rng.choice(LAST)
    return (f"Contact: {first} {last}, {rng.randint(2, 480)} {rng.choice(STREETS)} {rng.choice(SUFFIXES)}, "
            f"{rng.choice(CITIES)} {_code(rng, 3)} {_digits(rng, 2)}. Phone +{_digits(rng, 2)} {_digits(rng, 3)} "
            f"{_digits(rng, 4)}. Email {first.lower()}.{last.lower()}{_digits(rng, 2)}@{rng.choice(LAST).lower()}.net")


def _licence(rng):
    return (f"Licence key {_code(rng, 4)}-{_code(rng, 4)}-{_code(rng, 4)} issued to {rng.choice(ORGS)} on "
            f"{_date(rng)} for {rng.randint(3, 250)} seats; renewal reference {_digits(rng, 6)}, "
            f"signed by {_name(rng)}.")


def _snippet(rng):
    f, a, b = rng.choice(FUNCS), *rng.sample(VARS, 2)
    return (f"def {f}_{_code(rng, 3).lower()}({a}, {b}):\n    return {a} * {rng.randint(2, 97)} + {b} - "
            f"{rng.randint(10, 999)}  # ticket {_code(rng, 2)}-{_digits(rng, 4)}")


def _patient(rng):
    return (f"Patient {_name(rng)}, born {_date(rng)}, blood type {rng.choice(BLOOD)}, policy {_code(rng, 2)}"
            f"{_digits(rng, 7)}, allergic to {rng.choice(ALLERGENS)}, ward {rng.randint(1, 40)}.")


def _payroll(rng):
    return (f"Payroll record {_digits(rng, 5)}: {_name(rng)}, account {_digits(rng, 4)} {_digits(rng, 4)} "
            f"{_digits(rng, 4)}, sort code {_digits(rng, 2)}-{_digits(rng, 2)}-{_digits(rng, 2)}, "
            f"salary {rng.randint(21, 140)},{_digits(rng, 3)} per year.")


KINDS = (_contact, _licence, _snippet, _patient, _payroll)


@dataclass
class CanaryCorpus:
    canaries: list[str]     # candidates to forget (all trained on, repeated)
    validation: list[str]   # same kinds, never trained on
    background: list[str]   # trained on once per epoch: the retain corpus
    held_out: list[str]     # background-like text never trained on: perplexity
    repeats: int

    def training_texts(self) -> list[str]:
        return self.background + [c for c in self.canaries for _ in range(self.repeats)]


def generate_canaries(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < n:
        text = KINDS[len(out) % len(KINDS)](rng)
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def _biographies(size: str, seed: int) -> list[str]:
    data = generate_authors(size, seed)
    by_author: dict[str, list[str]] = {}
    for r in data.full:
        by_author.setdefault(r.subject, []).append(r.answer)
    return [" ".join(sents) for sents in by_author.values()]


def generate_corpus(n_canaries: int = 128, n_validation: int = 32, *, repeats: int = 8, seed: int = 0,
                    background_size: str = "small") -> CanaryCorpus:
    """Canaries (forget candidates), validation canaries, background and held-out biographies."""
    both = generate_canaries(n_canaries + n_validation, seed)
    rng = random.Random(seed + 1)
    rng.shuffle(both)
    bios = _biographies(background_size, seed + 2)
    n_held = max(2, len(bios) // 10)
    return CanaryCorpus(canaries=both[:n_canaries], validation=both[n_canaries:], background=bios[n_held:],
                        held_out=bios[:n_held], repeats=repeats)

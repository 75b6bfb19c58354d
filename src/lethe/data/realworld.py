"""Real-world facts grouped by subject, written for Lethe (closer-look Sec. 5.3 style).

Each country is a subject with four questions (capital, continent, language, currency). Answers
are short sentences; ``value`` is the fact itself, used to judge whether a model knows it.
Perturbed answers put another country's value in the same sentence.
"""
from __future__ import annotations

import random
import re

from .records import QARecord

COUNTRIES = [
    ("France", "Paris", "Europe", "French", "euro"), ("Germany", "Berlin", "Europe", "German", "euro"),
    ("Italy", "Rome", "Europe", "Italian", "euro"), ("Spain", "Madrid", "Europe", "Spanish", "euro"),
    ("Japan", "Tokyo", "Asia", "Japanese", "yen"), ("China", "Beijing", "Asia", "Chinese", "yuan"),
    ("India", "New Delhi", "Asia", "Hindi", "rupee"), ("Russia", "Moscow", "Europe", "Russian", "ruble"),
    ("Brazil", "Brasília", "South America", "Portuguese", "real"),
    ("Mexico", "Mexico City", "North America", "Spanish", "peso"), ("Egypt", "Cairo", "Africa", "Arabic", "pound"),
    ("Canada", "Ottawa", "North America", "English", "dollar"),
    ("Australia", "Canberra", "Oceania", "English", "dollar"),
    ("the United Kingdom", "London", "Europe", "English", "pound"), ("Greece", "Athens", "Europe", "Greek", "euro"),
    ("Turkey", "Ankara", "Asia", "Turkish", "lira"), ("Argentina", "Buenos Aires", "South America", "Spanish", "peso"),
    ("Kenya", "Nairobi", "Africa", "Swahili", "shilling"), ("South Korea", "Seoul", "Asia", "Korean", "won"),
    ("Sweden", "Stockholm", "Europe", "Swedish", "krona"), ("Norway", "Oslo", "Europe", "Norwegian", "krone"),
    ("Poland", "Warsaw", "Europe", "Polish", "złoty"), ("Portugal", "Lisbon", "Europe", "Portuguese", "euro"),
    ("Thailand", "Bangkok", "Asia", "Thai", "baht"), ("the Netherlands", "Amsterdam", "Europe", "Dutch", "euro"),
    ("Peru", "Lima", "South America", "Spanish", "sol"), ("Nigeria", "Abuja", "Africa", "English", "naira"),
    ("Vietnam", "Hanoi", "Asia", "Vietnamese", "dong"), ("Austria", "Vienna", "Europe", "German", "euro"),
    ("Cuba", "Havana", "North America", "Spanish", "peso"), ("Chile", "Santiago", "South America", "Spanish", "peso"),
    ("Ireland", "Dublin", "Europe", "English", "euro"),
]
QUESTIONS = [  # (field index, question, answer sentence)
    (1, "What is the capital of {c}?", "The capital of {c} is {v}."),
    (2, "On which continent is {c}?", "{C} is in {v}."),
    (3, "What is the main language spoken in {c}?", "The main language of {c} is {v}."),
    (4, "What is the currency of {c} called?", "The currency of {c} is the {v}."),
]


def country_facts(seed: int = 0) -> list[tuple[QARecord, str]]:
    """(record, value) for every country question; perturbed answers use other countries' values."""
    rng = random.Random(seed)
    out = []
    for row in COUNTRIES:
        c = row[0]
        for field, q, a in QUESTIONS:
            value = row[field]
            pool = sorted({r[field] for r in COUNTRIES if r[field] != value})
            wrong = rng.sample(pool, 3)
            fill = lambda v, a=a, c=c: a.format(c=c, C=c[0].upper() + c[1:], v=v)
            rec = QARecord(question=q.format(c=c), answer=fill(value), paraphrased_answer=fill(value),
                           perturbed_answers=tuple(fill(w) for w in wrong), subject=c)
            out.append((rec, value))
    return out


def _find_value(text: str, value: str) -> re.Match | None:
    """``value`` in ``text`` as whole words, case-insensitive ("German" is not in "Germany")."""
    return re.search(rf"(?<!\w){re.escape(value.lower())}(?!\w)", text.lower())


def knows(generated: str, value: str) -> bool:
    """A model knows the fact when its greedy answer contains the value as whole words (case-insensitive).

    Whole words matter: "German" must not be found inside "Germany", nor "Europe" inside "European".
    """
    return _find_value(generated, value) is not None


def own_answer(response: str, value: str) -> str:
    """The model's own answer as a training target: its response cut after the sentence that states ``value``.

    The closer-look paper builds the real-world forget set from the target model's responses, not
    from golden answers; generation stops at a token budget, so the tail after the fact is often
    a half sentence. Without a terminator after the fact, the whole response is kept.
    """
    text = response.strip()
    found = _find_value(text, value)
    if found is None:
        return text
    end = re.search(r"[.!?](?=\s|$)", text[found.end():])
    return text if end is None else text[: found.end() + end.end()]

"""An invented novel, generated from a seed: the copyrighted book of Lethe's copyright scenario.

Written for Lethe from templates (no real book is copied): a cast of characters with names, homes and
trades, a handful of places and objects, and chapters in which they travel, talk, find things and argue.
The same seed always gives the same text; chapters differ in who appears where, so an excerpt's
continuation is something a model can only produce by having memorized that chapter.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

_SYLLABLES = ("ar", "bel", "cor", "dun", "el", "fen", "gar", "hal", "is", "jor", "kel", "lin", "mor", "nor",
              "or", "pel", "quin", "ros", "sel", "tam", "ul", "vor", "wen", "yar", "zel", "bran", "thal", "vesk")
_TRADES = ("lamplighter", "ferryman", "clockmaker", "herbalist", "cartographer", "bell founder", "glassblower",
           "archivist", "beekeeper", "salt merchant", "rope maker", "astronomer")
_PLACE_KINDS = ("harbour", "mill", "abbey", "market", "lighthouse", "orchard", "bridge", "quarry", "library",
                "watchtower", "inn", "marsh")
_OBJECTS = ("a brass compass", "a sealed letter", "a silver key", "a torn map", "a glass lantern",
            "a ledger bound in green leather", "a wooden flute", "a jar of black honey", "a cracked hourglass",
            "a ring of iron keys", "a folded blue banner", "a book with no title")
_WEATHER = ("Rain drummed on the roofs", "A cold wind came down from the hills", "Fog lay over the water",
            "The sun stood low and red", "Snow had fallen in the night", "The air was heavy before the storm")
_FEELINGS = ("uneasy", "hopeful", "tired", "angry", "curious", "afraid", "calm", "restless")
_SAYINGS = ("We cannot wait for the tide", "Someone has been here before us", "The old road is closed",
            "Nobody must know what we found", "It was never yours to keep", "The bells will ring at dawn",
            "Count the steps and do not look back", "The river remembers everything")


def _name(rng: random.Random) -> str:
    first = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()
    last = "".join(rng.choice(_SYLLABLES) for _ in range(2)).capitalize()
    return f"{first} {last}"


@dataclass(frozen=True)
class Novel:
    title: str
    chapters: tuple[str, ...]       # each chapter's text, its heading first

    @property
    def text(self) -> str:
        return "\n\n".join(self.chapters)


def generate_novel(chapters: int, paragraphs: int, seed: int = 0) -> Novel:
    """A novel of ``chapters`` chapters of ``paragraphs`` paragraphs (4-6 sentences each)."""
    rng = random.Random(seed)
    cast = []
    seen = set()
    while len(cast) < 8:
        name = _name(rng)
        if name.split()[0] not in seen:
            seen.add(name.split()[0])
            cast.append((name, rng.choice(_TRADES)))
    towns = sorted({_name(rng).split()[1] for _ in range(12)})[:6]
    places = [f"the {kind} of {rng.choice(towns)}" for kind in rng.sample(_PLACE_KINDS, 8)]
    title = f"The {rng.choice(('Lanterns', 'Keys', 'Bells', 'Maps'))} of {rng.choice(towns)}"

    def sentence(a, b, place, thing) -> str:
        (an, at), (bn, bt) = a, b
        af, bf = an.split()[0], bn.split()[0]
        forms = (
            f"{af} the {at} reached {place} before the light failed.",
            f"{rng.choice(_WEATHER)} when {af} and {bf} met at {place}.",
            f"\"{rng.choice(_SAYINGS)},\" {af} said, and {bf} did not answer.",
            f"{bf} had carried {thing} since leaving {rng.choice(places)}.",
            f"In {place} {af} found {thing} hidden under the floor.",
            f"{af} felt {rng.choice(_FEELINGS)}; {bf} the {bt} was already counting the doors.",
            f"They argued about {thing} until {bf} walked out into {rng.choice(places)}.",
            f"Nobody in {place} had heard of {an}, though {bf} swore otherwise.",
            f"{bf} wrote the date in the margin and gave {thing} back to {af}.",
            f"By midnight {af} and {bf} had crossed to {rng.choice(places)} on foot.",
        )
        return rng.choice(forms)

    out = []
    for c in range(chapters):
        heading = f"Chapter {c + 1}. {rng.choice(('The', 'A'))} {rng.choice(_PLACE_KINDS).title()} at " \
                  f"{rng.choice(towns)}"
        paras = []
        for _ in range(paragraphs):
            a, b = rng.sample(cast, 2)
            place, thing = rng.choice(places), rng.choice(_OBJECTS)
            paras.append(" ".join(sentence(a, b, place, thing) for _ in range(rng.randint(4, 6))))
        out.append(heading + "\n\n" + "\n\n".join(paras))
    return Novel(title=title, chapters=tuple(out))

"""Conventions: named bundles of options that reproduce a released code base's numbers (SPEC §8).

``paper`` (the default) is every formula as the papers write it. The others change loss options,
the training batches' layout (padding to a fixed width, which position-averaged losses then count),
the evaluation's item limit, EL_n's counting and FILA's solver, as that code does. Options the user
sets explicitly win over a convention's; the run records the convention it used.

Not reproduced (said here so nobody assumes otherwise): the pooled IDK+GD mean of the TOFU, IHL and
FLAT code (Lethe adds the two means), closer-look's forget truth ratio written as ``1 - mean min(R, 1/R)``
(Lethe reports ``mean min``; FE uses it the same way), and MA counted over pad/EOS positions.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from ..evaluation.memorization import ELConfig
from ..util.errors import LetheError

FLAT_LOSSES = ("flat-tv", "flat-js", "flat-kl", "flat-pearson")
KL_ALL = {"kl": {"positions": "all"}}


@dataclass(frozen=True)
class Convention:
    name: str
    description: str
    loss_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # loss name -> option defaults
    pad_to: int | None = None            # training batches padded to this width
    eval_limit: int | None = None        # items scored per evaluation set
    el: ELConfig = field(default_factory=ELConfig)
    params: Mapping[str, Any] = field(default_factory=dict)  # ParamsConfig fields (FILA's solver)

    def record(self) -> dict:
        return {"name": self.name, "loss_options": {k: dict(v) for k, v in self.loss_options.items()},
                "pad_to": self.pad_to, "eval_limit": self.eval_limit,
                "el": asdict(self.el), "params": dict(self.params)}


CONVENTIONS: dict[str, Convention] = {c.name: c for c in (
    Convention("paper", "the papers' formulas (Lethe's defaults)"),
    Convention("closer-look", "closer-look code: ME = KL(U || P) with log(p + 1e-12) over every padded position, "
               "KL over all B·T positions, batches padded to 500, first 300 items per evaluation set",
               loss_options={"me": {"direction": "uniform-to-model", "eps": 1e-12, "padding": True}, **KL_ALL},
               pad_to=500, eval_limit=300),
    Convention("tofu", "TOFU code: KL over all B·T positions of batches padded to 500", loss_options=KL_ALL,
               pad_to=500),
    Convention("flat", "FLAT code: one h per batch, its tokens' probability sum divided by B(T-1) with the "
               "padded length T = 500, reference-free DPO baseline, KL over all positions",
               loss_options={**{n: {"normalise": "padded", "pool": "batch"} for n in FLAT_LOSSES},
                             "dpo": {"reference_free": True}, **KL_ALL}, pad_to=500),
    Convention("ihl-fila", "IHL/FILA code: per-batch Fisher weighted by token count, svd_lowrank(q=r, niter=2), "
               "KL over all positions of batches padded to 500", loss_options=KL_ALL, pad_to=500,
               params={"fisher_mode": "per-batch", "svd": "randomized", "svd_oversample": 0, "svd_niter": 2}),
    Convention("knowledge-unlearning", "knowledge-unlearning code (EL/MA): EL_n divided by the true suffix's "
               "n-gram count, the EOS that ends a generation kept in it",
               el=ELConfig(denominator="truth", keep_eos=True)),
)}


def get_convention(name: str | Convention | None) -> Convention:
    if isinstance(name, Convention):
        return name
    key = (name or "paper").strip().lower()
    if key not in CONVENTIONS:
        raise LetheError(f"--convention: unknown convention {name!r}; expected one of {', '.join(CONVENTIONS)}")
    return CONVENTIONS[key]


def describe() -> str:
    return "; ".join(f"{c.name}: {c.description}" for c in CONVENTIONS.values())

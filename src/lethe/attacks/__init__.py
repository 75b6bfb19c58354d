"""Attacks that try to bring forgotten knowledge back, each scored against a retain-model control.

An attack takes a model and gives back the model to score (a changed copy: the model given is never changed; or the
model itself when only the prompts change) and the forget records to score it on. :func:`run_attacks` scores the
chosen metrics on the forget records before and after each attack, for the unlearned model and, when given, for the
retain model (never trained on the forget set: relearning also *teaches*, so the control says how much of a gain is
knowledge that was only hidden) and the target model (before unlearning: what full recovery would be).

Built in (``lethe attacks`` lists them with their options): ``quantize`` (quantize.py), ``relearn`` (relearn.py),
``relearn-related`` (relearn_related.py), ``paraphrase``, ``prompt`` and ``in-context`` (prompts.py), and the probes
``logit-lens`` (logit_lens.py) and ``probe`` (probe.py), which read the model instead of changing it. An attack
registers itself in :data:`ATTACKS` (base.py); run.py parses options and scores.

Scores per attack and metric m (each on the records the attack scores): the attacked value, the change, the
retain model's change under the same attack, recovery = (m_attacked − m_unlearned) / (m_target −
m_unlearned) when the target is given, and OpenUnlearning's meta-evaluation robustness: quantization
Q = 1 − |m_after − m_before| / (|m_before| + |m_after|), relearning R = 1 − |Δ_unlearned − Δ_retain| /
(|Δ_unlearned| + |Δ_retain|) (1: the attack changes nothing beyond what it does to a model that never knew).
"""
from . import logit_lens, probe, prompts, quantize, relearn, relearn_related  # noqa: F401 (each registers its attacks)
from .base import ATTACKS, Attack, Attacked
from .quantize import quantize_rtn
from .relearn import relearn_split
from .run import attack, describe, parse_attacks, recovery, robustness_q, robustness_r, run_attacks

__all__ = ["ATTACKS", "Attack", "Attacked", "attack", "describe", "parse_attacks", "quantize_rtn", "recovery",
           "relearn_split", "robustness_q", "robustness_r", "run_attacks"]

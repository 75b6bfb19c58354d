"""AltPO, alternate preference optimization (Mekala et al., COLING 2025).

Negative feedback alone (GA, NPO) pushes the forget answer down without saying what to say instead; AltPO adds
positive feedback: for each forget question the starting model writes a plausible *alternate* answer with other
facts, and DPO prefers it to the true answer::

    L = -(2/β) · mean log σ(β [(log π(y_alt|x) − log π_ref(y_alt|x)) − (log π(y_f|x) − log π_ref(y_f|x))])

with sequence log-probabilities over the answer tokens (the factor 2/β as in Lethe's DPO and NPO). Pair it with
a retain term (``AltPO+GD``), as the paper and open-unlearning do.

Alternates are sampled in :meth:`AltPO.setup` from the model before unlearning (temperature 1, one per
question, seeded per question so batching does not change them), with a prompt that shows the question and true
answer and asks for an answer that changes its facts, in the run's prompt format. They are written to
``RUN/altpo_alternates.jsonl`` and read back by ``--resume``. The paper samples five alternates per question and
trains on every pair; Lethe trains on one (``seed`` picks which).
"""
from __future__ import annotations

import re

import torch

from ..util.errors import LetheError
from ..util.log import get as get_logger
from .forget import dpo_loss
from .inputs import Need
from .loss import Loss
from .registry import FORGET_LOSSES

CACHE_FILE = "altpo_alternates.jsonl"
LOG = get_logger("objectives")

INSTRUCTION = ("Question: {question}\nAnswer: {answer}\n"
               "Write another answer to the question that sounds just as plausible but changes every fact the "
               "answer gives. Keep the question's own details. Reply with the new answer only.")

# Lead-ins a model may echo before its answer, and where a continued conversation would start.
_LEAD = re.compile(r"^\s*(?:alternate answer|new answer|answer)\s*:\s*", re.IGNORECASE)
_STOP = re.compile(r"\n\s*(?:question|q)\s*:", re.IGNORECASE)


def clean_alternate(text: str) -> str:
    """The answer in a sampled text: without an echoed lead-in, cut where a next question would begin."""
    text = _LEAD.sub("", text.strip())
    return _STOP.split(text, maxsplit=1)[0].strip()


@FORGET_LOSSES.register("altpo")
class AltPO(Loss):
    """DPO with a self-generated alternate answer preferred over the forget answer."""

    name = "altpo"
    unit = "sequence"

    def __init__(self, *, beta: float = 0.1, max_new_tokens: int = 0, tries: int = 4):
        if isinstance(beta, bool) or not beta > 0:
            raise LetheError(f"loss 'altpo': option 'beta' must be > 0, got {beta}")
        for key, value, low in (("max_new_tokens", max_new_tokens, 0), ("tries", tries, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise LetheError(f"loss 'altpo': option '{key}' must be a whole number >= {low}, got {value}")
        self.beta, self.max_new_tokens, self.tries = float(beta), max_new_tokens, tries
        self.fallbacks = 0

    # -- set-up: the alternates ---------------------------------------------------------------------------------
    def setup(self, model, data) -> None:
        from ..data.records import QARecord

        if not data.forget or not all(isinstance(r, QARecord) for r in data.forget):
            raise LetheError("altpo writes alternate answers to forget questions: it needs question-answer records")
        cache = data.cache_dir / CACHE_FILE if data.cache_dir is not None else None
        alternates = _read_cache(cache, data.forget)
        if alternates is not None:
            LOG.debug("altpo: %d alternates read from %s", len(alternates), cache)
        else:
            alternates = _shared(lambda: self._generate(model, data), model)
            if cache is not None and _is_main():
                import json

                from ..util.io import write_text

                write_text(cache, "".join(json.dumps({"question": r.question, "answer": r.answer, "alternate": a},
                                                     ensure_ascii=False) + "\n"
                                          for r, a in zip(data.forget, alternates)))
            LOG.debug("altpo: %d alternates sampled (%d refusal fallbacks)", len(alternates), self.fallbacks)
        data.streams.put_answers("alternate", alternates)

    @torch.no_grad()
    def _generate(self, model, data) -> list[str]:
        from ..data.refusals import refusal_for

        prompter = data.streams.prompter
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        out = []
        try:
            for i, record in enumerate(data.forget):
                ids = prompter.prompt_ids(INSTRUCTION.format(question=record.question, answer=record.answer))
                answer_tokens = len(prompter.tokenizer(record.answer, add_special_tokens=False)["input_ids"])
                budget = self.max_new_tokens or min(256, 2 * answer_tokens + 8)
                alternate = ""
                for attempt in range(self.tries):
                    alternate = clean_alternate(self._sample(model, prompter, ids, budget, device,
                                                             seed=_seed(data.seed, i, attempt)))
                    if alternate and alternate.strip() != record.answer.strip():
                        break
                else:  # the model wrote nothing usable: prefer a refusal, as DPO-with-IDK does
                    alternate = refusal_for(i, data.seed)
                    self.fallbacks += 1
                out.append(alternate)
        finally:
            model.train(was_training)
        return out

    @staticmethod
    def _sample(model, prompter, ids, budget, device, seed) -> str:
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            input_ids = torch.tensor([ids], device=device)
            generated = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                       do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                       max_new_tokens=budget, eos_token_id=prompter.stop_ids,
                                       pad_token_id=prompter.pad_id)
        return prompter.decode(generated[0, len(ids):].tolist())

    # -- the loss -----------------------------------------------------------------------------------------------
    def needs(self) -> dict[str, Need]:
        return {"alternate_seq_logp": Need("seq_logp", "alternate"),
                "forget_seq_logp": Need("seq_logp", "forget"),
                "ref_alternate_seq_logp": Need("seq_logp", "alternate", "reference"),
                "ref_forget_seq_logp": Need("seq_logp", "forget", "reference")}

    def __call__(self, inputs):
        return dpo_loss(inputs["alternate_seq_logp"], inputs["forget_seq_logp"], inputs["ref_alternate_seq_logp"],
                        inputs["ref_forget_seq_logp"], self.beta)

    def state(self) -> dict:
        return {"refusal_fallbacks": self.fallbacks}

    def load_state(self, state) -> None:
        self.fallbacks = int(state.get("refusal_fallbacks", 0))

    def options(self) -> dict:
        return {"beta": self.beta, "max_new_tokens": self.max_new_tokens, "tries": self.tries}


def _seed(seed: int, index: int, attempt: int) -> int:
    return (seed * 1_000_003 + index * 101 + attempt) % (2**63 - 1)


def _read_cache(path, forget) -> list[str] | None:
    """The alternates written by an earlier start of this run, when they are for these forget questions."""
    if path is None or not path.exists():
        return None
    from ..util.io import read_jsonl

    rows = read_jsonl(path)
    if len(rows) != len(forget) or any(row.get("question") != r.question for row, r in zip(rows, forget)):
        return None
    alternates = [row.get("alternate") for row in rows]
    return alternates if all(isinstance(a, str) and a.strip() for a in alternates) else None


def _is_main() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _shared(make, model) -> list[str]:
    """``make()`` on the first process, its result on every process: sampling on several GPUs need not agree."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return make()
    box = [make() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)  # our own list of strings, not a user file
    return box[0]

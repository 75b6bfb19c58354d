"""The loss-input protocol: what a loss may ask the engine for.

A loss asks for a *view* of a *stream* from a *model*:

- streams: ``forget`` (forget question + true answer, or a forget text), ``idk`` (forget question +
  a refusal), ``retain`` (the retain examples paired with the forget batch), ``retain_idk``
  (those retain questions + a refusal), ``alternate`` (the forget questions + answers a loss's ``setup``
  wrote: AltPO's alternates);
- views: ``logits`` [B,T,V], ``labels`` [B,T] (IGNORE on prompt and padding), ``mask`` [B,T]
  (1 on real tokens), ``token_logp`` [B,T-1] (log-prob of each counted next token, 0 elsewhere),
  ``seq_logp`` [B] (their sum), ``lengths`` [B] (counted tokens), ``hidden`` [B,T,H] (the output of
  decoder layer ``layer``);
- models: ``policy`` (the model being trained) or ``reference`` (the model before unlearning,
  frozen: never a second trainable copy).

A plain function declares its inputs by parameter names, ``[ref_]STREAM_VIEW`` (``forget_logits``,
``ref_forget_seq_logp``, ``retain_hidden``, ...). A hidden-state input takes its layer from the
function's ``layer`` option. The engine runs one forward per (stream, model) that is needed, with
hooks on exactly the requested layers, and computes the reference's ``seq_logp`` once, before
training, rather than every step.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..util.errors import LetheError

STREAMS = ("retain_idk", "forget", "idk", "retain", "alternate")  # longest prefix first when parsing names
VIEWS = ("logits", "labels", "mask", "token_logp", "seq_logp", "lengths", "hidden")
MODELS = ("policy", "reference")
# Views that are properties of the data, not of a model: the reference has the same ones.
DATA_VIEWS = ("labels", "mask", "lengths")
# Older input names, still accepted.
ALIASES = {"forget_input_mask": "forget_mask", "ref_forget_logp": "ref_forget_seq_logp",
           "ref_idk_logp": "ref_idk_seq_logp"}


@dataclass(frozen=True)
class Need:
    """One input of a loss: ``view`` of ``stream`` from ``model`` (``layer`` for hidden states)."""

    view: str
    stream: str
    model: str = "policy"
    layer: int | None = None

    def __post_init__(self):
        if self.view not in VIEWS:
            raise LetheError(f"unknown input view '{self.view}': expected one of {', '.join(VIEWS)}")
        if self.stream not in STREAMS:
            raise LetheError(f"unknown input stream '{self.stream}': expected one of {', '.join(STREAMS)}")
        if self.model not in MODELS:
            raise LetheError(f"unknown input model '{self.model}': expected policy or reference")
        if self.model == "reference" and self.view in DATA_VIEWS:
            raise LetheError(f"'{self.view}' of the reference model is the policy's: ask for "
                             f"{self.stream}_{self.view}")
        if (self.view == "hidden") != (self.layer is not None):
            raise LetheError("a hidden-state input needs a layer, and only hidden states take one")

    @property
    def needs_forward(self) -> bool:
        """Whether this input needs a forward pass of its model (the data views do not)."""
        return self.view not in DATA_VIEWS

    def describe(self) -> str:
        where = f" at layer {self.layer}" if self.layer is not None else ""
        return f"{self.view} of the {self.stream} stream from the {self.model} model{where}"


def parse_input_name(name: str, *, layer: int | None = None) -> Need:
    """``ref_forget_seq_logp`` -> Need("seq_logp", "forget", "reference"). ``layer`` serves hidden states."""
    canonical = ALIASES.get(name, name)
    model = "policy"
    rest = canonical
    if rest.startswith("ref_"):
        model, rest = "reference", rest[4:]
    for stream in STREAMS:
        if rest.startswith(stream + "_"):
            view = rest[len(stream) + 1:]
            if view in VIEWS:
                if view == "hidden" and layer is None:
                    raise LetheError(f"input '{name}' is a hidden state: the loss needs a 'layer' option")
                return Need(view, stream, model, layer if view == "hidden" else None)
    raise LetheError(f"unknown loss input '{name}': expected [ref_]STREAM_VIEW with STREAM one of "
                     f"{', '.join(sorted(STREAMS))} and VIEW one of {', '.join(VIEWS)} (e.g. forget_logits, "
                     "ref_forget_seq_logp)")

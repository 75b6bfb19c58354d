"""``logit-lens``: read the forget answers from every layer's residual stream, not only from the output.

An unlearned model may still compute the answer and suppress it in its last layers. The logit lens (nostalgebraist
2020; used on unlearned models by Łucki et al. 2024 and Patil et al. 2024) passes the output of each decoder block
through the model's own final norm and output head: for every answer token of every forget record it measures
whether the token is the top prediction (``lens_acc``) and its log-probability (``lens_logp``) at that layer.
The unattacked score is the last layer's (what the model says); the attacked score is the best layer's. The
per-layer curves are kept in the result. Nothing is trained, so the scores compare directly with the retain model's
curve (a model that never knew) and the target's."""
from __future__ import annotations

import torch

from ..data.batching import pad_batch
from ..data.prompt import IGNORE
from ..util.errors import LetheError
from .base import ATTACKS, Attack

METRICS = ("lens_acc", "lens_logp")


def final_norm(model):
    """The norm the decoder applies before the output head (Llama's ``norm``, GPT-2's ``ln_f``)."""
    from ..model.layers import unwrap

    base = unwrap(model)
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else base
    for name in ("norm", "ln_f", "final_layernorm", "final_layer_norm"):
        module = getattr(decoder, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    raise LetheError(f"attack 'logit-lens': cannot find the final norm of {type(base).__name__} (looked for norm, "
                     "ln_f, final_layernorm)")


@torch.no_grad()
def lens_curves(model, prompter, records, batch_size: int = 8, max_length: int = 512) -> dict[str, list[float]]:
    """Per decoder layer: the answer tokens' top-1 rate and mean log-probability when that layer's output is read
    through the final norm and the output head (token-weighted over all records)."""
    from ..model.layers import capture_layers, decoder_layers, unwrap

    n_layers = len(decoder_layers(model))
    norm, head = final_norm(model), unwrap(model).get_output_embeddings()
    device = next(model.parameters()).device
    hits = torch.zeros(n_layers, dtype=torch.float64)
    logp = torch.zeros(n_layers, dtype=torch.float64)
    count = 0
    was_training = model.training
    model.eval()
    try:
        examples = [prompter.encode_qa(r.question, r.answer, max_length=max_length) for r in records]
        for start in range(0, len(examples), batch_size):
            batch = pad_batch(examples[start:start + batch_size], prompter.pad_id)
            labels = batch["labels"].to(device)
            where = labels[:, 1:].ne(IGNORE)  # positions that predict an answer token
            targets = labels[:, 1:][where]
            with capture_layers(model, range(n_layers)) as hidden:
                model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
            for layer in range(n_layers):
                rows = hidden[layer][:, :-1][where]
                logits = head(norm(rows)).float()
                hits[layer] += float(logits.argmax(-1).eq(targets).sum())
                logp[layer] += float(torch.log_softmax(logits, -1).gather(-1, targets[:, None]).sum())
            count += int(targets.numel())
    finally:
        model.train(was_training)
    if count == 0:
        raise LetheError("attack 'logit-lens': the forget records have no answer token to read")
    return {"lens_acc": (hits / count).tolist(), "lens_logp": (logp / count).tolist()}


def _probe(model, forget, options, context):
    curves = lens_curves(model, context["prompter"], forget, batch_size=options["batch_size"])
    first = min(options["from_layer"], len(curves["lens_acc"]) - 1)
    said = {m: curves[m][-1] for m in METRICS}
    read = {m: max(curves[m][first:]) for m in METRICS}
    return said, read, curves


def _check(o: dict) -> None:
    if o["batch_size"] < 1 or o["from_layer"] < 0:
        raise LetheError("attack 'logit-lens': batch_size must be >= 1 and from_layer >= 0")


ATTACKS.add("logit-lens", Attack(
    "logit-lens", "read the answer tokens from each layer's output through the final norm and head; scores "
    "lens_acc/lens_logp at the last layer vs the best layer (from_layer on)",
    {"batch_size": 8, "from_layer": 0}, apply=None, check=_check, probe=_probe))

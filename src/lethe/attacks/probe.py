"""``probe``: a linear probe reads from the hidden states whether an answer is the true one.

For each model, a logistic-regression probe learns, on the *retain* records (facts every model here should still
know), to tell the true answer (the paraphrased one, worded like the others) from the perturbed ones (TOFU's
``perturbed_answer``) by the mean hidden state over the answer's tokens at decoder layer ``layer`` (default: the
middle one). Applied to the forget records, it picks the true answer when that answer scores above every perturbed
one. ``pick_true`` is the share of forget records picked right: unattacked, by the model's own mean token
log-probability (what the model says); attacked, by the probe (what its states hold). A model that only hides a
fact keeps it linearly readable; the retain model (which never knew the forget facts) is the control, and chance
is 1 / (1 + perturbed answers).
"""
from __future__ import annotations

import torch

from ..data.batching import pad_batch
from ..data.prompt import IGNORE
from ..util.errors import LetheError
from .base import ATTACKS, Attack


@torch.no_grad()
def answer_features(model, prompter, pairs, layer: int, batch_size: int = 8, max_length: int = 512):
    """For (question, answer) pairs: the mean hidden state over the answer tokens at decoder block ``layer`` and the
    answer's mean token log-probability under the model."""
    from ..model.layers import capture_layers

    device = next(model.parameters()).device
    features, logps = [], []
    was_training = model.training
    model.eval()
    try:
        examples = [prompter.encode_qa(q, a, max_length=max_length) for q, a in pairs]
        for start in range(0, len(examples), batch_size):
            batch = pad_batch(examples[start:start + batch_size], prompter.pad_id)
            labels = batch["labels"].to(device)
            with capture_layers(model, [layer]) as hidden:
                logits = model(input_ids=batch["input_ids"].to(device),
                               attention_mask=batch["attention_mask"].to(device)).logits.float()
            answer = labels.ne(IGNORE).float()  # the answer's own positions
            h = hidden[layer].float()
            features.append((h * answer[..., None]).sum(1) / answer.sum(1, keepdim=True).clamp(min=1))
            predicts = labels[:, 1:].ne(IGNORE)
            tok = torch.log_softmax(logits[:, :-1], -1).gather(-1, labels[:, 1:].clamp(min=0)[..., None])[..., 0]
            logps.append((tok * predicts).sum(1) / predicts.sum(1).clamp(min=1))
    finally:
        model.train(was_training)
    return torch.cat(features).cpu().double().numpy(), torch.cat(logps).cpu().double().numpy()


def _candidates(records):
    """(question, answer) pairs, each record's true answer first, then its perturbed ones; and the group sizes. The
    true answer is the paraphrased one where a record has it: TOFU writes the perturbed answers in the paraphrase's
    wording, and a probe must not tell them apart by wording (the truth ratio compares the same two)."""
    pairs, sizes = [], []
    for r in records:
        group = [r.paraphrased_answer or r.answer, *r.perturbed_answers]
        pairs += [(r.question, a) for a in group]
        sizes.append(len(group))
    return pairs, sizes


def _picks_true(scores, sizes) -> float:
    """The share of groups whose first (true) candidate scores strictly above all the others."""
    hits, start = 0, 0
    for n in sizes:
        group = scores[start:start + n]
        hits += int(group[0] > max(group[1:]))
        start += n
    return hits / len(sizes)


def _probe(model, forget, options, context):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from ..model.layers import decoder_layers

    retain = [r for r in context.get("retain") or [] if r.perturbed_answers]
    if len(retain) < 4:
        raise LetheError("attack 'probe' trains on retain records with perturbed answers: give at least 4 (--retain)")
    n_layers = len(decoder_layers(model))
    layer = options["layer"] if options["layer"] >= 0 else n_layers // 2
    if layer >= n_layers:
        raise LetheError(f"attack 'probe': layer {layer} does not exist (the model has layers 0..{n_layers - 1})")
    prompter, bs = context["prompter"], options["batch_size"]
    train_pairs, train_sizes = _candidates(retain)
    x_train, _ = answer_features(model, prompter, train_pairs, layer, bs)
    y_train = [int(i == 0) for n in train_sizes for i in range(n)]
    scaler = StandardScaler().fit(x_train)
    clf = LogisticRegression(C=options["c"], max_iter=2000, class_weight="balanced")
    clf.fit(scaler.transform(x_train), y_train)
    test_pairs, test_sizes = _candidates(forget)
    x_test, logp = answer_features(model, prompter, test_pairs, layer, bs)
    read = _picks_true(clf.decision_function(scaler.transform(x_test)), test_sizes)
    said = _picks_true(logp, test_sizes)
    details = {"layer": layer, "retain_fit_acc": _picks_true(clf.decision_function(scaler.transform(x_train)),
                                                              train_sizes),
               "chance": sum(1 / n for n in test_sizes) / len(test_sizes)}
    return {"pick_true": said}, {"pick_true": read}, details


def _check(o: dict) -> None:
    if o["batch_size"] < 1 or not o["c"] > 0:
        raise LetheError("attack 'probe': batch_size must be >= 1 and c > 0")


ATTACKS.add("probe", Attack(
    "probe", "a linear probe fit on the retain records' hidden states (true vs perturbed answers) picks the true "
    "forget answer (pick_true), vs the model's own pick by log-probability",
    {"layer": -1, "c": 1.0, "batch_size": 8}, apply=None, check=_check, probe=_probe,
    needs=("perturbed_answers",)))

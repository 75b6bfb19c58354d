"""One unlearning run after :func:`lethe.core.runs.unlearn` has checked its inputs, as named steps.

:class:`UnlearnJob` holds the run's state (the model, the task, the record, what the evaluation scored per
epoch) and runs the steps in order: place the model, measure membership before, apply the parameterisation and
build the task, score the starting model, train with per-epoch scoring, keep the selected epoch, write
``run.json``, ``audit.json`` and the model.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..engine.loop import TrainConfig, train as train_loop
from ..engine.runtime import RuntimeConfig
from ..engine.select import Selection
from ..engine.tasks import LossData, Streams, UnlearnTask, require_positions
from ..evaluation.evidence import downstream_metrics, scored_forget_records
from ..evaluation.suite import aggregate, evaluate_sets
from ..model.load import position_limit
from ..model.lora import AdapterReference, ParamsConfig, apply_params, save_unlearned
from ..objectives.method import Method
from ..util.errors import DivergenceError, LetheError
from ..util.io import crash_point, write_json
from ..util.progress import Stages, note
from .audit import (
    membership_signal,
    membership_signal_of,
    records_sha256,
    saved_weights_sha256,
    weights_sha256,
    write_audit,
)
from .configs import AuditConfig, EvalConfig, ModelConfig, UnlearnRun
from .preparation import (
    can_share_prefix,
    given_reference,
    is_main_process,
    prepare,
    reference_requests,
    restrict_trainable,
    run_record,
)

KEEP_CHECKPOINT = ("never", "last")
FEW_STEPS = 3  # optimizer steps per epoch below which a run is warned that it will hardly change the model

@dataclass
class UnlearnPlan:
    """Everything :func:`~lethe.core.runs.unlearn` resolved and checked before any weights load."""

    method: Method
    params: ParamsConfig
    train: TrainConfig
    evaluation: EvalConfig
    audit: AuditConfig
    model_config: ModelConfig
    runtime: RuntimeConfig
    run_dir: Path | None = None
    warnings: list = field(default_factory=list)
    save: bool = True
    merge: bool = False
    resume: bool = False
    epoch_hook: Callable | None = None
    progress: bool = True
    record: dict = field(default_factory=dict)     # extra options the run records (convention, pad_to, hook's)
    pad_to: int | None = None
    reference_model: Any = None                    # a caller's θ_ref; default: the model as received
    select: Selection | None = None
    keep_checkpoint: str = "never"


class UnlearnJob:
    """The steps of one unlearning run over checked records (see the module docstring)."""

    def __init__(self, plan: UnlearnPlan, model, tokenizer, forget: list, retain: list, holdout: list | None):
        self.plan, self.forget, self.retain, self.holdout = plan, forget, retain, holdout
        self.model, self.tokenizer = model, tokenizer
        ev = plan.evaluation
        # The audit's membership evidence is the evaluation's own report at the start and at the end when it
        # scores the same forget records against the same holdout (the usual --holdout run): not scored twice.
        same_sets = bool(holdout) and scores_audit_sets(ev, forget, holdout)
        self.reuse_before = same_sets and not plan.resume and ev.initial_metrics is None and "start" in ev.at
        self.reuse_after = same_sets and "end" in ev.at
        self.reports: dict[int, dict] = {}          # epoch -> the evaluation's membership report
        self.last_evaluated = self.last_hooked = None  # the last epochs evaluated in full / measured by the hook
        self.eval_cost: dict = {"evaluation_s": 0.0, "generation_s": 0.0, "generated_tokens": 0}
        self.before_sha = self.membership_before = self.membership_after = None
        self.keeper = None

    def run(self) -> tuple[Any, UnlearnRun]:
        self.place_model()
        self.measure_membership_before()
        self.build_task()
        self.start_record()
        self.score_start()
        self.train()
        self.task.reference = None  # the unlearned model never carries the starting weights along
        self.keep_selected_epoch()
        self.read_membership_from_evaluation()
        self.write()
        return self.model, self.run_record

    # -- steps -------------------------------------------------------------------------------------------------

    def place_model(self) -> None:
        plan = self.plan
        self.model, self.prompter, self.base_path = prepare(self.model, self.tokenizer, plan.model_config,
                                                            plan.runtime)
        self.streams = Streams(self.prompter, self.forget, self.retain, seed=plan.train.seed,
                               max_length=plan.model_config.max_length)
        for stream in ("forget", "retain"):
            require_positions(self.streams[stream], stream, position_limit(self.model))

    def measure_membership_before(self) -> None:
        """The starting weights' hash (``--resume`` refuses another starting model) and, with a holdout the
        evaluation does not score, the audit's membership signal before unlearning."""
        if self.plan.run_dir is None:
            return
        self.before_sha = weights_sha256(self.model.state_dict())
        if self.holdout and not self.reuse_before:
            n = len(self.forget) + len(self.holdout)
            stages = Stages(self.plan.progress, "audit", n)
            with self.plan.runtime.autocast():
                self.membership_before = membership_signal(self.model, self.prompter, self.forget, self.holdout,
                                                           k=self.plan.evaluation.mia_k)
            stages.step(f"membership before unlearning ({len(self.forget)} forget, {len(self.holdout)} holdout "
                        "records)", n)

    def build_task(self) -> None:
        """The parameterisation (LoRA/FILA or full), the losses' set-up, the training task and its reference."""
        plan, rt = self.plan, self.plan.runtime
        with rt.autocast():
            self.model, self.params_info = apply_params(
                self.model, plan.params, forget_examples=self.streams["forget"],
                retain_examples=self.streams["retain"] if plan.params.kind == "fila" else (),
                pad_id=self.prompter.pad_id, seed=plan.train.seed, progress=plan.progress)
            loss_data = LossData(self.forget, self.retain, self.streams, self.prompter.pad_id, plan.train.seed,
                                 cache_dir=plan.run_dir)
            for loss in plan.method.losses:
                loss.setup(self.model, loss_data)
        restrict_trainable(self.model, plan.method)
        self.task = UnlearnTask(self.prompter, plan.method, self.forget, self.retain, seed=plan.train.seed,
                                retain_per_forget=plan.train.retain_per_forget, share_prefix=can_share_prefix(rt),
                                streams=self.streams, max_length=plan.model_config.max_length, pad_to=plan.pad_to,
                                fused_head=rt.fused_head)
        reference = plan.reference_model
        if reference is not None:
            reference = given_reference(reference, self.model)
        if self.task.needs_reference_model:
            from ..model.reference import FrozenCopy

            self.task.reference = (FrozenCopy(reference, copy=False) if reference is not None
                                   else FrozenCopy(self.model) if plan.params.kind == "full"
                                   else AdapterReference(self.model))
        with rt.autocast():
            device = next(self.model.parameters()).device
            self.tokens_reference = self.task.cache_reference(reference if reference is not None else self.model,
                                                              device)
        self.reference_requests = reference_requests(plan.evaluation, self.model, self.prompter)
        if plan.select is not None and plan.select.active:
            self.keeper = BestEpoch(plan.select, plan.run_dir, plan.resume)

    def start_record(self) -> None:
        plan, forget, retain = self.plan, self.forget, self.retain
        data = {"forget_sha256": records_sha256(forget), "forget_records": len(forget),
                "retain_sha256": records_sha256(retain) if retain else None, "retain_records": len(retain)}
        config = {**run_record(plan.train, self.prompter, plan.model_config, plan.runtime), **plan.method.record(),
                  "params": asdict(plan.params), "model_sha256": self.before_sha, "data": data, **plan.record}
        self.run_record = UnlearnRun(method=plan.method.name, params=plan.params.kind, warnings=list(plan.warnings),
                                     config=config)
        if hasattr(plan.epoch_hook, "bind"):
            plan.epoch_hook.bind(self.prompter)  # a hook that encodes records does it in the run's prompt format

    def score_start(self) -> None:
        ev, run = self.plan.evaluation, self.run_record
        if ev.initial_metrics is not None:
            run.epochs.append({"epoch": 0, "metrics": dict(ev.initial_metrics)})
        elif (ev.sets and "start" in ev.at) or self.plan.epoch_hook:
            first = self.on_epoch_end(0, self.model)
            first.pop("stop", None)
            run.epochs.append({"epoch": 0, **first})

    def train(self) -> None:
        plan, run, rt = self.plan, self.run_record, self.plan.runtime
        cost = None
        try:
            result = train_loop(self.model, lengths=self.task.lengths, step_fn=self.task, config=plan.train,
                                run_dir=plan.run_dir, on_epoch_end=self.on_epoch_end, resume=plan.resume,
                                progress=plan.progress, desc=plan.method.name, runtime=rt, run_config=run.config)
            run.epochs += list(result.history)
            cost = result.cost
            if result.steps_per_epoch < FEW_STEPS:
                run.warnings.append(
                    f"only {result.steps_per_epoch} optimizer step(s) per epoch ({len(self.forget)} forget records, "
                    f"effective batch {plan.train.batch_size}): the model barely moves; lower --batch-size or raise "
                    "--epochs")
            self.score_final_weights()
        except DivergenceError as e:
            run.status, run.message = "diverged", str(e)
            run.epochs += list(getattr(e, "history", []))
            cost = getattr(e, "cost", None)
        if cost is not None:
            cost.tokens_forward_only += self.tokens_reference
            cost.tokens_fisher = self.params_info["fisher_tokens"]
            run.cost = cost.to_dict()
            run.cost["reference_model_bytes"] = getattr(self.task.reference, "nbytes", 0)
            spent = self.eval_cost
            if spent["evaluation_s"]:  # what this process spent scoring (a resumed run: since it resumed)
                rate = spent["generated_tokens"] / spent["generation_s"] if spent["generation_s"] else None
                run.cost["evaluation"] = {**spent, "generation_tokens_per_s": rate}

    def score_final_weights(self) -> None:
        """A run stopped early between evaluations, or resumed after its last checkpoint, is scored on the
        weights it saves: the final samples and metrics come from those."""
        ev, run = self.plan.evaluation, self.run_record
        last = run.epochs[-1]["epoch"] if run.epochs else 0
        missing_eval = ev.sets and "end" in ev.at and self.last_evaluated != last
        missing_hook = self.plan.epoch_hook is not None and self.last_hooked != last
        if last > 0 and (missing_eval or missing_hook):
            with self.plan.runtime.autocast():
                extra = self.score(last, self.model, final=True)
            run.epochs[-1].setdefault("metrics", {}).update(extra.get("metrics", {}))

    def keep_selected_epoch(self) -> None:
        plan, run = self.plan, self.run_record
        if self.keeper is None or run.status != "ok":
            return
        save_last = None
        if plan.save and plan.run_dir is not None and is_main_process():
            def save_last():
                save_unlearned(self.model, self.prompter.tokenizer, plan.run_dir / "last", merge=plan.merge,
                               base_model_path=self.base_path, prompt_format=self.prompter.format)
        run.selected = self.keeper.restore(self.model, run.epochs, save_last=save_last)

    def read_membership_from_evaluation(self) -> None:
        """The audit's before/after membership signals from the evaluation's reports, where they are the same."""
        run, k = self.run_record, self.plan.evaluation.mia_k
        if not (self.reuse_before or self.reuse_after) or not run.epochs:
            return
        kept = run.selected.get("epoch", run.epochs[-1]["epoch"])  # the epoch whose model is saved
        if self.reuse_before:
            self.membership_before = membership_signal_of(self.reports[0], k) if 0 in self.reports else None
        if self.reuse_after and kept in self.reports:
            self.membership_after = membership_signal_of(self.reports[kept], k)

    def write(self) -> None:
        plan = self.plan
        if plan.run_dir is None or not is_main_process():  # under `accelerate launch` one process writes
            return
        with plan.runtime.autocast():
            write_run(plan.run_dir, self.model, self.prompter, self.run_record, self.forget, self.holdout,
                      before_sha=self.before_sha, membership_before=self.membership_before,
                      membership_after=self.membership_after, audit=plan.audit, save=plan.save, merge=plan.merge,
                      base_path=self.base_path, mia_k=plan.evaluation.mia_k)
        if self.run_record.status == "ok":
            drop_checkpoint(plan.run_dir, plan.keep_checkpoint)

    # -- per-epoch scoring -------------------------------------------------------------------------------------

    def on_epoch_end(self, epoch: int, model) -> dict:
        """The training loop's per-epoch callback: score, then offer the epoch to the best-epoch keeper."""
        with self.plan.runtime.autocast():
            out = self.score(epoch, model)
        if self.keeper is not None:
            epochs = self.run_record.epochs
            start = epochs[0].get("metrics") if epochs and epochs[0].get("epoch") == 0 else None
            self.keeper.offer(epoch, (out or {}).get("metrics", {}), start, model)
        return out

    def score(self, epoch: int, model, final: bool = False) -> dict:
        """The evaluation due at this epoch and the epoch hook's measurement: {"metrics": ..., "stop": ...}."""
        ev, hook = self.plan.evaluation, self.plan.epoch_hook
        out: dict = {"metrics": {}}
        periodic = epoch > 0 and ev.every > 0 and epoch % ev.every == 0
        end = (final or epoch >= self.plan.train.epochs) and "end" in ev.at
        if ev.sets and ((epoch == 0 and "start" in ev.at) or periodic or end):
            out["metrics"].update(self.evaluate(epoch, model, full=end or epoch == 0 or ev.per_epoch == "full"))
        if hook is not None:
            kwargs = {}
            if getattr(hook, "reads_membership", False) and epoch in self.reports:
                # the evaluation just scored forget vs holdout: a stopping rule on the same records reads it
                kwargs["membership"] = {"report": self.reports[epoch], "forget": scored_forget_records(ev),
                                        "holdout": list(ev.holdout), "k": ev.mia_k}
            extra = hook(epoch, model, **kwargs) or {}
            out["metrics"].update(extra.get("metrics", {}))
            out["stop"] = bool(extra.get("stop", False))
            self.last_hooked = epoch
        return out if (ev.sets or hook) else {}

    def evaluate(self, epoch: int, model, full: bool) -> dict:
        """The evaluation sets' metrics after ``epoch`` (``full``: with generation, samples kept for the report)."""
        ev, run, name = self.plan.evaluation, self.run_record, self.plan.method.name
        options = {**ev.suite_kwargs(), "reference": self.reference_requests}
        res = evaluate_sets(model, self.prompter, ev.sets, **options, generate=full, progress=self.plan.progress,
                            title=f"{name}: evaluation after epoch {epoch}")
        note(self.plan.progress, f"{name}: evaluated {sum(len(s_.records) for s_ in ev.sets)} items "
                                 f"({', '.join(s_.name for s_ in ev.sets)}) after epoch {epoch} "
                                 f"in {res.timing['evaluation_s']:.1f} s")
        crash_point("evaluation")
        self.add_eval_cost(res.timing)
        aggregate(res, retain_model_tr=ev.retain_model_tr)
        if full:
            run.samples, run.aggregates_over, run.unavailable = res.samples, res.aggregates_over, res.unavailable
        metrics = dict(res.metrics)
        if res.membership is not None:
            self.reports[epoch] = res.membership
        if full and ev.lm_eval_tasks:
            metrics.update(downstream_metrics(model, self.prompter, ev))
        if full:
            self.last_evaluated = epoch
        return metrics

    def add_eval_cost(self, timing: dict) -> None:
        spent = self.eval_cost
        for key in ("evaluation_s", "generation_s", "generated_tokens"):
            spent[key] += timing.get(key, 0)
        for part in ("requests_s", "metrics_s"):  # seconds per request kind and per metric, summed over epochs
            into = spent.setdefault(part, {})
            for name, seconds in timing.get(part, {}).items():
                into[name] = into.get(name, 0.0) + seconds
        if timing.get("generation_batch"):
            spent["generation_batch"] = max(spent.get("generation_batch", 0), timing["generation_batch"])


def drop_checkpoint(run_dir, keep: str) -> None:
    """After a run has written everything, its resumable state (trainable weights and optimizer moments,
    several times the model for full fine-tuning) is deleted unless ``keep`` is ``last``. A failed or
    interrupted run never reaches here: its checkpoint stays for ``--resume``."""
    if keep not in KEEP_CHECKPOINT:
        raise LetheError(f"--keep-checkpoint: expected one of {', '.join(KEEP_CHECKPOINT)}, got {keep!r}")
    if keep == "never" and run_dir is not None:
        for name in ("checkpoint", "checkpoint.old"):
            shutil.rmtree(Path(run_dir) / name, ignore_errors=True)


class BestEpoch:
    """The best epoch's trainable weights by a :class:`~lethe.engine.select.Selection`, kept on the CPU and, with a
    run directory, in ``RUN/.lethe-best`` (so ``--resume`` knows it)."""

    def __init__(self, select: Selection, run_dir, resume: bool):
        self.select, self.dir = select, (Path(run_dir) / ".lethe-best" if run_dir is not None else None)
        self.epoch, self.value, self.weights = None, None, None
        if resume and self.dir is not None and (self.dir / "best.json").exists():
            from safetensors.torch import load_file

            saved = json.loads((self.dir / "best.json").read_text(encoding="utf-8"))
            self.epoch, self.value = saved["epoch"], saved["value"]
            self.weights = load_file(str(self.dir / "weights.safetensors"))

    def offer(self, epoch: int, metrics: dict, start: dict | None, model) -> None:
        value = self.select.value(epoch, metrics, start)
        if value is None or (self.value is not None and value <= self.value):
            return
        self.epoch, self.value = epoch, value
        self.weights = {n: p.detach().to("cpu", copy=True).contiguous() for n, p in model.named_parameters()
                        if p.requires_grad}
        if self.dir is not None and is_main_process():
            from safetensors.torch import save_file

            from ..util.io import storage_errors

            self.dir.mkdir(exist_ok=True)
            with storage_errors(self.dir / "weights.safetensors"):
                save_file(self.weights, str(self.dir / "weights.safetensors"))
            (self.dir / "best.json").write_text(json.dumps({"epoch": epoch, "value": value}), encoding="utf-8")

    def restore(self, model, epochs: list, save_last=None) -> dict:
        """Put the best epoch's weights into ``model`` (the last epoch's saved first with ``save_last``)."""
        last = epochs[-1]["epoch"] if epochs else 0
        record = {"by": self.select.by, "last_epoch": last}
        if self.select.mu_floor is not None:
            record["mu_floor"] = self.select.mu_floor
        if self.epoch is None:
            return {**record, "epoch": last, "reason": "no epoch met the criterion: the last epoch is kept"}
        record.update(epoch=self.epoch, value=self.value)
        if self.epoch != last:
            if save_last is not None:
                save_last()
                record["last_model"] = "last"
            params = dict(model.named_parameters())
            with torch.no_grad():
                for n, w in self.weights.items():
                    params[n].copy_(w.to(params[n].device, params[n].dtype))
        if self.dir is not None and is_main_process():
            shutil.rmtree(self.dir, ignore_errors=True)
        return record


def scores_audit_sets(ev: EvalConfig, forget, holdout) -> bool:
    """Whether the evaluation's membership report is the audit's: same forget records, same holdout, the same
    tokens counted, and membership attacks selected (the report then holds every attack the audit records)."""
    scored = scored_forget_records(ev)
    return (scored is not None and ev.holdout is not None and scored == list(forget)
            and list(ev.holdout) == list(holdout) and not ev.count_end_token
            and bool(ev.selection().of_scope("membership")))


# Everything a finished run writes, handed over from the job's state (keyword-only).
def write_run(run_dir: Path, model, prompter, run: UnlearnRun, forget, holdout, *, before_sha, membership_before,
              membership_after, audit: AuditConfig, save: bool, merge: bool, base_path, mia_k: float) -> None:
    """The model (when kept), ``run.json`` and ``audit.json``; membership after unlearning is measured here when
    the evaluation did not."""
    if holdout and membership_after is None:
        membership_after = membership_signal(model, prompter, forget, holdout, k=mia_k)
    model_dir = None
    if save and run.status == "ok":
        model_dir = save_unlearned(model, prompter.tokenizer, run_dir / "model", merge=merge,
                                   base_model_path=base_path, prompt_format=prompter.format)
        after_sha = saved_weights_sha256(model_dir)
    else:
        after_sha = weights_sha256({k: v for k, v in model.state_dict().items() if "lethe_reference" not in k})
    write_json(run_dir / "run.json", run.to_dict())
    write_audit(run_dir, run=run, forget=forget, before_sha=before_sha, after_sha=after_sha,
                include_text=audit.include_text, membership_before=membership_before,
                membership_after=membership_after, thresholds=audit.thresholds, model_dir=model_dir)

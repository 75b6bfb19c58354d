"""The one training loop (fine-tuning and unlearning), on ``accelerate``.

Read top to bottom: set-up, optional resume, then epochs of micro-batches with explicit
gradient accumulation, a per-epoch checkpoint, log line and evaluation hook. What is
optimised is a ``step_fn(model, indices, device) -> StepOutput``; the loop knows nothing of
forget or retain sets.
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from accelerate import Accelerator

from ..data.batching import bucketed_shuffle
from ..util.errors import DivergenceError
from ..util.io import append_jsonl, crash_point, read_jsonl, write_text
from ..util.progress import bar as progress_bar, eta, note
from ..util.validation import bounded, check_ranges
from .checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from .cost import Cost, count_parameters, peak_memory_bytes, reset_peak_memory, stop_peak_memory
from .schedule import lr_factor


@dataclass
class TrainConfig:
    """Optimisation settings; every numeric field has a declared range, checked when the config is built."""

    epochs: int = bounded(5, int, 1)
    lr: float = bounded(1e-5, float, 0, low_open=True)
    batch_size: int = bounded(32, int, 1)          # effective: micro_batch_size x accumulation x processes
    micro_batch_size: int = bounded(8, int, 1)
    weight_decay: float = bounded(0.01, float, 0)
    warmup_epochs: float = bounded(1.0, float, 0)  # linear warm-up over the first epoch (the papers' schedule)
    schedule: str = "linear"      # linear: warm-up then linear decay; constant: warm-up then flat
    max_grad_norm: float = bounded(1.0, float, 0)  # 0 = no clipping
    seed: int = bounded(0, int, 0, 2**63 - 1)  # torch.manual_seed's range
    checkpoint: bool = True
    log_with: str | None = None   # an accelerate tracker ("tensorboard", "wandb", "mlflow"); logs in RUN/logs
    retain_per_forget: int = bounded(1, int, 1)    # unlearning: retain examples paired with each forget example

    def __post_init__(self):
        check_ranges(self)
        if self.schedule not in SCHEDULES:
            from ..util.errors import LetheError

            raise LetheError(f"--schedule: expected one of {', '.join(SCHEDULES)}, got {self.schedule!r}")


SCHEDULES = ("linear", "constant")


@dataclass
class StepOutput:
    loss: torch.Tensor            # what is backpropagated (already weighted when the step was given a scale)
    parts: dict[str, torch.Tensor] = field(default_factory=dict)
    tokens_trained: int = 0
    tokens_forward_only: int = 0
    logged: torch.Tensor | None = None  # the unweighted loss, for logs (defaults to ``loss``)


@dataclass
class TrainResult:
    history: list[dict]
    cost: Cost
    stopped_early: bool = False
    diverged: str | None = None
    steps_per_epoch: int = 0


TRACKERS = ("tensorboard", "wandb", "mlflow")  # accelerate tracker names; each is also its pip package


def make_accelerator(log_with: str | None = None, project_dir: str | Path | None = None, runtime=None) -> Accelerator:
    """accelerate on the runtime policy's device. Autocast comes from the policy, not from accelerate's
    process-wide mixed-precision state, so runs of different precision can follow each other in one process."""
    from .runtime import DEFAULT_RUNTIME

    runtime = runtime or DEFAULT_RUNTIME
    if log_with is not None:
        _check_tracker(log_with)
    return Accelerator(cpu=runtime.resolved_device.type == "cpu", mixed_precision="no",
                       log_with=log_with, project_dir=str(project_dir) if project_dir is not None else None)


def _check_tracker(name: str) -> None:
    """accelerate drops an unavailable tracker with a warning; a user who asked for one gets an error."""
    import importlib.util

    from ..util.errors import LetheError

    if name not in TRACKERS:
        raise LetheError(f"unknown tracker '{name}': expected one of {', '.join(TRACKERS)}")
    if importlib.util.find_spec(name) is None:
        raise LetheError(f"--log-with {name} needs the '{name}' package: pip install {name}")


# Keyword-only: the loop's collaborators (step function, config, run directory, callbacks, runtime) stay
# separate so a caller sees which one it changes.
def train(
    model,
    *,
    lengths: Sequence[int],
    step_fn: Callable[..., StepOutput],
    config: TrainConfig,
    run_dir: str | Path | None = None,
    on_epoch_end: Callable[[int, object], dict] | None = None,
    resume: bool = False,
    accelerator: Accelerator | None = None,
    progress: bool = True,
    desc: str = "train",
    runtime=None,
    run_config: dict | None = None,
) -> TrainResult:
    """Train ``model`` in place on items ``0..len(lengths)-1`` for ``config.epochs`` epochs.

    ``on_epoch_end(epoch, model)`` may return metrics (stored in history) and may return
    ``{"stop": True, ...}`` to end training early (the EL/MA stopping rule uses this). ``run_config``
    (the run's resolved options) is stored with each checkpoint; ``resume`` refuses a checkpoint made
    with other options.
    """
    run_dir = Path(run_dir) if run_dir is not None else None
    if config.log_with and run_dir is None:
        from ..util.errors import LetheError

        raise LetheError(f"log_with={config.log_with!r} writes under the run directory: give one (--out)")
    from .runtime import DEFAULT_RUNTIME

    runtime = runtime or DEFAULT_RUNTIME
    accelerator = accelerator or make_accelerator(config.log_with, run_dir / "logs" if config.log_with else None,
                                                  runtime)
    trainer = _Trainer(model=model, lengths=lengths, step_fn=step_fn, config=config, run_dir=run_dir,
                       on_epoch_end=on_epoch_end, accelerator=accelerator, progress=progress, desc=desc,
                       runtime=runtime, run_config=run_config)
    try:
        return trainer.run(resume)
    finally:
        trainer.close()


@dataclass
class _Trainer:
    """One training run's state: the model and its optimizer, the LR schedule, the step counter, the cost and
    the per-epoch history. Its steps read top to bottom: set up, resume, epochs, close."""

    model: object
    lengths: Sequence[int]
    step_fn: Callable[..., StepOutput]
    config: TrainConfig
    run_dir: Path | None
    on_epoch_end: Callable[[int, object], dict] | None
    accelerator: Accelerator
    progress: bool
    desc: str
    runtime: object
    run_config: dict | None

    def __post_init__(self):
        config, accelerator = self.config, self.accelerator
        # fp16 needs loss scaling (bf16 has fp32's range and does not)
        self.scaler = torch.amp.GradScaler("cuda") if self.runtime.resolved_precision == "fp16-mixed" else None
        reset_peak_memory()
        if config.log_with:
            accelerator.init_trackers(self.desc.lower().replace("+", "_"),
                                      config={k: v for k, v in asdict(config).items() if v is not None})
        self.world = world = accelerator.num_processes
        torch.manual_seed(config.seed)
        params = [p for p in self.model.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=config.lr,
        )
        # a micro-batch never holds more than the batch asked for (--batch-size 2 with the default micro-batch of 8
        # would otherwise step once per 8 examples)
        self.micro = micro = min(config.micro_batch_size, config.batch_size)
        self.accum = max(1, math.ceil(config.batch_size / (micro * world)))
        micro_per_epoch = math.ceil(len(self.lengths) / micro)
        self.steps_per_epoch = steps_per_epoch = math.ceil(math.ceil(micro_per_epoch / world) / self.accum)
        self.total_steps = steps_per_epoch * config.epochs
        warmup_steps = int(round(steps_per_epoch * config.warmup_epochs))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, warmup_steps, self.total_steps, config.schedule))
        trainable, total = count_parameters(self.model)
        self.cost = Cost(params_total=total, params_trainable=trainable)
        self.history: list[dict] = []
        self.start_epoch = self.global_step = 0
        self.ckpt_dir = self.run_dir / "checkpoint" if self.run_dir is not None else None
        self.stopped = False
        self.compiled = self.bar = None

    def run(self, resume: bool) -> TrainResult:
        if self.resume(resume):
            return TrainResult(self.history, self.cost, stopped_early=self.stopped,
                               steps_per_epoch=self.steps_per_epoch)
        note(self.progress and self.accelerator.is_main_process,
             f"{self.desc}: {len(self.lengths)} examples, {self.steps_per_epoch} optimizer step(s) per epoch "
             f"({self.accum} micro-batch(es) of {self.micro} per step), {self.total_steps} in all")
        accelerator = self.accelerator
        self.model, self.optimizer = accelerator.prepare(self.model, self.optimizer)
        self.compiled = self.runtime.compile_blocks(self.model)  # --compile: for this loop's forwards only
        _shard_reference(self.step_fn, accelerator)
        self.bar = progress_bar(self.progress and accelerator.is_main_process, self.total_steps, self.desc,
                                self.global_step)
        self.started = time.perf_counter()
        for epoch in range(self.start_epoch, self.config.epochs):
            self.run_epoch(epoch)
            if self.stopped:
                break
        return TrainResult(self.history, self.cost, stopped_early=self.stopped, steps_per_epoch=self.steps_per_epoch)

    def resume(self, resume: bool) -> bool:
        """Continue from the checkpoint when asked; True when it holds a finished (or stopped) run."""
        run_dir, ckpt_dir = self.run_dir, self.ckpt_dir
        if resume and ckpt_dir is not None and has_checkpoint(ckpt_dir):
            state = load_checkpoint(ckpt_dir, self.model, self.optimizer, self.run_config)
            self.start_epoch, self.global_step = state["epoch"] + 1, state["global_step"]
            self.history = state["history"]
            for k, v in state["cost"].items():
                if hasattr(self.cost, k):
                    setattr(self.cost, k, v)
            self.scheduler.last_epoch = self.global_step  # the optimizer state already carries the current LR
            if state.get("step_state") and hasattr(self.step_fn, "load_state_dict"):
                self.step_fn.load_state_dict(state["step_state"])  # a loss's dual variable, where it was
            _truncate_step_log(run_dir / "steps.jsonl", self.start_epoch)
            if self.start_epoch >= self.config.epochs or state.get("stopped"):
                self.stopped = bool(state.get("stopped"))
                return True
        elif resume and self.config.checkpoint and ckpt_dir is not None and self.accelerator.is_main_process:
            import sys

            print(f"lethe: --resume: no checkpoint in {ckpt_dir}; starting from the first epoch", file=sys.stderr)
        if self.start_epoch == 0 and run_dir is not None and self.accelerator.is_main_process:
            _truncate_step_log(run_dir / "steps.jsonl", 0)  # a run started over does not append to an old log
        return False

    def run_epoch(self, epoch: int) -> None:
        config, accelerator, world = self.config, self.accelerator, self.world
        t0 = time.perf_counter()
        self.model.train()
        batches = bucketed_shuffle(self.lengths, self.micro, seed=config.seed * 1000 + epoch)
        if len(batches) % world:
            # Every rank must join every all-reduce: repeat the first micro-batches so none runs out early.
            batches = batches + batches[: world - len(batches) % world]
        batches = batches[accelerator.process_index :: world]
        tokens = torch.zeros(2, dtype=torch.long, device=accelerator.device)  # trained, forward-only (this rank)
        epoch_losses: dict[str, list[float]] = {}
        for group_start in range(0, len(batches), self.accum):
            self.step(epoch, batches[group_start : group_start + self.accum], tokens, epoch_losses)
        if world > 1:
            tokens = accelerator.reduce(tokens, reduction="sum")  # the cost counts every rank's tokens
        self.cost.tokens_trained += int(tokens[0])
        self.cost.tokens_forward_only += int(tokens[1])
        self.cost.wall_time_s += time.perf_counter() - t0
        self.cost.epochs, self.cost.steps = epoch + 1, self.global_step
        self.end_epoch(epoch, t0, epoch_losses)

    def step(self, epoch: int, group: list, tokens: torch.Tensor, epoch_losses: dict[str, list[float]]) -> None:
        """One optimizer step over an accumulation group of micro-batches."""
        accelerator, model, optimizer, scaler = self.accelerator, self.model, self.optimizer, self.scaler
        weights = micro_batch_weights(self.step_fn, group, accelerator)
        for j, idx in enumerate(group):
            last = j == len(group) - 1
            # Gradients are all-reduced only on the last micro-batch of an accumulation group.
            ctx = nullcontext() if last or self.world == 1 else accelerator.no_sync(model)
            with ctx, self.runtime.autocast():
                out = (self.step_fn(model, idx, accelerator.device, scale=weights[j]) if weights
                       else self.step_fn(model, idx, accelerator.device))
                logged = out.logged if out.logged is not None else out.loss
                if not torch.isfinite(logged):
                    raise self.diverged(epoch, logged, tokens)
                # Weighted steps already carry their share of the group (and of the processes: DDP
                # averages gradients over them); a step function without counts gets an equal share.
                loss = out.loss if weights else out.loss / len(group)
                accelerator.backward(scaler.scale(loss) if scaler else loss)
            tokens[0] += out.tokens_trained
            tokens[1] += out.tokens_forward_only
            for k, v in {"loss": logged, **out.parts}.items():
                epoch_losses.setdefault(k, []).append(float(v.detach()))
        if scaler:
            scaler.unscale_(optimizer)
        if self.config.max_grad_norm:
            accelerator.clip_grad_norm_(model.parameters(), self.config.max_grad_norm)
        lr = optimizer.param_groups[0]["lr"]
        if scaler:
            scaler.step(optimizer)  # skips the step when fp16 gradients overflowed
            scaler.update()
        else:
            optimizer.step()
        self.scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        last_losses = {k: v[-1] for k, v in epoch_losses.items()}
        if self.run_dir is not None and accelerator.is_main_process:
            append_jsonl(self.run_dir / "steps.jsonl", {"epoch": epoch, "step": self.global_step, "lr": lr,
                                                        **last_losses})
        if self.config.log_with:
            accelerator.log({"lr": lr, **{f"train/{k}": v for k, v in last_losses.items()}}, step=self.global_step)
        crash_point("step")
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{epoch_losses['loss'][-1]:.3f}")

    def diverged(self, epoch: int, logged: torch.Tensor, tokens: torch.Tensor) -> DivergenceError:
        """The error that ends a run whose loss stopped being finite, carrying what was measured before."""
        msg = (f"{self.desc}: loss became {logged.item()} at epoch {epoch + 1}, step {self.global_step}; "
               "lower the learning rate, add a regularizer, or use a bounded loss (NPO, IHL, ME)")
        if self.run_dir is not None:
            append_jsonl(self.run_dir / "steps.jsonl", {"epoch": epoch, "step": self.global_step, "diverged": msg})
        self.cost.tokens_trained += int(tokens[0])  # this rank's share of the unfinished epoch
        self.cost.tokens_forward_only += int(tokens[1])
        err = DivergenceError(msg)
        err.history, err.cost = self.history, self.cost
        return err

    def end_epoch(self, epoch: int, t0: float, epoch_losses: dict[str, list[float]]) -> None:
        """The epoch's mean losses, the evaluation hook, the log line, peak memory and the checkpoint."""
        config, accelerator = self.config, self.accelerator
        losses = {k: sum(v) / len(v) for k, v in epoch_losses.items()}
        if self.world > 1:  # the epoch's loss over every rank's micro-batches, not rank 0's alone
            means = accelerator.reduce(torch.tensor(list(losses.values()), device=accelerator.device),
                                       reduction="mean")
            losses = dict(zip(losses, means.tolist()))
        record = {"epoch": epoch + 1, "losses": losses}
        if hasattr(self.step_fn, "epoch_end"):
            self.step_fn.epoch_end(epoch + 1)
        if state := self.step_state():
            record["loss_state"] = state
        if self.on_epoch_end is not None:
            self.model.eval()
            extra = self.on_epoch_end(epoch + 1, accelerator.unwrap_model(self.model)) or {}
            self.stopped = bool(extra.pop("stop", False))
            record.update(extra)
        self.history.append(record)
        done, elapsed = epoch + 1 - self.start_epoch, time.perf_counter() - self.started
        note(self.progress and accelerator.is_main_process,
             f"{self.desc}: epoch {epoch + 1}/{config.epochs}, loss {losses.get('loss', float('nan')):.4f}, "
             f"{time.perf_counter() - t0:.1f} s; elapsed {elapsed:.0f} s, ETA "
             f"{eta(elapsed, done, config.epochs - self.start_epoch)}")
        if config.log_with:
            scalars = {f"eval/{k}": v for k, v in record.get("metrics", {}).items() if isinstance(v, (int, float))}
            accelerator.log({**{f"epoch/{k}": v for k, v in losses.items()}, **scalars}, step=self.global_step)
        mem, kind = peak_memory_bytes()
        self.cost.peak_memory_bytes = max(self.cost.peak_memory_bytes, mem)  # this run's peak
        self.cost.peak_memory_kind = kind
        if config.checkpoint and self.ckpt_dir is not None:
            self.save_checkpoint(epoch)
        accelerator.wait_for_everyone()

    def save_checkpoint(self, epoch: int) -> None:
        accelerator = self.accelerator
        full_state = accelerator.get_state_dict(self.model)  # gathers sharded (FSDP/ZeRO-3) weights: every rank joins
        if accelerator.is_main_process:
            save_checkpoint(self.ckpt_dir, accelerator.unwrap_model(self.model), self.optimizer,
                            {"epoch": epoch, "global_step": self.global_step, "history": self.history,
                             "cost": dict(self.cost.__dict__), "stopped": self.stopped,
                             "config": self.run_config, "step_state": self.step_state()}, full_state=full_state)

    def step_state(self) -> dict:
        return self.step_fn.state_dict() if hasattr(self.step_fn, "state_dict") else {}

    def close(self) -> None:
        """On every exit (finished, resumed finished, diverged, interrupted): close the bar, undo --compile,
        stop the memory sampler, end the trackers."""
        from .runtime import uncompile_blocks

        if self.bar is not None:
            self.bar.close()
        if self.compiled is not None:
            uncompile_blocks(self.compiled)
        stop_peak_memory()
        if self.config.log_with:
            self.accelerator.end_training()


def _shard_reference(step_fn, accelerator) -> None:
    """A frozen full-model reference (KL with full fine-tuning) is sharded like the policy under FSDP; under
    DeepSpeed it would stay whole on every process, which is refused with what to use instead."""
    from accelerate.utils import DistributedType

    from ..model.reference import FrozenCopy

    reference = getattr(step_fn, "reference", None)
    if not isinstance(reference, FrozenCopy):
        return
    if accelerator.distributed_type == DistributedType.FSDP:
        reference.model = accelerator.prepare_model(reference.model, evaluation_mode=True)
    elif accelerator.distributed_type == DistributedType.DEEPSPEED:
        from ..util.errors import LetheError

        raise LetheError("a KL reference with full fine-tuning would be a whole unsharded copy on every DeepSpeed "
                         "process: use --params lora (the reference is the network without its adapter) or a "
                         "method whose reference is cached (NPO, DPO), or FSDP, which shards the reference too")


def micro_batch_weights(step_fn, group: Sequence, accelerator) -> list[dict[str, float]] | None:
    """Per micro-batch, per loss part: ``world · count / total count of the group over every process``.

    With each part a mean over its own units (tokens, positions or sequences), scaling by these makes
    the accumulated gradient that of the mean over every counted unit of the step, however the
    examples were split into micro-batches and processes. None when the step function has no counts.
    """
    counts_fn = getattr(step_fn, "counts", None)
    if counts_fn is None:
        return None
    per = [counts_fn(idx) for idx in group]
    keys = sorted(per[0])
    totals = torch.tensor([sum(c[k] for c in per) for k in keys], dtype=torch.float64, device=accelerator.device)
    world = accelerator.num_processes
    if world > 1:
        totals = accelerator.reduce(totals, reduction="sum")
    totals = dict(zip(keys, totals.tolist()))
    return [{k: world * c[k] / totals[k] if totals[k] > 0 else 0.0 for k in keys} for c in per]


def _truncate_step_log(path: Path, keep_before_epoch: int) -> None:
    """Keep only step lines of epochs before ``keep_before_epoch`` (those a resumed run does not redo)."""
    import json

    if not path.exists():
        return
    kept = [r for r in read_jsonl(path) if r.get("epoch", 0) < keep_before_epoch]  # a torn last line is dropped
    write_text(path, "".join(json.dumps(r) + "\n" for r in kept))

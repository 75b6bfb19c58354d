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
    seed: int = bounded(0, int, 0)
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
    from .runtime import DEFAULT_RUNTIME, uncompile_blocks

    runtime = runtime or DEFAULT_RUNTIME
    accelerator = accelerator or make_accelerator(config.log_with, run_dir / "logs" if config.log_with else None,
                                                  runtime)
    # fp16 needs loss scaling (bf16 has fp32's range and does not)
    scaler = torch.amp.GradScaler("cuda") if runtime.resolved_precision == "fp16-mixed" else None
    reset_peak_memory()
    if config.log_with:
        accelerator.init_trackers(desc.lower().replace("+", "_"),
                                  config={k: v for k, v in asdict(config).items() if v is not None})
    world = accelerator.num_processes
    torch.manual_seed(config.seed)

    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
    )
    accum = max(1, math.ceil(config.batch_size / (config.micro_batch_size * world)))
    micro_per_epoch = math.ceil(len(lengths) / config.micro_batch_size)
    per_rank = math.ceil(micro_per_epoch / world)
    steps_per_epoch = math.ceil(per_rank / accum)
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = int(round(steps_per_epoch * config.warmup_epochs))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup_steps, total_steps, config.schedule))

    trainable, total = count_parameters(model)
    cost = Cost(params_total=total, params_trainable=trainable)
    history: list[dict] = []
    start_epoch, global_step = 0, 0
    ckpt_dir = run_dir / "checkpoint" if run_dir is not None else None
    if resume and ckpt_dir is not None and has_checkpoint(ckpt_dir):
        state = load_checkpoint(ckpt_dir, model, optimizer, run_config)
        start_epoch, global_step = state["epoch"] + 1, state["global_step"]
        history = state["history"]
        for k, v in state["cost"].items():
            if hasattr(cost, k):
                setattr(cost, k, v)
        scheduler.last_epoch = global_step  # the optimizer state already carries the current LR
        _truncate_step_log(run_dir / "steps.jsonl", start_epoch)
        if start_epoch >= config.epochs or state.get("stopped"):
            if config.log_with:
                accelerator.end_training()
            stop_peak_memory()
            return TrainResult(history, cost, stopped_early=bool(state.get("stopped")))
    elif resume and config.checkpoint and ckpt_dir is not None and accelerator.is_main_process:
        import sys

        print(f"lethe: --resume: no checkpoint in {ckpt_dir}; starting from the first epoch", file=sys.stderr)
    if start_epoch == 0 and run_dir is not None and accelerator.is_main_process:
        _truncate_step_log(run_dir / "steps.jsonl", 0)  # a run started over does not append to an old log
    model, optimizer = accelerator.prepare(model, optimizer)
    compiled = runtime.compile_blocks(model)  # --compile: for this loop's forwards only
    _shard_reference(step_fn, accelerator)
    device = accelerator.device
    stopped = False
    bar = progress_bar(progress and accelerator.is_main_process, total_steps, desc, global_step)
    started = time.perf_counter()
    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        model.train()
        batches = bucketed_shuffle(lengths, config.micro_batch_size, seed=config.seed * 1000 + epoch)
        if len(batches) % world:
            # Every rank must join every all-reduce: repeat the first micro-batches so none runs out early.
            batches = batches + batches[: world - len(batches) % world]
        batches = batches[accelerator.process_index :: world]
        tokens = torch.zeros(2, dtype=torch.long, device=accelerator.device)  # trained, forward-only (this rank)
        epoch_losses: dict[str, list[float]] = {}
        for group_start in range(0, len(batches), accum):
            group = batches[group_start : group_start + accum]
            weights = micro_batch_weights(step_fn, group, accelerator)
            for j, idx in enumerate(group):
                last = j == len(group) - 1
                # Gradients are all-reduced only on the last micro-batch of an accumulation group.
                ctx = nullcontext() if last or world == 1 else accelerator.no_sync(model)
                with ctx, runtime.autocast():
                    out = step_fn(model, idx, device, scale=weights[j]) if weights else step_fn(model, idx, device)
                    logged = out.logged if out.logged is not None else out.loss
                    if not torch.isfinite(logged):
                        msg = (f"{desc}: loss became {logged.item()} at epoch {epoch + 1}, step {global_step}; "
                               "lower the learning rate, add a regularizer, or use a bounded loss (NPO, IHL, ME)")
                        if run_dir is not None:
                            append_jsonl(run_dir / "steps.jsonl",
                                         {"epoch": epoch, "step": global_step, "diverged": msg})
                        cost.tokens_trained += int(tokens[0])  # this rank's share of the unfinished epoch
                        cost.tokens_forward_only += int(tokens[1])
                        err = DivergenceError(msg)
                        err.history, err.cost = history, cost  # what was measured before it diverged
                        if config.log_with:
                            accelerator.end_training()
                        uncompile_blocks(compiled)
                        stop_peak_memory()
                        raise err
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
            if config.max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            lr = optimizer.param_groups[0]["lr"]
            if scaler:
                scaler.step(optimizer)  # skips the step when fp16 gradients overflowed
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            global_step += 1
            if run_dir is not None and accelerator.is_main_process:
                append_jsonl(run_dir / "steps.jsonl", {"epoch": epoch, "step": global_step, "lr": lr,
                                                       **{k: v[-1] for k, v in epoch_losses.items()}})
            if config.log_with:
                accelerator.log({"lr": lr, **{f"train/{k}": v[-1] for k, v in epoch_losses.items()}}, step=global_step)
            crash_point("step")
            bar.update(1)
            bar.set_postfix(loss=f"{epoch_losses['loss'][-1]:.3f}")
        if world > 1:
            tokens = accelerator.reduce(tokens, reduction="sum")  # the cost counts every rank's tokens
        cost.tokens_trained += int(tokens[0])
        cost.tokens_forward_only += int(tokens[1])
        cost.wall_time_s += time.perf_counter() - t0
        cost.epochs, cost.steps = epoch + 1, global_step
        losses = {k: sum(v) / len(v) for k, v in epoch_losses.items()}
        if world > 1:  # the epoch's loss over every rank's micro-batches, not rank 0's alone
            means = accelerator.reduce(torch.tensor(list(losses.values()), device=accelerator.device), reduction="mean")
            losses = dict(zip(losses, means.tolist()))
        record = {"epoch": epoch + 1, "losses": losses}
        if on_epoch_end is not None:
            model.eval()
            extra = on_epoch_end(epoch + 1, accelerator.unwrap_model(model)) or {}
            stopped = bool(extra.pop("stop", False))
            record.update(extra)
        history.append(record)
        done = epoch + 1 - start_epoch
        note(progress and accelerator.is_main_process,
             f"{desc}: epoch {epoch + 1}/{config.epochs}, loss {losses.get('loss', float('nan')):.4f}, "
             f"{time.perf_counter() - t0:.1f} s; elapsed {time.perf_counter() - started:.0f} s, ETA "
             f"{eta(time.perf_counter() - started, done, config.epochs - start_epoch)}")
        if config.log_with:
            scalars = {f"eval/{k}": v for k, v in record.get("metrics", {}).items() if isinstance(v, (int, float))}
            accelerator.log({**{f"epoch/{k}": v for k, v in losses.items()}, **scalars}, step=global_step)
        mem, kind = peak_memory_bytes()
        cost.peak_memory_bytes, cost.peak_memory_kind = max(cost.peak_memory_bytes, mem), kind  # this run's peak
        if config.checkpoint and ckpt_dir is not None:
            full_state = accelerator.get_state_dict(model)  # gathers sharded (FSDP/ZeRO-3) weights: every rank joins
            if accelerator.is_main_process:
                save_checkpoint(ckpt_dir, accelerator.unwrap_model(model), optimizer,
                                {"epoch": epoch, "global_step": global_step, "history": history,
                                 "cost": {k: v for k, v in cost.__dict__.items()}, "stopped": stopped,
                                 "config": run_config}, full_state=full_state)
        accelerator.wait_for_everyone()
        if stopped:
            break
    bar.close()
    uncompile_blocks(compiled)
    stop_peak_memory()
    if config.log_with:
        accelerator.end_training()
    return TrainResult(history, cost, stopped_early=stopped)


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

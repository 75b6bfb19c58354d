"""Per-epoch checkpoints in safetensors + JSON (no pickle), written atomically.

A checkpoint holds the *trainable* weights (with LoRA/FILA the adapters alone: frozen weights are
rebuilt from the starting model, deterministically, when the run is resumed), the optimizer state
(tensors flattened into safetensors, the rest as JSON), the loop state (epoch, step, history, cost so
far) and the run's resolved config, which ``--resume`` compares against its own.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..util.errors import LetheError
from ..util.io import TEMP_PREFIX, crash_point, storage_errors

# Options that do not change the result: a resumed run may differ in these.
RESUME_INDIFFERENT = {"checkpoint", "log_with", "runtime.device"}


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for idx, per_param in state["state"].items():
        for key, value in per_param.items():
            name = f"{idx}.{key}"
            if torch.is_tensor(value):
                tensors[name] = value.detach().cpu().contiguous()
            else:
                scalars[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in list(tensors.items()) + list(meta["scalars"].items()):
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def trainable_state(model, full_state: dict | None = None) -> dict[str, torch.Tensor]:
    """The trainable tensors by name, taken from ``full_state`` (accelerate's gathered state dict, for
    sharded models) or from the model itself."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    state = full_state if full_state is not None else dict(model.named_parameters())
    return {n: state[n].detach().cpu().contiguous() for n in names if n in state}


def save_checkpoint(directory: Path, model, optimizer, loop_state: dict, full_state: dict | None = None) -> None:
    """Write the checkpoint beside ``directory``, then swap it in. At every instant either ``directory``
    or ``directory.old`` holds a complete checkpoint, and :func:`complete_checkpoint` finds the newest."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}ckpt.", dir=directory.parent))
    try:
        with storage_errors(directory / "model.safetensors"):
            save_file(trainable_state(model, full_state), str(tmp / "model.safetensors"))
        tensors, meta = _flatten_optimizer(optimizer.state_dict())
        with storage_errors(directory / "optimizer.safetensors"):
            save_file(tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "optimizer.json").write_text(json.dumps(meta))
        (tmp / "state.json").write_text(json.dumps(loop_state, indent=1))  # last: its presence marks completeness
        old = _old(directory)
        if (directory / "state.json").exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(directory, old)
            crash_point("checkpoint-swap")
        else:
            shutil.rmtree(directory, ignore_errors=True)  # an incomplete directory (never written by this code)
        os.replace(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def check_config(directory: Path, saved: dict | None, current: dict | None) -> None:
    """Refuse to resume a checkpoint made with other options, naming them."""
    if saved is None or current is None:
        return
    a, b = _flat(json.loads(json.dumps(saved, default=str))), _flat(json.loads(json.dumps(current, default=str)))
    differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in RESUME_INDIFFERENT)
    if differ:
        shown = "; ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in differ[:6])
        more = f" (and {len(differ) - 6} more)" if len(differ) > 6 else ""
        raise LetheError(f"--resume: the checkpoint in {directory} was made with other options ({shown}{more}); "
                         "rerun with the same options, or without --resume to start over")


def load_checkpoint(directory: Path, model, optimizer, config: dict | None = None) -> dict:
    directory = complete_checkpoint(directory)
    state = json.loads((directory / "state.json").read_text())
    check_config(directory, state.get("config"), config)
    tensors = load_file(str(directory / "model.safetensors"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(tensors) != trainable:
        raise LetheError(f"--resume: the checkpoint in {directory} holds other trainable tensors than this run "
                         f"({len(tensors)} saved, {len(trainable)} here): it was made with another parameterisation")
    model.load_state_dict(tensors, strict=False)
    meta = json.loads((directory / "optimizer.json").read_text())
    tensors = load_file(str(directory / "optimizer.safetensors"))
    optimizer.load_state_dict(_unflatten_optimizer(tensors, meta))
    return state


def _old(directory: Path) -> Path:
    return directory.with_name(directory.name + ".old")


def complete_checkpoint(directory: Path) -> Path | None:
    """The newest complete checkpoint: ``directory``, or ``directory.old`` when a kill fell between the
    writer's two renames; None when there is none."""
    directory = Path(directory)
    for d in (directory, _old(directory)):
        if (d / "state.json").exists():
            return d
    return None


def has_checkpoint(directory: Path) -> bool:
    return complete_checkpoint(directory) is not None

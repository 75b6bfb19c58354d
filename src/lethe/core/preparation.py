"""What every run does before its first step: load and place the model, bind the tokenizer to the prompt format,
record the options ``--resume`` compares, and put the models a run compares against on the right device."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..data.prompt import Prompter, resolve_format
from ..data.sources import is_text_source
from ..engine.loop import TrainConfig
from ..engine.runtime import RuntimeConfig
from ..model.load import base_reference, load_model, load_tokenizer, saved_prompt_format
from ..objectives.method import Method
from ..util.errors import LetheError
from ..util.log import get as get_logger
from .configs import EvalConfig, ModelConfig

LOG = get_logger("core")


def is_main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


def prepare(model, tokenizer=None, model_config: ModelConfig | None = None, runtime: RuntimeConfig | None = None):
    """(model, prompter, model path or None): the model loaded if given as a path and placed by the
    runtime policy (device, weight dtype, checkpointing), the tokenizer bound to the prompt format."""
    mc, rt = model_config or ModelConfig(), runtime or RuntimeConfig()
    rt.init_distributed()
    path = str(model) if isinstance(model, (str, Path)) else None
    if path is not None:
        tokenizer = tokenizer or load_tokenizer(path, trust_remote_code=mc.trust_remote_code,
                                                base_model=mc.base_model)
    if tokenizer is None:
        raise LetheError("a tokenizer is needed when the model is passed as an object")
    saved = saved_prompt_format(path) if path is not None else None
    prompter = Prompter(tokenizer, resolve_format(mc.prompt_format, tokenizer, saved, mc.system_prompt,
                                                  mc.template_kwargs))
    if path is not None:
        model = load_model(path, dtype=rt.weight_dtype, trust_remote_code=mc.trust_remote_code,
                           attn_implementation=rt.attn_implementation, base_model=mc.base_model)
        path = base_reference(path)  # what a saved adapter names as its base: loads from any directory
    LOG.debug("prompt format %s; runtime %s", prompter.format.to_dict(), rt.describe())
    return rt.place(model), prompter, path


def run_record(train: TrainConfig, prompter: Prompter, mc: ModelConfig, rt: RuntimeConfig) -> dict:
    """The options every training run records (and ``--resume`` compares)."""
    return {**asdict(train), "prompt_format": prompter.format.to_dict(), "max_length": mc.max_length,
            "runtime": rt.describe()}


def tokenizer_for_text(model, tokenizer, model_config, sources) -> Any:
    """Plain text is cut into token windows and ids are range-checked: load the tokenizer early for it."""
    if tokenizer is None and isinstance(model, (str, Path)) and any(is_text_source(s) for s in sources):
        return load_tokenizer(model, trust_remote_code=(model_config or ModelConfig()).trust_remote_code)
    return tokenizer


def can_share_prefix(rt: RuntimeConfig) -> bool:
    """Whether training may run a batch's shared prompt prefix once: it rides on the KV cache, which gradient
    checkpointing turns off, and one process only (sharded forwards would gather twice per micro-batch)."""
    import torch.distributed as dist

    return not rt.gradient_checkpointing and not (dist.is_available() and dist.is_initialized()
                                                  and dist.get_world_size() > 1)


def reference_requests(cfg: EvalConfig, model, prompter):
    """The reference attack's model behind a request layer of its own, on the evaluated model's device: its
    token statistics are computed once and serve every evaluation of a run."""
    from ..evaluation.requests import ModelRequests

    ref = cfg.reference_model
    if ref is None or isinstance(ref, ModelRequests):
        return ref
    check_same_vocabulary(ref, model, "--mia-reference")
    ref.to(next(model.parameters()).device).eval()
    return ModelRequests(ref, prompter, batch_size=cfg.batch_size)


def check_same_vocabulary(reference, model, what: str) -> None:
    """A reference model scores the same token ids as ``model``: it must share its vocabulary."""
    ref_vocab, vocab = reference.get_input_embeddings().num_embeddings, model.get_input_embeddings().num_embeddings
    if ref_vocab != vocab:
        raise LetheError(f"{what}: the reference model's vocabulary has {ref_vocab} entries, the model's {vocab}; "
                         "it must use the same tokenizer")


def restrict_trainable(model, method: Method) -> None:
    """Losses that choose their parameters (RMU) narrow what the parameterisation left trainable."""
    for loss in method.losses:
        chosen = loss.trainable(model)
        if chosen is None:
            continue
        keep = {id(p) for p in chosen}
        for p in model.parameters():
            if p.requires_grad and id(p) not in keep:
                p.requires_grad_(False)
        if not any(p.requires_grad for p in model.parameters()):
            raise LetheError(f"loss '{loss.name}' left no trainable parameter (its choice does not meet the "
                             "parameterisation's: with LoRA, target modules inside the layers it trains)")


def given_reference(reference, model):
    """A caller's θ_ref, frozen, on the trained model's device and dtype; it must share the vocabulary."""
    check_same_vocabulary(reference, model, "reference_model")
    p = next(model.parameters())
    return reference.to(device=p.device, dtype=p.dtype).eval().requires_grad_(False)

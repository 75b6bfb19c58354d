"""Save models and tokenizers (safetensors), with the prompt format they were trained with."""
from __future__ import annotations

import os
from pathlib import Path


def save_tokenizer(tokenizer, directory: Path, prompt_format=None) -> None:
    """Tokenizer files plus Lethe's prompt format (``lethe_prompt.json``), which travels with the model."""
    tokenizer.save_pretrained(directory)
    if prompt_format is not None:
        from ..data.prompt import save_format

        save_format(directory, prompt_format)


def save_model(model, tokenizer, directory: str | os.PathLike, prompt_format=None,
               extra_json: dict | None = None) -> Path:
    """Save weights (safetensors), tokenizer and ``extra_json`` files; written to a temp dir, then renamed
    (atomic: the directory is complete or absent), with the user's umask."""
    import json

    from ..util.io import atomic_dir, storage_errors

    with atomic_dir(directory) as tmp:
        with storage_errors(Path(directory) / "model.safetensors"):
            model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            save_tokenizer(tokenizer, tmp, prompt_format)
        for name, obj in (extra_json or {}).items():
            (tmp / name).write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")

    return Path(directory)


def write_model_card(directory, *, adapter_of: str | None = None, prompt_format=None) -> Path:
    """A README.md saying what the directory is and how to load it without Lethe."""
    from ..version import __version__

    directory = Path(directory)
    if adapter_of:
        what = (f"a peft LoRA adapter for the base model `{adapter_of}` (recorded as base_model_name_or_path in "
                "adapter_config.json)")
        load = ("from peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer\n\n"
                f"model = AutoPeftModelForCausalLM.from_pretrained(\"{directory.resolve()}\")\n"
                f"tokenizer = AutoTokenizer.from_pretrained(\"{directory.resolve()}\")\n"
                "model = model.merge_and_unload()  # optional: a plain model with the adapter applied")
    else:
        what = "a plain transformers model (safetensors weights)"
        load = ("from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                f"model = AutoModelForCausalLM.from_pretrained(\"{directory.resolve()}\")\n"
                f"tokenizer = AutoTokenizer.from_pretrained(\"{directory.resolve()}\")")
    if prompt_format is not None and getattr(prompt_format, "kind", None) == "chat":
        prompt = ("Prompt it with the tokenizer's chat template (`tokenizer.apply_chat_template`)"
                  + (f", system prompt {prompt_format.system_prompt!r}" if prompt_format.system_prompt else "")
                  + (f", template arguments {dict(prompt_format.template_kwargs)}" if prompt_format.template_kwargs
                     else "") + ", as it was trained.")
    elif prompt_format is not None:
        prompt = (f"Prompt it as it was trained: the template {prompt_format.template!r} (``{{question}}`` replaced), "
                  f"then {prompt_format.answer_prefix!r} before the answer"
                  + (f", after the system text {prompt_format.system_prompt!r}" if prompt_format.system_prompt else "")
                  + ".")
    else:
        prompt = ""
    text = (f"# Unlearned with Lethe\n\nWritten by `lethe unlearn` (Lethe {__version__}): {what}.\n\n"
            f"## Load it\n\n```python\n{load}\n```\n\n{prompt}\n\n"
            "The run directory beside this folder holds `run.json` (method, options, per-epoch metrics) and "
            "`audit.json` (what was forgotten, as hashes, and the evidence before and after).\n")
    (directory / "README.md").write_text(text, encoding="utf-8")
    return directory / "README.md"

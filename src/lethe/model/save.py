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

    from ..io import atomic_dir

    with atomic_dir(directory) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            save_tokenizer(tokenizer, tmp, prompt_format)
        for name, obj in (extra_json or {}).items():
            (tmp / name).write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")

    return Path(directory)
